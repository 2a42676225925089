"""Bad input of every kind: memz sets it aside, says what was wrong, and keeps running.

Files in the inbox, request files and request bodies, adapters planted in
checkpoints/, and a disk that fills while a checkpoint is written. Huge inputs
are made sparse (holes read back as NUL bytes) so that they cost little disk
and time, and memory is measured with tracemalloc while they are read.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import stat
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from memzd import checkpoints as checkpoints_mod
from memzd.checkpoints import load_checkpoint
from memzd.cli import app
from memzd.config import Home
from memzd.daemon import Daemon
from memzd.errors import CheckpointError, ConfigError, RequestError
from memzd.inbox import LISTED_ERRORS, ingest_file
from memzd.queries import parse_request, request_id
from memzd.store import CheckpointRow, Store

from conftest import drop, run_once, write_config

FACTS = [{"input": "Who is Orla?", "output": "Orla keeps a cat named Biscuit."},
         {"input": "Where is Zorblax?", "output": "Zorblax lives on Mars."}]
MB = 1 << 20


def reason(home: Path, name: str) -> str:
    return (home / "inbox" / "rejected" / f"{name}.reason.txt").read_text()


def line_errors(home: Path, name: str) -> dict[int, str]:
    path = home / "inbox" / "rejected" / f"{name}.errors.jsonl"
    return {e["line"]: e["reason"] for e in map(json.loads, path.read_text().splitlines())}


def ask(home: Path, rid: str, body) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    tmp = home / "requests" / f".{rid}.tmp"
    tmp.write_bytes(raw)
    os.replace(tmp, home / "requests" / f"{rid}.json")


def response(home: Path, rid: str) -> dict:
    return json.loads((home / "responses" / f"{rid}.json").read_text(encoding="utf-8"))


# -- the inbox ------------------------------------------------------------------------

def test_bad_files_and_lines_are_set_aside_with_reasons_and_good_ones_train(home, tmp_path):
    inbox = home / "inbox"
    outside = tmp_path / "outside.jsonl"
    outside.write_text(json.dumps({"text": "a secret outside the inbox"}) + "\n")
    (inbox / "empty.jsonl").write_bytes(b"")
    (inbox / "partial.jsonl").write_bytes(b'{"text": "whole line"}\n{"text": "cut off mid-wri')
    (inbox / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9"}\n{"text": "plain ascii"}\n')
    (inbox / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "after a byte order mark"}\n')
    (inbox / "shapes.jsonl").write_text("\n".join([
        "[1, 2]", '"a string"', "42", "null",                       # 1-4: not objects
        '{"input": "q"}',                                           # 5: missing field
        '{"input": "", "output": "a"}',                             # 6: empty field
        '{"input": "q", "output": 7}',                              # 7: non-string field
        '{"messages": [{"role": "user", "content": ["x"]}]}',       # 8: non-string content
        "[" * 100_000,                                              # 9: nested past the recursion limit
        '{"text": "\\ud800"}',                                      # 10: lone surrogate
        '{"text": "the one good line"}',                            # 11
    ]) + "\n")
    (inbox / "x.jsonl").mkdir()
    (inbox / "link.jsonl").symlink_to(outside)
    os.link(outside, inbox / "hard.jsonl")
    (inbox / "notes.txt").write_text("not examples\n")
    drop(home, "good.jsonl", FACTS)
    drop(home, "copy.jsonl", FACTS)  # the same examples under another name

    assert run_once(home) == 0
    store = Store(home / "memz.db")
    assert "empty" in reason(home, "empty.jsonl")
    assert "partial last line" in line_errors(home, "partial.jsonl")[2]
    assert "not UTF-8: byte 0xe9" in line_errors(home, "latin1.jsonl")[1]
    errors = line_errors(home, "shapes.jsonl")
    assert sorted(errors) == list(range(1, 11))
    assert all("expected a JSON object" in errors[n] for n in range(1, 5))
    assert "missing field 'output'" in errors[5] and "'input' is empty" in errors[6]
    assert "'output' must be a string" in errors[7] and "content must be a non-empty string" in errors[8]
    assert "nested too deeply" in errors[9] and "lone surrogate" in errors[10]
    assert "directory" in reason(home, "x.jsonl") and (inbox / "rejected" / "x.jsonl").is_dir()
    assert "symbolic link" in reason(home, "link.jsonl") and "hard link" in reason(home, "hard.jsonl")
    assert "not a .jsonl file" in reason(home, "notes.txt")
    assert outside.read_text().startswith('{"text": "a secret')  # links are moved aside, never followed
    assert not store.db.execute("SELECT 1 FROM examples WHERE data LIKE '%secret%'").fetchone()

    texts = {json.loads(d).get("text") or json.loads(d)["input"] for (d,) in store.db.execute("SELECT data FROM examples")}
    assert texts == {"whole line", "plain ascii", "after a byte order mark", "the one good line",
                     "Who is Orla?", "Where is Zorblax?"}
    pair = sorted((f["accepted"], f["duplicates"]) for f in store.files() if f["name"] in ("good.jsonl", "copy.jsonl"))
    assert pair == [(0, 2), (2, 0)]  # whichever was read second added nothing
    (ckpt,) = store.checkpoints()  # everything good trained, once
    assert store.current_checkpoint() == ckpt.id and store.queue_depth() == 0
    assert [p.name for p in inbox.iterdir() if p.name not in ("processed", "rejected")] == []
    events = [e["message"] for e in store.events(100) if e["kind"] == "file"]
    assert any(m.startswith("shapes.jsonl: 1 new, 0 duplicate, 10 rejected") for m in events)
    assert any(m.startswith("empty.jsonl: rejected whole: empty file") for m in events)

    drop(home, "good.jsonl", FACTS)  # the same file dropped again later: nothing trains
    assert run_once(home) == 0
    assert len(store.checkpoints()) == 1 and store.example_count() == 6
    assert len(list((inbox / "processed").glob("good*.jsonl"))) == 2


def peak_while(fn):
    """(result, peak bytes Python allocated while fn ran)."""
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def h(tmp_path):
    home = Home(tmp_path / "h")
    home.ensure()
    return home


def test_a_100_mb_line_is_skipped_in_bounded_memory(h):
    path = h.inbox / "huge-line.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"text": "')
        f.seek(100 * MB)  # a sparse hole: 100 MB of NUL bytes on one line
        f.write(b'"}\n{"text": "after the long line"}\n')
    result, peak = peak_while(lambda: ingest_file(path, Store(h.db_path), h))
    assert (result.accepted, result.rejected) == (1, 1)
    assert "longer than the 1000000-byte cap" in line_errors(h.root, "huge-line.jsonl")[1]
    assert peak < 8 * MB, f"reading a 100 MB line took {peak / MB:.0f} MB"


def test_a_1_gb_file_streams_in_bounded_memory(h):
    path = h.inbox / "huge.jsonl"
    good = 0
    with open(path, "wb") as f:
        while f.tell() < 1 << 30:  # 64 lines of 16 MB (sparse: NUL bytes), each followed by a good one
            f.seek(16 * MB, os.SEEK_CUR)
            f.write(b"\n" + json.dumps({"text": f"good line {good}"}).encode() + b"\n")
            good += 1
    assert path.stat().st_size >= 1 << 30
    t0 = time.monotonic()
    result, peak = peak_while(lambda: ingest_file(path, Store(h.db_path), h))
    assert (result.accepted, result.rejected) == (good, good)
    assert peak < 8 * MB, f"reading a 1 GB file took {peak / MB:.0f} MB"
    assert time.monotonic() - t0 < 30


def test_many_long_good_lines_are_committed_in_bounded_chunks(h):
    path = h.inbox / "long-lines.jsonl"
    with open(path, "w") as f:
        for i in range(60):  # 60 lines of 0.9 MB: 54 MB of examples
            f.write(json.dumps({"text": f"{i} " + "x" * 900_000}) + "\n")
    store = Store(h.db_path)
    result, peak = peak_while(lambda: ingest_file(path, store, h))
    assert result.accepted == 60 and store.example_count() == 60
    assert peak < 40 * MB, f"ingesting 54 MB of examples held {peak / MB:.0f} MB"


def test_many_bad_lines_are_counted_not_held(h):
    path = h.inbox / "noise.jsonl"
    n = 100_000
    path.write_bytes(b"x\n" * n + b'{"text": "the good one"}\n')
    result, peak = peak_while(lambda: ingest_file(path, Store(h.db_path), h))
    assert (result.accepted, result.rejected) == (1, n)
    assert peak < 8 * MB, f"{n} bad lines held {peak / MB:.0f} MB"
    listed = (h.rejected / "noise.jsonl.errors.jsonl").read_text().splitlines()
    assert len(listed) == LISTED_ERRORS + 1  # the rest only counted, so the report stays small
    assert json.loads(listed[-1])["reason"] == f"... and {n - LISTED_ERRORS} more bad lines, not listed"


def test_10000_files_dropped_at_once_all_land(home):
    inbox = home / "inbox"
    for i in range(10_000):
        (inbox / f"f{i:05d}.jsonl").write_text('{"text": "example %d"}\n' % i)
    daemon = Daemon(Home(home))
    daemon.start()
    try:
        while daemon.ingest():
            pass
    finally:
        daemon.shutdown()
    store = Store(home / "memz.db")
    assert store.example_count() == 10_000 and store.queue_depth() == 10_000
    assert len(list((inbox / "processed").iterdir())) == 10_000
    assert sorted(p.name for p in inbox.iterdir()) == ["processed", "rejected"]


# -- requests -----------------------------------------------------------------------

@pytest.mark.parametrize("name, rid", [
    ("q1.json", "q1"), ("a.b_c-d.json", "a.b_c-d"), ("x" * 64 + ".json", "x" * 64),
    ("..json", None), ("...json", None), (".hidden.json", None), ("a b.json", None), ("x" * 65 + ".json", None),
    ("q\n.json", None), ("q.txt", None), (".json", None), ("é.json", None), ("a\x00b.json", None),
])
def test_request_ids(name, rid):
    assert request_id(Path("requests") / name) == rid


@pytest.mark.parametrize("checkpoint", ["../x", "/etc/passwd", "a/b", "a\x00b", "A_1\n", ".hidden", "", 5,
                                        "x" * 65])
def test_a_request_checkpoint_must_be_an_id(checkpoint):
    with pytest.raises(RequestError) as info:
        parse_request("q", json.dumps({"prompt": "hi", "checkpoint": checkpoint}).encode(), 10_000)
    assert info.value.code == "invalid_request" and "checkpoint" in str(info.value)


def test_odd_request_files_are_set_aside_and_bad_bodies_answered_with_errors(home, tmp_path):
    requests = home / "requests"
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"prompt": "hi"}))
    for name in ("..json", "a b.json", "x" * 65 + ".json", "q\n.json"):
        (requests / name).write_text(json.dumps({"prompt": "hi"}))
    (requests / "dir.json").mkdir()
    (requests / "link.json").symlink_to(secret)
    ask(home, "dotdot", {"prompt": "hi", "checkpoint": "../x"})
    ask(home, "nul", {"prompt": "hi", "checkpoint": "a\x00b"})
    ask(home, "missing", {"prompt": "hi", "checkpoint": "A_2099-01-01_0001"})
    ask(home, "deep", b"[" * 100_000)
    ask(home, "surrogate", b'{"prompt": "hi", "\\ud800": 1}')
    ask(home, "ok", {"prompt": "Hello", "max_tokens": 2})

    assert run_once(home) == 0
    assert response(home, "dotdot")["error"]["code"] == "invalid_request"
    assert response(home, "nul")["error"]["code"] == "invalid_request"
    assert response(home, "missing")["error"]["code"] == "unknown_checkpoint"
    assert response(home, "deep")["error"]["code"] == "invalid_json"
    assert response(home, "surrogate")["error"]["code"] == "invalid_request"
    assert "response" in response(home, "ok")
    answered = {p.name for p in (home / "responses").iterdir()}
    assert answered == {f"{r}.json" for r in ("dotdot", "nul", "missing", "deep", "surrogate", "ok")}
    # Each odd entry is moved aside; "..json" is a dotfile, which writers use while writing: left be.
    assert sorted(p.name for p in requests.iterdir()) == ["..json", "rejected"]
    reasons = list((requests / "rejected").glob("*.reason.txt"))
    assert len(reasons) == 5 and all("name is not <id>.json" in r.read_text() for r in reasons)
    assert json.loads(secret.read_text()) == {"prompt": "hi"}  # the link's target is untouched


# -- adapters -----------------------------------------------------------------------

class _Evil:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _plant(home: Path, store: Store, good: str, parent: str, new: str, kind: str, marker: Path) -> None:
    """Copy checkpoint `good` to `new`, spoil it as `kind`, and record it as `parent`'s child."""
    folder = home / "checkpoints" / new
    shutil.copytree(home / "checkpoints" / good, folder)
    weights = folder / "adapter_model.safetensors"
    state = load_file(weights)
    a_key = next(k for k in state if "lora_A" in k)
    if kind == "pickle":
        weights.unlink()
        (folder / "adapter_model.bin").write_bytes(pickle.dumps(_Evil(marker)))
    elif kind == "garbage":
        weights.write_bytes(os.urandom(5000))
    elif kind == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif kind == "nan":
        state[a_key] = torch.full_like(state[a_key], float("nan"))
    elif kind == "rank":
        state[a_key] = torch.zeros(state[a_key].shape[0] + 1, state[a_key].shape[1])
    elif kind == "foreign_key":
        state["base_model.model.lm_head.weight"] = torch.zeros(4, 4)
    elif kind == "width":  # right rank, wrong input width: only the base model can tell
        state = {k: torch.zeros(v.shape[0], v.shape[1] + 3) if "lora_A" in k else v for k, v in state.items()}
    elif kind == "targets":
        cfg = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": ["no_such_proj"]}))
    if kind in ("nan", "rank", "foreign_key", "width"):
        save_file(state, str(weights))
    row = store.checkpoint(good)
    store.add_checkpoint(CheckpointRow(id=new, seq=store.next_checkpoint_seq(), parent=parent, batch_id=None,
                                       status="stable", created_at=row.created_at, path=str(folder),
                                       base_model=row.base_model, metrics={}), make_current=True)


