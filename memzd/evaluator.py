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
  with the base model's first ADAPTER_ANSWER_TOKENS tokens.
Teacher forcing answers most of it: where every answer token is the model's
first choice, greedy decoding gives that answer back, so only the other
probes are generated. With no anchors, the forgetting figures are None, never zero.
`verdict` turns the figures into a status under `evaluation.rollback_mode`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch

from .anchors import Anchor
from .examples import answer_of, to_chat
from .inference import greedy_answers
from .lora import TRAIN, using
from .tokens import Encoded, answer_loss, collate, encode

Routes = Callable[[list[list[dict]]], "list[str | None]"]  # chats -> adapter names, None for the base

# Anchors the adapter answers alone, ungated, per checkpoint: enough to tell a
# wrecked adapter (CE up by 10+ nats, answers gone) from a sound one (0.7-1.9),
# in one teacher-forced pass; their answers are compared with the base model's
# over the first ADAPTER_ANSWER_TOKENS tokens.
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
    # For the first ADAPTER_ANCHORS: how many tokens of its own greedy answer, text
    # tokenised again, the base model gives back under teacher forcing (all of them,
    # unless the text tokenises otherwise than it was generated).
    base_first_miss: list[int] = field(default_factory=list)


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


@dataclass
class Scored:
    """One example under teacher forcing: its summed answer CE, its answer tokens, and how
    many of them, from the first, were the model's first choice. When all were, greedy
    decoding gives the answer back word for word, so it need not be generated to know."""

    loss: float
    tokens: int
    first_miss: int

    @property
    def word_for_word(self) -> bool:
        return self.first_miss >= self.tokens


@torch.no_grad()
def score(model, tokenizer, encoded: list[Encoded], adapter: str | None, device: torch.device,
          batch_size: int = 16) -> list[Scored]:
    """Each example's answer figures under `adapter`, in length-sorted batches."""
    out: list[Scored | None] = [None] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    with using(model, adapter):
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            rows = answer_loss(model, collate([encoded[i] for i in chunk], tokenizer.pad_token_id, device),
                               reduction="none")
            for i, loss, n, first in zip(chunk, rows.loss.tolist(), rows.tokens.tolist(), rows.first_miss.tolist()):
                out[i] = Scored(loss, n, first)
    return out


def _mean(scored: list[Scored]) -> float:
    return sum(s.loss for s in scored) / max(sum(s.tokens for s in scored), 1)


def mean_ce(model, tokenizer, encoded: list[Encoded], adapter: str | None, device: torch.device,
            batch_size: int = 16) -> tuple[float, list[float]]:
    """Token-weighted mean CE over examples, and each example's own mean CE."""
    scored = score(model, tokenizer, encoded, adapter, device, batch_size)
    return _mean(scored), [s.loss / max(s.tokens, 1) for s in scored]


def prepare_anchor_set(model, tokenizer, anchors: list[Anchor], device: torch.device,
                       max_tokens: int, max_len: int, cached: dict | None = None, *,
                       between=None, cancelled=None, progress=None) -> tuple[AnchorSet, dict]:
    """Reference answers and base losses for the sampled anchors (from `cached` when given).
    `between` runs between generation batches (the daemon answers requests there),
    `progress(done, total)` after each; `cancelled` is checked between tokens
    (memzd.inference.Cancelled)."""
    if cached is None:
        greedy = greedy_answers(model, tokenizer, [a.chat for a in anchors], adapter=None, device=device,
                                max_tokens=max_tokens, between=between, cancelled=cancelled, progress=progress)
        answers = [a.answer if a.answer is not None else g for a, g in zip(anchors, greedy)]
        encoded = _anchor_examples(anchors, answers, tokenizer, max_len)
        base_ce, each = mean_ce(model, tokenizer, encoded, None, device)
        cached = {"answers": answers, "base_greedy": greedy, "base_ce": base_ce, "base_ce_each": each,
                  "n_tokens": [e.n_answer for e in encoded]}
    if "base_first_miss" not in cached:  # (also missing from caches written before it existed)
        n = min(ADAPTER_ANCHORS, len(anchors))
        own = score(model, tokenizer, _anchor_examples(anchors[:n], cached["base_greedy"][:n], tokenizer, max_len),
                    None, device)
        cached = {**cached, "base_first_miss": [s.first_miss for s in own]}
    return AnchorSet(anchors, cached["answers"], cached["base_greedy"], cached["base_ce"],
                     cached["base_ce_each"], cached["n_tokens"], cached["base_first_miss"]), cached


