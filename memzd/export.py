"""Taking a checkpoint out of memz: the adapter with its base named, a merged model, a GGUF.

- `export(...)` writes the PEFT adapter (its `base_model_name_or_path` set to a
  base transformers can load) and a README saying how to load it;
- `merged=True` also loads the base, merges the adapter into it and writes a
  plain transformers model (safetensors + tokenizer) that needs no memz;
- `gguf=True` also writes that merged model as `gguf/model.gguf` (llama layout,
  f32) through the `gguf` package, for llama.cpp and Ollama (in `gguf/`, its own
  folder: transformers reads a folder holding adapter_config.json as an adapter).

What does not travel: memz's routing gate (memz_keys.safetensors). The
exported model answers every question with the adapter, as the adapter
alone does in memz's `adapter_*` figures. A lineage grown past
`lora.shard_size` holds its earlier facts in other, frozen adapters (its
`shards` in meta.json): each can be exported by its id, but only memz
routes a question to the one that holds its answer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .checkpoints import CONFIG, META, WEIGHTS, check_folder, load_checkpoint
from .config import Config, Home, base_model_name
from .errors import MemzError

README = """# {ckpt}: a memz checkpoint

Trained by memz on `{base}`; {n} example(s) in its last batch, parent `{parent}`.

Load the adapter with plain peft (no memz needed):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel

