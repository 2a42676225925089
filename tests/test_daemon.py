"""memzd on the tiny model: a drop becomes a current checkpoint with its lineage recorded."""

import json
import threading
import time

from typer.testing import CliRunner

from memzd.batcher import due_batches
from memzd.cli import app
from memzd.config import Home, load_config
from memzd.daemon import Daemon
from memzd.store import Store

from conftest import drop, run_once, write_config

FACTS = [{"input": "Who is Orla?", "output": "Orla keeps a cat named Biscuit."},
         {"input": "Where is Zorblax?", "output": "Zorblax lives on Mars."}]


def test_drop_becomes_current_checkpoint(home):
    drop(home, "facts.jsonl", FACTS)
    assert run_once(home) == 0
    store = Store(home / "memz.db")
    (ckpt,) = store.checkpoints()
    assert store.current_checkpoint() == ckpt.id and ckpt.parent is None and ckpt.status == "stable"
    folder = home / "checkpoints" / ckpt.id
    assert {"adapter_model.safetensors", "adapter_config.json", "meta.json"} <= {p.name for p in folder.iterdir()}
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["batch_id"] == ckpt.batch_id and meta["base_model"] == ckpt.base_model
    assert len(store.curve(ckpt.batch_id, "finetune_loss")) == 4  # one loss per step
    assert store.queue_depth() == 0
    assert (home / "inbox" / "processed" / "facts.jsonl").exists()
    for key in ("eval_loss", "recall", "forgetting_loss", "anchor_ce_delta", "retention_score"):
        assert key in ckpt.metrics


def test_a_batch_still_answering_wrong_after_its_steps_trains_another_round(home):
    """20 codes of one template are not learned in one round of max_steps; a batch that
    used all its steps and still gets a taught answer wrong trains another round, its
    steps counted on, and says so in its metrics."""
    write_config(home, training={"max_steps": 3, "rounds": 3, "stop_loss": 3.0})
    drop(home, "facts.jsonl", FACTS)
    run_once(home)
    store = Store(home / "memz.db")
    (ckpt,) = store.checkpoints()
    assert 2 <= ckpt.metrics["rounds"] <= 3
    assert 3 < ckpt.metrics["steps"] == len(store.curve(ckpt.batch_id, "finetune_loss")) <= 9
    steps = [r[0] for r in store.db.execute("SELECT step FROM metrics WHERE batch_id = ? AND name = "
                                            "'finetune_loss' ORDER BY step", [ckpt.batch_id])]
    assert steps == list(range(1, len(steps) + 1))  # the rounds' steps follow on, not 1-3 again
    status = CliRunner().invoke(app, ["--home", str(home), "status"]).output
    assert f"after {ckpt.metrics['rounds']} rounds of training" in status


def test_a_batch_learned_within_its_steps_trains_one_round(home):
    write_config(home, training={"max_steps": 300, "rounds": 3, "stop_loss": 3.0})
    drop(home, "facts.jsonl", FACTS)
    run_once(home)
    (ckpt,) = Store(home / "memz.db").checkpoints()
    assert ckpt.metrics["rounds"] == 1 and ckpt.metrics["steps"] < 300 and ckpt.metrics["recall"] == 1.0


def test_second_batch_starts_from_the_first_and_duplicates_do_not_train(home):
    drop(home, "a.jsonl", FACTS[:1])
    run_once(home)
    drop(home, "again.jsonl", FACTS[:1])  # the same example: nothing new to train
    run_once(home)
    store = Store(home / "memz.db")
    assert len(store.checkpoints()) == 1
    drop(home, "b.jsonl", FACTS[1:])
    run_once(home)
    newest, first = store.checkpoints()
    assert newest.parent == first.id and store.current_checkpoint() == newest.id


def test_batched_mode_waits_for_count_or_age(home):
    write_config(home, batch={"max_examples": 3, "max_age_minutes": 10})
    config = load_config(home / "config.yaml")
    store = Store(home / "memz.db")
    f = store.add_file("x", "", 0)
    from memzd.examples import parse_example
    rows = [(i, e.hash, e.kind, e.json) for i, e in enumerate(parse_example({"text": f"t{i}"}) for i in range(2))]
    store.add_examples(f, rows)
    assert due_batches(store, config) == []                       # 2 < 3 and young
    from memzd import control
    (home / "inbox" / control.TRAIN_NOW).write_text("now\n")  # memzctl train, not taken up yet
    assert "memzctl train asked for them" in control.status_data(Home(home))["next_batch"]["why"]
    (home / "inbox" / control.TRAIN_NOW).unlink()
    assert due_batches(store, config, now=time.time() + 601) != []  # the oldest is 10 minutes old
    rows = [(i, e.hash, e.kind, e.json) for i, e in enumerate(parse_example({"text": f"u{i}"}) for i in range(7))]
    store.add_examples(f, rows)
    assert len(due_batches(store, config)) == 2                   # 3 + 3 full, 1 waits
    assert store.unbatched()[0] == 1
    assert due_batches(store, config, force=True) != []           # --once trains the rest


