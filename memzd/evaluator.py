"""Did the new adapter learn its batch, and what did it forget?

Every checkpoint is measured before it serves, on the path that will serve it
(the route: which questions its adapter answers):
- eval_loss: cross-entropy on the batch's answers (the recall probes);
- recall: share of the batch's questions whose greedy answer holds the taught answer;
- forgetting_loss: cross-entropy on the anchors' reference answers;
- anchor_ce_delta: forgetting_loss minus the base model's;
- retention_score: share of anchors whose greedy answer is unchanged.
With no anchors, the forgetting figures are None, never zero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from .anchors import Anchor
from .examples import answer_of, to_chat
from .inference import greedy_answers
from .lora import using
from .tokens import Encoded, answer_loss, collate, encode

Route = Callable[[list[dict]], "str | None"]  # chat -> adapter name, or None for the base


@dataclass
class AnchorSet:
    """Sampled anchors with the base model's answers and losses on them."""

    anchors: list[Anchor]
    answers: list[str]       # reference answers (given, or the base model's greedy ones)
    base_greedy: list[str]   # the base model's own greedy answers, for retention
    base_ce: float           # the base model's mean CE on the reference answers
    base_ce_each: list[float]  # ...per anchor (mean over its answer tokens)
    n_tokens: list[int]        # answer tokens per anchor


def normalize(text: str) -> str:
    text = text.lower().replace("’", "'")
    text = re.sub(r"[^\w\s'.:-]", " ", text)
    return re.sub(r"\s+", " ", text).strip(" .")


def holds(answer: str, expected: str) -> bool:
    """Does a generated answer hold the expected one (case and spacing aside)?"""
    return normalize(expected) in normalize(answer)


def _anchor_examples(anchors: list[Anchor], answers: list[str], tokenizer, max_len: int) -> list[Encoded]:
    return [encode({"messages": a.chat + [{"role": "assistant", "content": ans or "."}]}, tokenizer, max_len)
            for a, ans in zip(anchors, answers)]


@torch.no_grad()
def mean_ce(model, tokenizer, encoded: list[Encoded], adapter: str | None, device: torch.device,
            batch_size: int = 16) -> tuple[float, list[float]]:
    """Token-weighted mean CE over examples, and each example's own mean CE."""
    per_example = [0.0] * len(encoded)
    total, count = 0.0, 0
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    with using(model, adapter):
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = collate([encoded[i] for i in chunk], tokenizer.pad_token_id, device)
            losses, counts, _ = answer_loss(model, batch, reduction="none")
            for i, loss, n in zip(chunk, losses.tolist(), counts.tolist()):
                per_example[i] = loss / max(n, 1)
                total += loss
                count += n
    return total / max(count, 1), per_example


def prepare_anchor_set(model, tokenizer, anchors: list[Anchor], device: torch.device,
                       max_tokens: int, max_len: int, cached: dict | None = None, *,
                       between=None, cancelled=None) -> tuple[AnchorSet, dict]:
    """Reference answers and base losses for the sampled anchors (from `cached` when given).
    `between` runs between generation batches (the daemon answers requests there);
    `cancelled` is checked between tokens (memzd.inference.Cancelled)."""
    if cached is None:
        greedy = greedy_answers(model, tokenizer, [a.chat for a in anchors], adapter=None,
                                device=device, max_tokens=max_tokens, between=between, cancelled=cancelled)
        answers = [a.answer if a.answer is not None else g for a, g in zip(anchors, greedy)]
        encoded = _anchor_examples(anchors, answers, tokenizer, max_len)
        base_ce, each = mean_ce(model, tokenizer, encoded, None, device)
        cached = {"answers": answers, "base_greedy": greedy, "base_ce": base_ce, "base_ce_each": each,
                  "n_tokens": [e.n_answer for e in encoded]}
    return AnchorSet(anchors, cached["answers"], cached["base_greedy"], cached["base_ce"],
                     cached["base_ce_each"], cached["n_tokens"]), cached


def forgetting_loss(model, tokenizer, anchor_set: AnchorSet, adapter: str | None, device: torch.device,
                    max_len: int, limit: int | None = None) -> float:
    """The adapter's CE on (the first `limit`) anchor reference answers, ungated."""
    n = limit or len(anchor_set.anchors)
    encoded = _anchor_examples(anchor_set.anchors[:n], anchor_set.answers[:n], tokenizer, max_len)
    return mean_ce(model, tokenizer, encoded, adapter, device)[0]


