"""One batch of the first 10 facts through memz's own daemon, in process, scored on
the taught questions and their paraphrases through the gate (greedy, 48 tokens).

    python bench/research/seed_study.py training.seed=1 [training.lr=3e-3 ...] [--statements]

Prints each miss with where the gate sent it, the checkpoint's steps and recall,
then "efficacy E paraphrase P". --statements also teaches each answer as a bare
{"text"} example. Used for the stop-rule and learning-rate-decay rows of
bench/README.md (seeds 0, 1, 2).
"""
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
from knowledge import BIN, DATA, drop, load_jsonl, set_key  # noqa: E402  (the benchmark's own helpers)

from memzd.config import Home  # noqa: E402
from memzd.daemon import Daemon  # noqa: E402
from memzd.evaluator import holds  # noqa: E402  (the benchmark's scoring rule)
from memzd.inference import greedy_answers  # noqa: E402
from memzd.store import Store  # noqa: E402


def main() -> None:
    facts = load_jsonl(DATA / "facts.jsonl")[:10]
    statements = "--statements" in sys.argv
    overrides = [a for a in sys.argv[1:] if "=" in a]
    home = Path(tempfile.mkdtemp(prefix="memz-seed-")) / "home"
    subprocess.run([str(BIN / "memzctl"), "init", str(home)], check=True, capture_output=True)
    config = yaml.safe_load((home / "config.yaml").read_text())
    for override in overrides:
        set_key(config, *override.split("=", 1))
    (home / "config.yaml").write_text(yaml.safe_dump(config))
    teach = [t for fact in facts for t in fact["teach"]]
    drop(home, "facts.jsonl", teach + ([{"text": t["output"]} for t in teach] if statements else []))
    started = time.time()
    daemon = Daemon(Home(home), once=True)
    daemon.run()
    daemon.store = Store(daemon.home.db_path)  # run() closed it; the model stays loaded
    ckpt = daemon.store.current_checkpoint()
    metrics = daemon.store.checkpoint(ckpt).metrics
    print({k: metrics.get(k) for k in ("steps", "recall", "eval_loss", "finetune_loss")})

    def score(items):
        hits = 0
        for question, key in items:
            chat = [{"role": "user", "content": question}]
            route = daemon.server.route(ckpt, chat)
            answer = greedy_answers(daemon.model, daemon.tokenizer, [chat], adapter=route,
                                    device=daemon.device, max_tokens=48)[0]
            if holds(answer, key):
                hits += 1
            else:
                print(f"  miss [{'adapter' if route else 'base'}] {question!r} -> {answer!r} (want {key})")
        return hits / len(items)

    taught = [(t["input"], f["answer"]) for f in facts for t in f["teach"]]
    paraphrases = [(p, f["answer"]) for f in facts for p in f["paraphrases"]]
    print(f"efficacy {score(taught):.2f} paraphrase {score(paraphrases):.2f} {overrides} "
          f"{time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