def forgetting_loss(model, tokenizer, anchor_set: AnchorSet, adapter: str | None, device: torch.device,
                    max_len: int, limit: int | None = None) -> float:
    """The adapter's CE on (the first `limit`) anchor reference answers, ungated."""
    n = limit or len(anchor_set.anchors)
    encoded = _anchor_examples(anchor_set.anchors[:n], anchor_set.answers[:n], tokenizer, max_len)
    return mean_ce(model, tokenizer, encoded, adapter, device)[0]


def evaluate(model, tokenizer, device: torch.device, batch: list[dict], anchor_set: AnchorSet | None,
             routes: Routes, max_len: int, max_tokens: int, *, cancelled=None, adapter: str = TRAIN) -> dict:
    """All figures for one checkpoint: what is served (through `routes`) and what
    `adapter`, the trained adapter, does alone.

    Teacher forcing comes first: one forward pass per route gives every loss and
    tells which answers greedy decoding would give back word for word. Only the
    others are generated, to see whether their answer still holds the taught one."""
    metrics: dict = {}
    chats = [to_chat(d) for d in batch]
    questions = [c[:-1] if c else [{"role": "user", "content": d["text"]}] for c, d in zip(chats, batch)]
    route_of = routes(questions)  # the hidden keys of all questions in batched passes, reused below
    encoded = [encode(d, tokenizer, max_len) for d in batch]
    served = _score_routed(model, tokenizer, encoded, route_of, device)
    metrics["eval_loss"] = _mean(served)
    probes = [i for i, c in enumerate(chats) if c is not None and c[-1]["role"] == "assistant"]
    if probes:
        def probe(i, how, scored):
            return questions[i], answer_of(batch[i]), how, scored if not encoded[i].cut else None
        hits = _recalled(model, tokenizer, device, [probe(i, route_of[i], served[i]) for i in probes], cancelled)
        # The adapter alone: probes it already answered are not scored again.
        gated = [i for i in probes if route_of[i] != adapter]
        alone_scored = dict(zip(gated, score(model, tokenizer, [encoded[i] for i in gated], adapter, device)))
        alone = _recalled(model, tokenizer, device,
                          [probe(i, adapter, alone_scored.get(i, served[i])) for i in probes], cancelled,
                          known={k: h for k, (i, h) in enumerate(zip(probes, hits)) if route_of[i] == adapter})
        metrics["recall"] = sum(hits) / len(probes)
        metrics["adapter_recall"] = sum(alone) / len(probes)
    else:
        metrics["recall"] = metrics["adapter_recall"] = None
    if anchor_set is None or not anchor_set.anchors:
        metrics.update(forgetting_loss=None, anchor_ce_delta=None, retention_score=None,
                       adapter_forgetting_loss=None, adapter_anchor_ce_delta=None, adapter_retention_score=None)
        return metrics
    metrics.update(_adapter_alone(model, tokenizer, device, anchor_set, adapter, max_len, cancelled))
    anchor_routes = routes([a.chat for a in anchor_set.anchors])
    # The base model's losses are cached: only anchors the adapter answers need a forward pass.
    total = sum(ce * n for ce, n, r in zip(anchor_set.base_ce_each, anchor_set.n_tokens, anchor_routes) if r is None)
    count = sum(n for n, r in zip(anchor_set.n_tokens, anchor_routes) if r is None)
    routed_idx = [i for i, r in enumerate(anchor_routes) if r is not None]
    kept = len(anchor_routes) - len(routed_idx)  # an anchor routed to the base answers exactly as it did
    if routed_idx:
        enc = _anchor_examples([anchor_set.anchors[i] for i in routed_idx],
                               [anchor_set.answers[i] for i in routed_idx], tokenizer, max_len)
        scored = _score_routed(model, tokenizer, enc, [anchor_routes[i] for i in routed_idx], device)
        total, count = total + sum(s.loss for s in scored), count + sum(s.tokens for s in scored)
        # Unchanged when teacher forcing gives the base model's own answer back; the rest are generated.
        unsure: dict = {}
        for i, s in zip(routed_idx, scored):
            if s.word_for_word and anchor_set.answers[i] == anchor_set.base_greedy[i]:
                kept += 1
            else:
                unsure.setdefault(anchor_routes[i], []).append(i)
        for name, idx in unsure.items():
            outs = greedy_answers(model, tokenizer, [anchor_set.anchors[i].chat for i in idx], adapter=name,
                                  device=device, max_tokens=max_tokens, cancelled=cancelled)
            kept += sum(normalize(o) == normalize(anchor_set.base_greedy[i]) for o, i in zip(outs, idx))
    metrics["forgetting_loss"] = total / max(count, 1)
    metrics["anchor_ce_delta"] = metrics["forgetting_loss"] - anchor_set.base_ce
    metrics["retention_score"] = kept / len(anchor_set.anchors)
    metrics["anchors_routed_to_adapter"] = len(routed_idx)
    return metrics


