"""Can the base model write the questions about a statement? (the issue's other way
than memz's rules). Asks the bundled model for one question about each statement of
bench/data/conversation.jsonl and notes.jsonl, zero-shot and with four worked
examples in the chat, greedy, and prints what it wrote beside the rules' questions.

Usage: python bench/research/written_questions.py
"""
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from memzd import examples  # noqa: E402
from memzd.model import load_base  # noqa: E402

SHOTS = [("My brother has three dogs.", "How many dogs does my brother have?"),
         ("I grew up in a small town called Arden.", "Which town did I grow up in?"),
         ("My wife works as a teacher.", "What is my wife's job?"),
         ("The Hollin library closes at six.", "When does the Hollin library close?")]


def zero_shot(s):
    return [{"role": "user", "content": f'Write one short question that is answered by this sentence: "{s}"'}]


def few_shot(s):
    msgs = []
    for fact, question in SHOTS:
        msgs += [{"role": "user", "content": f"Fact: {fact}\nWrite a question about this fact."},
                 {"role": "assistant", "content": question}]
    return msgs + [{"role": "user", "content": f"Fact: {s}\nWrite a question about this fact."}]


def main():
    base = load_base("bundled")
    model, tok = base.model, base.tokenizer
    tok.padding_side = "left"
    rows = []
    for name in ("conversation", "notes"):
        with open(os.path.join(ROOT, "bench", "data", name + ".jsonl")) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    stated = [s for r in rows for t in r["teach"] for s in examples.statements(t)]
    for label, build in (("zero-shot", zero_shot), ("four examples", few_shot)):
        texts = [tok.apply_chat_template(build(s), tokenize=False, add_generation_prompt=True) for s in stated]
        enc = tok(texts, return_tensors="pt", padding=True)
        t0 = time.time()
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=20, do_sample=False,
                                 pad_token_id=tok.pad_token_id or tok.eos_token_id)
        print(f"{label}: {len(stated)} statements in {time.time() - t0:.1f} s")
        for s, o in zip(stated, out):
            written = tok.decode(o[enc.input_ids.shape[1]:], skip_special_tokens=True)
            rules = [q for q, _, _ in examples.questions_about(s)]
            print(f"  {s}\n    model: {written}\n    rules: {rules}")


if __name__ == "__main__":
    main()
