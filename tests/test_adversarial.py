"""What an attacker (or an unlucky user) did to memz, and what memz must do about it.

Each case of the issue's adversarial table that once failed: the test does
what was done and checks that the daemon stays up, nothing accepted is lost,
and the error names the file, line or field.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from memzd import checkpoints as checkpoints_mod
from memzd.cli import app
from memzd.config import Home
from memzd.daemon import Daemon
from memzd.files import write_json_atomic
from memzd.store import Store

from conftest import Running, drop, run_once, wait_until, write_config

FACTS = [{"input": "Who is Orla?", "output": "Orla keeps a cat named Biscuit."},
         {"input": "Where is Zorblax?", "output": "Zorblax lives on Mars."}]


def stored_inputs(home: Path) -> list[str]:
    store = Store(home / "memz.db")
    return sorted(json.loads(r[0]).get("input", "") for r in store.db.execute("SELECT data FROM examples"))


# -- huge inputs ------------------------------------------------------------------------

def test_a_megabyte_question_is_refused_at_once_and_the_daemon_answers_the_next(home):
    big = "Tell me about Orla. " * 45_000  # ~900 KB: under the request byte cap, far over the token cap
    write_json_atomic(home / "requests" / "huge.json", {"prompt": big})
    write_json_atomic(home / "requests" / "next.json", {"prompt": "Hi", "max_tokens": 2})
    t0 = time.monotonic()
    assert run_once(home) == 0
    assert time.monotonic() - t0 < 60
    huge = json.loads((home / "responses" / "huge.json").read_text())
    assert huge["error"]["code"] == "too_long" and "tokens" in huge["error"]["message"]
    assert "response" in json.loads((home / "responses" / "next.json").read_text())


def test_an_example_of_a_megabyte_trains_in_bounded_time_and_says_it_was_cut(home):
    big = {"input": "Orla's diary: " + "a day like any other. " * 40_000 + "Who is Orla?",
           "output": "Orla keeps a cat named Biscuit."}
    drop(home, "big.jsonl", [big, FACTS[1]])
    t0 = time.monotonic()
    assert run_once(home) == 0
    assert time.monotonic() - t0 < 120
    store = Store(home / "memz.db")
    (ckpt,) = store.checkpoints()
    assert ckpt.metrics["n_cut"] == 1
    cut = [e for e in store.events(50) if e["kind"] == "cut"]
    assert cut and "training.max_seq_len" in cut[0]["message"]


# -- files that are still being written ----------------------------------------------------

def test_a_file_appended_by_a_writer_that_keeps_it_open_is_read_whole(home):
    write_config(home, daemon={"stable_seconds": 0.3, "rescan_seconds": 0.1})
    lines = [{"input": f"Question {i}?", "output": f"Answer {i}."} for i in range(10)]
    with Running(home) as running:
        path = home / "inbox" / "slow.jsonl"
        with open(path, "w") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")
                f.flush()
                time.sleep(0.5)  # longer than stable_seconds: only the open handle says "not done"
        wait_until(lambda: (home / "inbox" / "processed" / "slow.jsonl").exists(), "the file to be read",
                   running=running)
    assert stored_inputs(home) == sorted(line["input"] for line in lines)
    assert Store(home / "memz.db").files()[0]["accepted"] == 10


def test_a_file_appended_line_by_line_loses_no_line(home):
    write_config(home, daemon={"stable_seconds": 0.3, "rescan_seconds": 0.1})
    lines = [{"input": f"Question {i}?", "output": f"Answer {i}."} for i in range(8)]
    with Running(home) as running:
        for line in lines:  # `echo ... >> file`, with pauses
            with open(home / "inbox" / "appended.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
            time.sleep(0.45)
        wait_until(lambda: len(stored_inputs(home)) == len(lines) and not (home / "inbox" / "appended.jsonl").exists(),
                   "every line to be stored", running=running)
    assert stored_inputs(home) == sorted(line["input"] for line in lines)


def test_a_request_written_in_place_is_read_once_it_is_whole(home):
    with Running(home) as running:
        body = json.dumps({"prompt": "Hi", "max_tokens": 2})
        with open(home / "requests" / "inplace.json", "w") as f:  # echo ... > requests/x.json
            f.write(body[:10])
            f.flush()
            time.sleep(0.4)
            f.write(body[10:])
        wait_until((home / "responses" / "inplace.json").exists, "the answer", running=running)
    assert "response" in json.loads((home / "responses" / "inplace.json").read_text())


# -- the disk ------------------------------------------------------------------------------

@pytest.mark.parametrize("failure", [
    SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"),
    PermissionError(errno.EACCES, "Permission denied"),  # checkpoints/ briefly read-only
])
def test_a_checkpoint_that_cannot_be_written_is_retried_not_failed(home, monkeypatch, failure):
    real_save = checkpoints_mod.save_file

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(checkpoints_mod, "save_file", fail)
    drop(home, "facts.jsonl", FACTS)
    assert run_once(home) == 0
    store = Store(home / "memz.db")
    batch = store.batch(1)
    assert batch["status"] == "pending" and batch["attempts"] == 0 and "could not write checkpoint" in batch["error"]
    assert store.queue_depth() == 2 and store.checkpoints() == []
    monkeypatch.setattr(checkpoints_mod, "save_file", real_save)  # the disk is back
    assert run_once(home) == 0
    assert store.current_checkpoint() and store.queue_depth() == 0


def test_a_full_disk_while_a_file_is_read_keeps_the_file_for_later(home, monkeypatch):
    real_add = Store.add_examples

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Store, "add_examples", full)
    drop(home, "facts.jsonl", FACTS)
    assert run_once(home) == 0
    assert (home / "inbox" / "facts.jsonl").exists()  # not rejected, not moved
    assert not (home / "inbox" / "rejected" / "facts.jsonl").exists()
    assert any(e["kind"] == "disk_full" for e in Store(home / "memz.db").events(20))
    monkeypatch.setattr(Store, "add_examples", real_add)  # space is freed
    assert run_once(home) == 0
    assert (home / "inbox" / "processed" / "facts.jsonl").exists() and len(stored_inputs(home)) == 2


# -- odd files -------------------------------------------------------------------------------

def test_a_253_character_file_name_with_a_bad_line_is_handled_once(home):
    name = "n" * 247 + ".jsonl"
    tmp = home / "inbox" / ".long.tmp"
    tmp.write_text(json.dumps(FACTS[0]) + "\n{not json\n")
    os.replace(tmp, home / "inbox" / name)
    assert run_once(home) == 0
    (processed,) = (home / "inbox" / "processed").iterdir()  # kept under a name every file system takes
    assert name.endswith(processed.name) and processed.name.endswith(".jsonl")
    errors = [p for p in (home / "inbox" / "rejected").iterdir() if p.name.endswith(".errors.jsonl")]
    assert len(errors) == 1 and json.loads(errors[0].read_text().splitlines()[0])["line"] == 2
    assert len(Store(home / "memz.db").files()) == 1  # read once, not retried forever


def test_a_5000_digit_integer_rejects_its_line_not_the_file(home, tmp_path):
    drop(home, "digits.jsonl", [FACTS[0], '{"input": "x", "output": ' + "9" * 5000 + "}", FACTS[1]])
    assert run_once(home) == 0
    assert stored_inputs(home) == sorted(f["input"] for f in FACTS)
    errors = (home / "inbox" / "rejected" / "digits.jsonl.errors.jsonl").read_text()
    assert json.loads(errors.splitlines()[0])["line"] == 2
    source = tmp_path / "digits.jsonl"
    source.write_text(json.dumps(FACTS[0]) + "\n" + '{"input": ' + "9" * 5000 + "}\n")
    result = CliRunner().invoke(app, ["--home", str(home), "add", str(source)])
    assert "Traceback" not in result.output and ":2" in result.output


def test_a_whitespace_only_file_says_so(home):
    drop(home, "blank.jsonl", ["   ", ""])
    assert run_once(home) == 0
    why = (home / "inbox" / "rejected" / "blank.jsonl.reason.txt").read_text()
    assert "only blank lines" in why and not (home / "inbox" / "rejected" / "blank.jsonl.errors.jsonl").exists()


# -- checkpoints planted or damaged -----------------------------------------------------------

def _trained(home: Path) -> tuple[Store, str]:
    drop(home, "facts.jsonl", FACTS)
    run_once(home)
    store = Store(home / "memz.db")
    return store, store.current_checkpoint()


def test_an_adapter_whose_config_asks_for_a_pissa_init_leaves_the_base_alone(home):
    store, ckpt = _trained(home)
    config_path = home / "checkpoints" / ckpt / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["init_lora_weights"] = "pissa"
    config_path.write_text(json.dumps(config))
    daemon = Daemon(Home(home))
    daemon.start()
    try:
        weights = {n: p.detach().clone() for n, p in daemon.adapters.model.named_parameters() if "base_layer" in n}
        assert daemon.adapters.serving() == ckpt
        after = dict(daemon.adapters.model.named_parameters())
        assert all(torch.equal(w, after[n]) for n, w in weights.items()), "loading the adapter changed the base"
    finally:
        daemon.shutdown()


def test_weights_changed_on_disk_with_finite_values_are_refused(home):
    store, ckpt = _trained(home)
    weights = home / "checkpoints" / ckpt / "adapter_model.safetensors"
    state = load_file(str(weights))
    save_file({k: v + 0.5 for k, v in state.items()}, str(weights), metadata={"format": "pt"})  # finite, wrong
    write_json_atomic(home / "requests" / "q.json", {"prompt": "Who is Orla?", "max_tokens": 2})
    assert run_once(home) == 0
    assert store.checkpoint(ckpt).status == "rolled_back" and store.current_checkpoint() is None
    assert json.loads((home / "responses" / "q.json").read_text())["routed_to"] == "base"
    assert any("sha256" in e["message"] for e in store.events(20))


def test_a_checkpoint_folder_linked_out_of_the_home_is_not_served(home, tmp_path):
    store, ckpt = _trained(home)
    outside = tmp_path / "elsewhere"
    shutil.move(str(home / "checkpoints" / ckpt), outside)
    (home / "checkpoints" / ckpt).symlink_to(outside, target_is_directory=True)
    assert run_once(home) == 0
    assert store.checkpoint(ckpt).status == "rolled_back" and store.current_checkpoint() is None


# -- requests -----------------------------------------------------------------------------------

def test_a_lone_surrogate_in_a_prompt_is_refused_clearly(home):
    (home / "requests" / "s.json").write_bytes(b'{"prompt": "caf\\ud800"}')
    assert run_once(home) == 0
    error = json.loads((home / "responses" / "s.json").read_text())["error"]
    assert error["code"] == "invalid_request" and "surrogate" in error["message"]


# -- the home ---------------------------------------------------------------------------------------

def test_a_database_made_by_the_daemon_is_private_even_in_an_open_folder(home):
    os.chmod(home, 0o777)
    (home / "memz.db").unlink(missing_ok=True)
    drop(home, "facts.jsonl", FACTS[:1])
    assert run_once(home) == 0
    assert stat.S_IMODE((home / "memz.db").stat().st_mode) == 0o600


def test_a_corrupt_database_is_refused_with_a_clear_message(home):
    run_once(home)
    for suffix in ("-wal", "-shm"):
        Path(str(home / "memz.db") + suffix).unlink(missing_ok=True)
    (home / "memz.db").write_bytes(b"this is not sqlite" * 1000)
    result = CliRunner().invoke(app, ["--home", str(home), "status"])
    assert result.exit_code == 1 and "not a readable memz database" in result.output
    assert "Traceback" not in result.output
