"""Check that the base model does not already answer the facts (teach questions and
paraphrases should all miss their key). Prints any hit."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA, greedy_batch, hit, load_base, read_jsonl  # noqa: E402


def main():
    facts = read_jsonl(os.path.join(DATA, "facts.jsonl"))
    model, tok = load_base()
    qs = [(q, f["answer"]) for f in facts for q in [t["input"] for t in f["teach"]] + f["paraphrases"]]
    outs = greedy_batch(model, tok, [q for q, _ in qs], 48)
    hits = [(q, o) for (q, k), o in zip(qs, outs) if hit(o, k)]
    for q, o in hits:
        print("HIT", q, "->", o[:80])
    print(f"base model hits {len(hits)} of {len(qs)} fact questions")


if __name__ == "__main__":
    main()
