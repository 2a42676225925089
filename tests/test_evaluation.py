"""Forgetting: anchors, per-checkpoint figures, and the three rollback policies."""

import json

import pytest

from memzd.anchors import load_anchors, sample
from memzd.config import EvaluationConfig, Home
from memzd.errors import ConfigError
from memzd.evaluator import verdict, verdict_reasons
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
    for key in ("forgetting_loss", "anchor_ce_delta", "retention_score",
                "adapter_forgetting_loss", "adapter_anchor_ce_delta", "adapter_retention_score"):
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
    write_config(home, base_dtype="bf16")  # another precision answers otherwise: its own entry
    drop(home, "c.jsonl", FACTS[:1])
    run_once(home)
    assert len(list((tmp_path / "cache" / "anchors").glob("anchors-*.json"))) == 2


def test_the_adapter_is_measured_alone_as_well_as_through_the_gate(home):
    drop(home, "a.jsonl", FACTS)
    run_once(home)
    (ckpt,) = Store(home / "memz.db").checkpoints()
    m = ckpt.metrics
    assert m["adapter_anchors"] == 6  # all six of the test home's anchors (fewer than ADAPTER_ANCHORS)
    assert m["adapter_forgetting_loss"] > 0 and 0.0 <= m["adapter_retention_score"] <= 1.0
    assert 0.0 <= m["adapter_recall"] <= 1.0


def _gated_wreck(home, mode, **evaluation):
    """The issue's case: lr 0.5 with routing on, so the gate shows the base model's answers
    (rank 8, the rank of the issue's report, at which the tiny model is wrecked in 6 steps)."""
    write_config(home, lora={"r": 8, "alpha": 16}, training={"lr": 0.5, "max_steps": 6},
                 evaluation={"rollback_mode": mode, "catastrophic_delta": 0.25, **evaluation})


@pytest.mark.parametrize("mode,status", [("auto_rollback", "rolled_back"), ("warn", "risky")])
def test_a_wrecked_adapter_behind_the_gate_is_caught(home, mode, status):
    _gated_wreck(home, mode)
    drop(home, "a.jsonl", FACTS)
    run_once(home)
    store = Store(home / "memz.db")
    (ckpt,) = store.checkpoints()
    m = ckpt.metrics
    assert m["anchor_ce_delta"] <= 0.25 and m["retention_score"] == 1.0  # what is served looks fine
    assert m["recall"] == 0.0 and m["adapter_retention_score"] < 0.5  # the adapter learned nothing, broke much
    assert ckpt.status == status
    assert (store.current_checkpoint() == ckpt.id) == (mode == "warn")
    assert json.loads((home / "checkpoints" / ckpt.id / "meta.json").read_text())["status"] == status
    from typer.testing import CliRunner

    from memzd.cli import app
    shown = CliRunner().invoke(app, ["--home", str(home), "status"]).output
    assert "recall 0.00" in shown and "much of it not learned" in shown  # said to whoever looks


@pytest.mark.parametrize("adapter_delta,status", [(0.5, "rolled_back"), (50.0, "stable")])
def test_the_adapters_own_drift_decides_by_evaluation_adapter_delta(home, adapter_delta, status):
    _gated_wreck(home, "auto_rollback", adapter_delta=adapter_delta, min_recall=0.0)  # recall not asked
    drop(home, "a.jsonl", FACTS)
    run_once(home)
    (ckpt,) = Store(home / "memz.db").checkpoints()
    assert 0.5 < ckpt.metrics["adapter_anchor_ce_delta"] < 50.0
    assert ckpt.status == status


@pytest.mark.parametrize("metrics,reason", [
    ({"anchor_ce_delta": 0.3}, "anchor_ce_delta 0.300 > evaluation.catastrophic_delta 0.25"),
    ({"adapter_anchor_ce_delta": 4.5}, "adapter_anchor_ce_delta 4.500 > evaluation.adapter_delta 4.0"),
    ({"recall": 0.4}, "recall 0.40 < evaluation.min_recall 0.5"),
])
def test_verdict_names_what_failed(metrics, reason):
    cfg = EvaluationConfig(rollback_mode="auto_rollback")
    assert verdict_reasons(metrics, cfg) == [reason]
    assert verdict(metrics, cfg) == "rolled_back"
    assert verdict(metrics, EvaluationConfig(rollback_mode="warn")) == "risky"
    assert verdict(metrics, EvaluationConfig(rollback_mode="off")) == "stable"


def test_verdict_skips_figures_that_are_missing():
    cfg = EvaluationConfig(rollback_mode="auto_rollback")
    none = {"anchor_ce_delta": None, "adapter_anchor_ce_delta": None, "recall": None}
    assert verdict(none, cfg) == "stable"
    assert verdict({"anchor_ce_delta": 0.1, "adapter_anchor_ce_delta": 1.0, "recall": 1.0}, cfg) == "stable"


