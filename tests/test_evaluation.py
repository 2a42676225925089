"""Forgetting: anchors, per-checkpoint figures, and the three rollback policies."""

import json

import pytest

from memzd.anchors import load_anchors, sample
from memzd.config import EvaluationConfig, Home
from memzd.errors import ConfigError
from memzd.store import Store

from conftest import REPO, drop, run_once, write_config

FACTS = [{"input": "Who is Orla?", "output": "Orla keeps a cat named Biscuit."},
         {"input": "Where is Zorblax?", "output": "Zorblax lives on Mars."}]


def wreck(home, mode):
    """Train with a huge learning rate and routing off, so the adapter answers everything."""
    write_config(home, routing={"enabled": False},
                 training={"lr": 1.0, "max_steps": 6},
                 evaluation={"rollback_mode": mode, "catastrophic_delta": 0.25})


def test_shipped_anchor_set_is_large_and_varied():
    anchors = load_anchors(EvaluationConfig(), Home(REPO))
    assert len(anchors) >= 100
    assert len({a.category for a in anchors}) >= 5
    assert len({a.chat[-1]["content"] for a in anchors}) == len(anchors)


def test_anchor_sample_is_seeded_and_stable():
    anchors = load_anchors(EvaluationConfig(), Home(REPO))
    a, b = sample(anchors, 20, 0), sample(anchors, 20, 0)
    assert [x.chat for x in a] == [x.chat for x in b] and len(a) == 20


def test_anchor_errors_name_the_file_and_line(tmp_path):
    (tmp_path / "anchors").mkdir()
    (tmp_path / "anchors" / "x.jsonl").write_text('{"prompt": "ok"}\n{"nope": 1}\n')
    with pytest.raises(ConfigError, match=r"x.jsonl:2"):
        load_anchors(EvaluationConfig(), Home(tmp_path))
    with pytest.raises(ConfigError, match="anchor_dataset"):
        load_anchors(EvaluationConfig(anchor_dataset="missing/"), Home(tmp_path))


def test_huge_lr_is_rolled_back_and_parent_keeps_serving(home):
    drop(home, "a.jsonl", FACTS[:1])
    run_once(home)
    store = Store(home / "memz.db")
    parent = store.current_checkpoint()
    wreck(home, "auto_rollback")
    drop(home, "b.jsonl", FACTS[1:])
    run_once(home)
    newest = store.checkpoints()[0]
    assert newest.parent == parent
    assert newest.metrics["anchor_ce_delta"] > 0.25
    assert newest.status == "rolled_back" and store.current_checkpoint() == parent
    assert json.loads((home / "checkpoints" / newest.id / "meta.json").read_text())["status"] == "rolled_back"


def test_warn_marks_risky_and_serves(home):
    wreck(home, "warn")
    drop(home, "a.jsonl", FACTS)
    run_once(home)
    store = Store(home / "memz.db")
    (ckpt,) = store.checkpoints()
    assert ckpt.status == "risky" and store.current_checkpoint() == ckpt.id


def test_off_only_records(home):
    wreck(home, "off")
    drop(home, "a.jsonl", FACTS)
    run_once(home)
    store = Store(home / "memz.db")
    (ckpt,) = store.checkpoints()
    assert ckpt.metrics["anchor_ce_delta"] > 0.25
    assert ckpt.status == "stable" and store.current_checkpoint() == ckpt.id


def test_figures_are_recorded_with_a_forgetting_curve(home):
    drop(home, "a.jsonl", FACTS)
    run_once(home)
    store = Store(home / "memz.db")
    (ckpt,) = store.checkpoints()
    m = ckpt.metrics
    assert 0.0 <= m["retention_score"] <= 1.0 and 0.0 <= m["recall"] <= 1.0
    assert m["forgetting_loss"] > 0 and m["eval_loss"] > 0
    assert len(store.curve(ckpt.batch_id, "forgetting_loss")) == 2  # eval_every 2 over 4 steps
    meta = json.loads((home / "checkpoints" / ckpt.id / "meta.json").read_text())
    assert meta["metrics"]["anchor_ce_delta"] == pytest.approx(m["anchor_ce_delta"])
    assert len(meta["curves"]["finetune_loss"]) == 4


def test_no_anchors_means_null_not_zero(home):
    write_config(home, evaluation={"anchor_provider": "none"})
    drop(home, "a.jsonl", FACTS)
    run_once(home)
    (ckpt,) = Store(home / "memz.db").checkpoints()
    for key in ("forgetting_loss", "anchor_ce_delta", "retention_score"):
        assert ckpt.metrics[key] is None


def test_base_answers_to_anchors_are_cached(home, tmp_path):
    drop(home, "a.jsonl", FACTS[:1])
    run_once(home)
    (cache,) = (tmp_path / "cache" / "anchors").glob("anchors-*.json")  # MEMZ_CACHE, per machine
    cached = json.loads(cache.read_text())
    assert len(cached["answers"]) == 6 and "base_ce" in cached
    stamp = cache.stat().st_mtime_ns
    drop(home, "b.jsonl", FACTS[1:])
    run_once(home)
    assert cache.stat().st_mtime_ns == stamp  # reused, not recomputed
