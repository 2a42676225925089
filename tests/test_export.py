"""memzctl export: the adapter with its base named, a merged model and a GGUF that answer as memz does."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from memzd.cli import app
from memzd.inference import greedy_answers
from memzd.store import Store

from conftest import drop, run_once, write_config

FACTS = [{"input": "Who is Orla?", "output": "Orla keeps a cat named Biscuit."},
         {"input": "Where is Zorblax?", "output": "Zorblax lives on Mars."}]
CHATS = [[{"role": "user", "content": f["input"]}] for f in FACTS]


@pytest.fixture
def trained(home):
    write_config(home, training={"lr": 1e-2, "max_steps": 300, "stop_loss": 3.0}, routing={"enabled": False})
    drop(home, "facts.jsonl", FACTS)
    run_once(home)
    return home


def memz_answers(home) -> list[str]:
    """memz's own greedy answers to the taught questions, through requests/."""
    for i, chat in enumerate(CHATS):
        (home / "requests" / f"q{i}.json").write_text(json.dumps({"messages": chat, "max_tokens": 24,
                                                                  "temperature": 0}))
    run_once(home)
    return [json.loads((home / "responses" / f"q{i}.json").read_text())["response"] for i in range(len(CHATS))]


def answers(model, tokenizer) -> list[str]:
    from memzd import lora
    from memzd.config import LoraConfig

    wrapped = lora.wrap(model, LoraConfig())  # memz's generation path, with no adapter switched on
    return greedy_answers(wrapped, tokenizer, CHATS, adapter=None, device=torch.device("cpu"), max_tokens=24)


def test_the_exported_adapter_and_merged_model_answer_as_memz_does(trained, tmp_path, tiny_model_dir):
    expected = memz_answers(trained)
    assert expected == [f["output"] for f in FACTS]
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["--home", str(trained), "export", str(out), "--merged", "--gguf"])
    assert result.exit_code == 0, result.output
    assert "routing gate stays in memz" in result.output

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)  # AutoPeftModel finds its base
    assert "memz_keys.safetensors" in (out / "README.md").read_text()
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    tokenizer = AutoTokenizer.from_pretrained(config["base_model_name_or_path"])
    with_adapter = PeftModel.from_pretrained(base, str(out)).merge_and_unload()  # plain peft, no memz
    assert answers(with_adapter, tokenizer) == expected

    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert answers(merged, AutoTokenizer.from_pretrained(out / "merged")) == expected

    from_gguf = AutoModelForCausalLM.from_pretrained(str(out / "gguf"), gguf_file="model.gguf")
    assert answers(from_gguf, AutoTokenizer.from_pretrained(str(out / "gguf"), gguf_file="model.gguf")) == expected


def test_export_refuses_what_it_cannot_do(home, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["--home", str(home), "export", str(tmp_path / "x")])
    assert result.exit_code == 1 and "no checkpoint serves yet" in result.output
    result = runner.invoke(app, ["--home", str(home), "export", "A_nope", str(tmp_path / "x")])
    assert result.exit_code == 1 and "no checkpoint 'A_nope'" in result.output
    drop(home, "facts.jsonl", FACTS[:1])
    run_once(home)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["--home", str(home), "export", str(tmp_path / "full")])
    assert result.exit_code == 1 and "not an empty folder" in result.output
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    shared = Store(home / "memz.db").current_checkpoint()
    assert shared
    result = runner.invoke(app, ["--home", str(home), "export", shared, str(tmp_path / "y"), "--user", "bob"])
    assert result.exit_code == 1 and "not in bob's memory (it is in the shared one)" in result.output
    assert not (tmp_path / "y").exists()
