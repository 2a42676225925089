"""bench/speed.py --quick runs end to end and writes its figures (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_speed_benchmark_writes_its_figures(tmp_path):
    out = tmp_path / "speed.json"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "speed.py"), "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(out.read_text())
    t = r["training"]
    for method in ("memz", "memz_fp32", "plain_a_one_per_step_fp32", "plain_b_padded_batch16_fp32"):
        assert t["tokens_per_s"][method] > 0
    assert t["ratio_vs_a"] > 0 and t["ratio_vs_b"] > 0 and t["peak_gflops"]["bf16"] > 0
    assert len(t["loss_auto"]) == len(t["loss_fp32"]) > 0
    assert set(t["lever_gains"]) == {"prefix_cache", "eager_attention", "bf16_weights", "bf16_activations",
                                      "fused_lora", "packing"}
    assert all(g > 0 for g in t["lever_gains"].values())
    a = r["answers"]
    assert a["startup_s"] > 0 and a["idle"]["p50_s"] > 0 and a["direct"]["p50_s"] > 0
    assert a["training"]["p95_s"] > 0 and a["idle_p50_vs_direct"] > 0
    h, c = a["http"], a["concurrent_chat"]
    assert h["p50_s"] > 0 and h["first_token_p50_s"] > 0
    assert c["answered"] == c["clients"] and c["errors"] == []
    i = r["ingestion"]
    assert i["memz"]["rows"] == i["examples"] and i["per_s"] > 0
    assert set(r["commands"]) >= {"python -c pass", "memzctl status", "memzctl checkpoints", "memzctl --version"}
    assert all(c["p50_s"] > 0 for c in r["commands"].values())
    assert "| training tok/s" in run.stdout and "`memzctl status` p50" in run.stdout
