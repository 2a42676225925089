"""config.yaml: every key loads, values are coerced by type, mistakes name the key."""

import pytest

from memzd.config import Config, Home, describe_config, load_config
from memzd.errors import ConfigError

from conftest import REPO


def test_repo_config_loads_with_every_design_key():
    cfg = load_config(REPO / "config.yaml")
    assert cfg.base_model == "bundled"
    assert cfg.lora.target_modules and cfg.training.lr > 0
    assert cfg.evaluation.rollback_mode in ("off", "warn", "auto_rollback")
    keys = {k for k, _ in describe_config()}
    for key in ["backend", "base_model", "update_mode", "lora.r", "lora.alpha", "lora.dropout",
                "lora.target_modules", "training.batch_size", "training.grad_accum", "training.lr",
                "training.max_steps", "training.eval_every", "batch.max_examples", "batch.max_age_minutes",
                "evaluation.anchor_provider", "evaluation.anchor_dataset", "evaluation.anchor_sample",
                "evaluation.rollback_mode", "evaluation.catastrophic_delta"]:
        assert key in keys


def test_values_are_coerced_by_type(tmp_path):
    p = tmp_path / "config.yaml"
    p.write_text("training: {lr: 1e-4, max_steps: '12'}\nbatch: {max_age_minutes: 5}\n"
                 "evaluation: {rollback_mode: off}\n")
    cfg = load_config(p)
    assert cfg.training.lr == pytest.approx(1e-4) and isinstance(cfg.training.lr, float)
    assert cfg.training.max_steps == 12
    assert cfg.batch.max_age_minutes == 5.0
    assert cfg.evaluation.rollback_mode == "off"  # YAML's bare `off` is False


@pytest.mark.parametrize("text, words", [
    ("training: {lrr: 1}\n", ["training.lrr", "allowed", "lr"]),
    ("update_mode: sometimes\n", ["update_mode", "immediate", "batched"]),
    ("lora: {r: 0}\n", ["lora.r"]),
    ("training: {lr: fast}\n", ["training.lr"]),
    ("evaluation: {anchor_provider: web}\n", ["evaluation.anchor_provider", "local"]),
    ("nonsense_key: 1\n", ["nonsense_key"]),
    ("lora: [1, 2]\n", ["lora", "mapping"]),
    ("training: {max_steps: 2.5}\n", ["training.max_steps"]),
    ("routing: {formats: -1}\n", ["routing.formats", "integer"]),
    ("routing: {formats: yes}\n", ["routing.formats"]),
    # values that once gave a traceback, a segfault or hours of work
    ("lora: {r: 100000000}\n", ["lora.r", "1024"]),
    ("training: {threads: 100000}\n", ["training.threads"]),
    ("training: {lr: .inf}\n", ["training.lr"]),
    ("training: {max_steps: 1e29}\n", ["training.max_steps", "1000000"]),
])
def test_bad_config_names_the_key(tmp_path, text, words):
    p = tmp_path / "config.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    for w in words:
        assert w in str(exc.value)


def test_missing_config_means_defaults(tmp_path):
    assert load_config(tmp_path / "nope.yaml") == Config()


def test_home_resolution_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Home.resolve(None).root == tmp_path.resolve()
    monkeypatch.setenv("MEMZ_HOME", str(tmp_path / "env"))
    assert Home.resolve(None).root == (tmp_path / "env").resolve()
    assert Home.resolve(tmp_path / "flag").root == (tmp_path / "flag").resolve()
