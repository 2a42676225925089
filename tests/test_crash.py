"""Crash safety, tested by really killing `memzd` subprocesses.

Each test starts `memzd --home H` on the tiny-model home, waits for an
observable point (the `activity` state row, or the marker file that a pause
this test puts into the daemon's checkpoint writing writes: PAUSE, through
seams the test owns), kills it there with SIGKILL or SIGTERM,
restarts it with `--once`, and checks what a user would: the database is
intact, no example is lost or trained twice into the current lineage, no
half-written checkpoint is current, and the interrupted batch trains again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memzd.checkpoints import load_checkpoint
from memzd.store import Store

from conftest import drop, run_once, write_config

MEMZD = Path(sys.executable).with_name("memzd")
FACTS = [{"input": "Who is Orla?", "output": "Orla keeps a cat named Biscuit."},
         {"input": "Where is Zorblax?", "output": "Zorblax lives on Mars."},
         {"input": "What does Biscuit eat?", "output": "Biscuit eats fish."},
         {"input": "When was Zorblax built?", "output": "Zorblax was built in 2049."}]
LONG = {"max_steps": 100_000, "eval_every": 0}  # trains until killed
SHORT = {"max_steps": 4, "eval_every": 2}       # the fixture's default


# memzd with a pause put in at one point of writing a checkpoint: the marker file
# appears there, and the process sleeps until the test kills it.
#   checkpoint_write: the weights are in the staging folder, nothing else is
#   before_commit: the folder is renamed into place, not yet recorded
PAUSE = """
import os, sys, time
point, marker = sys.argv[1], sys.argv[2]

def pause():
    open(marker, "w").write(str(os.getpid()))
    time.sleep(3600)

import memzd.checkpoints as checkpoints
from memzd.learner import Learner
if point == "checkpoint_write":
    save_file = checkpoints.save_file
    def save_then_pause(tensors, filename, *args, **kwargs):
        save_file(tensors, filename, *args, **kwargs)
        if filename.endswith(checkpoints.WEIGHTS):
            pause()
    checkpoints.save_file = save_then_pause
elif point == "before_commit":
    write = Learner.write
    def write_then_pause(*args, **kwargs):
        path = write(*args, **kwargs)
        pause()
        return path
    Learner.write = staticmethod(write_then_pause)
else:
    raise SystemExit(f"unknown pause point {point}")
sys.argv = ["memzd", *sys.argv[3:]]
from memzd.cli import memzd_main
memzd_main()
"""


@pytest.fixture(autouse=True)
def _immediate(home):
    write_config(home, update_mode="immediate")  # each dropped file is a batch at once


@pytest.fixture
def daemons(tmp_path):
    """Start memzd subprocesses; any still running at the end are killed."""
    started = []

    def start(home: Path, *args: str, pause_at: str | None = None) -> subprocess.Popen:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        log = open(tmp_path / f"memzd-{len(started)}.out", "wb")
        if pause_at:
            marker = home / "logs" / f"test-pause-{pause_at}"
            command = [sys.executable, "-c", PAUSE, pause_at, str(marker), "--home", str(home), *args]
        else:
            command = [str(MEMZD), "--home", str(home), *args]
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        proc.log_path = log.name
        log.close()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def output(proc) -> str:
    return Path(proc.log_path).read_text(errors="replace")[-3000:]


def wait_for(condition, proc, what: str, timeout: float = 60):
    """Poll `condition` until it returns something truthy; fail if memzd exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"memzd exited ({proc.returncode}) before {what}:\n{output(proc)}")
        time.sleep(0.05)
    pytest.fail(f"no {what} within {timeout} s:\n{output(proc)}")


