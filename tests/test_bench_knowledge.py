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


def test_a_category_over_several_seeds_says_how_many_meet_the_target(tiny_model_dir, tmp_path):
    out = tmp_path / "k.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "knowledge.py"), "--quick", "--base-model", str(tiny_model_dir),
         "--category", "notes", "--seeds", "0", "1", "--set", "training.max_steps=2",
         "--set", "evaluation.anchor_sample=4", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = json.loads(out.read_text())["results"]
    assert [r["seed"] for r in runs] == [0, 1] and all(r["category"] == "notes" for r in runs)
    summary = proc.stdout.split("[notes] over training seeds 0, 1")[1]
    values = [r["figures"]["efficacy"] for r in runs]
    met = sum(v >= 0.85 for v in values)
    assert f"mean {sum(values) / 2:5.2f}  range {min(values):.2f}-{max(values):.2f}" in summary
    assert f"met on {met} of 2" in summary
