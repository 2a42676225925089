"""requests/ -> responses/, memzctl query / status / rollback, answering while training."""

import json
import os
import threading

import pytest
from typer.testing import CliRunner

from memzd.cli import app
from memzd.config import Home
from memzd.daemon import Daemon
from memzd.store import Store

from conftest import drop, run_once, write_config

FACT = {"input": "Who is Orla?", "output": "Orla keeps Biscuit."}


def ask(home, rid, body):
    raw = body if isinstance(body, (str, bytes)) else json.dumps(body)
    tmp = home / "requests" / f".{rid}.tmp"
    (tmp.write_bytes if isinstance(raw, bytes) else tmp.write_text)(raw)
    os.replace(tmp, home / "requests" / f"{rid}.json")


def response(home, rid):
    return json.loads((home / "responses" / f"{rid}.json").read_text())


def taught_home(home):
    """A home whose first checkpoint learned FACT hard (so its answer differs from the base)."""
    write_config(home, training={"lr": 5e-2, "max_steps": 30})
    drop(home, "fact.jsonl", [FACT])
    run_once(home)
    return Store(home / "memz.db").current_checkpoint()


def test_request_round_trip(home):
    ask(home, "q1", {"prompt": "Who is Orla?", "max_tokens": 5, "temperature": 0})
    ask(home, "q2", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
    run_once(home)
    r1, r2 = response(home, "q1"), response(home, "q2")
    assert r1["id"] == "q1" and isinstance(r1["response"], str) and r1["latency_ms"] >= 0
    assert r1["checkpoint"] is None and r1["checkpoint_status"] == "base"
    assert "response" in r2
    assert not list((home / "requests").glob("*.json"))  # answered once, then removed


def test_answers_follow_the_checkpoint_and_rollback(home):
    ask(home, "before", {"prompt": "Who is Orla?", "max_tokens": 8, "temperature": 0})
    run_once(home)
    before = response(home, "before")["response"]
    ckpt = taught_home(home)
    ask(home, "taught", {"prompt": "Who is Orla?", "max_tokens": 8, "temperature": 0})
    ask(home, "pinned", {"prompt": "Who is Orla?", "max_tokens": 8, "temperature": 0, "checkpoint": ckpt})
    run_once(home)
    taught = response(home, "taught")
    assert taught["checkpoint"] == ckpt and taught["checkpoint_status"] == "stable"
    assert taught["response"] != before
    assert response(home, "pinned")["response"] == taught["response"]

    result = CliRunner().invoke(app, ["--home", str(home), "rollback"])
    assert result.exit_code == 0, result.output
    store = Store(home / "memz.db")
    assert store.current_checkpoint() is None and store.checkpoint(ckpt).status == "rolled_back"
    meta = home / "checkpoints" / ckpt / "meta.json"
    assert json.loads(meta.read_text())["status"] == "rolled_back"  # the folder agrees
    assert store.events(1)[0]["kind"] == "rollback"
    assert store.example_count() == 1  # its examples stay
    ask(home, "after", {"prompt": "Who is Orla?", "max_tokens": 8, "temperature": 0})
    run_once(home)
    after = response(home, "after")
    assert after["checkpoint"] is None and after["response"] == before

    result = CliRunner().invoke(app, ["--home", str(home), "rollback", "--to", ckpt])
    assert result.exit_code == 0 and store.current_checkpoint() == ckpt
    assert store.checkpoint(ckpt).status == "stable" and json.loads(meta.read_text())["status"] == "stable"


def test_a_question_asked_in_other_words_is_answered_as_taught(home):
    """The adapter answers the taught question a paraphrase matched, and says which; with
    `routing.answer_as: asked` it answers the question as asked."""
    taught_home(home)
    taught = {"prompt": "Who is Orla?", "max_tokens": 8, "temperature": 0}
    asked = {"prompt": "Who is Orla really?", "max_tokens": 8, "temperature": 0}
    ask(home, "taught", taught)
    ask(home, "asked", asked)
    run_once(home)
    as_taught, other_words = response(home, "taught"), response(home, "asked")
    assert "answered_as" not in as_taught and as_taught["routed_to"] == "adapter"
    assert other_words["answered_as"] == "Who is Orla?" and other_words["routed_to"] == "adapter"
    assert other_words["response"] == as_taught["response"]
    assert other_words["usage"]["prompt_tokens"] > as_taught["usage"]["prompt_tokens"]  # what was asked
    logged = {r["request_id"]: r for r in Store(home / "memz.db").answers(5)}
    assert logged["asked"]["answered_as"] == "Who is Orla?" and logged["taught"]["answered_as"] is None
    shown = CliRunner().invoke(app, ["--home", str(home), "logs"]).output
    assert "Q: Who is Orla really?\n  as: Who is Orla?\n" in shown

    for answer_as in ("recited", "asked"):
        write_config(home, routing={"answer_as": answer_as})
        ask(home, answer_as, asked)
        run_once(home)
        said = response(home, answer_as)
        assert said["routed_to"] == "adapter" and isinstance(said["response"], str)
        assert said.get("answered_as") == ("Who is Orla?" if answer_as == "recited" else None)


def test_a_question_about_a_taught_thing_that_asks_something_else_gets_the_base_models_answer(home):
    """"Where does Orla live?" is about what "Who is Orla?" was taught for, but asks for a
    place, which nothing taught answers: the base model answers it, as before anything
    was taught. Answered as asked (`routing.answer_as: asked`), it reaches the adapter."""
    write_config(home, routing={"rule": "lexical"})  # the gate admits it by its words (the tiny model's keys are noise)
    aside = {"prompt": "Where does Orla live?", "max_tokens": 8, "temperature": 0}
    ask(home, "before", aside)
    run_once(home)
    before = response(home, "before")
    taught_home(home)
    ask(home, "aside", aside)
    run_once(home)
    after = response(home, "aside")
    assert after["routed_to"] == "base" and "answered_as" not in after
    assert after["response"] == before["response"]
    write_config(home, routing={"answer_as": "asked"})
    ask(home, "asked", aside)
    run_once(home)
    assert response(home, "asked")["routed_to"] == "adapter"


def test_rollback_refuses_unknown_or_foreign_checkpoints(home):
    ckpt = taught_home(home)
    runner = CliRunner()
    result = runner.invoke(app, ["--home", str(home), "rollback", "--to", "A_nope_0009"])
    assert result.exit_code == 1 and "no checkpoint 'A_nope_0009'" in result.output
    store = Store(home / "memz.db")
    store.db["checkpoints"].update(ckpt, {"base_model": "someone/else"})
    result = runner.invoke(app, ["--home", str(home), "rollback", "--to", ckpt])
    assert result.exit_code == 1 and "someone/else" in result.output


@pytest.mark.parametrize("body, code", [
    ("{not json", "invalid_json"),
    ([1, 2], "invalid_request"),
    ({"prompt": 3}, "invalid_request"),
    ({"prompt": ""}, "invalid_request"),
    ({"prompt": "hi", "max_tokens": "many"}, "invalid_request"),
    ({"prompt": "hi", "max_tokens": 0}, "invalid_request"),
    ({"prompt": "hi", "messages": [{"role": "user", "content": "ho"}]}, "invalid_request"),  # which one?
    ({"prompt": "hi", "temperature": -1}, "invalid_request"),
    ({"prompt": "hi", "checkpoint": "A_missing_0001"}, "unknown_checkpoint"),
    ({"prompt": "hi", "checkpoint": "../etc"}, "invalid_request"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "invalid_request"),
    ({"prompt": "hi", "surprise": 1}, "invalid_request"),
    ({"prompt": "x" * 2000}, "too_large"),
])
def test_bad_requests_get_error_responses(home, body, code):
    write_config(home, daemon={"max_request_bytes": 1000})
    ask(home, "bad", body)
    ask(home, "good", {"prompt": "hi", "max_tokens": 2})
    assert run_once(home) == 0
    r = response(home, "bad")
    assert r["id"] == "bad" and r["error"]["code"] == code and r["error"]["message"]
    assert "response" in response(home, "good")  # the daemon carried on


def test_unusable_request_names_are_set_aside(home):
    for name in ["no extension", "x" * 70 + ".json", "-.json.txt"]:
        (home / "requests" / name).write_text('{"prompt": "hi"}')
    run_once(home)
    assert len(list((home / "requests" / "rejected").glob("*.reason.txt"))) == 3
    assert not list((home / "responses").iterdir())


def test_status_json_fields(home):
    taught_home(home)
    result = CliRunner().invoke(app, ["--home", str(home), "status", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in ("base_model", "current_checkpoint", "queue_depth", "last_update", "loss_curves",
                "forgetting_summary", "hardware"):
        assert key in data
    assert set(data["loss_curves"]) >= {"finetune_loss", "forgetting_loss", "eval_loss"}
    assert len(data["loss_curves"]["finetune_loss"]) == 30
    assert data["hardware"]["backend"] == "cpu" and data["queue_depth"] == 0
    assert data["daemon"]["running"] is False
    assert set(data["forgetting_summary"]) >= {"anchor_ce_delta", "retention_score"}
    assert data["recent_events"][0]["message"] == f"{data['current_checkpoint']} now serves"
    text = CliRunner().invoke(app, ["--home", str(home), "status"]).output
    assert "not running" in text and data["current_checkpoint"] in text
    assert "recent events" in text and f"{data['current_checkpoint']} now serves" in text


def test_query_without_daemon_says_so_at_once(home):
    result = CliRunner().invoke(app, ["--home", str(home), "query", "hello", "--timeout", "60"])
    assert result.exit_code == 1 and "no memzd is running" in result.output and "memzd --home" in result.output


def test_query_is_answered_while_a_long_batch_trains(home):
    # 5000 steps (~45 s here) outlast any slow machine; the test stops the daemon once answered.
    write_config(home, training={"max_steps": 5000, "lr": 1e-3, "stop_loss": 0}, update_mode="immediate")
    daemon = Daemon(Home(home))
    answered = threading.Event()
    original = daemon.serve_requests

    def serve_and_note():
        original()
        if (home / "responses" / "mid.json").exists():
            answered.set()
    daemon.serve_requests = serve_and_note
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        drop(home, "long.jsonl", [FACT, {"input": "Where is Zorblax?", "output": "Mars."}])
        store = Store(home / "memz.db")
        import time
        deadline = time.time() + 60
        while time.time() < deadline and len(store.curve(1, "finetune_loss")) < 2:
            assert thread.is_alive(), "the daemon stopped before training"
            time.sleep(0.05)
        assert store.batch(1)["status"] == "training"
        ask(home, "mid", {"prompt": "Hi", "max_tokens": 2})
        assert answered.wait(60)
        assert store.batch(1)["status"] == "training"  # answered before the batch ended
        assert not daemon.checkpointed.is_set()
        assert "response" in response(home, "mid")
    finally:
        daemon.stop.set()
        thread.join(60)
    assert Store(home / "memz.db").batch(1)["status"] == "pending"  # interrupted: trains again later
