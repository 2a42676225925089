"""The SQLite store: migrations, dedup, batches, lineage, concurrent readers."""

import sqlite3
import threading

from memzd.examples import parse_example, question_key
from memzd.store import CheckpointRow, Store, migrations


def _rows(*examples):
    out = []
    for i, e in enumerate(examples, 1):
        ex = parse_example(e)
        out.append((i, ex.hash, ex.kind, ex.json, ex.user, question_key(ex.data)))  # as the inbox stores it
    return out


def _taught(store, file, *examples):
    """A first batch of `examples` from `file`, trained into the stable checkpoint A_x_0001."""
    store.add_examples(store.add_file(file, "", 1), _rows(*examples))
    batch = store.create_batch()
    store.start_batch(batch)
    store.add_checkpoint(CheckpointRow("A_x_0001", 1, None, batch, "stable", "now", "p", "base", {}), True)


def test_fresh_db_is_migrated_and_wal(tmp_path):
    store = Store(tmp_path / "memz.db")
    names = {m.name for m in migrations.applied(store.db)}
    assert {"m001_files_examples", "m002_batches_checkpoints"} <= names
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for table in ("files", "examples", "batches", "checkpoints", "metrics", "events", "state"):
        assert store.db[table].exists()
    store.close()
    Store(tmp_path / "memz.db").close()  # reopening applies nothing twice


def test_same_example_is_stored_once(tmp_path):
    store = Store(tmp_path / "memz.db")
    f = store.add_file("a.jsonl", "", 1)
    a = {"input": "q", "output": "a"}
    assert store.add_examples(f, _rows(a, {"output": "a", "input": "q", "tags": ["x"]})) == (1, 1)
    assert store.add_examples(store.add_file("b.jsonl", "", 1), _rows(a)) == (0, 1)
    assert store.example_count() == 1
    assert store.queue_depth() == 1


def test_batches_and_lineage(tmp_path):
    store = Store(tmp_path / "memz.db")
    f = store.add_file("a.jsonl", "", 1)
    store.add_examples(f, _rows(*[{"text": f"t{i}"} for i in range(5)]))
    b1 = store.create_batch(limit=3)
    assert store.unbatched()[0] == 2 and store.queue_depth() == 5
    assert store.next_batch() == b1
    store.start_batch(b1)
    row = CheckpointRow("A_x_0001", 1, None, b1, "stable", "now", "p", "base", {"recall": 1.0})
    store.add_checkpoint(row, make_current=True)
    assert store.current_checkpoint() == "A_x_0001"
    assert store.queue_depth() == 2
    assert store.batch(b1)["status"] == "done"
    b2 = store.create_batch()
    store.add_checkpoint(CheckpointRow("A_x_0002", 2, "A_x_0001", b2, "stable", "now", "p", "base", {}), True)
    assert [c.id for c in store.lineage("A_x_0002")] == ["A_x_0002", "A_x_0001"]
    assert len(store.replay_sample("A_x_0002", 10, seed=0, exclude_batch=b2)) == 3
    assert store.checkpoint("A_x_0001").metrics == {"recall": 1.0}


def test_reader_works_while_writer_holds_a_transaction(tmp_path):
    store = Store(tmp_path / "memz.db")
    store.db.execute("BEGIN IMMEDIATE")
    store.db.execute("INSERT INTO events (at, kind, message, data) VALUES ('t', 'k', 'm', '{}')")
    reader = sqlite3.connect(tmp_path / "memz.db", timeout=1)
    assert reader.execute("SELECT count(*) FROM events").fetchone()[0] == 0  # WAL: no lock wait
    store.db.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM events").fetchone()[0] == 1


