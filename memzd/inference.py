"""Generating answers with a named adapter (or the bare base model).

Used by the evaluator (greedy answers to probes and anchors) and by queries.
Batched generation pads on the left so that every row's answer starts at the
same column.
"""

from __future__ import annotations

import torch

from .lora import using
from .tokens import prompt_ids


def _generate(model, tokenizer, rows: list[list[int]], max_tokens: int, temperature: float,
              device: torch.device, seed: int | None) -> list[str]:
    pad = tokenizer.pad_token_id
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    sample = temperature > 0
    kwargs = {"do_sample": sample}
    if sample:
        kwargs.update(temperature=temperature, top_p=0.95)
        if seed is not None:
            torch.manual_seed(seed)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                         max_new_tokens=max_tokens, pad_token_id=pad,
                         eos_token_id=tokenizer.eos_token_id, **kwargs)
    return [tokenizer.decode(o[width:], skip_special_tokens=True).strip() for o in out]


def answer(model, tokenizer, messages: list[dict], *, adapter: str | None, device: torch.device,
           max_tokens: int = 256, temperature: float = 0.0, seed: int | None = None) -> str:
    """One answer to one chat, with adapter `adapter` (None: the base model)."""
    with using(model, adapter):
        return _generate(model, tokenizer, [prompt_ids(tokenizer, messages)], max_tokens,
                         temperature, device, seed)[0]


def greedy_answers(model, tokenizer, chats: list[list[dict]], *, adapter: str | None,
                   device: torch.device, max_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy answers to many chats, generated in length-sorted batches."""
    rows = [prompt_ids(tokenizer, chat) for chat in chats]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    answers: list[str] = [""] * len(rows)
    with using(model, adapter):
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            outs = _generate(model, tokenizer, [rows[i] for i in chunk], max_tokens, 0.0, device, None)
            for i, text in zip(chunk, outs):
                answers[i] = text
    return answers
