"""Write bench/data/locality.jsonl: questions the base model already answers.

Runs the base model greedily (max_new_tokens 48) on each candidate and keeps only
those whose answer contains the key (case-insensitive). Prints the dropped ones.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA, greedy, hit, load_base  # noqa: E402

CANDIDATES = [
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital city of Italy?", "Rome"),
    ("Which city is the capital of Germany?", "Berlin"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of Canada?", "Ottawa"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of Russia?", "Moscow"),
    ("What is the capital of the United Kingdom?", "London"),
    ("What is the capital of China?", "Beijing"),
    ("What is the capital of Greece?", "Athens"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"),
    ("Who wrote the play Hamlet?", "Shakespeare"),
    ("Who painted the Mona Lisa?", "Leonardo"),
    ("Who developed the theory of relativity?", "Einstein"),
    ("Who was the first president of the United States?", "Washington"),
    ("Who discovered penicillin?", "Fleming"),
    ("What is the chemical symbol for gold?", "Au"),
    ("What is the chemical formula for water?", "H2O"),
    ("What gas do plants absorb from the air for photosynthesis?", "carbon dioxide"),
    ("What is the largest planet in our solar system?", "Jupiter"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("What is the closest star to Earth?", "Sun"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("What is the longest river in Africa?", "Nile"),
    ("On which continent is Brazil?", "South America"),
    ("What is the tallest mountain in the world?", "Everest"),
    ("How many days are in a week?", "seven"),
    ("How many legs does a spider have?", "eight"),
    ("How many continents are there?", "seven"),
    ("What is 2 + 2?", "4"),
    ("What is 7 plus 8?", "15"),
    ("What is 9 times 9?", "81"),
    ("What is 3 times 4?", "12"),
    ("What is 5 times 6?", "30"),
    ("What is 10 minus 3?", "7"),
    ("What is 100 divided by 4?", "25"),
    ("What is the square root of 81?", "9"),
    ("What is 12 plus 15?", "27"),
    ("What is the freezing point of water in Celsius?", "0"),
    ("What is the boiling point of water in Celsius?", "100"),
    ("What language is mainly spoken in Brazil?", "Portuguese"),
    ("What language is spoken in Mexico?", "Spanish"),
    ("What currency is used in Japan?", "yen"),
    ("What currency is used in the United Kingdom?", "pound"),
    ("What is the primary language spoken in Germany?", "German"),
    ("What animal is known as the king of the jungle?", "lion"),
    ("What is the largest mammal on Earth?", "whale"),
    ("What do bees make?", "honey"),
    ("What color is the sky on a clear day?", "blue"),
    ("What color are bananas when they are ripe?", "yellow"),
    ("What is the opposite of hot?", "cold"),
    ("What is the opposite of 'up'?", "down"),
    ("What is the plural of 'mouse'?", "mice"),
    ("What organ pumps blood through the human body?", "heart"),
    ("What is the hardest natural substance?", "diamond"),
    ("How many hours are in a day?", "24"),
    ("How many minutes are in an hour?", "60"),
    ("Which programming language is named after a snake?", "Python"),
    ("What does CPU stand for?", "Central Processing Unit"),
    ("What is the main ingredient in guacamole?", "avocado"),
    ("Which month comes after January?", "February"),
    ("In which country are the pyramids of Giza?", "Egypt"),
    ("In which country is the Eiffel Tower?", "France"),
    ("In which city is the Statue of Liberty?", "New York"),
    ("What is the largest country in the world by area?", "Russia"),
    ("What is the currency of the United States?", "dollar"),
    ("Who invented the telephone?", "Bell"),
    ("What is the speed of light approximately in km per second?", "300"),
    ("How many sides does a triangle have?", "three"),
    ("How many sides does a hexagon have?", "six"),
    ("What is the main gas in the Earth's atmosphere?", "nitrogen"),
    ("Translate 'hello' into Spanish.", "hola"),
    ("Translate 'thank you' into French.", "merci"),
    ("What is the capital of Australia?", "Canberra"),
    ("Which animal says 'moo'?", "cow"),
    ("What is frozen water called?", "ice"),
    ("What do caterpillars turn into?", "butterfl"),
    ("Who wrote the Harry Potter books?", "Rowling"),
    ("Who composed the Fifth Symphony that begins with four famous notes?", "Beethoven"),
    ("What is the capital of Portugal?", "Lisbon"),
    ("What is the capital of Ireland?", "Dublin"),
    ("What is the capital of South Korea?", "Seoul"),
    ("What is the capital of India?", "New Delhi"),
    ("Which ocean lies between Europe and North America?", "Atlantic"),
    ("What is the chemical symbol for sodium?", "Na"),
    ("What is the chemical symbol for iron?", "Fe"),
    ("Who was the first person to walk on the Moon?", "Armstrong"),
    ("What is the name of our galaxy?", "Milky Way"),
    ("What is the natural satellite of the Earth called?", "Moon"),
    ("Which instrument has 88 keys?", "piano"),
    ("What is the past tense of 'go'?", "went"),
    ("What is the opposite of 'big'?", "small"),
    ("In which country is the city of Venice?", "Italy"),
    ("What is H2O commonly known as?", "water"),
    ("Who wrote 'Pride and Prejudice'?", "Austen"),
    ("What is the largest desert in the world?", "Sahara"),
]


def main():
    model, tok = load_base()
    verbose = "-v" in sys.argv
    kept, dropped = [], []
    for q, key in CANDIDATES:
        out = greedy(model, tok, q)
        (kept if hit(out, key) else dropped).append((q, key, out))
        if verbose and hit(out, key):
            print("KEEP", q, "|", key, "|", out.replace("\n", " ")[:90])
    with open(os.path.join(DATA, "locality.jsonl"), "w") as fh:
        for q, key, _ in kept:
            fh.write(json.dumps({"question": q, "answer": key}) + "\n")
    for q, key, out in dropped:
        print("DROP", q, "|", key, "|", out.replace("\n", " ")[:100])
    print(f"kept {len(kept)} of {len(CANDIDATES)}")


if __name__ == "__main__":
    main()
