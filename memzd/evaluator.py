"""Did the new adapter learn its batch, and what did it forget?

Every checkpoint is measured before it serves, on the path that will serve it
(the route: which questions its adapter answers):
- eval_loss: cross-entropy on the batch's answers (the recall probes);
- recall: share of the batch's questions whose greedy answer holds the taught answer;
- forgetting_loss: cross-entropy on the anchors' reference answers;
- anchor_ce_delta: forgetting_loss minus the base model's;
- retention_score: share of anchors whose greedy answer is unchanged.
The gate can hide a wrecked adapter (every general question goes to the base
model, so the served figures stay perfect), so the adapter is also measured
alone, ungated, on its own batch and on the first ADAPTER_ANCHORS anchors:
- adapter_recall: recall with every probe answered by the adapter;
- adapter_forgetting_loss, adapter_anchor_ce_delta: its CE on those anchors,
  and that minus the base model's on the same anchors;
- adapter_retention_score: share of those anchors whose greedy answer starts
  as the base model's did (its first ADAPTER_ANSWER_TOKENS tokens).
With no anchors, the forgetting figures are None, never zero.
`verdict` turns the figures into a status under `evaluation.rollback_mode`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from .anchors import Anchor
from .examples import answer_of, to_chat
from .inference import greedy_answers
from .lora import TRAIN, using
from .tokens import Encoded, answer_loss, collate, encode

Route = Callable[[list[dict]], "str | None"]  # chat -> adapter name, or None for the base

# Anchors the adapter answers alone, ungated, per checkpoint: enough to tell a
# wrecked adapter (CE up by 10+ nats, answers gone) from a sound one (0.7-1.9).
# Its answers are generated only this many tokens long and compared with the
# start of the base model's. Cost on the bundled model, one thread of a busy
# 2-core CPU: 16 anchors with 48-token answers 12 s; 16 with 16 tokens 8.5 s
# (CE 4.4 s, generation 4.1 s); 8 with 16 tokens about half that.
ADAPTER_ANCHORS = 8
ADAPTER_ANSWER_TOKENS = 16


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
             route: Route, max_len: int, max_tokens: int, *, cancelled=None, adapter: str = TRAIN) -> dict:
    """All figures for one checkpoint: what is served (through `route`) and what
    `adapter`, the trained adapter, does alone."""
    metrics: dict = {}
    chats = [to_chat(d) for d in batch]
    questions = [c[:-1] if c else [{"role": "user", "content": d["text"]}] for c, d in zip(chats, batch)]
    routes = [route(q) for q in questions]  # one routing forward per question, reused below
    encoded = [encode(d, tokenizer, max_len) for d in batch]
    metrics["eval_loss"] = _routed_ce(model, tokenizer, encoded, routes, device)[0]
    probes = [(q, answer_of(d), r) for q, c, d, r in zip(questions, chats, batch, routes)
              if c is not None and c[-1]["role"] == "assistant"]
    if probes:
        served = _recalled(model, tokenizer, device, [(c, e, r) for c, e, r in probes], cancelled)
        # The adapter alone: probes it already answered are not generated again.
        alone = [h for h, (_, _, r) in zip(served, probes) if r == adapter]
        gated = [(c, e, adapter) for c, e, r in probes if r != adapter]
        alone += _recalled(model, tokenizer, device, gated, cancelled) if gated else []
        metrics["recall"] = sum(served) / len(probes)
        metrics["adapter_recall"] = sum(alone) / len(probes)
    else:
        metrics["recall"] = metrics["adapter_recall"] = None
    if anchor_set is None or not anchor_set.anchors:
        metrics.update(forgetting_loss=None, anchor_ce_delta=None, retention_score=None,
                       adapter_forgetting_loss=None, adapter_anchor_ce_delta=None, adapter_retention_score=None)
        return metrics
    metrics.update(_adapter_alone(model, tokenizer, device, anchor_set, adapter, max_len, max_tokens, cancelled))
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
    for name, idx in by_adapter.items():
        outs = greedy_answers(model, tokenizer, [anchor_set.anchors[i].chat for i in idx], adapter=name,
                              device=device, max_tokens=max_tokens, cancelled=cancelled)
        kept += sum(normalize(o) == normalize(anchor_set.base_greedy[i]) for o, i in zip(outs, idx))
    metrics["retention_score"] = kept / len(anchor_set.anchors)
    metrics["anchors_routed_to_adapter"] = len(routed_idx)
    return metrics


def _recalled(model, tokenizer, device, probes: list[tuple[list[dict], str, "str | None"]],
              cancelled) -> list[bool]:
    """For each (chat, expected answer, adapter): does that adapter's greedy answer hold it?"""
    hits = [False] * len(probes)
    by_route: dict = {}
    for i, (_, _, adapter) in enumerate(probes):
        by_route.setdefault(adapter, []).append(i)
    for adapter, idx in by_route.items():
        longest = max(len(tokenizer(probes[i][1], add_special_tokens=False)["input_ids"]) for i in idx)
        outs = greedy_answers(model, tokenizer, [probes[i][0] for i in idx], adapter=adapter,
                              device=device, max_tokens=min(longest + 8, 256), cancelled=cancelled)
        for i, out in zip(idx, outs):
            hits[i] = holds(out, probes[i][1])
    return hits


