"""The null space of a batch's questions about well-known names, measured two ways
on the bundled model in-process: the base model answers them and a second pass
reads the answers (the way before 206ce64), or what it reads is measured as it
writes them (nullspace.Recorder, the daemon's way since). Prints each way's time
(best of --repeats, taken in turn), and the answers' alone; the batch of facts.jsonl's first 10 facts, the
default LoRA layout.

    python bench/research/names_measure_study.py [--repeats 3]
"""
import argparse
import json
import os
import time

import torch

from memzd import lora
from memzd.config import LoraConfig
from memzd.examples import about_others
from memzd.inference import greedy_answers
from memzd.learner import NAMES_ANSWER_TOKENS, NAMES_BATCH
from memzd.model import load_base
from memzd.nullspace import Inputs, Recorder
from memzd.tokens import encode

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_base("bundled")
    model = lora.wrap(base.model, LoraConfig())
    tok = base.tokenizer
    facts = [json.loads(l) for l in open(os.path.join(HERE, "..", "data", "facts.jsonl"))][:10]
    questions = about_others([t["input"] for f in facts for t in f["teach"]], 4)
    chats = [[{"role": "user", "content": q}] for q in questions]

    def read_again() -> Inputs:
        answers = greedy_answers(model, tok, chats, adapter=None, device=base.device,
                                 max_tokens=NAMES_ANSWER_TOKENS, batch_size=NAMES_BATCH)
        texts = [encode({"messages": c + [{"role": "assistant", "content": a}]}, tok, 512)
                 for c, a in zip(chats, answers) if a]
        return Inputs.gather(model, texts, base.device, tok.pad_token_id)

    def as_written() -> Inputs:
        inputs = Inputs({}, {})
        with Recorder(model, inputs, ends={tok.eos_token_id, tok.pad_token_id}):
            greedy_answers(model, tok, chats, adapter=None, device=base.device,
                           max_tokens=NAMES_ANSWER_TOKENS, batch_size=NAMES_BATCH)
        return inputs

    def answers_only() -> None:  # the floor: what neither way can spare
        greedy_answers(model, tok, chats, adapter=None, device=base.device,
                       max_tokens=NAMES_ANSWER_TOKENS, batch_size=NAMES_BATCH)

    times: dict[str, list[float]] = {"read again": [], "as written": [], "answers only": []}
    for _ in range(args.repeats):
        for name, way in (("read again", read_again), ("as written", as_written), ("answers only", answers_only)):
            t0 = time.perf_counter()
            way()
            times[name].append(time.perf_counter() - t0)
    print(f"{len(questions)} questions about well-known names, {args.threads} threads")
    for name, ts in times.items():
        print(f"  {name:12s} best {min(ts):5.2f} s  (each: {', '.join(f'{t:.2f}' for t in ts)})")
    print(f"  ratio {min(times['as written']) / min(times['read again']):.2f}x")


if __name__ == "__main__":
    main()
