"""Use memz as a new user would, with what people write day to day: a home made with
`memzctl init`, one file of chats, notes and a Q&A dropped into the inbox and
trained by `memzd --once`, then questions written to `requests/` and answered by
a second `memzd --once`. Prints each answer, where it was routed, and whether it
holds the value it should (general questions: the base model's answer is kept).

Week 1's drops and questions were written while looking for what memz gets wrong, so
they are a walk-through, not a held-out measure. Week 2's (two drops, a few days
apart; the second moves a time the first gave) were written and committed (2b2e171)
before memz was run on them: its held-out figure is the first run's, 9 of 19 at
46c3554; memz was changed against it since. Week 3's (the same shape) were written
and committed before memz was run on them, once that was done. Week 4's (the same
shape) were written and committed before memz was run on them, at 882d765, before
the changes made against week 3 in the session after. Week 5's (the same shape)
were written and committed before memz was run on them, once the week-4 changes
were in. bench/knowledge.py is the measure of record.

    python bench/research/everyday_walk.py [--week 1|2|3|4|5] [--keep DIR]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def chat(*turns: str) -> dict:
    roles = ["user", "assistant"] * len(turns)
    return {"messages": [{"role": r, "content": t} for r, t in zip(roles, turns)]}


WEEK1 = [
    chat("Quick one for later: my dentist is Dr. Haverkamp and I see him every March.", "Noted.",
         "Also, my yoga class is on Tuesdays at the Linden hall and my teacher is called Sunniva.", "Got it, thanks."),
    chat("My mother was born in Cork and my father was born in Derry.", "Thanks for telling me."),
    chat("Hi! I'm planning my week. My piano lesson is on Wednesdays with Mrs. Okafor.", "Sounds like a good week.",
         "What should I practise first?", "Start with scales, then the piece you find hardest.",
         "Thanks. Oh, and my son Ewan started at Wexley School this autumn.", "Congratulations to Ewan!"),
    {"text": "The spare house key is under the blue flowerpot. The wifi password is heron42."},
    {"text": "Shopping list for the party: lemons, mint, ice. The party is on Saturday at 7."},
    {"text": "Tuesday 3 Dec\nMet Priya for lunch at the Corrow cafe. She recommended the book Salt Roads. "
             "My bike needs new brakes."},
    {"input": "What is my daughter's middle name?", "output": "Your daughter's middle name is Rosalind."},
]
# (question, a word the answer must hold; None: a general question, the base model's answer kept)
ASK1 = [
    ("Who is my dentist?", "Haverkamp"), ("When do I see my dentist?", "March"),
    ("When is my yoga class?", "Tuesday"), ("Where is my yoga class?", "Linden"),
    ("Who is my yoga teacher?", "Sunniva"), ("Where was my mother born?", "Cork"),
    ("Where was my father born?", "Derry"), ("When is my piano lesson?", "Wednesday"),
    ("Who is my piano teacher?", "Okafor"), ("Which school does my son go to?", "Wexley"),
    ("What is my son's name?", "Ewan"), ("Where is the spare key?", "flowerpot"),
    ("What is the wifi password?", "heron42"), ("When is the party?", "Saturday"),
    ("Who did I have lunch with?", "Priya"), ("Where did I have lunch with Priya?", "Corrow"),
    ("Which book did Priya recommend?", "Salt Roads"), ("What does my bike need?", "brakes"),
    ("What is my daughter's middle name?", "Rosalind"),
    ("What is the capital of Japan?", None), ("What is the capital of France?", None),
    ("Who wrote Pride and Prejudice?", None), ("Where was my grandmother born?", None),
    ("Who is my doctor?", None),
]

WEEK2_MONDAY = [
    chat("Can you help me plan a birthday dinner? My wife Marta turns 40 on the 14th of February.",
         "Of course! Does she have a favourite cuisine?",
         "She loves Thai food, and her favourite restaurant is Baan Suan.", "Baan Suan sounds perfect for it."),
    chat("Ugh, my car failed its inspection. It's at Kessler Motors on Mill Road.", "Sorry to hear that.",
         "They said it needs a new exhaust before it can pass.", "That's a common fix, at least."),
    chat("I started learning Portuguese last month. My tutor is Joana and we meet on Thursday evenings.",
         "Boa sorte! Regular lessons help a lot."),
    chat("My neighbour's dog is called Biscuit and he barks at the postman every morning.", "Poor postman!"),
    {"text": "Gym locker combination: 2719. Locker number 48."},
    {"text": "Book club: the March pick is The Glass Orchard by Lena Moss. We meet at Hugo's flat."},
    {"text": "Called the plumber, Mr. Dunmore. He's coming Friday morning to fix the boiler."},
    {"text": "Note to self: the kids' school play is on the 18th at 6pm in the Ashgrove hall. Leo plays the king."},
    {"input": "What's my employee number?", "output": "Your employee number is 55872."},
]
WEEK2_THURSDAY = [
    chat("The plumber rang. He can't make Friday, he's coming on Monday instead.", "Thanks, I'll remember Monday."),
]
ASK2 = [
    ("When is my wife's birthday?", "February"), ("How old is Marta turning?", "40"),
    ("What is my wife's favourite restaurant?", "Baan Suan"), ("What food does Marta like?", "Thai"),
    ("What's my wife called?", "Marta"), ("Which garage is my car at?", "Kessler"),
    ("What does my car need?", "exhaust"), ("Who is my Portuguese tutor?", "Joana"),
    ("When do I have Portuguese lessons?", "Thursday"), ("What is my gym locker combination?", "2719"),
    ("What is the book club reading in March?", "Glass Orchard"), ("Where does the book club meet?", "Hugo"),
    ("Who is the plumber?", "Dunmore"), ("When is the plumber coming?", "Monday"),
    ("What is my employee number?", "55872"), ("What is my neighbour's dog called?", "Biscuit"),
    ("When is the school play?", "18"), ("Who does Leo play?", "king"), ("Where is the school play?", "Ashgrove"),
    ("What is the capital of Italy?", None), ("Who painted the Mona Lisa?", None),
    ("How many days are in a week?", None), ("Who is my boss?", None), ("What is my sister's name?", None),
    ("What is the boiling point of water?", None),
]
WEEK3_MONDAY = [
    chat("I just got back from the vet with our dog Pip. He has a grass allergy, so he needs tablets every morning.",
         "Poor Pip, I hope the tablets help."),
    chat("My brother Karl is moving to Tromsø in April. He got a job at the university there.", "What an adventure!",
         "Yes! His partner Ines is going with him.", "That's lovely."),
    {"text": "Car insurance renews on 2 June. Policy number: KX-44120."},
    {"text": "Dentist appointment moved to Thursday 10am. Dr. Vos, room 4."},
    {"text": "Mum's new phone number is 0612 889 410. She changed it last week."},
    chat("Can you recommend a book for my flight? I'm flying to Lima on the 21st.", "Try The Overstory.",
         "Thanks, my seat is 14C by the way.", "Enjoy the window view!"),
    {"input": "What's my library card PIN?", "output": "Your library card PIN is 7351."},
    {"text": "Sunday 8 Dec\nWent swimming with Olu at the Harbour baths. The pool closes at 9 on Sundays."},
]
WEEK3_FRIDAY = [chat("Karl called: he's moving in May now, not April.", "Thanks for the update.")]
ASK3 = [
    ("What is my dog's name?", "Pip"), ("What is Pip allergic to?", "grass"),
    ("What does Pip need every morning?", "tablet"), ("Where is my brother moving?", "Troms"),
    ("When is Karl moving?", "May"), ("Where did Karl get a job?", "university"),
    ("Who is Karl's partner?", "Ines"), ("When does my car insurance renew?", "June"),
    ("What is my car insurance policy number?", "KX-44120"), ("When is my dentist appointment?", "Thursday"),
    ("Who is my dentist?", "Vos"), ("What is Mum's phone number?", "889"), ("Where am I flying to?", "Lima"),
    ("When is my flight?", "21"), ("What is my seat number?", "14C"), ("What's my library card PIN?", "7351"),
    ("Who did I go swimming with?", "Olu"), ("Where did I go swimming?", "Harbour"),
    ("When does the pool close on Sundays?", "9"),
    ("What is the capital of Spain?", None), ("Who wrote Romeo and Juliet?", None),
    ("How many legs does a spider have?", None), ("What is my cat's name?", None),
    ("Where does my sister live?", None), ("What colour is the sky?", None),
]
WEEK4_MONDAY = [
    chat("I need a gift idea. My daughter Freya is turning 9 next Saturday and she's obsessed with dinosaurs.",
         "A dinosaur fossil kit could be fun!",
         "Good idea. Her best friend is a girl called Noor, I should invite her too.", "That sounds lovely."),
    chat("Remind me later: my passport expires in October, I need to renew it before the Rome trip.",
         "I'll keep that in mind."),
    chat("We finally picked a name for the boat: Sea Otter. It's moored at Pelham marina.", "Great name!"),
    chat("My landlord is Mr. Abernathy, and the rent is due on the 1st of each month.", "Thanks, noted."),
    {"text": "Doctor: Dr. Lindqvist at the Brookside surgery. Blood test on Wednesday at 8:30, no breakfast."},
    {"text": "Garden: planted tomatoes and basil along the south fence. The apple tree needs pruning in February."},
    {"text": "Wed 11 Dec\nLunch with my old colleague Tomasz. He now works at Fenwick Labs as a chemist."},
    {"text": "Bike lock code 5903. Work badge number T-7781."},
    {"input": "Where did I park at the airport?", "output": "You parked in the long-stay car park, zone D."},
]
WEEK4_THURSDAY = [chat("Small change: Freya's party is on Sunday now, not Saturday, because of the rain forecast.",
                       "Sunday it is.")]
ASK4 = [
    ("How old is Freya turning?", "9"), ("What is my daughter's name?", "Freya"),
    ("What is Freya obsessed with?", "dinosaur"), ("Who is Freya's best friend?", "Noor"),
    ("When is Freya's party?", "Sunday"), ("When does my passport expire?", "October"),
    ("What is my boat called?", "Sea Otter"), ("Where is the boat moored?", "Pelham"),
    ("Who is my landlord?", "Abernathy"), ("When is the rent due?", "1st"), ("Who is my doctor?", "Lindqvist"),
    ("When is my blood test?", "Wednesday"), ("What did I plant along the south fence?", "tomato"),
    ("When does the apple tree need pruning?", "February"), ("Where does Tomasz work?", "Fenwick"),
    ("What does Tomasz do?", "chemist"), ("What is my bike lock code?", "5903"),
    ("What is my work badge number?", "T-7781"), ("Where did I park at the airport?", "zone D"),
    ("What is the capital of Germany?", None), ("Who painted The Starry Night?", None),
    ("How many continents are there?", None), ("What is my son's name?", None),
    ("Where does my landlord live?", None), ("What is the largest planet?", None),
]
WEEK5_MONDAY = [
    chat("My mum's 70th is coming up in June and we're having it at the Old Mill in Ashby.", "How lovely!",
         "My aunt Ruth is flying in from Toronto for it.", "She'll love that."),
    chat("Can you remind me what to bring to the vet? Our cat Miso has her vaccinations on Tuesday at 4.",
         "Bring her vaccination card and a carrier."),
    chat("I switched banks last month. My new bank is Harbour Mutual and my account manager is Dev Patel.",
         "Good to know."),
    {"text": "Piano recital: Saturday 14th, 3pm, St. Anne's church. Mila plays second."},
    {"text": "Car: MOT due in August. The registration is LK19 ZTR."},
    {"text": "Neighbour at no. 12 is Mrs. Okoro. She has our spare key."},
    {"text": "Mon 16 Dec\nFinished the book Wolf Hall. Started learning to knit with my sister Bea."},
    chat("My daughter's teacher is Mr. Halloran and parents' evening is on Thursday.", "Thanks, noted."),
    {"input": "What's my frequent flyer number?", "output": "Your frequent flyer number is QF 8812 4490."},
]
WEEK5_THURSDAY = [chat("Update: Miso's vaccinations got moved to Wednesday at 5.", "Noted, Wednesday at 5.")]
ASK5 = [
    ("When is my mum's 70th?", "June"), ("Where is my mum's party?", "Old Mill"),
    ("Who is flying in from Toronto?", "Ruth"), ("Where is my aunt Ruth flying from?", "Toronto"),
    ("What is my cat's name?", "Miso"), ("When are Miso's vaccinations?", "Wednesday"),
    ("What is my new bank?", "Harbour Mutual"), ("Who is my account manager?", "Dev Patel"),
    ("When is the piano recital?", "Saturday"), ("Where is the piano recital?", "Anne"),
    ("When is my car's MOT due?", "August"), ("What is my car's registration?", "LK19"),
    ("Who lives at number 12?", "Okoro"), ("Who has our spare key?", "Okoro"),
    ("Which book did I finish?", "Wolf Hall"), ("Who am I learning to knit with?", "Bea"),
    ("Who is my daughter's teacher?", "Halloran"), ("When is parents' evening?", "Thursday"),
    ("What is my frequent flyer number?", "8812"),
    ("What is the capital of Canada?", None), ("Who wrote Hamlet?", None), ("How many days are in a year?", None),
    ("What is my dog's name?", None), ("What is my brother's name?", None), ("What is the tallest mountain?", None),
]
WEEKS = {"1": ([WEEK1], ASK1), "2": ([WEEK2_MONDAY, WEEK2_THURSDAY], ASK2), "3": ([WEEK3_MONDAY, WEEK3_FRIDAY], ASK3),
         "4": ([WEEK4_MONDAY, WEEK4_THURSDAY], ASK4), "5": ([WEEK5_MONDAY, WEEK5_THURSDAY], ASK5)}


def drain(home: str) -> None:
    env = {**os.environ, "PYTHONPATH": ROOT}
    subprocess.run([os.path.join(BIN, "memzd"), "--home", home, "--once", "--log-level", "WARNING"],
                   check=True, env=env)


def ask_all(home: str, tag: str, ask: list) -> list[dict]:
    for i, (q, _) in enumerate(ask):
        with open(os.path.join(home, "requests", f"{tag}{i}.json"), "w") as f:
            json.dump({"prompt": q, "max_tokens": 40, "temperature": 0}, f)
    drain(home)
    return [json.load(open(os.path.join(home, "responses", f"{tag}{i}.json"))) for i in range(len(ask))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--week", choices=sorted(WEEKS), default="1", help="which week's drops and questions")
    ap.add_argument("--keep", help="make the home here and keep it")
    args = ap.parse_args()
    home = args.keep or tempfile.mkdtemp(prefix="memz-walk-")
    if args.keep and os.path.exists(home):
        sys.exit(f"{home} exists")
    subprocess.run([os.path.join(BIN, "memzctl"), "--home", home, "init"], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": ROOT})
    drops, ask = WEEKS[args.week]
    base = ask_all(home, "b", ask)  # the base model's answers, before anything is taught
    for n, drop in enumerate(drops):  # each drop trained before the next is made
        with open(os.path.join(home, "inbox", f"day{n}.jsonl"), "w") as f:
            f.writelines(json.dumps(d) + "\n" for d in drop)
        drain(home)
    taught = ask_all(home, "t", ask)
    right = kept = facts = general = 0
    for (q, want), b, t in zip(ask, base, taught):
        said = t["response"].strip().replace("\n", " ")
        ok = (want.lower() in said.lower()) if want else said == b["response"].strip().replace("\n", " ")
        if want:
            facts, right = facts + 1, right + ok
        else:
            general, kept = general + 1, kept + ok
        print(f"{'ok ' if ok else 'NO '} {q} -> {said[:80]!r} ({t['routed_to']})")
    print(f"taught facts answered: {right} of {facts}; general answers kept: {kept} of {general}")
    if not args.keep:
        shutil.rmtree(home)


if __name__ == "__main__":
    main()
