"""A growing lineage holds its facts in several adapters (lora.shard_size): a full
adapter stays frozen, the next batch trains a fresh one, and routing picks."""

from __future__ import annotations

import json

import torch
from peft import PeftModel

from typer.testing import CliRunner

from memzd.checkpoints import load_checkpoint
from memzd.cli import app
from memzd.model import load_base
from memzd.store import Store

from conftest import drop, run_once, write_config

LEARN = {"lr": 1e-2, "max_steps": 300, "stop_loss": 3.0}  # the tiny model learns each answer word for word
FIRST = [{"input": "Who is Orla?", "output": "Orla keeps a cat named Biscuit."},
         {"input": "Where is Zorblax?", "output": "Zorblax lives on Mars."}]
SECOND = [{"input": "What does Quennel sell?", "output": "Quennel sells blue lanterns."},
          {"input": "When does Tarvish open?", "output": "Tarvish opens at noon."}]


def ask(home, rid: str, prompt: str) -> dict:
    (home / "requests" / f"{rid}.json").write_text(json.dumps({"prompt": prompt, "max_tokens": 40,
                                                                "temperature": 0}))
    run_once(home)
    return json.loads((home / "responses" / f"{rid}.json").read_text())


def test_a_full_adapter_becomes_a_shard_and_both_keep_answering(home, tiny_model_dir):
    write_config(home, training=LEARN, lora={"shard_size": 2})
    drop(home, "first.jsonl", FIRST)
    run_once(home)
    store = Store(home / "memz.db")
    first = store.current_checkpoint()
    _, first_weights, _, _ = load_checkpoint(home / "checkpoints" / first, None, root=home / "checkpoints")
    drop(home, "second.jsonl", SECOND)
    run_once(home)
    second = store.checkpoints()[0]
    assert store.current_checkpoint() == second.id and second.parent == first
    meta = json.loads((home / "checkpoints" / second.id / "meta.json").read_text())
    assert meta["shards"] == [first] and second.metrics["adapters"] == 2 and second.metrics["questions_held"] == 2
    status = CliRunner().invoke(app, ["--home", str(home), "status"])
    assert "2 adapters" in status.output, status.output

    for example in FIRST + SECOND:  # each fact from the adapter that holds it
        said = ask(home, example["input"].split()[-1].strip("?"), example["input"])
        assert said["response"] == example["output"] and said["routed_to"] == "adapter"

    # The frozen adapter is as it was; the new one learned the second batch alone (no
    # replay of the frozen one's facts): loaded with plain peft, it does not know Orla.
    _, now, _, _ = load_checkpoint(home / "checkpoints" / first, None, root=home / "checkpoints")
    assert all(torch.equal(first_weights[k], now[k]) for k in first_weights)
    base = load_base(str(tiny_model_dir))
    alone = PeftModel.from_pretrained(base.model, home / "checkpoints" / second.id)
    chat = base.tokenizer.apply_chat_template([{"role": "user", "content": "Who is Orla?"}],
                                              add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = alone.generate(**chat, max_new_tokens=12, do_sample=False)
    assert "Biscuit" not in base.tokenizer.decode(out[0, chat["input_ids"].shape[1]:])

    # An export of it says where the rest of the lineage's facts are.
    result = CliRunner().invoke(app, ["--home", str(home), "export", str(home.parent / "out")])
    assert result.exit_code == 0, result.output
    assert f"frozen adapters {first}" in " ".join(result.output.split())
    assert f"`{first}`" in (home.parent / "out" / "README.md").read_text()


def test_a_lineage_under_the_shard_size_keeps_one_adapter(home):
    write_config(home, training=LEARN, lora={"shard_size": 10})
    drop(home, "first.jsonl", FIRST)
    run_once(home)
    drop(home, "second.jsonl", SECOND)
    run_once(home)
    newest = Store(home / "memz.db").checkpoints()[0]
    meta = json.loads((home / "checkpoints" / newest.id / "meta.json").read_text())
    assert meta["shards"] == [] and "adapters" not in newest.metrics


def test_an_update_of_a_fact_a_frozen_shard_holds_is_answered_by_the_new_adapter(home):
    write_config(home, training=LEARN, lora={"shard_size": 2})
    drop(home, "first.jsonl", FIRST)
    run_once(home)
    renamed = {"input": "Who is Orla?", "output": "Orla keeps a cat named Pepper."}
    drop(home, "update.jsonl", [renamed, SECOND[0]])
    run_once(home)
    store = Store(home / "memz.db")
    newest = store.checkpoints()[0]
    assert newest.metrics["adapters"] == 2
    said = ask(home, "orla", "Who is Orla?")
    assert said["response"] == renamed["output"]  # not the frozen shard's Biscuit
    assert ask(home, "zorblax", "Where is Zorblax?")["response"] == FIRST[1]["output"]  # the shard still answers
    assert any(e["kind"] == "supersede" for e in store.events(50))


def test_an_update_asked_one_way_also_retires_the_other_phrasings_a_frozen_shard_holds(home):
    """The old fact was taught in two phrasings; the update re-asks one: the other
    phrasing's key leaves the frozen shard too, so it no longer brings back the old value.
    The same value about something else stays."""
    write_config(home, training=LEARN, lora={"shard_size": 2})
    cat = {"input": "What is the name of Orla's cat?", "output": "Orla's cat is called Biscuit."}
    other_way = {"input": "What did Orla name her cat?", "output": "She named her cat Biscuit."}
    bram = {"input": "What is Bram's dog called?", "output": "Bram's dog is called Biscuit."}
    drop(home, "first.jsonl", [cat, other_way, bram])
    run_once(home)
    assert ask(home, "before", other_way["input"])["response"] == other_way["output"]
    renamed = {"input": cat["input"], "output": "Orla's cat is now called Pepper."}
    drop(home, "update.jsonl", [renamed, SECOND[0]])
    run_once(home)
    store = Store(home / "memz.db")
    assert store.checkpoints()[0].metrics["adapters"] == 2
    superseded = [e["message"] for e in store.events(50) if e["kind"] == "supersede"]
    assert len(superseded) == 2 and sum("asked another way" in m for m in superseded) == 1, superseded
    # The other phrasing is taught again, with the new answer: it gives it word for word.
    assert any("taught with the new answer" in m for m in superseded), superseded
    assert {"input": other_way["input"], "output": renamed["output"]} in store.batch_examples(
        store.checkpoints()[0].batch_id)
    assert ask(home, "after", other_way["input"])["response"] == renamed["output"]
    status = CliRunner().invoke(app, ["--home", str(home), "status"]).output
    assert "recent events" in status and "asked another way" in " ".join(status.split())
    assert ask(home, "bram", bram["input"])["response"] == bram["output"]  # the shard still answers it


def test_new_lora_settings_keep_the_old_adapter_as_a_shard(home):
    """Changing lora.r starts a fresh adapter; what the old one holds is still answered."""
    write_config(home, training=LEARN, lora={"shard_size": 0, "r": 8})
    drop(home, "first.jsonl", FIRST)
    run_once(home)
    write_config(home, lora={"r": 4})
    drop(home, "second.jsonl", SECOND)
    run_once(home)
    newest = Store(home / "memz.db").checkpoints()[0]
    assert newest.metrics["adapters"] == 2
    assert ask(home, "orla", "Who is Orla?")["response"] == FIRST[0]["output"]
    assert ask(home, "quennel", "What does Quennel sell?")["response"] == SECOND[0]["output"]
