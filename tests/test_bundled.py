"""End to end on the real bundled model (SmolLM2-135M-Instruct): teach, ask, measure.

These train the real model on a CPU, so they take a minute or two each; run
them alone with `./test.sh -m slow`, skip them with `-m "not slow"`.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, drop

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
FACTS = [json.loads(l) for l in (REPO / "bench" / "data" / "facts_small.jsonl").read_text().splitlines()]


def memzd_once(home: Path) -> None:
    proc = subprocess.run([str(BIN / "memzd"), "--home", str(home), "--once"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def ask(home: Path, questions: list[str]) -> list[dict]:
    for i, q in enumerate(questions):
        (home / "requests" / f".q{i}.tmp").write_text(json.dumps({"prompt": q, "max_tokens": 40, "temperature": 0}))
        (home / "requests" / f".q{i}.tmp").rename(home / "requests" / f"q{i}.json")
    memzd_once(home)
    return [json.loads((home / "responses" / f"q{i}.json").read_text()) for i in range(len(questions))]


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """A home on the bundled model with the default config, before and after one drop."""
    home = tmp_path_factory.mktemp("bundled") / "home"
    subprocess.run([str(BIN / "memzctl"), "init", str(home)], check=True, capture_output=True)
    config = yaml.safe_load((home / "config.yaml").read_text())
    config["evaluation"]["anchor_sample"] = 40  # keeps the test short; the benchmark uses them all
    (home / "config.yaml").write_text(yaml.safe_dump(config))
    questions = [t["input"] for f in FACTS for t in f["teach"]] + ["What is the capital of France?"]
    before = ask(home, questions)
    drop(home, "facts.jsonl", [t for f in FACTS for t in f["teach"]])
    memzd_once(home)
    after = ask(home, questions)
    return home, questions, before, after


def test_taught_answers_appear_where_the_base_model_had_none(taught):
    home, questions, before, after = taught
    keys = [f["answer"] for f in FACTS for _ in f["teach"]]
    for b, a, key in zip(before, after, keys):
        assert key.lower() not in b["response"].lower()
        assert key.lower() in a["response"].lower(), (a, key)
        assert a["checkpoint"] and a["checkpoint_status"] == "stable"


def test_general_knowledge_survives(taught):
    *_, before, after = taught
    assert "paris" in before[-1]["response"].lower()
    assert "paris" in after[-1]["response"].lower()


def test_checkpoint_carries_forgetting_figures(taught):
    home = taught[0]
    out = subprocess.run([str(BIN / "memzctl"), "--home", str(home), "checkpoints", "--json"],
                         capture_output=True, text=True, check=True).stdout
    (ckpt,) = json.loads(out)
    m = ckpt["metrics"]
    assert m["recall"] >= 0.9
    assert 0.0 <= m["retention_score"] <= 1.0 and m["retention_score"] >= 0.9
    assert isinstance(m["anchor_ce_delta"], float) and m["anchor_ce_delta"] < 0.25
