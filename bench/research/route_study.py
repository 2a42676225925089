"""Which questions the gate sends to the adapter, category by category, with memz's
own gate code (no training: routing depends only on the frozen base and the keys).

For each category of bench/data, the keys are built as the learner builds them
(the batch expanded with its written questions, `gate.question_text` of each);
taught questions and paraphrases should reach the adapter, neighbours, the 64
locality questions, look-alikes of the facts (gate_eval.HARD_NEGATIVES) and general
first-person questions should not.

Usage: python bench/research/route_study.py [-v]
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from memzd import examples, gate, lora  # noqa: E402
from memzd.config import Config  # noqa: E402
from memzd.model import load_base  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "bench", "research"))
from gate_eval import HARD_NEGATIVES  # noqa: E402  (look-alikes of the taught facts)

DATA = os.path.join(ROOT, "bench", "data")
CATEGORIES = ["facts", "conversation", "chat", "notes", "personal", "corrections", "updates", "said_updates",
              "behaviours"]
# General questions in the first person: a personal key must not take them.
FIRST_PERSON_GENERAL = [
    "How do I boil an egg?", "How do I make a cup of tea?", "What should I cook for dinner tonight?",
    "Can you help me write a letter to my landlord?", "How can I improve my sleep?",
    "What is a good name for my new puppy?", "How do I tell my boss I need a day off?",
    "What should I buy my sister for her birthday?", "How do I learn to play the piano?",
    "What car should I buy as a first car?", "Which city should I visit in Portugal?",
    "How often should I see my dentist?", "What ice cream flavour should I try?",
    "How do I get my son to read more?", "What do I need to open a bank account?",
    "Where can I find a good nurse training course?",
]


def read(name):
    with open(os.path.join(DATA, name + ".jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def said_again(old: list[dict], new: list[dict]) -> list[dict]:
    """What the lineage trains once `new` follows `old`: a statement said again leaves with
    its question asked anew (as memzd.store supersedes it; two Q&As with the same question
    are kept both here)."""
    out, again = [], []
    for o in old:
        found = [r for n in new for r in examples.restated(o, n)]
        rest = examples.without_statements(o, {(r.statement, r.clause) for r in found}) if found else o
        out += [rest] if rest else []
        again += [{"input": r.question, "output": r.answer} for r in found]
    return out + new + again


def taught_keys(rows: list[dict]) -> tuple[list[str], list[str]]:
    """The key texts the learner writes for a category's items, and the example each
    comes from (its content hash): the batch (the later drop after the earlier, as
    superseded) expanded with its written questions."""
    teach = said_again([t for r in rows for t in r.get("teach_old", [])], [t for r in rows for t in r.get("teach", [])])
    expanded = examples.expand_with_sources(teach)
    return ([gate.question_text(c[:-1]) if c else e["text"] for e, _ in expanded for c in [examples.to_chat(e)]],
            [source for _, source in expanded])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-v", action="store_true", help="print every wrong decision")
    args = ap.parse_args()
    base = load_base("bundled")
    model, tok, dev = lora.wrap(base.model, Config().lora), base.tokenizer, base.device
    empty = gate.KeyMemory.create(model, tok, Config().routing.layer, dev)
    general = [r["question"] for r in read("locality")] + FIRST_PERSON_GENERAL + HARD_NEGATIVES
    totals = {}
    for cat in CATEGORIES:
        rows = read(cat)[:10] if cat == "facts" else read(cat)
        keys, sources = taught_keys(rows)
        memory = empty.extend(model, tok, keys, dev, sources=sources)
        want = {"questions": [], "paraphrases": [], "neighbours": [], "general": general}
        for r in rows:
            want["questions"] += r.get("questions", []) + [u["q"] for u in r.get("unseen", [])]
            want["paraphrases"] += r.get("paraphrases", [])
            want["neighbours"] += r.get("neighbours", [])
        line = []
        for kind, qs in want.items():
            if not qs:
                continue
            routed = memory.admits_many(model, tok, [[{"role": "user", "content": q}] for q in qs], dev)
            good = [r == (kind in ("questions", "paraphrases")) for r in routed]
            totals.setdefault(kind, [0, 0])
            totals[kind][0] += sum(good)
            totals[kind][1] += len(good)
            line.append(f"{kind} {sum(good)}/{len(good)}")
            if args.v:
                for q, ok in zip(qs, good):
                    if not ok:
                        lex, m = memory.scores(model, tok, q, dev)
                        print(f"  [{cat}] wrong ({kind}): lex {lex:.2f} margin {m:+.3f}  {q}")
        print(f"{cat:12s} " + ", ".join(line), flush=True)
    print("total        " + ", ".join(f"{k} {a}/{b}" for k, (a, b) in totals.items()))


if __name__ == "__main__":
    main()
