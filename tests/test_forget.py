"""memzctl forget: examples leave all future training and the model stops giving their answers."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from memzd import gate
from memzd.checkpoints import load_checkpoint
from memzd.cli import app
from memzd.config import Home
from memzd.daemon import Daemon
from memzd.store import Store

from conftest import drop, run_once, write_config

ORLA = {"input": "Who is Orla?", "output": "Orla keeps a cat named Biscuit."}
ZORBLAX = {"input": "Where is Zorblax?", "output": "Zorblax lives on Mars."}
LEARN = {"lr": 1e-2, "max_steps": 300, "stop_loss": 3.0}  # the tiny model learns each answer word for word
CAT = {"messages": [{"role": "user", "content": "My cat is called Biscuit."},
                    {"role": "assistant", "content": "Noted."}]}


def keys_of(home, checkpoint_id: str) -> list[list[str]]:
    """The words of each routing key a checkpoint holds."""
    *_, keys = load_checkpoint(home / "checkpoints" / checkpoint_id, None, root=home / "checkpoints")
    return gate.KeyMemory.from_file(*keys).words


def ask(home, rid: str, prompt: str) -> str:
    (home / "requests" / f"{rid}.json").write_text(json.dumps({"prompt": prompt, "max_tokens": 40,
                                                                "temperature": 0}))
    run_once(home)
    return json.loads((home / "responses" / f"{rid}.json").read_text())["response"]


def memzctl(home, *args: str):
    result = CliRunner().invoke(app, ["--home", str(home), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_forget_makes_the_model_stop_giving_the_answer_and_keeps_the_others(home):
    write_config(home, training=LEARN, routing={"enabled": False})  # the adapter alone must forget
    drop(home, "facts.jsonl", [ORLA, ZORBLAX])
    run_once(home)
    assert ask(home, "before", "Who is Orla?") == ORLA["output"]
    store = Store(home / "memz.db")
    taught = store.current_checkpoint()

    listed = memzctl(home, "forget", "Biscuit", "--dry-run")
    assert "Who is Orla?" in listed and "nothing changed" in listed
    assert store.find_examples("Biscuit") != []  # a dry run changes nothing

    said = memzctl(home, "forget", "Biscuit")
    assert "1 example(s) forgotten" in said
    run_once(home)  # the daemon trains the forget batch
    newest = store.checkpoints()[0]
    assert store.current_checkpoint() == newest.id and newest.parent == taught
    assert newest.metrics["forgotten_gone"] == 1.0
    assert ORLA["output"] not in ask(home, "after", "Who is Orla?")
    assert ask(home, "other", "Where is Zorblax?") == ZORBLAX["output"]  # the other fact stays
    kinds = [e["kind"] for e in store.events(50)]
    assert kinds.count("forget") == 2  # asked for, and done by a checkpoint
    assert all("Biscuit" not in json.dumps(e) for e in store.replay_sample(newest.id, 100, seed=0))
    assert store.queue_depth() == 0


def test_a_forgotten_statement_takes_the_questions_written_about_it_along(home):
    """A stated fact is trained and keyed through the questions memz writes about it
    ("My cat is called what?"): forgetting it must drop their keys and retrain them too."""
    write_config(home, training=LEARN)
    drop(home, "chat.jsonl", [CAT, ZORBLAX])
    run_once(home)
    store = Store(home / "memz.db")
    assert len(keys_of(home, store.current_checkpoint())) == 3  # the chat, its written question, Zorblax
    assert "Biscuit" in ask(home, "before", "My cat is called what?")  # a question memz wrote about it
    assert "1 example(s) forgotten" in memzctl(home, "forget", "Biscuit")
    run_once(home)
    newest = store.checkpoints()[0]
    assert store.current_checkpoint() == newest.id and newest.metrics["forgotten_gone"] == 1.0
    assert keys_of(home, newest.id) == [["zorblax"]]  # no key of the cat is left
    assert "Biscuit" not in ask(home, "after", "My cat is called what?")
    assert ask(home, "other", "Where is Zorblax?") == ZORBLAX["output"]


def test_forget_finds_the_keys_of_questions_an_earlier_release_wrote(home, monkeypatch):
    """The rules that write questions about a statement change between releases: the keys of
    a statement taught under older rules leave when it is forgotten under today's."""
    from memzd import examples

    today = examples.derived
    monkeypatch.setattr(examples, "derived", lambda data: [  # an earlier release's rule
        {**d, "input": d["input"].replace("what?", "which name?")} for d in today(data)])
    write_config(home, training=LEARN)
    drop(home, "chat.jsonl", [CAT, ZORBLAX])
    run_once(home)
    store = Store(home / "memz.db")
    written = ["called", "name", "@me", "@recall", "@my:cat"]  # "... called which name?"
    assert written in keys_of(home, store.current_checkpoint())
    monkeypatch.setattr(examples, "derived", today)
    assert "1 example(s) forgotten" in memzctl(home, "forget", "Biscuit")
    run_once(home)
    newest = store.checkpoints()[0]
    assert store.current_checkpoint() == newest.id
    assert keys_of(home, newest.id) == [["zorblax"]]  # no key of the cat is left, under either rule


