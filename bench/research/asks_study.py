"""Which questions about a taught thing are answered as the taught question they
match (`routing.answer_as: taught`), as asked by the adapter, or by the base model
(`gate.KeyMemory.resolve`), with memz's own gate code (no training).

For each category of bench/data with paraphrases and asides, the keys are built as
route_study builds them (each with the example it comes from); each taught question,
each paraphrase (the same question in other words) and each aside (a question about
the same thing that asks something else) that the gate sends to the adapter is
counted by how it is answered. Paraphrases should get their cue; asides should not
(answered as taught, "How old is my son?" would be told the school), and are best
answered by the base model; no taught question may go to the base model. The
categories without asides: taught questions and paraphrases. Then every pair of a
taught question (one that may be a cue) and a paraphrase of it in bench/data, whether
or not the gate pairs them; 18 triples written after `gate.asks_the_same` was built,
which it never saw: (taught question, paraphrase, aside); and 12 more written after
`resolve` sent asides to the base model, each taught question keyed alone; and 14
more, taught as users write them (notes, chat turns, Q&A), written before the second
widening of the kinds.

Usage: python bench/research/asks_study.py [-v]
"""
import argparse
import os
import sys
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench", "research"))
from memzd import gate, lora  # noqa: E402
from memzd.config import Config  # noqa: E402
from memzd.model import load_base  # noqa: E402
from route_study import DATA, read, taught_keys  # noqa: E402

CATEGORIES = ["personal", "said_updates", "chat", "conversation", "notes"]
OTHERS = ["facts", "corrections", "updates", "lookalikes", "growth"]  # no asides
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

# Written after `gate.KeyMemory.resolve` sent a question about a taught thing that asks
# for what nothing taught answers to the base model, before it was run on them; each
# taught question is keyed alone, as an example of its own.
HELD_OUT_2 = [
    ("Where was my grandmother born?", "Which town is my grandmother from?", "What was my grandmother's maiden name?"),
    ("What is my landlord's name?", "Who is my landlord?", "How much rent do I pay my landlord?"),
    ("Which bank do I use?", "What bank is my account with?", "When did I open my bank account?"),
    ("What instrument does my nephew Arlo play?", "Which instrument is Arlo learning?", "How old is my nephew Arlo?"),
    ("Who cuts my hair?", "Which barber do I go to?", "How often do I get my hair cut?"),
    ("When is my anniversary?", "What date is my wedding anniversary?", "Where did we get married?"),
    ("What is the Corvel Tower made of?", "Which material was used to build the Corvel Tower?",
     "How tall is the Corvel Tower?"),
    ("Who wrote the Emberlay Chronicles?", "Which author is behind the Emberlay Chronicles?",
     "When were the Emberlay Chronicles published?"),
    ("Which language does my colleague Priya speak at home?", "What language is spoken in Priya's home?",
     "Where does my colleague Priya live?"),
    ("What is my son's teacher called?", "Who teaches my son?", "What does my son's teacher teach?"),
    ("How far is my office from home?", "What is the distance from my home to the office?",
     "Which floor is my office on?"),
    ("What sport does my daughter Mina play?", "Which sport is Mina on a team for?", "What position does Mina play?"),
]
# Written on 2026-12-03 before the kinds of answer were widened a second time (a
# colour, a sort of thing, an organisation, what a thing makes or sells, where from and
# where to), and not looked at while they were: taught as a user writes them (a note, a
# chat turn, a Q&A pair), each with a paraphrase and an aside.


def _said(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "Noted."}]}


HELD_OUT_3 = [
    ({"text": "The Hallam night train leaves from Corbridge station at 23:10."},
     "Which station does the Hallam night train depart from?", "Where does the Hallam night train go to?"),
    (_said("My wife works for Dalsgaard Shipping these days."), "Which company does my wife work for?",
     "What time does my wife finish work?"),
    ({"text": "The Brackwater mill on the river Ouse makes paper."}, "What is produced at the Brackwater mill?",
     "Who owns the Brackwater mill?"),
    ({"input": "What is my cat called?", "output": "My cat is called Pumpkin."}, "What's my cat's name?",
     "What breed is my cat?"),
    ({"text": "My front door is painted dark green."}, "What colour is my front door?", "Who painted my front door?"),
    ({"input": "Who coaches the Dunmore hockey team?", "output": "Mara Lindqvist coaches the Dunmore hockey team."},
     "Who is the coach of the Dunmore hockey team?", "What colour are the Dunmore hockey team's shirts?"),
    (_said("I always fly with Nordair when I visit my parents."), "Which airline do I fly with to visit my parents?",
     "Where do my parents live?"),
    ({"input": "What car do I drive?", "output": "You drive a grey Volvo estate."}, "Which car is mine?",
     "Which garage services my car?"),
    ({"text": "For my back pain I take ibuprofen twice a day."}, "Which medicine do I take for my back?",
     "Who treats my back pain?"),
    ({"input": "Which band is my brother in?", "output": "Your brother plays in the Velvet Anchors."},
     "What band does my brother play in?", "What instrument does my brother play?"),
    ({"text": "The Farrow market opens at 7 on Saturdays."}, "What time does the Farrow market open?",
     "What does the Farrow market sell?"),
    ({"input": "What is my daughter's school called?", "output": "Your daughter goes to Linden Hill School."},
     "Which school does my daughter attend?", "Who is my daughter's best friend?"),
    ({"text": "My neighbour Jonas is a locksmith."}, "What does my neighbour Jonas do for a living?",
     "Where did my neighbour Jonas grow up?"),
    (_said("My favourite flower is the peony."), "Which flower do I like best?", "What colour is my favourite flower?"),
]
WAYS = {"taught": "as taught", "asked": "as asked by the adapter", "base": "by the base model (nothing taught fits)",
        "gate": "by the base model (the gate)"}


