"""The control path: rollbacks during training, stopping and withdrawing answers, streaming.

Each test drives a daemon on the tiny model the way a user would (memzctl,
request files, signals) and checks what the user sees: which checkpoint
serves, whether an answer file appears, how long the daemon takes to stop.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memzd import control
from memzd.cli import app
from memzd.config import Home
from memzd.daemon import Daemon
from memzd.files import write_json_atomic
from memzd.store import Store

from conftest import Running, drop, run_once, wait_until, write_config

FACTS = [{"input": "Who is Orla?", "output": "Orla keeps a cat named Biscuit."},
         {"input": "Where is Zorblax?", "output": "Zorblax lives on Mars."}]
# Greedy, the tiny model never says its end token: with the repetition guard off
# (the `endless` fixture, or ENDLESS in a subprocess) this answer runs ~5 s here.
LONG_ANSWER = {"prompt": "Tell me a long story.", "max_tokens": 4096, "temperature": 0}
ENDLESS = """
import sys
from memzd.inference import RepetitionGuard
RepetitionGuard.looping = lambda self, tokens: False
sys.argv = ["memzd", *sys.argv[1:]]
from memzd.cli import memzd_main
memzd_main()
"""
RACE_ROUNDS = int(os.environ.get("MEMZ_RACE_ROUNDS", "2"))  # the target: 20 in a row


@pytest.fixture
def endless(monkeypatch):
    """Answers that loop are not cut short: a long answer stays long."""
    from memzd.inference import RepetitionGuard

    monkeypatch.setattr(RepetitionGuard, "looping", lambda self, tokens: False)


def training_step(store: Store, batch_id: int) -> bool:
    text = (store.get_json("activity") or {}).get("text", "")
    m = re.match(r"training batch (\d+): step (\d+)/", text)
    return bool(m) and int(m[1]) == batch_id and int(m[2]) >= 2


@pytest.mark.parametrize("round_", range(RACE_ROUNDS))
def test_a_rollback_while_a_batch_trains_is_kept_and_the_batch_retrains_on_what_serves(home, round_):
    write_config(home, update_mode="immediate")
    drop(home, "first.jsonl", FACTS[:1])
    run_once(home)
    store = Store(home / "memz.db")
    first = store.current_checkpoint()
    write_config(home, training={"max_steps": 150, "stop_loss": 0, "lr": 1e-3})
    runner = Running(home)
    with runner:
        drop(home, "second.jsonl", FACTS[1:])
        wait_until(lambda: training_step(store, 2), "training of batch 2", running=runner)
        result = CliRunner().invoke(app, ["--home", str(home), "rollback"])
        assert result.exit_code == 0, result.output
        assert "now serving the base model" in result.output
        wait_until(lambda: store.batch(2)["status"] == "done", "batch 2 to finish", timeout=120,
                   running=runner)
    # The rollback stands: the first checkpoint stays rolled back, and batch 2 was
    # trained again on what served after it (the base model), not on top of `first`.
    assert store.checkpoint(first).status == "rolled_back"
    newest = store.checkpoints()[0]
    assert store.current_checkpoint() == newest.id and newest.parent is None and newest.batch_id == 2
    assert all(c.parent != first for c in store.checkpoints())
    assert {p.name for p in (home / "checkpoints").iterdir() if not p.name.startswith(".")} == \
        {c.id for c in store.checkpoints()}, "the superseded checkpoint's folder was left behind"
    assert any(e["kind"] == "retrain" for e in store.events(50))
    assert store.batch(2)["attempts"] == 1  # a retrain is not a failed attempt


def _stops_within_5_s(proc: subprocess.Popen, what: str, sig: int = signal.SIGTERM) -> None:
    t0 = time.monotonic()
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 0
    assert time.monotonic() - t0 < 5, f"memzd took more than 5 s to stop {what}"


def _subprocess_daemon(home: Path, tmp_path: Path) -> subprocess.Popen:
    log = open(tmp_path / "memzd.out", "wb")
    return subprocess.Popen([sys.executable, "-c", ENDLESS, "--home", str(home)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_a_long_answer_stops_the_daemon_within_5_s(home, tmp_path, sig):
    proc = _subprocess_daemon(home, tmp_path)
    try:
        h = Home(home)
        wait_until(lambda: control.daemon_pid(h) and (Store(h.db_path).get_json("activity") or {}).get("text")
                   == "idle", "the daemon to start")
        write_json_atomic(h.requests / "long.json", LONG_ANSWER)
        wait_until(lambda: control.partial_path(h, "long").exists(), "the answer to start streaming")
        _stops_within_5_s(proc, "mid-answer", sig)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (h.responses / "long.json").exists()  # no half answer is written...
    assert (h.requests / "long.json").exists()  # ...and the question waits for the next start
    assert not control.partial_path(h, "long").exists()
    log = (tmp_path / "memzd.out").read_text()
    assert f"{signal.Signals(sig).name}: stopping" in log and "memzd stopped" in log


def test_a_withdrawn_question_stops_generating_and_leaves_no_answer_behind(home, endless):
    h = Home(home)
    runner = Running(home)
    with runner:
        write_json_atomic(h.requests / "gone.json", LONG_ANSWER)
        wait_until(lambda: control.partial_path(h, "gone").exists(), "the answer to start", running=runner)
        (h.requests / "gone.json").unlink()  # the asker gave up
        wait_until(lambda: not control.partial_path(h, "gone").exists(), "the generation to stop", timeout=10)
        # the daemon goes on answering others
        answer = control.ask(h, {"prompt": "Hi", "max_tokens": 3}, timeout=60)
        assert "response" in answer
    assert not (h.responses / "gone.json").exists()
    assert list(h.responses.iterdir()) == []


def test_ask_streams_the_answer_as_it_is_generated_and_gives_it_whole(home):
    h = Home(home)
    pieces: list[str] = []
    with Running(home):
        wait_until(lambda: control.daemon_pid(h), "the daemon to start")
        payload = control.ask(h, {"prompt": "Hello!", "max_tokens": 40, "temperature": 1.0, "id": "s1"},
                              timeout=60, on_text=pieces.append)
    assert payload["id"] == "s1" and payload["response"]
    assert "".join(pieces).strip() == payload["response"]
    assert list(h.responses.iterdir()) == [] and not (h.requests / "s1.json").exists()


def test_ask_that_times_out_withdraws_its_question(home, endless):
    h = Home(home)
    with Running(home):
        wait_until(lambda: control.daemon_pid(h), "the daemon to start")
        with pytest.raises(Exception, match="withdrawn"):
            control.ask(h, {**LONG_ANSWER, "id": "slow"}, timeout=0.5)
        time.sleep(0.5)
    assert not (h.requests / "slow.json").exists() and not (h.responses / "slow.json").exists()


def test_memzctl_train_makes_a_waiting_batch_train_now(home):
    write_config(home, batch={"max_examples": 100, "max_age_minutes": 60})
    h = Home(home)
    runner = Running(home)
    with runner:
        drop(home, "facts.jsonl", FACTS)
        store = Store(h.db_path)
        wait_until(lambda: store.example_count() == 2, "the file to be read", running=runner)
        status = control.status_data(h)
        assert status["queue_depth"] == 2 and "2 of 100 examples wait" in status["next_batch"]["why"]
        control.request_training(h)
        wait_until(lambda: store.current_checkpoint(), "the checkpoint", timeout=120, running=runner)
    assert not (h.inbox / control.TRAIN_NOW).exists()
    assert store.queue_depth() == 0


def test_a_prompt_over_the_token_cap_is_refused_with_its_size(home):
    write_config(home, daemon={"max_prompt_tokens": 64})
    h = Home(home)
    write_json_atomic(h.requests / "huge.json", {"prompt": "word " * 5000})
    run_once(home)
    answer = json.loads((h.responses / "huge.json").read_text())
    assert answer["error"]["code"] == "too_long" and "max_prompt_tokens" in answer["error"]["message"]


def test_a_prompt_longer_than_the_base_model_reads_is_refused_under_a_larger_cap(home):
    """daemon.max_prompt_tokens (4096 by default) may be more than the base model reads
    (the tiny model: 256 positions): such a prompt is refused, not answered with garbage."""
    h = Home(home)
    write_json_atomic(h.requests / "long.json", {"prompt": "word " * 400})
    write_json_atomic(h.requests / "short.json", {"prompt": "word " * 10, "max_tokens": 2})
    run_once(home)
    answer = json.loads((h.responses / "long.json").read_text())
    assert answer["error"]["code"] == "too_long" and "reads at most 256 tokens" in answer["error"]["message"]
    assert "response" in json.loads((h.responses / "short.json").read_text())


def test_status_says_since_when_a_phase_runs_not_since_its_last_step(home, monkeypatch):
    clock = iter(f"2026-01-01T00:00:{s:02d}Z" for s in range(60))
    monkeypatch.setattr("memzd.daemon.utcnow", lambda: next(clock))
    daemon = Daemon(Home(home))
    daemon.store = Store(Home(home).db_path)
    said = []
    for text in ("training batch 1: step 1/3, loss 2.0", "training batch 1: step 2/3, loss 1.0",
                 "evaluating batch 1", "idle", "training batch 2: step 1/3, loss 2.0"):
        daemon.set_activity(text)
        said.append(daemon.store.get_json("activity")["at"])
    assert said[1] == said[0]  # the same batch's next step: since the batch began
    assert said[0] < said[2] < said[3] < said[4]  # a new phase each


def test_the_repetition_guard_stops_a_loop_and_lets_a_varied_answer_run():
    from memzd.inference import RepetitionGuard

    guard = RepetitionGuard(prompt_len=0)
    assert guard.looping([5] * 24)                          # "the the the ..."
    assert guard.looping([1, 2, 3, 4, 5, 6, 7] * 4)          # a sentence on a loop
    assert not guard.looping(list(range(100)))               # nothing repeats
    assert not guard.looping([1, 2, 3] * 7 + [9])            # a loop that ended
    assert not guard.looping([7] * 10)                       # too short to call a loop
    # the same sentence again and again, give or take a word ("She made ..., and she made ...")
    sentence = list(range(100, 140))
    retold = list(range(1000, 1100)) + [t for i in range(4) for t in [50 + i % 2] + sentence]
    assert not guard.looping(retold[:-40]) and guard.looping(retold)
    assert not guard.looping(list(range(1000, 1400)))       # 400 tokens that say new things


def test_questions_are_answered_while_the_anchors_are_computed_and_sigterm_stops_it(home, tmp_path):
    # Many anchors with long answers: computing the base model's answers takes a while.
    prompts = [{"prompt": f"Tell me about thing number {i}."} for i in range(64)]
    (home / "anchors" / "a.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    write_config(home, evaluation={"anchor_max_tokens": 2000})
    h = Home(home)
    proc = _subprocess_daemon(home, tmp_path)
    try:
        wait_until(lambda: "anchors" in ((Store(h.db_path).get_json("activity") or {}).get("text", "")
                                         if h.db_path.exists() else ""), "the anchors to be computed")
        answer = control.ask(h, {"prompt": "Hi", "max_tokens": 3, "temperature": 0}, timeout=60)
        assert "response" in answer  # answered between two batches of anchors
        assert "anchors" in Store(h.db_path).get_json("activity")["text"]  # still computing them
        _stops_within_5_s(proc, "while computing anchors")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_while_a_big_file_is_read_stops_within_5_s_and_loses_nothing(home, tmp_path):
    lines = 300_000  # ~6 s of reading here
    with open(home / "inbox" / ".big.tmp", "w") as f:
        for i in range(lines):
            f.write(f'{{"text": "note number {i}"}}\n')
    write_config(home, batch={"max_examples": 10_000_000, "max_age_minutes": 600})  # read, do not train
    proc = _subprocess_daemon(home, tmp_path)
    h = Home(home)
    try:
        wait_until(lambda: control.daemon_pid(h), "the daemon to start")
        os.replace(home / "inbox" / ".big.tmp", home / "inbox" / "big.jsonl")
        wait_until(lambda: Store(h.db_path).example_count() > 0, "the file to be read")
        _stops_within_5_s(proc, "while reading a file")
    finally:
        if proc.poll() is None:
            proc.kill()
    store = Store(h.db_path)
    assert 0 < store.example_count() < lines and (home / "inbox" / "big.jsonl").exists()  # stopped part-way
    daemon = Daemon(h)  # started again, it reads the file again: the rest is added, nothing twice
    daemon.start()
    try:
        wait_until(lambda: daemon.ingest() or not (home / "inbox" / "big.jsonl").exists(), "the file to be read")
    finally:
        daemon.shutdown()
    assert store.example_count() == lines and (home / "inbox" / "processed" / "big.jsonl").exists()
