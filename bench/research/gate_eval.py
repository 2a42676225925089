"""Evaluate gate_reference.route on facts f01-f40: paraphrases must route to the
adapter, locality questions and hard negatives must not. Prints distributions.

Usage: python bench/research/gate_eval.py [--facts 40]
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gate_reference as G  # noqa: E402
from common import DATA, load_base, read_jsonl  # noqa: E402
from prompts_ref import REF_PROMPTS  # noqa: E402

# General questions built like the fact questions (pets, codes, designers...):
# none is about a taught entity, so all must route to the base model.
HARD_NEGATIVES = [
    "What is the name of Harry Potter's owl?",
    "What is the name of Tintin's dog?",
    "Who designed the Eiffel Tower?",
    "Who invented the printing press?",
    "What is the capital of Kenya?",
    "Which city is the capital of Turkey?",
    "In which town was William Shakespeare born?",
    "What is the national flower of Japan?",
    "Which instrument does Yo-Yo Ma play?",
    "Who wrote the novel War and Peace?",
    "What is the height of Mount Kilimanjaro?",
    "When was the Golden Gate Bridge completed?",
    "What is the last stop on the London Underground Central line?",
    "Which language is spoken in Iceland?",
    "Who won the Nobel Prize in Physics in 1921?",
    "What is the license plate format in the United Kingdom?",
    "Where is the Louvre Museum located?",
    "What is your favourite ice cream flavour?",
    "What spice gives curry its yellow colour?",
    "Which shoe company makes Air Jordans?",
    "What does a beekeeper do?",
    "How many books are in the Library of Congress?",
    "What day of the week comes after Wednesday?",
    "What is the serial number on a dollar bill used for?",
    "Who is the mayor of London?",
    "What is the access code for a typical hotel safe?",
    "Where do the Los Angeles Lakers play their home games?",
    "What potion did Asterix drink?",
    "On what date is Christmas celebrated?",
    "What colour is a London taxi traditionally painted?",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", type=int, default=40)
    args = ap.parse_args()
    facts = read_jsonl(os.path.join(DATA, "facts.jsonl"))[: args.facts]
    loc = [r["question"] for r in read_jsonl(os.path.join(DATA, "locality.jsonl"))]
    teach = [t["input"] for f in facts for t in f["teach"]]
    para = [p for f in facts for p in f["paraphrases"]]
    model, tok = load_base()
    t0 = time.perf_counter()
    ref = G.build_reference(G.token_states(model, tok, REF_PROMPTS))
    t1 = time.perf_counter()
    taught = G.compute_keys_for_prompts(model, tok, teach, ref, taught=True)
    for t, k in list(zip(teach, taught))[::2]:
        print('  distinctive:', sorted(k.words), '<-', t)
    t2 = time.perf_counter()
    print(f"reference {len(REF_PROMPTS)} prompts: {t1 - t0:.2f}s; keys for {len(teach)} taught: {t2 - t1:.2f}s")
    for name, qs, want in (("paraphrase", para, True), ("locality", loc, False),
                           ("hard-neg", HARD_NEGATIVES, False), ("teach", teach, True)):
        t = time.perf_counter()
        qk = G.compute_keys_for_prompts(model, tok, qs, ref)
        dt = (time.perf_counter() - t) / len(qs)
        rs = [G.route(k, taught, ref) for k in qk]
        acc = {rule: sum(G.route(k, taught, ref, rule).use_adapter == want for k in qk) for rule in ("lex", "sent", "lex_and_sent", "lex_or_sent")}
        ok = sum(r.use_adapter == want for r in rs)
        ts = torch.tensor([r.lex_score for r in rs])
        sm = torch.tensor([r.sent_margin for r in rs])
        q = lambda x: " ".join(f"{v:.2f}" for v in x.quantile(torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])).tolist())
        print(f"{name:10} correct {ok}/{len(qs)}  {dt * 1000:.0f} ms/query  by rule: {acc}\n"
              f"   lex_score   min/p10/med/p90/max {q(ts)}\n   sent_margin min/p10/med/p90/max {q(sm)}")
        for qq, r in zip(qs, rs):
            if r.use_adapter != want or (want and r.lex_score < 1) or (not want and r.lex_score > 0):
                print(f"   {'WRONG' if r.use_adapter != want else 'near '} lex={r.lex_score:.2f} sent={r.sent_margin:.3f} {qq}"
                      f"  ~ {teach[r.nearest] if r.nearest >= 0 else ''}")


if __name__ == "__main__":
    main()