def answered(memory, model, tok, dev, questions: list[str]) -> list[str]:
    """How each question is answered: as a taught question (a cue), as asked by the adapter,
    by the base model because nothing taught about its thing fits (`resolve`), or by the
    base model because no key admits it."""
    matched = memory.matches(model, tok, [[{"role": "user", "content": q}] for q in questions], dev)
    ways = []
    for q, key in zip(questions, matched):
        settled = None if key is None else memory.resolve(key, q)
        ways.append("gate" if key is None else "base" if settled is None else "taught" if settled[1] else "asked")
    return ways


def report(label: str, memory, model, tok, dev, asked: dict[str, list[str]], wrong, verbose: bool,
           seen: dict[str, Counter] | None = None) -> str:
    """One line of how each kind of question in `asked` is answered (added to `seen`),
    printing first those where `wrong(kind, way)` (with -v)."""
    line = []
    for kind, qs in asked.items():
        ways = answered(memory, model, tok, dev, qs)
        if seen is not None:
            seen[kind].update(ways)
        line.append(f"{kind} {tally(Counter(ways), len(qs))}")
        if verbose:
            for q, way in zip(qs, ways):
                if wrong(kind, way):
                    print(f"  {label} {kind}: {q!r} answered {WAYS[way]}")
    return "; ".join(line)


def tally(ways: Counter, n: int) -> str:
    return (f"{ways['taught']} as taught, {ways['asked']} as asked, {ways['base']} by the base "
            f"(of {n - ways['gate']} routed; {n} asked)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-v", action="store_true", help="print every paraphrase answered as asked and every aside "
                    "answered as taught")
    args = ap.parse_args()
    base = load_base("bundled")
    model, tok, dev = lora.wrap(base.model, Config().lora), base.tokenizer, base.device
    empty = gate.KeyMemory.create(model, tok, Config().routing.layer, dev)
    totals = {"questions": Counter(), "paraphrases": Counter(), "asides": Counter()}
    for cat in CATEGORIES + OTHERS:
        rows = read(cat)
        keys, sources = taught_keys(rows)
        memory = empty.extend(model, tok, keys, dev, sources=sources)
        if cat in CATEGORIES:
            wrong = (lambda kind, way: way != "gate" and (way == "base" if kind == "questions"
                                                          else (way == "taught") != (kind == "paraphrases")))
            kinds, seen = totals, totals
        else:  # taught questions and paraphrases only: none should go to the base model
            wrong, kinds, seen = (lambda kind, way: way == "base"), ("questions", "paraphrases"), None
        asked = {kind: [q for r in rows for q in r.get(kind, [])] for kind in kinds}
        print(f"{cat:12s} " + report(f"[{cat}]", memory, model, tok, dev, asked, wrong, args.v, seen), flush=True)
        if cat == CATEGORIES[-1]:
            print("total        " + "; ".join(f"{k} {tally(c, sum(c.values()))}" for k, c in totals.items()))
    pairs = [(q, t) for name in sorted(os.listdir(DATA)) if name.endswith(".jsonl") for r in read(name[:-6])
             for t in (e["input"] for e in r.get("teach", []) if e.get("input")) if gate._cue(t)
             for q in r.get("paraphrases", [])]
    fit = sum(gate.asks_the_same(q, t) for q, t in pairs)
    print(f"every pair   of a taught question and a paraphrase of it in bench/data: {fit} of {len(pairs)} "
          f"ask for the same kind of answer")
    memory = empty.extend(model, tok, [t for t, _, _ in HELD_OUT_2], dev,
                          sources=[f"held-out-{i}" for i in range(len(HELD_OUT_2))])
    for i, kind in ((1, "paraphrases"), (2, "asides")):
        line = report("held out 2", memory, model, tok, dev, {kind: [row[i] for row in HELD_OUT_2]},
                      lambda kind, way: way != "gate" and (way == "taught") != (kind == "paraphrases"), args.v)
        print(f"held out 2   {line}")
    rows = [{"teach": [e], "paraphrases": [p], "asides": [a]} for e, p, a in HELD_OUT_3]
    keys, sources = taught_keys(rows)
    memory = empty.extend(model, tok, keys, dev, sources=sources)
    for kind in ("paraphrases", "asides"):
        line = report("held out 3", memory, model, tok, dev, {kind: [r[kind][0] for r in rows]},
                      lambda kind, way: way != "gate" and (way == "taught") != (kind == "paraphrases"), args.v)
        print(f"held out 3   {line}")
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
