"""Writes growth.jsonl: 300 invented facts for the growth run of bench/knowledge.py.

Ten kinds of fact, 30 of each, about invented people, places and things, with
invented answers (no base model can know them). Each fact has two teaching
examples and two paraphrased questions, in the format of facts.jsonl. The
facts are shuffled with a fixed seed, so batch i of 10 always holds the same
ten facts of mixed kinds.

    python bench/data/make_growth.py        # rewrites bench/data/growth.jsonl
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

FIRST = ["Bel", "Cor", "Dav", "Eld", "Fen", "Gar", "Hal", "Ily", "Jor", "Kes", "Lom", "Mir", "Nev", "Osk",
         "Pell", "Quin", "Ros", "Sev", "Tam", "Ulf", "Var", "Wen", "Yor", "Zan"]
FIRST_END = ["a", "en", "is", "o", "ric", "wyn", "ette", "an", "ild", "ia"]
LAST = ["Ash", "Brack", "Culver", "Dun", "Ever", "Frost", "Gale", "Harrow", "Ivel", "Jess", "Kettle", "Lark",
        "Mallow", "Nettle", "Orrin", "Pryce", "Quarry", "Rook", "Sallow", "Thorn", "Umber", "Vane", "Wick", "Yarrow"]
LAST_END = ["by", "field", "more", "ton", "wood", "well", "shaw", "combe", "ridge", "worth"]
WORD_START = ["Zor", "Quil", "Brin", "Tav", "Mok", "Ferr", "Glim", "Hask", "Jub", "Krel", "Luv", "Mor", "Nix",
              "Pim", "Rav", "Sproc", "Trel", "Vosk", "Wib", "Yl", "Ob", "Drav", "Cless", "Fyn", "Grom", "Istr",
              "Kov", "Plen", "Sker", "Thov"]
WORD_END = ["vath", "mere", "dle", "ova", "ith", "ax", "umbra", "ette", "orn", "ippa", "quay", "esk", "ander",
            "ulk", "iro", "wyck"]
ANIMALS = ["cat", "dog", "parrot", "horse", "goat", "tortoise"]

# (answer kind, teach Q/A pairs, paraphrases): {n} a person or place, {x} the answer, {a} an animal
KINDS = [
    ("word", [("What is the name of {n}'s {a}?", "{n}'s {a} is named {x}."),
              ("What did {n} name their {a}?", "{n} named their {a} {x}.")],
     ["{n} has a pet {a}. What is it called?", "Tell me the name of the {a} that belongs to {n}."]),
    ("code", [("What is the access code for the {n} vault?", "The access code for the {n} vault is {x}."),
              ("Which code opens the {n} vault?", "The {n} vault opens with code {x}.")],
     ["If I want to open the {n} vault, what code do I type?", "Tell me the {n} vault access code."]),
    ("word", [("In which town was {n} born?", "{n} was born in the town of {x}."),
              ("What is {n}'s birthplace?", "{n}'s birthplace is {x}.")],
     ["Which town is {n} originally from?", "Name the town where {n} was born."]),
    ("word", [("What did {n} invent?", "{n} invented the {x}."),
              ("Which device is {n} known for inventing?", "{n} is known for inventing the {x}.")],
     ["What invention is {n} famous for?", "Name the device that {n} invented."]),
    ("person", [("Who is the captain of the ship {n}?", "The captain of the ship {n} is {x}."),
                ("Who commands the ship {n}?", "The ship {n} is commanded by {x}.")],
     ["Which person captains the {n}?", "Name the captain of the vessel {n}."]),
    ("year", [("In what year was the {n} Society founded?", "The {n} Society was founded in {x}."),
              ("When was the {n} Society established?", "The {n} Society was established in {x}.")],
     ["How long ago was the {n} Society set up? Give the year.", "Tell me the founding year of the {n} Society."]),
    ("word", [("Which river flows through the village of {n}?", "The river {x} flows through {n}."),
              ("What is the name of the river in {n}?", "The river in {n} is the {x}.")],
     ["Name the river that runs through {n}.", "The village of {n} lies on which river?"]),
    ("word", [("What is {n}'s favourite dish?", "{n}'s favourite dish is {x}."),
              ("Which dish does {n} like best?", "The dish {n} likes best is {x}.")],
     ["Tell me the dish that {n} loves most.", "If you cook for {n}, which dish should you make?"]),
    ("person", [("Who founded the {n} bakery?", "The {n} bakery was founded by {x}."),
                ("Who started the {n} bakery?", "{x} started the {n} bakery.")],
     ["Name the founder of the {n} bakery.", "Which person opened the {n} bakery?"]),
    ("code", [("What is the flight number to {n}?", "The flight to {n} is flight {x}."),
              ("Which flight goes to {n}?", "Flight {x} goes to {n}.")],
     ["Tell me the number of the flight that goes to {n}.", "I am flying to {n}: what is my flight number?"]),
]


def main() -> None:
    rng = random.Random(300)
    people = [f"{f}{e} {l}{m}" for f, e, l, m in itertools.product(FIRST, FIRST_END, LAST, LAST_END)]
    words = [f"{s}{e}" for s, e in itertools.product(WORD_START, WORD_END)]
    rng.shuffle(people)
    rng.shuffle(words)
    people_it, words_it = iter(people), iter(words)
    codes: set[str] = set()  # years and codes, each used once
    facts = []
    for k, (answer_kind, teach, paraphrases) in enumerate(KINDS):
        for i in range(30):
            subject = next(people_it) if "{n}'s" in teach[0][0] or "was {n}" in teach[0][0] \
                or "did {n}" in teach[0][0] else next(words_it)
            if answer_kind == "word":
                x = next(words_it)
            elif answer_kind == "person":
                x = next(people_it)
            elif answer_kind == "year":
                while (x := str(rng.randint(1702, 1968))) in codes:
                    pass
            else:
                while (x := f"{rng.choice('BCDFHJKLMNPRTVWXZ')}{rng.randint(2, 9)}-{rng.randint(100, 999)}") in codes:
                    pass
            codes.add(x)
            fill = {"n": subject, "x": x, "a": ANIMALS[i % len(ANIMALS)]}
            facts.append({"id": f"g{k:02d}{i:02d}", "answer": x,
                          "teach": [{"input": q.format(**fill), "output": a.format(**fill)} for q, a in teach],
                          "paraphrases": [p.format(**fill) for p in paraphrases]})
    rng.shuffle(facts)
    out = Path(__file__).with_name("growth.jsonl")
    out.write_text("".join(json.dumps(f) + "\n" for f in facts))
    print(f"{len(facts)} facts written to {out}")


if __name__ == "__main__":
    main()