def test_stores_opened_at_once_on_a_fresh_db_migrate_once(tmp_path):
    # The daemon and memzctl (or a test) may open a new home's database at the
    # same moment; each must wait for the other's migration, not repeat it.
    for attempt in range(10):
        path = tmp_path / f"memz{attempt}.db"
        errors, start = [], threading.Barrier(6)

        def open_store():
            start.wait()
            try:
                Store(path).close()
            except Exception as exc:  # noqa: BLE001 - the test reports every failure
                errors.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        store = Store(path)
        assert [m.name for m in migrations.applied(store.db)] == [
            "m001_files_examples", "m002_batches_checkpoints", "m004_users", "m005_forget", "m006_question_keys", "m007_answers",
            "m008_answered_as"]
        store.close()


def test_an_update_reteaches_the_other_phrasing_with_its_system_turn(tmp_path):
    """The old fact was also taught as a conversation with a system turn; the update asks
    the other phrasing. That question joins the update's batch with the new answer, and
    with its own system turn: it is asked that way."""
    store = Store(tmp_path / "memz.db")
    system = "You are Orla's house assistant."
    cat = {"input": "What is the name of Orla's cat?", "output": "Orla's cat is called Biscuit."}
    other_way = {"messages": [{"role": "system", "content": system},
                              {"role": "user", "content": "What did Orla name her cat?"},
                              {"role": "assistant", "content": "She named her cat Biscuit."}]}
    _taught(store, "first.jsonl", cat, other_way)
    renamed = {"input": cat["input"], "output": "Orla's cat is now called Pepper.", "tags": ["pets"]}
    store.add_examples(store.add_file("update.jsonl", "", 1), _rows(renamed))
    b2 = store.create_batch()
    gone = store.supersede(b2, "A_x_0001")
    assert cat in gone and other_way in gone
    retaught = {"system": system, "input": "What did Orla name her cat?", "output": renamed["output"],
                "tags": ["pets"]}
    assert retaught in store.batch_examples(b2)


def test_a_statement_said_again_supersedes_the_earlier_one_and_keeps_the_rest(tmp_path):
    """A chat said two things; a later note changes one of them. The chat leaves training
    (returned, so that its keys leave too), what else it said is taught again in the new
    batch, from the chat's file and line, and the event quotes both sentences."""
    store = Store(tmp_path / "memz.db")
    chat = {"messages": [{"role": "user", "content": "My sister Ilse lives in Lisbon. I work as a nurse."},
                         {"role": "assistant", "content": "Got it."}], "tags": ["family"]}
    unrelated = {"text": "My brother Piet lives in Lisbon."}
    _taught(store, "chat.jsonl", chat, unrelated)
    update = {"text": "Update: my sister Ilse lives in Madrid now."}
    store.add_examples(store.add_file("update.jsonl", "", 1), _rows(update))
    b2 = store.create_batch()
    assert store.supersede(b2, "A_x_0001") == [chat]
    rest = {"messages": [{"role": "user", "content": "I work as a nurse."}, {"role": "assistant", "content": "Got it."}],
            "tags": ["family"]}
    asked = {"input": "My sister Ilse lives where?", "output": "Your sister Ilse lives in Madrid now."}
    assert store.batch_examples(b2) == [update, rest, asked]  # the old question, answered anew
    assert [e["file"] for e in store.find_examples("nurse")] == ["chat.jsonl"]
    assert [e["data"] for e in store.find_examples("Lisbon")] == [unrelated]  # the brother's stays
    (event,) = [e["message"] for e in store.events(20) if e["kind"] == "supersede"]
    assert "'My sister Ilse lives in Lisbon.' is said again as 'My sister Ilse lives in Madrid now.'" in event
    assert f"the rest of it is taught as #{store.find_examples('nurse')[0]['id']}" in event
    assert "'My sister Ilse lives where?' is taught with the new answer" in event
    # said again in the same words by the next batch: nothing more to supersede
    store.start_batch(b2)
    store.add_checkpoint(CheckpointRow("A_x_0002", 2, "A_x_0001", b2, "stable", "now", "p", "base", {}), True)
    store.add_examples(store.add_file("again.jsonl", "", 1), _rows({"text": "My sister Ilse lives in Madrid."}))
    assert store.supersede(store.create_batch(), "A_x_0002") == []


