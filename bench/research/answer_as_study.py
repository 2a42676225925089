"""The three ways the adapter answers a question asked in other words than taught
(`routing.answer_as`: taught, recited, asked), on the same checkpoint.

Takes homes kept by `bench/knowledge.py --keep DIR` (one per category; the category
is read from the home's name) and answers every question and paraphrase of that
category's data greedily through memz's own Answerer, once per way, with the
home's current checkpoint. Printed per home and way: how many the adapter answered,
how many of those it answered as a taught question (`answered_as`), and the share
right by kind (an aside, a question about the same thing asking something else, is
right when it does not give the taught answer) (`-v`: every answer that differs between the ways).

Usage: python bench/knowledge.py --category said_updates chat --keep /tmp/kept
       python bench/research/answer_as_study.py /tmp/kept/memz-bench-* [-v]
"""
import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from memzd import lora  # noqa: E402
from memzd.adapters import Adapters  # noqa: E402
from memzd.config import Home, load_config  # noqa: E402
from memzd.evaluator import holds  # noqa: E402
from memzd.model import load_base_for  # noqa: E402
from memzd.queries import Answerer, Question  # noqa: E402
from memzd.store import Store  # noqa: E402

WAYS = ("taught", "recited", "asked")
DATA = Path(ROOT) / "bench" / "data"


def right_of(kind: str, response: str, want: str) -> bool:
    """A taught question or paraphrase is right when it gives the answer; an aside (the same
    thing, asked something else) when it does not."""
    return holds(response, want) != (kind == "asides")


def category(home: Path) -> str:
    return home.name.removeprefix("memz-bench-").rsplit("-", 1)[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("homes", nargs="+", type=Path)
    ap.add_argument("-v", action="store_true", help="print every answer that differs between the ways")
    args = ap.parse_args()
    for path in args.homes:
        cat = category(path)
        rows = [json.loads(line) for line in (DATA / f"{cat}.jsonl").read_text().splitlines() if line.strip()]
        probes = [(kind, q, r["answer"]) for r in rows
                  for kind, qs in (("efficacy", r.get("questions", [])), ("paraphrase", r.get("paraphrases", [])),
                                   ("asides", r.get("asides", [])))
                  for q in qs]
        home = Home(path.resolve())
        config = load_config(home.config_path)
        store = Store(home.db_path)
        base = load_base_for(config)
        model = lora.wrap(base.model, config.lora)
        said = {}
        for way in WAYS:
            adapters = Adapters(home, store, model, base.tokenizer, base.device, base.name,
                                dataclasses.replace(config.routing, answer_as=way))
            answerer = Answerer(home, store, adapters, config.daemon.max_request_bytes,
                                config.daemon.max_prompt_tokens)
            said[way] = [answerer.answer(Question(f"q{i}", [{"role": "user", "content": q}], 48, 0.0))
                         for i, (_, q, _) in enumerate(probes)]
        print(f"{cat} ({path.name}, checkpoint {said['asked'][0]['checkpoint']}):")
        for way in WAYS:
            routed = sum(p["routed_to"] == "adapter" for p in said[way])
            cued = sum("answered_as" in p for p in said[way])
            right = {kind: [right_of(k, p["response"], want) for (k, _, want), p in zip(probes, said[way]) if k == kind]
                     for kind in ("efficacy", "paraphrase", "asides")}
            print(f"  {way:8s} adapter {routed}/{len(probes)}, answered as taught {cued}; " + ", ".join(
                f"{kind} {sum(v) / len(v):.2f} of {len(v)}" for kind, v in right.items() if v))
        if args.v:
            for i, (kind, q, want) in enumerate(probes):
                texts = {way: said[way][i]["response"] for way in WAYS}
                if len(set(texts.values())) > 1:
                    print(f"    ({kind}) {q!r} want {want!r}: " + " | ".join(
                        f"{way} {'ok' if right_of(kind, t, want) else 'no'} {t[:60]!r}" for way, t in texts.items()))


if __name__ == "__main__":
    main()
