"""Which questions asked in other words are answered as the taught question they
match (`routing.answer_as: taught`), with memz's own gate code (no training).

For each category of bench/data with paraphrases and asides, the keys are built as
route_study builds them; each paraphrase (the same question in other words) and each
aside (a question about the same thing that asks something else) that the gate sends
to the adapter is counted as answered as taught (a cue) or as asked. Paraphrases
should get their cue; asides should not (answered as taught, "How old is my son?"
would be told the school). Then every pair of a taught question (one that may be a
cue) and a paraphrase of it in bench/data, whether or not the gate pairs them; and 18
triples written after `gate.asks_the_same` was built, which it never saw: (taught
question, paraphrase, aside).

Usage: python bench/research/asks_study.py [-v]
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench", "research"))
from memzd import gate, lora  # noqa: E402
from memzd.config import Config  # noqa: E402
from memzd.model import load_base  # noqa: E402
from route_study import DATA, read, taught_keys  # noqa: E402

CATEGORIES = ["personal", "said_updates", "chat", "conversation", "notes"]
HELD_OUT = [  # (taught question, the same in other words, the same thing asked something else)
    ("Where does my aunt Rosa live?", "Which town is my aunt Rosa's home?", "How old is my aunt Rosa?"),
    ("What is my cat's name?", "What did I call my cat?", "What colour is my cat?"),
    ("When is my dentist appointment?", "On which day do I see the dentist?", "Who is my dentist?"),
    ("What is my wifi password?", "Which password does my wifi use?", "Who set up my wifi?"),
    ("Which gym do I go to?", "What is the name of my gym?", "How much does my gym cost?"),
    ("Who is my doctor?", "What is my doctor's name?", "Where is my doctor's surgery?"),
    ("What car does my wife drive?", "Which car is my wife's?", "How fast is my wife's car?"),
    ("Which school does my daughter go to?", "Where does my daughter go to school?", "Who is my daughter's teacher?"),
    ("What is my favourite book?", "Which book do I like best?", "What is my favourite film?"),
    ("When did I move to Berlin?", "In which year did I move to Berlin?", "Why did I move to Berlin?"),
    ("What is my PIN?", "What's my PIN code?", "When did I change my PIN?"),
    ("What is the name of my boat?", "What did I name my boat?", "How long is my boat?"),
    ("Where is the Harlow museum?", "In which city is the Harlow museum?", "When does the Harlow museum open?"),
    ("Who founded the Tessaly orchestra?", "Which person founded the Tessaly orchestra?",
     "Where does the Tessaly orchestra play?"),
    ("What does my brother do for work?", "What is my brother's job?", "Where does my brother work?"),
    ("How many children does my sister have?", "How many kids has my sister got?",
     "What are my sister's children called?"),
    ("What time does my train leave?", "When does my train leave?", "Which platform does my train leave from?"),
    ("What is my son's favourite food?", "Which food does my son like best?", "What is my son's favourite sport?"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-v", action="store_true", help="print every paraphrase answered as asked and every aside "
                    "answered as taught")
    args = ap.parse_args()
    base = load_base("bundled")
    model, tok, dev = lora.wrap(base.model, Config().lora), base.tokenizer, base.device
    empty = gate.KeyMemory.create(model, tok, Config().routing.layer, dev)
    totals = {"paraphrases": [0, 0, 0], "asides": [0, 0, 0]}  # cued, routed, asked
    for cat in CATEGORIES:
        rows = read(cat)
        keys = taught_keys(rows)
        memory = empty.extend(model, tok, keys, dev)
        line = []
        for kind in totals:
            qs = [q for r in rows for q in r.get(kind, [])]
            matched = memory.matches(model, tok, [[{"role": "user", "content": q}] for q in qs], dev)
            cues = [None if k is None else memory.cue(k, q) for q, k in zip(qs, matched)]
            routed = sum(k is not None for k in matched)
            cued = sum(c is not None for c in cues)
            for i, n in enumerate((cued, routed, len(qs))):
                totals[kind][i] += n
            line.append(f"{kind} {cued} of {routed} routed ({len(qs)} asked) answered as taught")
            if args.v:
                for q, k, c in zip(qs, matched, cues):
                    if k is not None and (c is None) == (kind == "paraphrases"):
                        print(f"  [{cat}] {kind}: {q!r} matched {keys[k]!r}"
                              + (", answered as taught" if c else ", answered as asked"))
        print(f"{cat:12s} " + "; ".join(line), flush=True)
    print("total        " + "; ".join(f"{k} {c} of {r} routed ({n})" for k, (c, r, n) in totals.items()))
    pairs = [(q, t) for name in sorted(os.listdir(DATA)) if name.endswith(".jsonl") for r in read(name[:-6])
             for t in (e["input"] for e in r.get("teach", []) if e.get("input")) if gate._cue(t)
             for q in r.get("paraphrases", [])]
    fit = sum(gate.asks_the_same(q, t) for q, t in pairs)
    print(f"every pair   of a taught question and a paraphrase of it in bench/data: {fit} of {len(pairs)} "
          f"ask for the same kind of answer")
    same = sum(gate.asks_the_same(p, t) for t, p, _ in HELD_OUT)
    other = sum(not gate.asks_the_same(a, t) for t, _, a in HELD_OUT)
    print(f"held out     paraphrases answered as taught {same} of {len(HELD_OUT)}; "
          f"asides answered as asked {other} of {len(HELD_OUT)}")
    if args.v:
        for t, p, a in HELD_OUT:
            if not gate.asks_the_same(p, t):
                print(f"  held out paraphrase answered as asked: {p!r} ({t!r})")
            if gate.asks_the_same(a, t):
                print(f"  held out aside answered as taught: {a!r} ({t!r})")


if __name__ == "__main__":
    main()