def _recalled(model, tokenizer, device, probes: list[tuple[list[dict], str, "str | None", "Scored | None"]],
              cancelled, known: dict[int, bool] | None = None) -> list[bool]:
    """For each (chat, expected answer, adapter, its teacher-forced figures): does that
    adapter's greedy answer hold the expected one? A word-for-word answer does; `known`
    gives some by their index; the rest are generated."""
    known = dict(known or {})
    for i, (_, _, _, scored) in enumerate(probes):
        if i not in known and scored is not None and scored.word_for_word:
            known[i] = True
    by_route: dict = {}
    for i, (_, _, adapter, _) in enumerate(probes):
        if i not in known:
            by_route.setdefault(adapter, []).append(i)
    for adapter, idx in by_route.items():
        longest = max(len(tokenizer(probes[i][1], add_special_tokens=False)["input_ids"]) for i in idx)
        outs = greedy_answers(model, tokenizer, [probes[i][0] for i in idx], adapter=adapter,
                              device=device, max_tokens=min(longest + 8, 256), cancelled=cancelled)
        for i, out in zip(idx, outs):
            known[i] = holds(out, probes[i][1])
    return [known[i] for i in range(len(probes))]


def _adapter_alone(model, tokenizer, device, anchor_set: AnchorSet, adapter: str, max_len: int,
                   cancelled) -> dict:
    """The adapter's own drift on the first ADAPTER_ANCHORS anchors, ungated: its CE on
    their reference answers, and whether its greedy answer starts as the base model's."""
    n = min(ADAPTER_ANCHORS, len(anchor_set.anchors))
    anchors = anchor_set.anchors[:n]
    scored = score(model, tokenizer, _anchor_examples(anchors, anchor_set.answers[:n], tokenizer, max_len),
                   adapter, device)
    if anchor_set.answers[:n] != anchor_set.base_greedy[:n]:  # given answers: the base's own are scored apart
        scored_own = score(model, tokenizer, _anchor_examples(anchors, anchor_set.base_greedy[:n], tokenizer,
                                                               max_len), adapter, device)
    else:
        scored_own = scored
    loss = _mean(scored)
    tokens = anchor_set.n_tokens[:n]
    base = sum(ce * t for ce, t in zip(anchor_set.base_ce_each[:n], tokens)) / max(sum(tokens), 1)
    # Kept where the adapter's first choices give the base model's answer back. Where they
    # do not, but the base model's do (its answer tokenises as it was generated), the
    # greedy answers part there: not kept. Only the rest are generated and compared.
    wanted = [min(s.tokens, ADAPTER_ANSWER_TOKENS) for s in scored_own]
    base_gives = [i < len(anchor_set.base_first_miss) and anchor_set.base_first_miss[i] >= w
                  for i, w in enumerate(wanted)]
    kept = sum(s.first_miss >= w for s, w in zip(scored_own, wanted))
    unsure = [i for i in range(n) if scored_own[i].first_miss < wanted[i] and not base_gives[i]]
    if unsure:
        outs = greedy_answers(model, tokenizer, [anchors[i].chat for i in unsure], adapter=adapter, device=device,
                              max_tokens=ADAPTER_ANSWER_TOKENS, cancelled=cancelled)
        kept += sum(normalize(anchor_set.base_greedy[i]).startswith(normalize(o)) for o, i in zip(outs, unsure))
    return {"adapter_forgetting_loss": loss, "adapter_anchor_ce_delta": loss - base,
            "adapter_retention_score": kept / n, "adapter_anchors": n}


def _score_routed(model, tokenizer, encoded: list[Encoded], routes: list, device) -> list[Scored]:
    """Each example scored under its own route (one pass per adapter)."""
    out: list[Scored | None] = [None] * len(encoded)
    for adapter in set(routes):
        idx = [i for i, r in enumerate(routes) if r == adapter]
        for i, s in zip(idx, score(model, tokenizer, [encoded[i] for i in idx], adapter, device)):
            out[i] = s
    return out


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