def test_a_statement_taken_back_leaves_training_and_its_question_gets_the_new_answer(tmp_path):
    store = Store(tmp_path / "memz.db")
    chat = {"messages": [{"role": "user", "content": "I work at Fenwick & Co."}, {"role": "assistant", "content": "Noted."}]}
    _taught(store, "chat.jsonl", chat)
    note = {"text": "I no longer work at Fenwick & Co."}
    store.add_examples(store.add_file("note.jsonl", "", 1), _rows(note))
    b2 = store.create_batch()
    assert store.supersede(b2, "A_x_0001") == [chat]
    assert store.batch_examples(b2) == [note, {"input": "I work where?", "output": "You no longer work at Fenwick & Co."}]
    (event,) = [e["message"] for e in store.events(20) if e["kind"] == "supersede"]
    assert "'I work at Fenwick & Co.' is taken back by 'I no longer work at Fenwick & Co.'" in event


def test_a_note_said_again_supersedes_a_question_and_answer_and_asks_its_question_anew(tmp_path):
    store = Store(tmp_path / "memz.db")
    asked = {"system": "You are my assistant.", "input": "Who is my dentist?", "output": "Your dentist is Dr. Okonkwo."}
    _taught(store, "qa.jsonl", asked)
    note = {"text": "I switched dentists: my dentist is Dr. Haverkamp.", "tags": ["health"]}
    store.add_examples(store.add_file("note.jsonl", "", 1), _rows(note))
    b2 = store.create_batch()
    assert store.supersede(b2, "A_x_0001") == [asked]
    again = {"system": "You are my assistant.", "input": "Who is my dentist?",
             "output": "Your dentist is Dr. Haverkamp.", "tags": ["health"]}
    assert store.batch_examples(b2) == [note, again]


def test_a_superseded_answer_sent_again_stays_superseded(tmp_path):
    """Biscuit, then Pepper; then a script sends the first file again: the update stands
    (a forgotten or superseded example stays out of training however often it comes back)."""
    store = Store(tmp_path / "memz.db")
    cat = {"input": "What is the name of Orla's cat?", "output": "Orla's cat is called Biscuit."}
    renamed = {"input": cat["input"], "output": "Orla's cat is now called Pepper."}
    parent = None
    for seq, example in enumerate([cat, renamed], 1):
        store.add_examples(store.add_file(f"{seq}.jsonl", "", 1), _rows(example))
        batch = store.create_batch()
        store.supersede(batch, parent)
        store.start_batch(batch)
        store.add_checkpoint(CheckpointRow(f"A_x_{seq:04d}", seq, parent, batch, "stable", "now", "p", "base", {}),
                             True)
        parent = f"A_x_{seq:04d}"
    rows = _rows(cat)
    assert store.left_training([r[1] for r in rows]) == 1
    assert store.add_examples(store.add_file("1-again.jsonl", "", 1), rows) == (0, 1)
    assert store.queue_depth() == 0 and [e["data"] for e in store.find_examples()] == [renamed]


def test_examples_of_a_rolled_back_checkpoint_train_again_when_dropped_again(tmp_path):
    store = Store(tmp_path / "memz.db")
    a = {"input": "Who is Orla?", "output": "A painter."}
    store.add_examples(store.add_file("a.jsonl", "", 1), _rows(a))
    b1 = store.create_batch()
    store.start_batch(b1)
    store.add_checkpoint(CheckpointRow("A_x_0001", 1, None, b1, "rolled_back", "now", "p", "base", {}), False)
    assert store.queue_depth() == 0  # it trained, into a checkpoint that does not serve
    assert store.add_examples(store.add_file("a-again.jsonl", "", 1), _rows(a)) == (1, 0)
    assert store.queue_depth() == 1 and store.batch_examples(store.create_batch()) == [a]
    # one that serves stays a duplicate
    store.add_checkpoint(CheckpointRow("A_x_0002", 2, None, store.next_batch(), "stable", "now", "p", "base", {}),
                         True)
    assert store.add_examples(store.add_file("a-third.jsonl", "", 1), _rows(a)) == (0, 1)
