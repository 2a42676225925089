"""The base model in the precision asked for, quantised or spread over devices, and said so."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from memzd import lora
from memzd.config import Config, build
from memzd.errors import ConfigError
from memzd.model import load_base, resolve_dtype
from memzd.store import Store

from conftest import drop, run_once, write_config

FACTS = [{"input": "Who is Orla?", "output": "Orla keeps a cat named Biscuit."},
         {"input": "Where is Zorblax?", "output": "Zorblax lives on Mars."}]


def test_auto_picks_the_precision_each_device_is_good_at():
    assert resolve_dtype("auto", torch.device("cpu")) == "fp32"
    assert resolve_dtype("auto", torch.device("mps")) == "bf16"
    assert resolve_dtype("fp16", torch.device("cpu")) == "fp16"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA: auto is bf16 (fp16 without bf16) on a GPU")
def test_auto_on_cuda_is_half_precision():
    assert resolve_dtype("auto", torch.device("cuda")) in ("bf16", "fp16")


def test_a_bf16_base_keeps_lora_in_fp32_and_trains_and_serves(home):
    write_config(home, base_dtype="bf16", update_mode="immediate")
    drop(home, "facts.jsonl", FACTS)
    (home / "requests" / "q.json").write_text(json.dumps({"prompt": "Who is Orla?", "max_tokens": 8}))
    assert run_once(home) == 0
    store = Store(home / "memz.db")
    ckpt = store.current_checkpoint()
    assert ckpt and store.checkpoint(ckpt).metrics["finetune_loss"] is not None
    hardware = store.get_json("hardware")  # memzctl status shows it
    assert hardware["dtype"] == "bf16" and hardware["memory_bytes"] > 0
    meta = json.loads((home / "checkpoints" / ckpt / "meta.json").read_text())
    assert meta["base"]["dtype"] == "bf16"  # and the lineage records it
    assert "response" in json.loads((home / "responses" / "q.json").read_text())


def test_bf16_and_fp32_bases_give_close_losses(tiny_model_dir):
    from memzd import tokens
    from memzd.trainer import train

    losses, memory = {}, {}
    for dtype in ("fp32", "bf16"):
        base = load_base(str(tiny_model_dir), "cpu", dtype)
        memory[dtype] = base.info["memory_bytes"]
        cfg = Config()
        model = lora.wrap(base.model, cfg.lora)
        torch.manual_seed(0)
        lora.start_training(model, cfg.lora, None)
        assert {p.dtype for n, p in model.named_parameters() if p.requires_grad} == {torch.float32}
        cfg.training.max_steps, cfg.training.stop_loss, cfg.training.precision = 6, 0.0, "fp32"
        enc = [tokens.encode(e, base.tokenizer, 512) for e in FACTS]
        losses[dtype] = train(model, enc, cfg.training, pad_id=base.tokenizer.pad_token_id, device=base.device).losses
    assert all(abs(a - b) / a < 0.05 for a, b in zip(losses["fp32"], losses["bf16"])), losses
    assert memory["bf16"] < 0.6 * memory["fp32"], memory  # the base takes half the memory


def test_quantisation_is_refused_off_cuda_with_what_to_do(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: bitsandbytes may load it")
    with pytest.raises(ConfigError, match="needs a CUDA GPU.*base_dtype: bf16"):
        load_base(str(tiny_model_dir), "cpu", "fp32", "4bit")


def test_device_map_through_accelerate_and_bad_values_named(tiny_model_dir):
    base = load_base(str(tiny_model_dir), "cpu", "fp32", device_map="auto:1,2")
    assert base.info["device_map"] == "auto:1,2" and next(base.model.parameters()).device.type == "cpu"
    with pytest.raises(ConfigError, match="device_map"):
        build(Config, {"device_map": "everywhere"})
    with pytest.raises(ConfigError, match="base_dtype"):
        build(Config, {"base_dtype": "int3"})


def test_a_base_folder_that_is_no_model_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="without config.json"):
        load_base(str(tmp_path), "cpu")
    with pytest.raises(ConfigError, match="no such folder"):  # a path that is not there: said, no hub lookup
        load_base(str(tmp_path / "nowhere"), "cpu")


def _hub_without_network(monkeypatch, tmp_path):
    """No hub to reach (a port nothing listens on), a hub cache of our own, and the
    offline switches the fixtures set taken off, as on a laptop without network."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    cache = tmp_path / "hub"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    return cache


def test_a_hub_id_neither_cached_nor_reachable_is_refused_at_once(monkeypatch, tmp_path):
    _hub_without_network(monkeypatch, tmp_path)
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="not in the local cache and 127.0.0.1 cannot be reached"):
        load_base("someorg/no-such-model", "cpu")
    assert time.perf_counter() - started < 20  # not the hub client's ~50 s of retries


def test_a_hub_id_in_the_local_cache_loads_without_the_network(monkeypatch, tmp_path, tiny_model_dir):
    cache = _hub_without_network(monkeypatch, tmp_path)
    snapshot = cache / "models--someorg--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (cache / "models--someorg--tiny" / "refs").mkdir()
    (cache / "models--someorg--tiny" / "refs" / "main").write_text("0" * 40)
    started = time.perf_counter()
    base = load_base("someorg/tiny", "cpu")
    assert base.name == "someorg/tiny" and base.info["parameters"] > 0
    assert time.perf_counter() - started < 10  # no retries against the hub it cannot reach


def test_a_lora_module_the_base_lacks_is_refused_by_name(tiny_model_dir):
    from memzd import lora
    from memzd.config import LoraConfig

    base = load_base(str(tiny_model_dir), "cpu")
    with pytest.raises(ConfigError, match="lora.target_modules: 'bogus_proj' is no module.*q_proj"):
        lora.wrap(base.model, LoraConfig(target_modules=["q_proj", "bogus_proj"]))