def _adapter_alone(model, tokenizer, device, anchor_set: AnchorSet, adapter: str, max_len: int,
                   max_tokens: int, cancelled) -> dict:
    """The adapter's own drift on the first ADAPTER_ANCHORS anchors, ungated."""
    n = min(ADAPTER_ANCHORS, len(anchor_set.anchors))
    loss = forgetting_loss(model, tokenizer, anchor_set, adapter, device, max_len, limit=n)
    tokens = anchor_set.n_tokens[:n]
    base = sum(ce * t for ce, t in zip(anchor_set.base_ce_each[:n], tokens)) / max(sum(tokens), 1)
    outs = greedy_answers(model, tokenizer, [a.chat for a in anchor_set.anchors[:n]], adapter=adapter,
                          device=device, max_tokens=min(max_tokens, ADAPTER_ANSWER_TOKENS), cancelled=cancelled)
    kept = sum(normalize(g).startswith(normalize(o)) for o, g in zip(outs, anchor_set.base_greedy[:n]))
    return {"adapter_forgetting_loss": loss, "adapter_anchor_ce_delta": loss - base,
            "adapter_retention_score": kept / n, "adapter_anchors": n}


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


def verdict_reasons(metrics: dict, cfg) -> list[str]:
    """What is wrong with a checkpoint, by the thresholds of `evaluation` (empty: nothing).

    Three checks, each skipped when its figure is None (no anchors, or nothing
    to recall): what is served forgot too much (anchor_ce_delta above
    catastrophic_delta); the adapter alone drifted too far (its
    adapter_anchor_ce_delta above adapter_delta: the gate hides such an
    adapter, but any question it lets through gets the wreck); it did not
    learn its own batch (recall below min_recall)."""
    reasons = []
    delta, own, recall = (metrics.get(k) for k in ("anchor_ce_delta", "adapter_anchor_ce_delta", "recall"))
    if delta is not None and delta > cfg.catastrophic_delta:
        reasons.append(f"anchor_ce_delta {delta:.3f} > evaluation.catastrophic_delta {cfg.catastrophic_delta}")
    if own is not None and own > cfg.adapter_delta:
        reasons.append(f"adapter_anchor_ce_delta {own:.3f} > evaluation.adapter_delta {cfg.adapter_delta}")
    if recall is not None and recall < cfg.min_recall:
        reasons.append(f"recall {recall:.2f} < evaluation.min_recall {cfg.min_recall}")
    return reasons


def verdict(metrics: dict, cfg) -> str:
    """A checkpoint's status from its figures and `evaluation.rollback_mode`:
    "stable", "risky" (warn: it still serves) or "rolled_back" (it never serves)."""
    if cfg.rollback_mode == "off" or not verdict_reasons(metrics, cfg):
        return "stable"
    return "risky" if cfg.rollback_mode == "warn" else "rolled_back"