def test_an_example_forgotten_before_it_trains_never_trains(home):
    write_config(home, batch={"max_examples": 100, "max_age_minutes": 600})
    drop(home, "facts.jsonl", [ORLA, ZORBLAX])
    run_once(home)
    more = home.parent / "more.jsonl"
    more.write_text(json.dumps({"input": "What is Pim?", "output": "Pim is a dog."}) + "\n")
    memzctl(home, "add", str(more))  # inbox/more-<8 hex>.jsonl
    store = Store(home / "memz.db")
    daemon = Daemon(Home(home))
    daemon.start()
    try:
        daemon.ingest()  # read, not trained: batched mode waits for more
    finally:
        daemon.shutdown()
    assert store.queue_depth() == 1
    assert "2 example(s) would be forgotten" in memzctl(home, "forget", "--file", "facts.jsonl", "--dry-run")
    said = memzctl(home, "forget", "--file", "more.jsonl")  # the name it was added by
    assert "none had trained yet" in said and store.queue_depth() == 0
    before = len(store.checkpoints())
    run_once(home)
    assert len(store.checkpoints()) == before  # nothing left to train


def test_forgets_asked_for_before_the_daemon_trains_share_one_batch(home):
    drop(home, "facts.jsonl", [ORLA, ZORBLAX])
    run_once(home)
    store = Store(home / "memz.db")
    memzctl(home, "forget", "Biscuit")
    memzctl(home, "forget", "Mars")
    forgets = [b for b in store.db["batches"].rows_where("kind = 'forget'")]
    assert len(forgets) == 1 and forgets[0]["n_examples"] == 2
    assert {e["forget_batch"] for e in store.db["examples"].rows} == {forgets[0]["id"]}


def test_forget_needs_something_to_match(home):
    result = CliRunner().invoke(app, ["--home", str(home), "forget"])
    assert result.exit_code == 1 and "TEXT, --id N, --file NAME or --tag T" in result.output
    run_once(home)
    assert "nothing matches" in memzctl(home, "forget", "no such words")


def test_a_later_answer_to_the_same_question_supersedes_the_earlier_one(home):
    write_config(home, training=LEARN, routing={"enabled": False})
    cat = {"input": "What is the name of Orla's cat?", "output": "Orla's cat is called Biscuit."}
    drop(home, "first.jsonl", [cat, ZORBLAX])
    run_once(home)
    assert ask(home, "before", "What is the name of Orla's cat?") == cat["output"]
    renamed = {"input": "What is the name of Orla's cat", "output": "Orla's cat is now called Pepper."}
    drop(home, "update.jsonl", [renamed])  # the same question (spacing and end punctuation aside)
    run_once(home)
    assert ask(home, "after", renamed["input"]) == renamed["output"]
    store = Store(home / "memz.db")
    (event,) = [e for e in store.events(50) if e["kind"] == "supersede"]
    assert "superseded" in event["message"]
    replay = store.replay_sample(store.current_checkpoint(), 100, seed=0)
    assert all("Biscuit" not in json.dumps(e) for e in replay)  # the old answer is never replayed
    assert ask(home, "other", "Where is Zorblax?") == ZORBLAX["output"]
    said = memzctl(home, "forget", "Biscuit", "--dry-run")  # nothing left to forget, and why
    assert "already left training" in said and "superseded" in said