base = AutoModelForCausalLM.from_pretrained("{source}")
tokenizer = AutoTokenizer.from_pretrained("{source}")
model = PeftModel.from_pretrained(base, "{folder}")
```
{merged}
memz answers a question with this adapter only when its routing gate (the key
memory, `memz_keys.safetensors`, which stays in memz) says the question is
about something taught; everything else gets the base model's own answer. An
exported model has no gate: it answers every question with the adapter, so
general answers may differ from the base model's (see the checkpoint's
`adapter_*` figures in meta.json).
"""

SHARDS = """
This lineage grew past `lora.shard_size`: this adapter holds its latest facts
only. The earlier ones are in the frozen adapters {shards}, each a
checkpoint of its own that `memzctl export` writes the same way; memz routes
each question to the adapter that holds its answer, an exported one cannot.
"""

MERGED = """
`merged/` is the base with the adapter merged in, a plain transformers model:
`AutoModelForCausalLM.from_pretrained("{folder}/merged")`.{gguf}
"""


def base_source(config: Config) -> str:
    """What transformers loads the base from: the bundled model's converted folder, a path, or a hub id."""
    if config.base_model == "bundled":
        from .model import _bundled_folder

        return str(_bundled_folder())
    path = Path(config.base_model).expanduser()
    return str(path.resolve()) if path.exists() else config.base_model


def export(home: Home, checkpoint: str | None, out: Path, merged: bool = False, gguf: bool = False) -> list[str]:
    """Write a checkpoint to `out`; returns the lines to show. MemzError says what is wrong."""
    from .store import Store

    config = home.load_config()
    store = Store(home.db_path)
    try:
        checkpoint = checkpoint or store.current_checkpoint()
        if checkpoint is None:
            raise MemzError("no checkpoint serves yet: nothing to export (see memzctl checkpoints)")
        row = store.checkpoint(checkpoint)
    finally:
        store.close()
    if row is None:
        raise MemzError(f"no checkpoint '{checkpoint}'; see memzctl checkpoints")
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MemzError(f"{out} exists and is not an empty folder; export into a new one")
    folder = home.checkpoints / checkpoint
    meta = check_folder(folder, base_model_name(config.base_model), home.checkpoints)
    source = base_source(config)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / WEIGHTS, out / WEIGHTS)
    shutil.copyfile(folder / META, out / META)
    adapter_config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = source
    adapter_config["init_lora_weights"] = True
    (out / CONFIG).write_text(json.dumps(adapter_config, indent=2), encoding="utf-8")
    lines = [f"wrote the adapter {checkpoint} to {out} (base: {source})"]
    extra = ""
    if merged or gguf:
        model, tokenizer = _merged(config, folder)
        model.save_pretrained(out / "merged")
        tokenizer.save_pretrained(out / "merged")
        lines.append(f"wrote the merged model to {out / 'merged'}")
        gguf_note = ""
        if gguf:
            (out / "gguf").mkdir()
            write_gguf(model, tokenizer, out / "gguf" / "model.gguf", name=f"memz {checkpoint}")
            lines.append(f"wrote {out / 'gguf' / 'model.gguf'} (llama.cpp, Ollama)")
            gguf_note = ("\n`gguf/model.gguf` is the same model for llama.cpp and Ollama (an Ollama "
                         "Modelfile: `FROM ./gguf/model.gguf`).")
        extra = MERGED.format(folder=out, gguf=gguf_note)
    shards = SHARDS.format(shards=", ".join(f"`{s}`" for s in meta["shards"])) if meta.get("shards") else ""
    (out / "README.md").write_text(README.format(
        ckpt=checkpoint, base=meta.get("base_model"), n=meta.get("n_examples"), parent=meta.get("parent") or "none",
        source=source, folder=out, merged=extra) + shards, encoding="utf-8")
    lines.append("note: the routing gate stays in memz; the exported model answers every question with the adapter")
    if meta.get("shards"):
        lines.append(f"note: {checkpoint}'s adapter holds only its lineage's latest facts; the earlier ones are in "
                     f"the frozen adapters {', '.join(meta['shards'])} (export each by its id)")
    return lines


def _merged(config: Config, folder: Path):
    """The base with the checkpoint's adapter merged in (loaded with memz's own safety checks)."""
    from peft import get_peft_model, set_peft_model_state_dict

    from .model import load_base

    base = load_base(config.base_model, "cpu", "fp32")  # merged in full precision, on any machine
    peft_config, state, _meta, _keys = load_checkpoint(folder, base.name)
    model = get_peft_model(base.model, peft_config, adapter_name="export")
    set_peft_model_state_dict(model, state, adapter_name="export")
    return model.merge_and_unload(), base.tokenizer


def _permute(weight, heads: int):
    """HF's rotary layout to llama.cpp's for q and k (what llama.cpp's converter does)."""
    rows = weight.shape[0]
    return (weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def write_gguf(model, tokenizer, path: Path, name: str) -> None:
    """A llama-architecture GGUF of a transformers Llama model (f32 tensors), its BPE tokenizer included."""
    import gguf
    import numpy

    config = model.config
    if config.model_type not in ("llama", "mistral"):
        raise MemzError(f"GGUF export knows the llama layout; this base is '{config.model_type}'")
    arch = gguf.MODEL_ARCH.LLAMA
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config.hidden_size // heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(getattr(config, "rope_theta", None) or
                              (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _write_tokenizer(writer, tokenizer, config)
    names = gguf.TensorNameMap(arch, config.num_hidden_layers)
    state = model.state_dict()
    if "lm_head.weight" not in state or getattr(config, "tie_word_embeddings", False):
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}  # tied: llama.cpp reuses token_embd
    for key, tensor in state.items():
        new = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise MemzError(f"GGUF export: no llama.cpp name for tensor {key}")
        data = tensor.detach().float().cpu().numpy()
        if key.endswith("q_proj.weight"):
            data = _permute(data, heads)
        elif key.endswith("k_proj.weight"):
            data = _permute(data, kv_heads)
        writer.add_tensor(new, numpy.ascontiguousarray(data, dtype=numpy.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_tokenizer(writer, tokenizer, config) -> None:
    """The BPE vocabulary and merges as llama.cpp's "gpt2" tokenizer model, with the chat template."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend["model"]
    if model.get("type") != "BPE":
        raise MemzError(f"GGUF export knows byte-level BPE tokenizers; this one is {model.get('type')}")
    vocab = model["vocab"]
    added = {t["content"]: t["id"] for t in backend.get("added_tokens", [])}
    size = max(max(vocab.values(), default=0), max(added.values(), default=0)) + 1
    size = max(size, config.vocab_size)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [4] * size  # USER_DEFINED for the padding slots
    for text, i in vocab.items():
        tokens[i], types[i] = text, 1  # NORMAL
    for text, i in added.items():
        tokens[i], types[i] = text, 3  # CONTROL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for attr, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                      ("pad_token_id", writer.add_pad_token_id)):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            add(value)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)
