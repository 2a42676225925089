"""Knowledge that sticks: does memz learn new facts, carry them to new phrasings, and forget nothing?

Drives memz exactly as a user would, on a fresh home with the default
config.yaml: teaching files dropped into inbox/, `memzd --once`, questions
written to requests/ and answers read from responses/. For each run it prints

  efficacy     taught questions answered with the taught key
  paraphrase   questions phrased differently, never trained on
  locality     general questions the base model answered well, still answered so
  retention / anchor_ce_delta   as memz itself reported them
  drop->live   wall seconds from the file landing in inbox/ to its checkpoint serving

and writes the figures to a JSON file.

    python bench/knowledge.py                    # 1 batch of 10 facts, then 4 batches of 10 in a row
    python bench/knowledge.py --mode single      # only the single batch
    python bench/knowledge.py --set training.lr=3e-4 --set routing.enabled=false
    python bench/knowledge.py --quick --base-model PATH   # harness check: 3 facts, few steps
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from memzd.evaluator import holds  # noqa: E402

BIN = Path(sys.executable).parent
DATA = REPO / "bench" / "data"


def load_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def set_key(config: dict, dotted: str, raw: str) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = yaml.safe_load(raw)


def memzd_once(home: Path, log) -> float:
    start = time.perf_counter()
    proc = subprocess.run([str(BIN / "memzd"), "--home", str(home), "--once", "--log-level", "INFO"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write(proc.stdout)
    if proc.returncode != 0:
        sys.exit(f"memzd --once failed (exit {proc.returncode}); see {log.name}:\n{proc.stdout[-2000:]}")
    return time.perf_counter() - start


def ask_all(home: Path, questions: list[str], log, max_tokens: int = 48) -> list[str]:
    """Answer every question through requests/ -> responses/ (one memzd --once run)."""
    ids = []
    for q in questions:
        rid = f"b-{uuid.uuid4().hex[:10]}"
        tmp = home / "requests" / f".{rid}.tmp"
        tmp.write_text(json.dumps({"prompt": q, "max_tokens": max_tokens, "temperature": 0}))
        os.replace(tmp, home / "requests" / f"{rid}.json")
        ids.append(rid)
    memzd_once(home, log)
    answers = []
    for rid in ids:
        r = json.loads((home / "responses" / f"{rid}.json").read_text())
        if "error" in r:
            sys.exit(f"request failed: {r['error']}")
        answers.append(r["response"])
        (home / "responses" / f"{rid}.json").unlink()
    return answers


def drop(home: Path, name: str, examples: list[dict]) -> None:
    tmp = home / "inbox" / f".{name}.tmp"
    tmp.write_text("".join(json.dumps(e) + "\n" for e in examples))
    os.replace(tmp, home / "inbox" / name)


def checkpoints(home: Path) -> list[dict]:
    out = subprocess.run([str(BIN / "memzctl"), "--home", str(home), "checkpoints", "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def score(answers: list[str], keys: list[str]) -> float:
    return sum(holds(a, k) for a, k in zip(answers, keys)) / max(len(keys), 1)


def run(mode: str, batches: list[list[dict]], locality: list[dict], overrides: list[str],
        base_model: str | None, keep: Path | None, verbose: bool) -> dict:
    home = Path(tempfile.mkdtemp(prefix=f"memz-bench-{mode}-"))
    subprocess.run([str(BIN / "memzctl"), "init", str(home)], check=True, capture_output=True)
    config = yaml.safe_load((home / "config.yaml").read_text())
    if base_model:
        config["base_model"] = base_model
    for o in overrides:
        key, _, value = o.partition("=")
        set_key(config, key, value)
    (home / "config.yaml").write_text(yaml.safe_dump(config))
    log = open(home / "bench.log", "w")

    print(f"[{mode}] home {home}; asking the base model first", flush=True)
    loc_q = [l["question"] for l in locality]
    all_facts = [f for b in batches for f in b]
    base_answers = ask_all(home, loc_q + [t["input"] for f in all_facts for t in f["teach"]], log)
    base_loc, base_taught = base_answers[:len(loc_q)], base_answers[len(loc_q):]
    known = [(q, l["answer"]) for q, l, a in zip(loc_q, locality, base_loc) if holds(a, l["answer"])]
    base_efficacy = score(base_taught, [f["answer"] for f in all_facts for _ in f["teach"]])

    rounds = []
    for i, batch in enumerate(batches, 1):
        drop(home, f"facts-{i}.jsonl", [t for f in batch for t in f["teach"]])
        live = memzd_once(home, log)
        ck = checkpoints(home)[0]
        seen = [f for b in batches[:i] for f in b]
        taught_q = [t["input"] for f in seen for t in f["teach"]]
        taught_k = [f["answer"] for f in seen for _ in f["teach"]]
        para_q = [p for f in seen for p in f["paraphrases"]]
        para_k = [f["answer"] for f in seen for _ in f["paraphrases"]]
        answers = ask_all(home, taught_q + para_q + [q for q, _ in known], log)
        a_taught, a_para = answers[:len(taught_q)], answers[len(taught_q):len(taught_q) + len(para_q)]
        a_loc = answers[len(taught_q) + len(para_q):]
        m = ck["metrics"]
        r = {"batch": i, "checkpoint": ck["id"], "status": ck["status"], "current": ck["current"],
             "efficacy": score(a_taught, taught_k), "paraphrase": score(a_para, para_k),
             "locality": score(a_loc, [k for _, k in known]),
             "efficacy_this_batch": score(a_taught[-sum(len(f["teach"]) for f in batch):],
                                          taught_k[-sum(len(f["teach"]) for f in batch):]),
             "retention_score": m.get("retention_score"), "anchor_ce_delta": m.get("anchor_ce_delta"),
             "recall": m.get("recall"), "steps": m.get("steps"), "train_seconds": m.get("train_seconds"),
             "drop_to_live_s": round(live, 1)}
        rounds.append(r)
        print(f"[{mode}] batch {i}: efficacy {r['efficacy']:.2f}  paraphrase {r['paraphrase']:.2f}  "
              f"locality {r['locality']:.2f}  retention {_f(r['retention_score'])}  "
              f"ce_delta {_f(r['anchor_ce_delta'])}  drop->live {live:.1f}s  ({r['steps']} steps)", flush=True)
        if verbose:
            for q, a, k in zip(taught_q + para_q + [q for q, _ in known], answers,
                               taught_k + para_k + [k for _, k in known]):
                if not holds(a, k):
                    print(f"    miss: {q!r} -> {a!r} (want {k!r})")
    log.close()
    if keep:
        shutil.copytree(home, keep / home.name, dirs_exist_ok=True)
    shutil.rmtree(home, ignore_errors=True)
    return {"mode": mode, "facts": len(all_facts), "locality_questions": len(known),
            "base_efficacy": base_efficacy, "rounds": rounds, "final": rounds[-1], "overrides": overrides}


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


TARGETS = {"single": {"efficacy": 0.95, "paraphrase": 0.80, "locality": 0.95, "drop_to_live_s": 60},
           "continual": {"efficacy": 0.90, "locality": 0.90}}


def verdict(result: dict) -> list[str]:
    lines = []
    for key, target in TARGETS.get(result["mode"], {}).items():
        value = result["final"][key]
        ok = value <= target if key == "drop_to_live_s" else value >= target
        lines.append(f"  {key:15s} {value:8.2f}  target {'<=' if key == 'drop_to_live_s' else '>='} {target}"
                     f"  {'met' if ok else 'NOT MET'}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["single", "continual", "both"], default="both")
    ap.add_argument("--facts", type=Path, default=DATA / "facts.jsonl")
    ap.add_argument("--locality", type=Path, default=DATA / "locality.jsonl")
    ap.add_argument("--batch-size", type=int, default=10, help="facts per batch")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config.yaml key, e.g. training.lr=3e-4 (repeatable)")
    ap.add_argument("--base-model", help="base model instead of the bundled one")
    ap.add_argument("--quick", action="store_true", help="3 facts, 5 locality questions: checks the harness")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "knowledge.json")
    ap.add_argument("--keep", type=Path, help="copy each run's home here before deleting it")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every missed answer")
    args = ap.parse_args()

    facts, locality = load_jsonl(args.facts), load_jsonl(args.locality)
    modes = ["single", "continual"] if args.mode == "both" else [args.mode]
    if args.quick:
        facts, locality, modes = facts[:3], locality[:5], ["single"]
        args.batch_size = 3
    results = []
    for mode in modes:
        n = 1 if mode == "single" else 4
        batches = [facts[i * args.batch_size:(i + 1) * args.batch_size] for i in range(n)]
        result = run(mode, batches, locality, args.overrides, args.base_model, args.keep, args.verbose)
        results.append(result)
        print(f"\n[{mode}] {result['facts']} facts, {result['locality_questions']} locality questions "
              f"(base model efficacy before teaching: {result['base_efficacy']:.2f})")
        print("\n".join(verdict(result)) + "\n", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "machine": os.uname().machine,
                                    "cpus": os.cpu_count()}, indent=2))
    print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