def test_new_evaluation_keys_are_checked_by_name():
    with pytest.raises(ConfigError, match="evaluation.min_recall"):
        EvaluationConfig(min_recall=1.5)
    with pytest.raises(ConfigError, match="evaluation.adapter_delta"):
        EvaluationConfig(adapter_delta=-1)


def test_teacher_forcing_gives_the_figures_that_generating_the_answers_gives(tiny_model_dir):
    """Recall and the adapter's retention are read from one teacher-forced pass where it
    can tell; they must be what generating every answer would say."""
    import torch

    from memzd import lora
    from memzd.anchors import Anchor
    from memzd.config import Config
    from memzd.evaluator import ADAPTER_ANSWER_TOKENS, evaluate, holds, normalize, prepare_anchor_set
    from memzd.inference import greedy_answers
    from memzd.model import load_base
    from memzd.tokens import encode
    from memzd.trainer import train

    base = load_base(str(tiny_model_dir))
    cfg = Config()
    model = lora.wrap(base.model, cfg.lora)
    anchors = [Anchor([{"role": "user", "content": p}]) for p in
               ("What is the capital of France?", "What is 2 + 2?", "Say hello.", "Name a colour.")]
    anchor_set, _ = prepare_anchor_set(model, base.tokenizer, anchors, base.device, 24, 512)
    taught = FACTS + [{"input": "What does Kestrel guard?", "output": "Kestrel guards the north gate."}]
    lora.start_training(model, cfg.lora, None)
    everything = lambda chats: [lora.TRAIN] * len(chats)
    fresh = evaluate(model, base.tokenizer, base.device, FACTS, anchor_set, everything, 512, 24)
    assert fresh["adapter_retention_score"] == fresh["retention_score"] == 1.0  # B = 0: still the base model
    cfg.training.lr, cfg.training.max_steps, cfg.training.stop_loss = 2e-2, 30, 0.0
    torch.manual_seed(0)
    train(model, [encode(e, base.tokenizer, 512) for e in taught[:2]], cfg.training,
          pad_id=base.tokenizer.pad_token_id, device=base.device)  # the third is never taught
    m = evaluate(model, base.tokenizer, base.device, taught, anchor_set, everything, 512, 24)

    questions = [[{"role": "user", "content": e["input"]}] for e in taught]
    said = greedy_answers(model, base.tokenizer, questions, adapter=lora.TRAIN, device=base.device, max_tokens=40)
    hits = [holds(s, e["output"]) for s, e in zip(said, taught)]
    assert hits[:2] == [True, True]  # learned: found by teacher forcing alone
    assert m["recall"] == m["adapter_recall"] == sum(hits) / 3
    starts = greedy_answers(model, base.tokenizer, [a.chat for a in anchors], adapter=lora.TRAIN,
                            device=base.device, max_tokens=ADAPTER_ANSWER_TOKENS)
    kept = [normalize(g).startswith(normalize(o)) for o, g in zip(starts, anchor_set.base_greedy)]
    assert m["adapter_retention_score"] == sum(kept) / len(anchors)
    full = greedy_answers(model, base.tokenizer, [a.chat for a in anchors], adapter=lora.TRAIN,
                          device=base.device, max_tokens=24)
    assert m["retention_score"] == sum(normalize(o) == normalize(g) for o, g in zip(full, anchor_set.base_greedy)) / 4


def test_training_general_trains_on_anchors_beyond_the_measured_ones(home, tmp_path, monkeypatch):
    """training.general: anchors past the first ADAPTER_ANCHORS, with the base model's
    answers cut to their first tokens, join the epochs; the measured ones never do."""
    from memzd import learner as learner_mod
    from memzd.tokens import IGNORE

    monkeypatch.setattr(learner_mod, "ADAPTER_ANCHORS", 2)  # the test home has 6 anchors
    handed: list = []
    real_train = learner_mod.train
    monkeypatch.setattr(learner_mod, "train", lambda *a, **k: handed.append(k["general"]) or real_train(*a, **k))
    write_config(home, training={"general": 3})
    drop(home, "a.jsonl", FACTS)
    run_once(home)
    (general,) = handed
    assert len(general) == 4  # anchors 3-6
    assert all(0 < sum(t != IGNORE for t in e.labels) <= learner_mod.GENERAL_ANSWER_TOKENS for e in general)
    (ckpt,) = Store(home / "memz.db").checkpoints()
    assert ckpt.status == "stable" and ckpt.metrics["recall"] is not None