def test_a_fact_said_again_in_a_later_note_replaces_what_a_chat_said(home):
    """Said in a chat, then changed by a note: the question written about the chat's
    statement gets the new answer, and the old statement is never replayed."""
    write_config(home, training=LEARN, routing={"enabled": False})
    chat = {"messages": [{"role": "user", "content": "My sister Ilse lives in Lisbon."},
                         {"role": "assistant", "content": "Got it."}]}
    drop(home, "chat.jsonl", [chat, ZORBLAX])
    run_once(home)
    assert ask(home, "before", "My sister Ilse lives where?") == "Your sister Ilse lives in Lisbon."
    drop(home, "later.jsonl", [{"text": "Actually, my sister Ilse lives in Madrid now."}])
    run_once(home)
    assert ask(home, "after", "My sister Ilse lives where?") == "Your sister Ilse lives in Madrid now."
    store = Store(home / "memz.db")
    (event,) = [e["message"] for e in store.events(50) if e["kind"] == "supersede"]
    assert "'My sister Ilse lives in Lisbon.' is said again as 'My sister Ilse lives in Madrid now.'" in event
    replay = store.replay_sample(store.current_checkpoint(), 100, seed=0)
    assert replay and all("Lisbon" not in json.dumps(e) for e in replay)
    assert ask(home, "other", "Where is Zorblax?") == ZORBLAX["output"]


def test_within_one_batch_the_answer_sent_last_stands(home):
    write_config(home, training=LEARN, routing={"enabled": False})
    colours = [{"input": "What colour is Quenby's bicycle?", "output": f"Quenby's bicycle is {c}."}
               for c in ("red", "green")]
    drop(home, "a.jsonl", colours + [ZORBLAX])
    drop(home, "b.jsonl", [{**colours[0], "output": "Quenby's bicycle is yellow."}])  # read after a.jsonl
    run_once(home)
    assert ask(home, "q", "What colour is Quenby's bicycle?") == "Quenby's bicycle is yellow."
    store = Store(home / "memz.db")
    events = [e["message"] for e in store.events(50) if e["kind"] == "supersede"]
    assert len(events) == 2 and all("superseded by #4" in m and "same batch" in m for m in events), events
    assert ask(home, "z", "Where is Zorblax?") == ZORBLAX["output"]
    said = memzctl(home, "forget", "green", "--dry-run")
    assert "already left training" in said


def test_a_forgotten_example_sent_again_stays_forgotten_and_the_event_says_so(home):
    drop(home, "facts.jsonl", [ORLA, ZORBLAX])
    run_once(home)
    memzctl(home, "forget", "Biscuit")
    run_once(home)
    store = Store(home / "memz.db")
    before = len(store.checkpoints())
    again = home.parent / "facts-again.jsonl"  # a script sends the whole file again
    again.write_text("".join(json.dumps(e) + "\n" for e in [ORLA, ZORBLAX]))
    added = memzctl(home, "add", str(again))
    assert "2 example(s), 2 of them known already" in added and "1 forgotten or superseded" in added
    run_once(home)
    assert len(store.checkpoints()) == before and store.queue_depth() == 0
    (event,) = [e for e in store.events(50) if e["kind"] == "file" and "facts-again" in e["message"]]
    assert "0 new, 2 duplicate (1 of them forgotten or superseded" in event["message"]