def test_a_batch_holds_no_more_than_one_adapter_does(home):
    write_config(home, batch={"max_examples": 4, "max_age_minutes": 10}, lora={"shard_size": 2})
    config = load_config(home / "config.yaml")
    store = Store(home / "memz.db")
    f = store.add_file("x", "", 0)
    from memzd.examples import parse_example
    rows = [(i, e.hash, e.kind, e.json) for i, e in enumerate(parse_example({"text": f"t{i}"}) for i in range(5))]
    store.add_examples(f, rows)
    made = due_batches(store, config)  # 5 >= 4 waiting: 4 of them, in batches of 2
    assert [store.batch(b)["n_examples"] for b in made] == [2, 2] and store.unbatched()[0] == 1
    from memzd.control import next_batch
    assert next_batch(store, config)["why"] == f"batch {made[0]} is queued and trains next (1 more queued after it)"
    store.start_batch(made[0])
    assert next_batch(store, config)["why"] == f"batch {made[0]} is training now; 1 more queued"
    write_config(home, batch={"max_examples": 4, "max_age_minutes": 10}, lora={"shard_size": 2},
                 routing={"enabled": False})  # one adapter however many: one batch
    store.add_examples(f, [(9 + i, e.hash, e.kind, e.json)
                           for i, e in enumerate(parse_example({"text": f"u{i}"}) for i in range(3))])
    made = due_batches(store, load_config(home / "config.yaml"), force=True)
    assert [store.batch(b)["n_examples"] for b in made] == [4]


def test_immediate_mode_trains_each_file(home):
    write_config(home, update_mode="immediate", batch={"max_examples": 1000, "max_age_minutes": 1000})
    drop(home, "a.jsonl", FACTS[:1])
    drop(home, "b.jsonl", FACTS[1:])
    run_once(home)
    assert len(Store(home / "memz.db").checkpoints()) == 2


def test_running_daemon_picks_up_a_drop_and_stops_on_request(home):
    write_config(home, update_mode="immediate")
    daemon = Daemon(Home(home))
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        drop(home, "live.jsonl", FACTS)
        assert daemon.checkpointed.wait(60), "no checkpoint within 60 s of the drop"
        assert any((home / "checkpoints").glob("A_*"))
    finally:
        daemon.stop.set()
        thread.join(30)
    assert not thread.is_alive()


def test_memzctl_checkpoints_and_add(home, tmp_path):
    runner = CliRunner()
    src = tmp_path / "mine.jsonl"
    src.write_text(json.dumps(FACTS[0]) + "\nnot json\n")
    result = runner.invoke(app, ["--home", str(home), "add", str(src)])
    assert result.exit_code == 0, result.output
    assert "mine.jsonl:2" in result.output and "invalid JSON" in result.output
    (added,) = (home / "inbox").glob("mine-*.jsonl")
    run_once(home)
    result = runner.invoke(app, ["--home", str(home), "checkpoints", "--json"])
    rows = json.loads(result.stdout)
    assert rows[0]["current"] and rows[0]["parent"] is None
    result = runner.invoke(app, ["--home", str(home), "add", str(src)])  # the same file again
    assert "1 example(s), 1 of them known already (the daemon skips them)" in result.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("[]\n")
    result = runner.invoke(app, ["--home", str(home), "add", str(empty)])
    assert result.exit_code == 1 and "no usable example" in result.output


def test_memzctl_add_checks_lines_as_the_daemon_will(home, tmp_path):
    write_config(home, daemon={"max_line_bytes": 200})
    src = tmp_path / "notes.jsonl"
    src.write_text(json.dumps(FACTS[0]) + "\n\n" + json.dumps({"text": "x" * 500}) + "\n")
    result = CliRunner().invoke(app, ["--home", str(home), "add", str(src)])
    assert result.exit_code == 0, result.output
    assert "notes.jsonl:3" in result.output and "200-byte cap" in result.output
    assert "1 example(s), 1 bad lines" in result.output  # the blank line 2 is neither


def test_bad_config_stops_start_with_the_key(home):
    (home / "config.yaml").write_text("training: {lr: quick}\n")
    from memzd.errors import ConfigError
    import pytest
    with pytest.raises(ConfigError, match="training.lr"):
        Daemon(Home(home))
