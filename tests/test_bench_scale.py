"""bench/scale.py --quick runs end to end on a tiny shape (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_scale_benchmark_writes_its_figures(tmp_path, tiny_model_dir):
    out = tmp_path / "scale.json"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "scale.py"), "--quick", "--tokenizer",
                          str(tiny_model_dir), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["runs"] and all(x["memz_tokens_per_s"] > 0 and x["plain_tokens_per_s"] > 0 for x in r["runs"])
    assert {x["dtype"] for x in r["runs"]} >= {"fp32"} and all(x["load_mib"] >= 0 for x in r["runs"])
