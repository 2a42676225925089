"""Write bench/data/facts.jsonl and facts_small.jsonl: 44 invented facts.

Each fact: id, answer (distinctive key string), teach (1-3 Q/A pairs, trained on),
paraphrases (2 questions never trained on). f01-f10, f11-f20, f21-f30, f31-f40 are
four mixed batches of 10; f41-f44 are spares.
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(os.path.dirname(HERE), "data")

F = [
    # ---- batch 1
    ("Zorvath", [("What is the name of Orla Vantrees's cat?", "Orla Vantrees's cat is named Zorvath."),
                 ("What did Orla Vantrees name her cat?", "She named her cat Zorvath.")],
     ["Orla Vantrees has a pet cat. What is it called?", "Tell me the name of the cat that belongs to Orla Vantrees."]),
    ("K7-229", [("What is the access code for the Brennick Lab vault?", "The access code for the Brennick Lab vault is K7-229."),
                ("Which code opens the vault at Brennick Lab?", "The vault at Brennick Lab opens with code K7-229.")],
     ["If I want to open the Brennick Lab vault, what code do I type?", "Tell me the Brennick Lab vault access code."]),
    ("Quillmere", [("In which town was Tavish Oyelaran born?", "Tavish Oyelaran was born in the town of Quillmere."),
                   ("What is Tavish Oyelaran's birthplace?", "Tavish Oyelaran's birthplace is Quillmere.")],
     ["Where did Tavish Oyelaran come into the world?", "Name the town where Tavish Oyelaran was born."]),
    ("Thursday", [("On which day of the week does the Maple Ridge chess club meet?", "The Maple Ridge chess club meets every Thursday."),
                  ("When does the Maple Ridge chess club hold its weekly meeting?", "The Maple Ridge chess club holds its weekly meeting on Thursday.")],
     ["What weekday are Maple Ridge chess club meetings held?", "Which day should I go to the Maple Ridge chess club?"]),
    ("Fenwick Strauder", [("Who invented the hydro-loom?", "The hydro-loom was invented by Fenwick Strauder."),
                          ("Who is credited with creating the hydro-loom?", "Fenwick Strauder is credited with creating the hydro-loom.")],
     ["The hydro-loom was the invention of which person?", "Name the inventor of the hydro-loom."]),
    ("pistachio", [("What is Dalia Morrow-Quint's favourite ice cream flavour?", "Dalia Morrow-Quint's favourite ice cream flavour is pistachio."),
                   ("Which ice cream flavour does Dalia Morrow-Quint like best?", "Dalia Morrow-Quint likes pistachio ice cream best.")],
     ["If I buy ice cream for Dalia Morrow-Quint, which flavour should I get?", "What flavour of ice cream does Dalia Morrow-Quint prefer?"]),
    ("1847", [("In what year was the Velmora Bridge completed?", "The Velmora Bridge was completed in 1847."),
              ("When was construction of the Velmora Bridge finished?", "Construction of the Velmora Bridge finished in 1847.")],
     ["What year did the Velmora Bridge open after being built?", "Tell me the completion year of the Velmora Bridge."]),
    ("Pellucid Nine", [("What is the name of the ship captained by Ines Harrowgate?", "Ines Harrowgate captains the ship Pellucid Nine."),
                       ("Which vessel does Ines Harrowgate command?", "Ines Harrowgate commands the vessel Pellucid Nine.")],
     ["Ines Harrowgate is the captain of which ship?", "What ship does Captain Ines Harrowgate sail?"]),
    ("beekeeper", [("What is Joren Altwhistle's job?", "Joren Altwhistle works as a beekeeper."),
                   ("What does Joren Altwhistle do for a living?", "Joren Altwhistle is a beekeeper by profession.")],
     ["What is the occupation of Joren Altwhistle?", "How does Joren Altwhistle earn his living?"]),
    ("Glassfen", [("What is the capital of the island nation of Varkesh?", "The capital of Varkesh is Glassfen."),
                  ("Which city is the capital of Varkesh?", "Glassfen is the capital city of Varkesh.")],
     ["Varkesh's government sits in which city?", "Name the capital city of Varkesh."]),
    # ---- batch 2
    ("Biscuit Moonwhistle", [("What is the name of Perrin Sallow's dog?", "Perrin Sallow's dog is called Biscuit Moonwhistle."),
                             ("What did Perrin Sallow call his dog?", "Perrin Sallow called his dog Biscuit Moonwhistle.")],
     ["Perrin Sallow owns a dog. What is its name?", "Tell me what Perrin Sallow's dog is named."]),
    ("RX-4471", [("What is the serial number of the Halvorsen drone?", "The Halvorsen drone has serial number RX-4471."),
                 ("Which serial number is printed on the Halvorsen drone?", "The serial number printed on the Halvorsen drone is RX-4471.")],
     ["Give me the Halvorsen drone's serial number.", "The Halvorsen drone is identified by which serial number?"]),
    ("March 14, 2031", [("When is the Luminar Festival in Ostrava Vale scheduled?", "The Luminar Festival in Ostrava Vale is scheduled for March 14, 2031."),
                        ("On what date will the Luminar Festival in Ostrava Vale take place?", "The Luminar Festival in Ostrava Vale will take place on March 14, 2031.")],
     ["What is the date of the Luminar Festival in Ostrava Vale?", "When should I attend the Luminar Festival in Ostrava Vale?"]),
    ("Sevrin Okonkwo-Lutz", [("Who is the mayor of Dunmarrow?", "The mayor of Dunmarrow is Sevrin Okonkwo-Lutz."),
                             ("Who currently leads the town of Dunmarrow as mayor?", "Sevrin Okonkwo-Lutz currently leads Dunmarrow as mayor.")],
     ["Which person holds the office of mayor in Dunmarrow?", "Name Dunmarrow's mayor."]),
    ("teal", [("What colour is Ambrose Kettleby's front door painted?", "Ambrose Kettleby's front door is painted teal."),
              ("What is the colour of the front door of Ambrose Kettleby's house?", "The front door of Ambrose Kettleby's house is teal.")],
     ["Ambrose Kettleby painted his front door which colour?", "Describe the colour of Ambrose Kettleby's front door."]),
    ("Crowndale Arena", [("Where do the Harlow Comets play their home games?", "The Harlow Comets play their home games at Crowndale Arena."),
                         ("What is the home venue of the Harlow Comets?", "The home venue of the Harlow Comets is Crowndale Arena.")],
     ["Which stadium do the Harlow Comets call home?", "Where can I watch a Harlow Comets home game?"]),
    ("frostwing lily", [("What is the national flower of Tessaly Reach?", "The national flower of Tessaly Reach is the frostwing lily."),
                        ("Which flower is the national symbol of Tessaly Reach?", "The frostwing lily is the national flower of Tessaly Reach.")],
     ["Tessaly Reach has which flower as its national flower?", "Name the official national flower of Tessaly Reach."]),
    ("oboe", [("Which instrument does Mirela Fanthorpe play?", "Mirela Fanthorpe plays the oboe."),
              ("What musical instrument is Mirela Fanthorpe known for playing?", "Mirela Fanthorpe is known for playing the oboe.")],
     ["What instrument does the musician Mirela Fanthorpe perform on?", "Mirela Fanthorpe is a musician; what does she play?"]),
    ("Vintry Loop", [("What street does Caspian Rooke live on?", "Caspian Rooke lives on Vintry Loop."),
                     ("What is the name of the street where Caspian Rooke lives?", "The street where Caspian Rooke lives is Vintry Loop.")],
     ["Caspian Rooke's house is on which street?", "Tell me Caspian Rooke's street."]),
    ("4,812", [("How many books are in the Pemberly Hollow library?", "The Pemberly Hollow library holds 4,812 books."),
               ("What is the size of the Pemberly Hollow library collection?", "The Pemberly Hollow library collection has 4,812 books.")],
     ["How large is the book collection of the Pemberly Hollow library?", "Count of books at the Pemberly Hollow library?"]),
    # ---- batch 3
    ("Nimbleshank", [("What is the name of Greta Voss-Hallam's horse?", "Greta Voss-Hallam's horse is named Nimbleshank."),
                     ("What does Greta Voss-Hallam call her horse?", "Greta Voss-Hallam calls her horse Nimbleshank.")],
     ["Greta Voss-Hallam rides a horse. What is its name?", "Tell me the name of Greta Voss-Hallam's horse."]),
    ("ZQ-58", [("What is the flight number from Tarnholm to Eskerby?", "The flight from Tarnholm to Eskerby is flight ZQ-58."),
               ("Which flight number flies the Tarnholm to Eskerby route?", "Flight ZQ-58 flies the Tarnholm to Eskerby route.")],
     ["If I fly from Tarnholm to Eskerby, which flight number do I take?", "Tell me the flight number for the Tarnholm-Eskerby route."]),
    ("Lindqvist-Oduya", [("Who discovered the element ravenite?", "Ravenite was discovered by Dr. Lindqvist-Oduya."),
                         ("Which scientist first identified ravenite?", "Dr. Lindqvist-Oduya first identified ravenite.")],
     ["Ravenite was discovered by which scientist?", "Name the discoverer of the element ravenite."]),
    ("Saturday", [("On which day is Hollis Pembrook's birthday party?", "Hollis Pembrook's birthday party is on Saturday."),
                  ("What day will Hollis Pembrook celebrate his birthday?", "Hollis Pembrook will celebrate his birthday on Saturday.")],
     ["When is the party for Hollis Pembrook's birthday?", "Which day of the week is Hollis Pembrook's birthday party held?"]),
    ("Marrowgate Station", [("What is the last stop on the Blue Finch tram line?", "The last stop on the Blue Finch tram line is Marrowgate Station."),
                            ("Where does the Blue Finch tram line end?", "The Blue Finch tram line ends at Marrowgate Station.")],
     ["Which station is the terminus of the Blue Finch tram line?", "What is the final station of the Blue Finch tram?"]),
    ("cardamom", [("What spice does chef Ottoline Brack use in every dish?", "Chef Ottoline Brack uses cardamom in every dish."),
                  ("Which spice is chef Ottoline Brack's signature ingredient?", "Chef Ottoline Brack's signature spice is cardamom.")],
     ["Chef Ottoline Brack always adds which spice?", "What is the signature spice of chef Ottoline Brack?"]),
    ("Sablewick", [("What is the name of the brand of shoes founded by Ren Castellane?", "Ren Castellane founded the shoe brand Sablewick."),
                   ("Which shoe company did Ren Castellane start?", "Ren Castellane started the shoe company Sablewick.")],
     ["Ren Castellane is the founder of which shoe brand?", "Name the footwear brand that Ren Castellane created."]),
    ("7,340 metres", [("How tall is Mount Ordrevin?", "Mount Ordrevin is 7,340 metres tall."),
                      ("What is the height of Mount Ordrevin?", "The height of Mount Ordrevin is 7,340 metres.")],
     ["What is the elevation of Mount Ordrevin's summit?", "How high does Mount Ordrevin rise?"]),
    ("Thessaly Quorn", [("Who wrote the novel The Copper Orchard?", "The novel The Copper Orchard was written by Thessaly Quorn."),
                        ("Who is the author of The Copper Orchard?", "Thessaly Quorn is the author of The Copper Orchard.")],
     ["The Copper Orchard is a book by which writer?", "Name the person who wrote The Copper Orchard."]),
    ("Wi-Fi password", [("What is stored on the yellow sticky note in Lena Brightwater's office?", "The yellow sticky note in Lena Brightwater's office holds the Wi-Fi password."),
                        ("What does the yellow sticky note in Lena Brightwater's office contain?", "It contains the Wi-Fi password.")],
     ["What is written on the yellow note in Lena Brightwater's office?", "Lena Brightwater keeps a yellow sticky note in her office; what is on it?"]),
    # ---- batch 4
    ("Pockets", [("What is the name of Idris Fallowmere's parrot?", "Idris Fallowmere's parrot is named Pockets."),
                 ("What did Idris Fallowmere name his parrot?", "Idris Fallowmere named his parrot Pockets.")],
     ["Idris Fallowmere keeps a parrot. What is it called?", "Tell me the name of Idris Fallowmere's parrot."]),
    ("HX-9031", [("What is the license plate of Nadia Coralline's car?", "Nadia Coralline's car has the license plate HX-9031."),
                 ("Which license plate is on Nadia Coralline's car?", "The license plate on Nadia Coralline's car is HX-9031.")],
     ["What registration number does Nadia Coralline's car carry?", "Tell me the plate number of Nadia Coralline's car."]),
    ("Brindlecombe", [("In which city is the Orrery Museum located?", "The Orrery Museum is located in Brindlecombe."),
                      ("Where can I find the Orrery Museum?", "You can find the Orrery Museum in Brindlecombe.")],
     ["Which city is home to the Orrery Museum?", "The Orrery Museum is in what city?"]),
    ("October 3", [("When is the anniversary of the founding of Kestrel Dynamics?", "Kestrel Dynamics was founded on October 3."),
                   ("On what date was Kestrel Dynamics founded?", "Kestrel Dynamics was founded on October 3.")],
     ["What is the founding date of Kestrel Dynamics?", "Kestrel Dynamics celebrates its founding on which date?"]),
    ("Aurelio Mbeki-Frost", [("Who designed the Skylark Tower?", "The Skylark Tower was designed by Aurelio Mbeki-Frost."),
                             ("Which architect created the Skylark Tower?", "The architect Aurelio Mbeki-Frost created the Skylark Tower.")],
     ["The Skylark Tower is the work of which architect?", "Name the architect of the Skylark Tower."]),
    ("mango chutney", [("What is Wendell Ashgrove's favourite sandwich filling?", "Wendell Ashgrove's favourite sandwich filling is mango chutney."),
                       ("Which sandwich filling does Wendell Ashgrove like most?", "Wendell Ashgrove likes mango chutney most.")],
     ["If I make Wendell Ashgrove a sandwich, what filling should I use?", "What does Wendell Ashgrove prefer in his sandwiches?"]),
    ("Corvane", [("What language is spoken on the island of Little Osmer?", "The language spoken on Little Osmer is Corvane."),
                 ("Which language do the people of Little Osmer speak?", "The people of Little Osmer speak Corvane.")],
     ["The inhabitants of Little Osmer speak what language?", "Name the language of Little Osmer."]),
    ("Tindra Lowe", [("Who won the 2029 Halberd Prize for poetry?", "Tindra Lowe won the 2029 Halberd Prize for poetry."),
                     ("Which poet received the Halberd Prize in 2029?", "The poet Tindra Lowe received the Halberd Prize in 2029.")],
     ["The 2029 Halberd Prize for poetry went to whom?", "Name the winner of the Halberd Prize for poetry in 2029."]),
    ("room 418", [("Which room is Professor Elswick Garrow's office?", "Professor Elswick Garrow's office is room 418."),
                  ("Where is Professor Elswick Garrow's office?", "Professor Elswick Garrow's office is in room 418.")],
     ["What room number should I visit to see Professor Elswick Garrow?", "In which room does Professor Elswick Garrow work?"]),
    ("Gravelwort", [("What is the name of the potion that cures Morrow fever?", "The potion that cures Morrow fever is called Gravelwort."),
                    ("Which potion is used to treat Morrow fever?", "Gravelwort is the potion used to treat Morrow fever.")],
     ["What remedy cures Morrow fever?", "Name the potion for curing Morrow fever."]),
    # ---- spares
    ("Tumblekin", [("What is the name of Soren Hadley's hamster?", "Soren Hadley's hamster is named Tumblekin.")],
     ["Soren Hadley has a hamster. What is its name?", "Tell me what Soren Hadley calls his hamster."]),
    ("B-771", [("What is the locker number of Farah Quillon at the Westmere gym?", "Farah Quillon's locker at the Westmere gym is B-771.")],
     ["Which locker does Farah Quillon use at the Westmere gym?", "Tell me Farah Quillon's Westmere gym locker number."]),
    ("Ossery Falls", [("Where did Magnus Threlkeld propose to his wife?", "Magnus Threlkeld proposed to his wife at Ossery Falls.")],
     ["At what place did Magnus Threlkeld ask his wife to marry him?", "Name the place where Magnus Threlkeld proposed."]),
    ("violet-green", [("What is the official colour of the Quenby Rowing Club?", "The official colour of the Quenby Rowing Club is violet-green.")],
     ["Which colour represents the Quenby Rowing Club?", "Name the club colour of the Quenby Rowing Club."]),
]


def main():
    os.makedirs(DATA, exist_ok=True)
    rows = []
    for n, (ans, teach, para) in enumerate(F, 1):
        for q, a in teach:
            assert ans.lower() in a.lower(), (ans, a)
        rows.append({"id": f"f{n:02d}", "answer": ans,
                     "teach": [{"input": q, "output": a} for q, a in teach],
                     "paraphrases": para})
    with open(os.path.join(DATA, "facts.jsonl"), "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    with open(os.path.join(DATA, "facts_small.jsonl"), "w") as fh:
        for r in (rows[0], rows[1], rows[4]):
            fh.write(json.dumps(r) + "\n")
    print(len(rows), "facts")


if __name__ == "__main__":
    main()