def activity(home: Path) -> str:
    """The daemon's `activity` state row, read without taking part in migrations."""
    try:
        con = sqlite3.connect(f"file:{home / 'memz.db'}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute("SELECT value FROM state WHERE key = 'activity'").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError:  # not created or migrated yet
        return ""
    return json.loads(row[0])["text"] if row and row[0] else ""


def training_step(home: Path, batch_id: int, at_least: int = 2) -> bool:
    m = re.match(r"training batch (\d+): step (\d+)/", activity(home))
    return bool(m) and int(m[1]) == batch_id and int(m[2]) >= at_least


def finish_once(home: Path, start) -> None:
    """Restart with --once, as after a crash, with short training."""
    write_config(home, training=SHORT)
    proc = start(home, "--once")
    assert proc.wait(timeout=120) == 0, output(proc)


def assert_consistent(home: Path, n_examples: int) -> Store:
    """What must hold after any crash and restart."""
    store = Store(home / "memz.db")
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    staging = home / "checkpoints" / ".staging"
    assert not staging.exists() or not any(staging.iterdir()), "a half-written checkpoint was left"
    folders = {p.name for p in (home / "checkpoints").iterdir() if not p.name.startswith(".")}
    recorded = {c.id for c in store.checkpoints()}
    assert folders == recorded, "every checkpoint folder is recorded and every record has its folder"
    current = store.current_checkpoint()
    config, state, meta, _ = load_checkpoint(home / "checkpoints" / current)  # whole and safe
    assert meta["id"] == current
    # The current lineage covers every accepted example exactly once.
    lineage = store.lineage(current)
    batches = [c.batch_id for c in lineage]
    assert len(batches) == len(set(batches)), "a batch trained twice into the lineage"
    trained = store.db.execute(
        f"SELECT count(*), count(DISTINCT hash) FROM examples WHERE batch_id IN ({','.join('?' * len(batches))})",
        batches).fetchone()
    assert trained == (n_examples, n_examples) == (store.example_count(), store.example_count())
    for c in lineage:
        assert store.batch(c.batch_id)["status"] == "done" and store.batch(c.batch_id)["checkpoint_id"] == c.id
    assert store.queue_depth() == 0
    return store


def inet_sockets(pid: int) -> set[int]:
    """Inodes of the TCP/UDP/raw sockets `pid` holds open (listening or not)."""
    mine = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(int(target[8:-1]))
    inet = set()
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        path = Path("/proc/net") / table
        if path.exists():
            for line in path.read_text().splitlines()[1:]:
                inet.add(int(line.split()[9]))
    return mine & inet


def test_kill_9_during_training_retrains_the_batch_once(home, daemons):
    drop(home, "first.jsonl", FACTS[:2])
    run_once(home)  # checkpoint 1: the parent the killed batch starts from
    parent = Store(home / "memz.db").current_checkpoint()
    write_config(home, training=LONG)
    drop(home, "second.jsonl", FACTS[2:])
    proc = daemons(home)
    wait_for(lambda: training_step(home, 2), proc, "training of batch 2")
    proc.kill()
    assert proc.wait(timeout=10) == -signal.SIGKILL
    store = Store(home / "memz.db")
    assert store.batch(2)["status"] == "training" and store.current_checkpoint() == parent
    assert len(store.checkpoints()) == 1

    finish_once(home, daemons)
    store = assert_consistent(home, len(FACTS))
    newest = store.checkpoints()[0]
    assert (newest.batch_id, newest.parent) == (2, parent) and store.current_checkpoint() == newest.id
    assert store.batch(2)["attempts"] == 2
    assert len(store.curve(2, "finetune_loss")) == SHORT["max_steps"]  # the killed attempt's curve is gone


def test_kill_9_while_the_checkpoint_is_written(home, daemons):
    drop(home, "facts.jsonl", FACTS)
    proc = daemons(home, "--once", pause_at="checkpoint_write")
    marker = home / "logs" / "test-pause-checkpoint_write"
    wait_for(marker.exists, proc, "the checkpoint write")
    (half,) = (home / "checkpoints" / ".staging").iterdir()
    assert (half / "adapter_model.safetensors").exists() and not (half / "meta.json").exists()
    proc.kill()
    proc.wait(timeout=10)
    assert Store(home / "memz.db").checkpoints() == []

    finish_once(home, daemons)
    store = assert_consistent(home, len(FACTS))
    (only,) = store.checkpoints()
    assert only.batch_id == 1 and store.batch(1)["attempts"] == 2


def test_kill_9_between_checkpoint_write_and_commit(home, daemons):
    drop(home, "first.jsonl", FACTS[:2])
    run_once(home)
    parent = Store(home / "memz.db").current_checkpoint()
    drop(home, "second.jsonl", FACTS[2:])
    proc = daemons(home, "--once", pause_at="before_commit")
    wait_for((home / "logs" / "test-pause-before_commit").exists, proc, "the pause before the commit")
    written = {p.name for p in (home / "checkpoints").iterdir() if not p.name.startswith(".")} - {parent}
    (unrecorded,) = written
    assert (home / "checkpoints" / unrecorded / "meta.json").exists()  # whole on disk, not in the database
    proc.kill()
    proc.wait(timeout=10)
    store = Store(home / "memz.db")
    assert store.checkpoint(unrecorded) is None and store.current_checkpoint() == parent

    finish_once(home, daemons)
    store = assert_consistent(home, len(FACTS))
    assert (home / "checkpoints" / ".orphaned" / unrecorded / "meta.json").exists()
    newest = store.checkpoints()[0]
    assert newest.id != unrecorded and (newest.batch_id, newest.parent) == (2, parent)
    assert store.current_checkpoint() == newest.id and store.batch(2)["attempts"] == 2
    assert any(e["kind"] == "recovered" for e in store.events(50))


def test_sigterm_during_training_exits_promptly_and_leaves_nothing_partial(home, daemons):
    write_config(home, training=LONG, daemon={"rescan_seconds": 30})
    drop(home, "facts.jsonl", FACTS)
    proc = daemons(home)
    wait_for(lambda: training_step(home, 1), proc, "training of batch 1")
    if Path("/proc/self/fd").exists():  # Linux: nothing listens on (or opens) the network
        assert inet_sockets(proc.pid) == set(), "memzd holds a network socket"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, output(proc)
    assert time.monotonic() - t0 < 5, "memzd took more than 5 s to stop"
    store = Store(home / "memz.db")
    assert store.batch(1)["status"] == "pending" and "interrupted" in store.batch(1)["error"]
    assert store.checkpoints() == [] and store.current_checkpoint() is None
    assert [p.name for p in (home / "checkpoints").iterdir() if p.name != ".staging"] == []
    assert activity(home) == "stopped"
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # Started again, it trains the batch; SIGTERM while idle also stops it at once.
    write_config(home, training=SHORT)
    proc = daemons(home)
    wait_for(lambda: Store(home / "memz.db").current_checkpoint() and activity(home) == "idle", proc,
             "the retrained checkpoint")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, output(proc)
    assert time.monotonic() - t0 < 5, "an idle memzd waited out its rescan interval before stopping"
    assert_consistent(home, len(FACTS))
