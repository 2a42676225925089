"""Drop to live: seconds from a file of 10 facts landing in inbox/ to its checkpoint serving.

Measured as a user lives with memz: a `memzd` already running (its base model
loaded and the anchors' base answers cached), `update_mode: immediate`, a file
of 10 facts (20 teaching examples, from bench/data/facts.jsonl) dropped into
inbox/, and the clock stopped when `status` shows the new checkpoint current.
The baseline, in the same run, is the cold path: `memzd --once` on a fresh
home (start-up, model load and anchors included). Two batches are dropped in
a row, so the second one trains with replay and an existing key memory.

    python bench/live.py                 # the bundled model, default config
    python bench/live.py --base-model PATH --facts 3   # any base, fewer facts
    python bench/live.py --set base_dtype=bf16         # any config override

Prints each phase (training, the checks after training, the rest) from the
checkpoint's own metrics, and the ratio to the cold path.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from knowledge import set_key

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# issue "Real-size models": drop to live with a running daemon, on a 2-core CPU and on a GPU
TARGETS_S = {"cpu": 20.0, "cuda": 5.0}


def make_home(root: Path, args) -> Path:
    subprocess.run([str(BIN / "memzctl"), "init", str(root)], check=True, stdout=subprocess.DEVNULL)
    config = yaml.safe_load((root / "config.yaml").read_text()) or {}
    config["update_mode"] = "immediate"
    if args.base_model:
        config["base_model"] = args.base_model
    for o in args.overrides:
        key, _, value = o.partition("=")
        set_key(config, key, value)
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def facts(n: int, start: int) -> list[dict]:
    rows = [json.loads(line) for line in (REPO / "bench" / "data" / "facts.jsonl").read_text().splitlines()]
    return [t for row in rows[start:start + n] for t in row["teach"]]


def drop(home: Path, name: str, examples: list[dict]) -> None:
    tmp = home / "inbox" / f".{name}.tmp"
    tmp.write_text("".join(json.dumps(e) + "\n" for e in examples))
    os.replace(tmp, home / "inbox" / name)


def state(home: Path, key: str):
    try:
        con = sqlite3.connect(f"file:{home / 'memz.db'}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute("SELECT value FROM state WHERE key = ?", [key]).fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError:
        return None
    return json.loads(row[0]) if row and row[0] and row[0][0] in "{[\"" else (row[0] if row else None)


def metrics(home: Path, checkpoint: str) -> dict:
    con = sqlite3.connect(f"file:{home / 'memz.db'}?mode=ro", uri=True, timeout=5)
    try:
        return json.loads(con.execute("SELECT metrics FROM checkpoints WHERE id = ?", [checkpoint]).fetchone()[0])
    finally:
        con.close()


def wait(condition, what: str, proc: subprocess.Popen | None, timeout: float = 900):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            sys.exit(f"memzd exited ({proc.returncode}) before {what}")
        time.sleep(0.05)
    sys.exit(f"no {what} within {timeout} s")


def cold(root: Path, args) -> float:
    home = make_home(root, args)
    drop(home, "facts.jsonl", facts(args.facts, 0))
    t0 = time.perf_counter()
    subprocess.run([str(BIN / "memzd"), "--home", str(home), "--once"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def warm(root: Path, args) -> tuple[list[dict], dict]:
    """Each batch's figures with a running memzd, and the hardware it named in its state."""
    home = make_home(root, args)
    log = open(root / "memzd.log", "wb")
    proc = subprocess.Popen([str(BIN / "memzd"), "--home", str(home)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait(lambda: (state(home, "activity") or {}).get("text") == "idle", "an idle daemon (anchors ready)", proc)
        runs = []
        for batch in range(args.batches):
            before = state(home, "current_checkpoint")
            drop(home, f"facts{batch}.jsonl", facts(args.facts, batch * args.facts))
            t0 = time.perf_counter()
            now = wait(lambda: (c := state(home, "current_checkpoint")) != before and c, "the new checkpoint", proc)
            seconds = time.perf_counter() - t0
            m = metrics(home, now)
            runs.append({"batch": batch + 1, "drop_to_live_s": round(seconds, 2), "train_s": m.get("train_seconds"),
                         "checks_s": m.get("eval_seconds"), "steps": m.get("steps"), "recall": m.get("recall")})
            print(f"  batch {batch + 1}: drop->live {seconds:.1f} s (training {m.get('train_seconds')} s over "
                  f"{m.get('steps')} steps, checks after training {m.get('eval_seconds')} s, recall {m.get('recall')})",
                  flush=True)
        return runs, state(home, "hardware") or {}
    except SystemExit:
        log.flush()
        print("the daemon's log ends:\n" + (root / "memzd.log").read_text(errors="replace")[-3000:], flush=True)
        raise
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", help="a local folder (default: the home's default, the bundled model)")
    parser.add_argument("--facts", type=int, default=10, help="facts per batch (2 teaching examples each)")
    parser.add_argument("--batches", type=int, default=2, help="batches dropped one after another")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for both homes, e.g. --set base_dtype=bf16 --set training.threads=1")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "live.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="memz-live-") as tmp:
        print("cold: memzd --once on a fresh home (the baseline)", flush=True)
        cold_s = cold(Path(tmp) / "cold", args)
        print(f"  drop->live {cold_s:.1f} s", flush=True)
        print("warm: a running memzd, files dropped one after another", flush=True)
        runs, hardware = warm(Path(tmp) / "warm", args)
    first = runs[0]["drop_to_live_s"]
    target = TARGETS_S.get(hardware.get("backend"))
    verdict = f"target <= {target:g} s: {'met' if first <= target else 'NOT met'}" if target else "no target"
    print(f"\non {hardware.get('device', '?')} ({hardware.get('backend', '?')}, {hardware.get('dtype', '?')}): "
          f"running daemon, batch 1: {first:.1f} s ({verdict}); cold --once {cold_s:.1f} s; "
          f"ratio {first / cold_s:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"hardware": hardware, "cold_s": round(cold_s, 2), "warm": runs}, indent=2))


if __name__ == "__main__":
    main()
