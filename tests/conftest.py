"""Shared fixtures: a tiny model built in code, and a fresh home per test."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from tiny import build_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test gets its own cache and no inherited home."""
    monkeypatch.setenv("MEMZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEMZ_HOME", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def write_config(home: Path, **sections) -> None:
    """Write config.yaml, merging `sections` over the tiny-model defaults."""
    base = yaml.safe_load((home / "config.yaml").read_text()) if (home / "config.yaml").exists() else {}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    (home / "config.yaml").write_text(yaml.safe_dump(base))


@pytest.fixture
def home(tmp_path, tiny_model_dir) -> Path:
    """A fresh home on the tiny model, with small anchors and short training."""
    from memzd.config import Home

    h = tmp_path / "home"
    Home(h).ensure()
    (h / "anchors").mkdir()
    prompts = ["What is the capital of France?", "What is 2 + 2?", "Hello! How can I help you today?",
               "The quick brown fox?", "def square(x):", "Who lives on Mars?"]
    (h / "anchors" / "a.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    write_config(h, base_model=str(tiny_model_dir),
                 # one round: a batch the tiny model has not learned in 4 steps stops there
                 # (test_daemon.py trains more rounds where that is what it checks)
                 training={"lr": 1e-2, "max_steps": 4, "rounds": 1, "eval_every": 2, "batch_size": 4,
                           "grad_accum": 1},
                 evaluation={"anchor_max_tokens": 6},
                 daemon={"stable_seconds": 0.0, "rescan_seconds": 0.2})
    return h


def drop(home: Path, name: str, lines: list) -> Path:
    """Write a file into the inbox the way a careful writer does (tmp, then rename)."""
    path = home / "inbox" / name
    tmp = home / "inbox" / f".{name}.tmp"
    tmp.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    os.replace(tmp, path)
    return path


def run_once(home: Path) -> int:
    """memzd --once on `home`, in this process."""
    from memzd.config import Home
    from memzd.daemon import Daemon

    return Daemon(Home(home), once=True).run()


class Running:
    """A daemon on its own thread (`.daemon`, `.thread`), stopped and joined at the end."""

    def __init__(self, home: Path, **kwargs):
        from memzd.config import Home
        from memzd.daemon import Daemon

        self.daemon = Daemon(Home(home), **kwargs)
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)

    def __enter__(self) -> "Running":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.daemon.request_stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the daemon did not stop"


def wait_until(condition, what: str, timeout: float = 60, running: Running | None = None):
    """Poll `condition` until it is truthy (and return it); fail if the daemon stops first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if running is not None and not running.thread.is_alive():
            pytest.fail(f"the daemon stopped before {what}")
        time.sleep(0.02)
    pytest.fail(f"no {what} within {timeout} s")
