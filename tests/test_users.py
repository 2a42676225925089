"""One memory per user: `user:NAME` examples train that user's own lineage on the shared base.

What a user checks: alice's fact comes back for alice and never for bob, the
response names the checkpoint that answered, and rolling back bob's lineage
leaves alice's alone.
"""

from __future__ import annotations

import json

from typer.testing import CliRunner

from memzd.store import Store

from conftest import drop, run_once, write_config

ALICE = {"input": "Who is Orla?", "output": "Orla keeps a cat named Biscuit.", "tags": ["user:alice"]}
BOB = {"input": "Where is Zorblax?", "output": "Zorblax lives on Mars.", "tags": ["user:bob"]}
LEARN = {"lr": 1e-2, "max_steps": 300, "stop_loss": 3.0}  # the tiny model learns each answer word for word


def ask(home, rid: str, body: dict) -> dict:
    (home / "requests" / f"{rid}.json").write_text(json.dumps(body))
    run_once(home)
    return json.loads((home / "responses" / f"{rid}.json").read_text())


def test_a_users_fact_is_answered_for_that_user_only(home):
    write_config(home, training=LEARN, routing={"enabled": False})  # every question reaches a user's adapter
    drop(home, "alice.jsonl", [ALICE])
    drop(home, "bob.jsonl", [BOB])
    assert run_once(home) == 0
    store = Store(home / "memz.db")
    alice, bob = store.current_checkpoint("alice"), store.current_checkpoint("bob")
    assert alice and bob and alice != bob and store.current_checkpoint() is None  # nothing shared was taught
    assert store.checkpoint(alice).user == "alice" and store.checkpoint(bob).user == "bob"

    question = {"prompt": "Who is Orla?", "max_tokens": 40, "temperature": 0}
    for_alice = ask(home, "a", {**question, "user": "alice"})
    assert for_alice["response"] == ALICE["output"] and for_alice["checkpoint"] == alice
    for_bob = ask(home, "b", {**question, "user": "bob"})
    assert for_bob["checkpoint"] == bob and ALICE["output"] not in for_bob["response"]
    anonymous = ask(home, "c", question)
    assert anonymous["checkpoint"] is None and anonymous["routed_to"] == "base"
    for rid, user in (("d", "bob"), ("e", None)):  # pinning alice's checkpoint does not open her memory
        pinned = ask(home, rid, {**question, "checkpoint": alice, **({"user": user} if user else {})})
        assert pinned["error"]["code"] == "unknown_checkpoint" and "another user's memory" in pinned["error"]["message"]
    assert ask(home, "f", {**question, "checkpoint": alice, "user": "alice"})["response"] == ALICE["output"]


def test_the_same_text_taught_by_two_users_trains_both_and_shared_stays_shared(home):
    drop(home, "both.jsonl", [ALICE, {**ALICE, "tags": ["user:bob"]}, {"input": "Hi?", "output": "Hello."}])
    assert run_once(home) == 0
    store = Store(home / "memz.db")
    assert store.example_count() == 3  # not deduplicated across users
    assert {b["user"] for b in store.db["batches"].rows} == {None, "alice", "bob"}
    assert store.current_checkpoint() and store.current_checkpoint("alice") and store.current_checkpoint("bob")


def test_rolling_back_bob_leaves_alice_alone(home):
    drop(home, "alice.jsonl", [ALICE])
    drop(home, "bob.jsonl", [BOB])
    run_once(home)
    store = Store(home / "memz.db")
    alice, bob = store.current_checkpoint("alice"), store.current_checkpoint("bob")
    result = CliRunner().invoke(__import__("memzd.cli", fromlist=["app"]).app,
                                ["--home", str(home), "rollback", "--user", "bob"])
    assert result.exit_code == 0, result.output
    assert store.current_checkpoint("bob") is None and store.checkpoint(bob).status == "rolled_back"
    assert store.current_checkpoint("alice") == alice and store.checkpoint(alice).status == "stable"

    def events(*user: str) -> list[str]:
        result = CliRunner().invoke(__import__("memzd.cli", fromlist=["app"]).app,
                                    ["--home", str(home), "status", "--json", *user])
        return [e["message"] for e in json.loads(result.stdout)["recent_events"]]

    assert any("by hand" in m for m in events("--user", "bob"))  # each sees their own lineage's events
    assert not any("by hand" in m or bob in m for m in events("--user", "alice") + events())
    assert any(alice in m for m in events("--user", "alice")) and not any(alice in m for m in events())


def test_an_example_naming_two_users_is_refused_with_its_line(home):
    drop(home, "two.jsonl", [{**ALICE, "tags": ["user:alice", "user:bob"]}, BOB])
    run_once(home)
    errors = (home / "inbox" / "rejected" / "two.jsonl.errors.jsonl").read_text()
    record = json.loads(errors.splitlines()[0])
    assert record["line"] == 1 and "several users" in record["reason"]