def evaluate(model, tokenizer, device: torch.device, batch: list[dict], anchor_set: AnchorSet | None,
             route: Route, max_len: int, max_tokens: int, *, cancelled=None) -> dict:
    """All figures for one checkpoint, measured through `route`."""
    metrics: dict = {}
    chats = [to_chat(d) for d in batch]
    questions = [c[:-1] if c else [{"role": "user", "content": d["text"]}] for c, d in zip(chats, batch)]
    routes = [route(q) for q in questions]  # one routing forward per question, reused below
    encoded = [encode(d, tokenizer, max_len) for d in batch]
    metrics["eval_loss"] = _routed_ce(model, tokenizer, encoded, routes, device)[0]
    probes = [(q, answer_of(d), r) for q, c, d, r in zip(questions, chats, batch, routes)
              if c is not None and c[-1]["role"] == "assistant"]
    if probes:
        hits = 0
        by_route: dict = {}
        for chat, expected, adapter in probes:
            by_route.setdefault(adapter, []).append((chat, expected))
        for adapter, items in by_route.items():
            longest = max(len(tokenizer(e, add_special_tokens=False)["input_ids"]) for _, e in items)
            outs = greedy_answers(model, tokenizer, [c for c, _ in items], adapter=adapter,
                                  device=device, max_tokens=min(longest + 8, 256), cancelled=cancelled)
            hits += sum(holds(o, e) for o, (_, e) in zip(outs, items))
        metrics["recall"] = hits / len(probes)
    else:
        metrics["recall"] = None
    if anchor_set is None or not anchor_set.anchors:
        metrics.update(forgetting_loss=None, anchor_ce_delta=None, retention_score=None)
        return metrics
    anchor_routes = [route(a.chat) for a in anchor_set.anchors]
    # The base model's losses are cached: only anchors the adapter answers need a forward pass.
    total = sum(ce * n for ce, n, r in zip(anchor_set.base_ce_each, anchor_set.n_tokens, anchor_routes) if r is None)
    count = sum(n for n, r in zip(anchor_set.n_tokens, anchor_routes) if r is None)
    routed_idx = [i for i, r in enumerate(anchor_routes) if r is not None]
    if routed_idx:
        enc = _anchor_examples([anchor_set.anchors[i] for i in routed_idx],
                               [anchor_set.answers[i] for i in routed_idx], tokenizer, max_len)
        ce, n = _routed_ce(model, tokenizer, enc, [anchor_routes[i] for i in routed_idx], device)
        total, count = total + ce * n, count + n
    metrics["forgetting_loss"] = total / max(count, 1)
    metrics["anchor_ce_delta"] = metrics["forgetting_loss"] - anchor_set.base_ce
    # An anchor routed to the base model answers exactly as the base did: only
    # the ones the adapter answers need generating.
    kept = len(anchor_routes) - len(routed_idx)
    by_adapter: dict = {}
    for i in routed_idx:
        by_adapter.setdefault(anchor_routes[i], []).append(i)
    for adapter, idx in by_adapter.items():
        outs = greedy_answers(model, tokenizer, [anchor_set.anchors[i].chat for i in idx], adapter=adapter,
                              device=device, max_tokens=max_tokens, cancelled=cancelled)
        kept += sum(normalize(o) == normalize(anchor_set.base_greedy[i]) for o, i in zip(outs, idx))
    metrics["retention_score"] = kept / len(anchor_set.anchors)
    metrics["anchors_routed_to_adapter"] = len(routed_idx)
    return metrics


def _routed_ce(model, tokenizer, encoded: list[Encoded], routes: list, device) -> tuple[float, int]:
    total, count = 0.0, 0
    for adapter in set(routes):
        idx = [i for i, r in enumerate(routes) if r == adapter]
        sub = [encoded[i] for i in idx]
        ce, _ = mean_ce(model, tokenizer, sub, adapter, device)
        n = sum(e.n_answer for e in sub)
        total += ce * n
        count += n
    return total / max(count, 1), count


def verdict(metrics: dict, cfg) -> str:
    """A checkpoint's status from its figures and `evaluation.rollback_mode`:
    "stable", "risky" (warn: it still serves) or "rolled_back" (it never serves)."""
    delta = metrics.get("anchor_ce_delta")
    if cfg.rollback_mode == "off" or delta is None or delta <= cfg.catastrophic_delta:
        return "stable"
    return "risky" if cfg.rollback_mode == "warn" else "rolled_back"
