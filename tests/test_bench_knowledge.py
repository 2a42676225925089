"""The knowledge benchmark's harness works end to end (on the tiny model: figures, not targets)."""

import json
import subprocess
import sys

from conftest import REPO


def test_quick_knowledge_benchmark_writes_its_figures(tiny_model_dir, tmp_path):
    out = tmp_path / "k.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "knowledge.py"), "--quick", "--base-model", str(tiny_model_dir),
         "--set", "training.max_steps=2", "--set", "evaluation.anchor_sample=4", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())["results"][0]
    final = result["final"]
    for key in ("efficacy", "paraphrase", "locality", "retention_score", "anchor_ce_delta", "drop_to_live_s"):
        assert key in final
    assert 0.0 <= final["efficacy"] <= 1.0 and final["drop_to_live_s"] > 0
    assert final["checkpoint"].startswith("A_") and "efficacy" in proc.stdout
