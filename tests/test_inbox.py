"""From a dropped file to committed examples: shapes, bad lines, dedup, stability."""

import json
import logging
import os

import pytest

from memzd.config import Home
from memzd.errors import ExampleError
from memzd.examples import parse_example
from memzd.inbox import ingest_file
from memzd.store import Store
from memzd.watch import StableFiles, Watcher

from conftest import drop


@pytest.fixture
def h(tmp_path):
    home = Home(tmp_path / "h")
    home.ensure()
    return home


def test_all_four_shapes_are_accepted():
    kinds = [parse_example(e).kind for e in [
        {"input": "q", "output": "a", "system": "s", "tags": ["user:alice"]},
        {"prompt": "p", "completion": "c"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"text": "plain"},
    ]]
    assert kinds == ["io", "prompt", "messages", "text"]


def test_what_a_user_states_with_no_reply_is_a_note():
    chat = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "I drive an old blue Fiat."},
                         {"role": "user", "content": "Do you know my car?"},
                         {"role": "user", "content": "My gym locker number is 4471."}],
            "system": "A diary.", "tags": ["diary"]}
    got = parse_example(chat)
    assert got.kind == "text"
    assert got.data == {"text": "I drive an old blue Fiat. My gym locker number is 4471.", "tags": ["diary"]}
    with_reply = parse_example({"messages": chat["messages"][1:2] + [{"role": "assistant", "content": "Noted."}],
                                "system": "A diary."})
    assert with_reply.kind == "messages" and with_reply.data["system"] == "A diary."


def test_a_writers_own_keys_are_let_be():
    got = parse_example({"input": "q", "output": "a", "id": 7, "source": "notes app", "message": "x"})
    assert got.kind == "io" and got.data == {"input": "q", "output": "a"}  # and the hash ignores them


@pytest.mark.parametrize("obj, words", [
    ([1, 2], "JSON object"),
    ({"input": "q"}, "output"),
    ({"input": "", "output": "a"}, "empty"),
    ({"input": 3, "output": "a"}, "string"),
    ({"foo": 1}, "fits no shape"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "role"),
    ({"text": "x", "input": "q", "output": "a"}, "several shapes"),
    ({"input": "q", "output": "a", "tags": "x"}, "tags"),
    ({"prompt": "p", "completion": "c", "tagz": ["x"]}, "unknown field 'tagz': did you mean 'tags'"),
    ({"input": "q", "outputs": "a"}, "unknown field 'outputs': did you mean 'output'"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "the user states nothing"),
    ({"messages": [{"role": "user", "content": "What is my cat called?"}]}, "the user states nothing"),
])
def test_bad_examples_say_why(obj, words):
    with pytest.raises(ExampleError, match=words):
        parse_example(obj)


def test_good_lines_kept_bad_lines_reported_with_numbers(h):
    store = Store(h.db_path)
    path = drop(h.root, "mixed.jsonl", [{"input": "q1", "output": "a1"}, "{broken", {"input": 5, "output": "x"},
                                        "", {"text": "ok"}])
    result = ingest_file(path, store, h)
    assert (result.accepted, result.rejected) == (2, 2)
    assert (h.processed / "mixed.jsonl").exists() and not path.exists()
    errors = [json.loads(l) for l in (h.rejected / "mixed.jsonl.errors.jsonl").read_text().splitlines()]
    assert [e["line"] for e in errors] == [2, 3]
    assert "invalid JSON" in errors[0]["reason"] and "'input'" in errors[1]["reason"]
    assert store.example_count() == 2


def test_same_file_twice_trains_once(h):
    store = Store(h.db_path)
    lines = [{"input": "q", "output": "a"}]
    ingest_file(drop(h.root, "a.jsonl", lines), store, h)
    second = ingest_file(drop(h.root, "a.jsonl", lines), store, h)
    assert (second.accepted, second.duplicates) == (0, 1)
    assert store.example_count() == 1
    assert len(list(h.processed.iterdir())) == 2  # both files kept, none overwritten


def test_a_line_appended_while_the_file_is_moved_comes_back_to_the_inbox(h, monkeypatch):
    # `echo ... >> file` can land between the read and the move out of the inbox:
    # the line is in the moved file, and must not be lost there.
    store = Store(h.db_path)
    path = drop(h.root, "notes.jsonl", [{"input": "q0", "output": "a0"}])
    finish = store.finish_file

    def finish_while_someone_appends(*args):
        finish(*args)
        with open(path, "a") as f:
            f.write(json.dumps({"input": "q1", "output": "a1"}) + "\n")

    monkeypatch.setattr(store, "finish_file", finish_while_someone_appends)
    first = ingest_file(path, store, h)
    assert first.accepted == 1
    (late,) = [p for p in h.inbox.iterdir() if p.is_file()]
    monkeypatch.undo()
    assert ingest_file(late, store, h).accepted == 1
    assert sorted(json.loads(r["data"])["input"] for r in store.db.query("select data from examples")) == ["q0", "q1"]


def test_file_with_no_usable_line_is_rejected_whole(h):
    store = Store(h.db_path)
    path = drop(h.root, "bad.jsonl", ["nope", "[]"])
    result = ingest_file(path, store, h)
    assert result.accepted == 0 and result.reason
    assert (h.rejected / "bad.jsonl").exists()
    assert (h.rejected / "bad.jsonl.reason.txt").read_text().strip()


def test_stable_file_rule_waits_for_a_growing_file(h):
    clock = [0.0]
    stable = StableFiles(1.0, clock=lambda: clock[0])
    path = h.inbox / "slow.jsonl"
    path.write_text('{"text": "a"}\n')
    (h.inbox / ".hidden.jsonl").write_text("x")
    (h.inbox / "copying.jsonl.part").write_text("x")
    (h.inbox / "w.tmp").write_text("x")
    assert stable.ready(h.inbox) == []
    clock[0] = 0.5
    with open(path, "a") as f:
        f.write('{"text": "b"}\n')
    os.utime(path, ns=(1, 10**9 * 5))
    assert stable.ready(h.inbox) == []  # it changed: the wait starts again
    clock[0] = 1.2
    assert stable.ready(h.inbox) == []
    clock[0] = 1.6
    assert stable.ready(h.inbox) == [path]  # only the stable .jsonl, never the ignored names


def test_a_watcher_stops_without_an_error_in_the_log(tmp_path, caplog):
    """watchdog's inotify emitter reports a read while stopping as an ERROR; memzd stops
    on every --once run, so the log must not cry wolf (a real watchdog error still shows)."""
    w = Watcher([tmp_path])
    w.start()
    (tmp_path / "a.jsonl").write_text("{}\n")
    assert w.wake.wait(5)
    w.stop()
    inotify = logging.getLogger("watchdog.observers.inotify")
    inotify.error("InotifyEmitter.queue_events() called when the thread is inactive")
    inotify.error("inotify watch limit reached")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["inotify watch limit reached"]