KINDS = ["pickle", "garbage", "truncated", "nan", "rank", "foreign_key", "width", "targets"]


def test_bad_adapters_are_refused_and_the_last_good_one_keeps_serving(home, tmp_path):
    drop(home, "facts.jsonl", FACTS)
    run_once(home)
    store = Store(home / "memz.db")
    good = store.current_checkpoint()
    marker = tmp_path / "pickle-was-loaded"
    parent = good
    for kind in KINDS:  # a chain good <- pickle <- garbage <- ... <- targets, the last one current
        _plant(home, store, good, parent, f"B_{kind}", kind, marker)
        parent = f"B_{kind}"
    for kind in KINDS[:6]:  # caught by the checks alone, before any model is involved
        with pytest.raises(CheckpointError):
            load_checkpoint(home / "checkpoints" / f"B_{kind}")
    shutil.copytree(home / "checkpoints" / good, home / "checkpoints" / "planted")  # never recorded
    ask(home, "current", {"prompt": "Who is Orla?", "max_tokens": 2})
    ask(home, "pinned", {"prompt": "Who is Orla?", "max_tokens": 2, "checkpoint": "B_pickle"})
    ask(home, "pinned-width", {"prompt": "Who is Orla?", "max_tokens": 2, "checkpoint": "B_width"})

    assert run_once(home) == 0  # start: each bad current one is rolled back to its parent, in turn
    assert store.current_checkpoint() == good
    assert all(store.checkpoint(f"B_{k}").status == "rolled_back" for k in KINDS)
    metas = [home / "checkpoints" / f"B_{k}" / "meta.json" for k in KINDS]
    assert all(json.loads(m.read_text())["status"] == "rolled_back" for m in metas if m.exists())
    assert response(home, "current")["checkpoint"] == good
    assert response(home, "pinned")["error"]["code"] == "bad_checkpoint"
    assert "safetensors only" in response(home, "pinned")["error"]["message"]
    assert response(home, "pinned-width")["error"]["code"] == "bad_checkpoint"
    assert (home / "checkpoints" / ".orphaned" / "planted").is_dir()
    assert not marker.exists(), "a pickle was unpickled"

    runner = CliRunner()
    for kind in ("garbage", "nan"):  # memzctl refuses to make a bad one current
        result = runner.invoke(app, ["--home", str(home), "rollback", "--to", f"B_{kind}"])
        assert result.exit_code == 1 and "cannot serve" in result.output
    assert store.current_checkpoint() == good

    # Made current behind the running daemon's back, a bad one is rolled back on first use.
    store.set_current("B_targets")
    ask(home, "later", {"prompt": "Who is Orla?", "max_tokens": 2})
    assert run_once(home) == 0
    assert response(home, "later")["checkpoint"] == good and store.current_checkpoint() == good


def test_base_model_weights_must_be_safetensors(home, tmp_path, tiny_model_dir):
    pickled = tmp_path / "pickled-model"
    shutil.copytree(tiny_model_dir, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    write_config(home, base_model=str(pickled))
    with pytest.raises(ConfigError, match="safetensors"):
        Daemon(Home(home)).start()


def test_a_full_disk_while_a_checkpoint_is_written(home, monkeypatch):
    drop(home, "first.jsonl", FACTS[:1])
    run_once(home)
    store = Store(home / "memz.db")
    first = store.current_checkpoint()
    real_save = checkpoints_mod.save_file

    def save_then_fill_the_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(checkpoints_mod, "save_file", save_then_fill_the_disk)
    drop(home, "second.jsonl", FACTS[1:])
    assert run_once(home) == 0  # the daemon survives, and --once does not spin on the full disk
    staging = home / "checkpoints" / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []
    assert store.current_checkpoint() == first and len(store.checkpoints()) == 1
    batch = store.batch(2)
    assert batch["status"] == "pending" and "disk full" in batch["error"] and batch["attempts"] == 0
    assert store.queue_depth() == 1  # the example waits, it is not set aside as failed
    assert any(e["kind"] == "disk_full" for e in store.events(20))

    monkeypatch.setattr(checkpoints_mod, "save_file", real_save)  # space is freed
    assert run_once(home) == 0
    newest = store.checkpoints()[0]
    assert (newest.parent, newest.batch_id) == (first, 2) and store.current_checkpoint() == newest.id
    assert store.queue_depth() == 0


# -- the home -----------------------------------------------------------------------

def test_init_makes_a_home_private_to_its_user(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "new" / "home"
        result = CliRunner().invoke(app, ["init", str(target)])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert (target / "config.yaml").exists() and (target / "inbox").is_dir()


def test_a_trained_adapter_with_nan_weights_never_serves(home, monkeypatch):
    from memzd import daemon as daemon_mod

    real = daemon_mod.lora.adapter_state

    def poisoned(model, name):
        state = real(model, name)
        if name == daemon_mod.lora.TRAIN:  # as if the last optimizer step overflowed
            key = next(iter(state))
            state[key] = torch.full_like(state[key], float("nan"))
        return state

    monkeypatch.setattr(daemon_mod.lora, "adapter_state", poisoned)
    monkeypatch.setattr(daemon_mod, "MAX_ATTEMPTS", 1)  # set aside at the first failure
    drop(home, "facts.jsonl", FACTS)
    assert run_once(home) == 0
    store = Store(home / "memz.db")
    assert store.checkpoints() == [] and store.current_checkpoint() is None
    assert store.batch(1)["status"] == "failed" and "NaN" in store.batch(1)["error"]
    assert [p.name for p in (home / "checkpoints").iterdir() if not p.name.startswith(".")] == []
