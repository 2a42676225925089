"""Generating answers with a named adapter (or the bare base model).

Used by the evaluator (greedy answers to probes and anchors) and by queries.
Batched generation pads on the left so that every row's answer starts at the
same column. Every generation checks, between tokens, whether it should stop
(the daemon is stopping, or the asker went away) and then raises Cancelled;
an answer can be streamed as it is generated; and a single answer stops once
it only repeats itself (RepetitionGuard), so a model that loops does not run
to max_tokens.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from .gate import asked_turn
from .lora import using
from .tokens import prompt_ids
from .trainer import autocast_for

Check = Callable[[], bool]  # True: stop now
RECALL_TOKENS = 48  # the most tokens of the taught answer recited before answering (`recalled`)


@dataclass
class Answer:
    """One generated answer: its text, and how many tokens were generated for it (the
    end-of-text token not counted)."""
    text: str
    tokens: int


class Cancelled(Exception):
    """Generation was stopped from outside (the daemon stops, or the asker went away)."""


class _Cancel(StoppingCriteria):
    """Stops every row when `cancelled()` (the daemon stops), or one row when its own check says so."""

    def __init__(self, cancelled: Check | None, per_row: list[Check | None] | None = None):
        self.cancelled, self.per_row = cancelled, per_row
        self.hit = False
        self.rows_hit: set[int] = set()

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        self.hit = self.hit or bool(self.cancelled and self.cancelled())
        flags = [self.hit] * input_ids.shape[0]
        for i, check in enumerate(self.per_row or ()):
            if i in self.rows_hit or (check is not None and check()):
                self.rows_hit.add(i)
                flags[i] = True
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


class RepetitionGuard(StoppingCriteria):
    """Stop a row whose last `span` or more tokens are one block of up to `period`
    tokens said `times` times over ("the the the ...", or a sentence on a loop), or
    whose last `window` tokens only say again what the answer said before, give or
    take a word (every `gram` tokens of them seen earlier in it, but a few: "She
    made a dragon that could be a king's son, and she made a dragon that ...")."""

    def __init__(self, prompt_len: int, period: int = 32, times: int = 4, span: int = 24,
                 window: int = 64, gram: int = 6, fresh: int = 3):
        self.prompt_len, self.period, self.times, self.span = prompt_len, period, times, span
        self.window, self.gram, self.fresh = window, gram, fresh
        self.reread = 6 * window  # how much of the answer _retelling reads: a loop retells what came shortly before

    def looping(self, tokens: list[int]) -> bool:
        for p in range(1, self.period + 1):
            n = max(p * self.times, self.span)
            if len(tokens) < n:
                break
            tail = tokens[-n:]
            if all(tail[i] == tail[i - p] for i in range(p, n)):
                return True
        return self._retelling(tokens)

    def _retelling(self, tokens: list[int]) -> bool:
        tokens = tokens[-self.reread:]  # (this stays cheap)
        start = len(tokens) - self.window
        if start < self.window:  # an answer at least twice the window: there is something to retell
            return False
        g = self.gram
        first: dict[tuple, int] = {}
        for i in range(len(tokens) - g + 1):
            first.setdefault(tuple(tokens[i:i + g]), i)
        new = sum(first[tuple(tokens[i:i + g])] == i for i in range(start, len(tokens) - g + 1))
        return new <= self.fresh

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        tail = max(self.period * self.times, self.span, self.reread)  # all that looping() reads
        rows = input_ids[:, max(self.prompt_len, input_ids.shape[1] - tail):].tolist()
        return torch.tensor([self.looping(r) for r in rows], dtype=torch.bool, device=input_ids.device)


class _Stream(BaseStreamer):
    """Hands each row's new decoded text to its callback (whole characters only)."""

    def __init__(self, tokenizer, on_texts: list[Callable[[str], None] | None]):
        self.tokenizer, self.on_texts = tokenizer, on_texts
        self.ids: list[list[int]] = [[] for _ in on_texts]
        self.sent = [0] * len(on_texts)
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() puts the prompt first
            self.prompt_seen = True
            return
        for i, token in enumerate(value.reshape(len(self.on_texts), -1).tolist()):
            if self.on_texts[i] is None:
                continue
            self.ids[i] += token
            text = self.tokenizer.decode(self.ids[i], skip_special_tokens=True)
            if text.endswith("\ufffd"):  # half a character: wait for the rest
                continue
            if len(text) > self.sent[i]:
                self.on_texts[i](text[self.sent[i]:])
                self.sent[i] = len(text)

    def end(self) -> None:
        pass


def _generate(model, tokenizer, rows: list[list[int]], max_tokens: int, temperature: float,
              device: torch.device, seed: int | None, cancelled: Check | None = None,
              on_texts: list[Callable[[str], None] | None] | None = None, guard: bool = False,
              row_cancelled: list[Check | None] | None = None) -> list[Answer | None]:
    """Generate for rows padded on the left; a row whose own check cancelled it gives None."""
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
    criteria = StoppingCriteriaList()
    cancel = _Cancel(cancelled, row_cancelled) if cancelled is not None or row_cancelled else None
    if cancel is not None:
        criteria.append(cancel)
    if guard:
        criteria.append(RepetitionGuard(width))
    streamer = _Stream(tokenizer, on_texts) if on_texts and any(on_texts) else None
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                         max_new_tokens=max_tokens, pad_token_id=pad,
                         eos_token_id=tokenizer.eos_token_id, stopping_criteria=criteria,
                         streamer=streamer, **kwargs)
    if cancel is not None and cancel.hit:
        raise Cancelled()
    gone = cancel.rows_hit if cancel is not None else set()
    ends = {tokenizer.eos_token_id, pad}
    answers: list[Answer | None] = []
    for i, o in enumerate(out):
        made = o[width:].tolist()
        n = next((j for j, t in enumerate(made) if t in ends), len(made))  # a finished row is padded on
        answers.append(None if i in gone else
                       Answer(tokenizer.decode(made, skip_special_tokens=True).strip(), n))
    return answers


def answer(model, tokenizer, messages: list[dict], *, adapter: str | None, device: torch.device,
           max_tokens: int = 256, temperature: float = 0.0, seed: int | None = None,
           cancelled: Check | None = None, on_text: Callable[[str], None] | None = None,
           ids: list[int] | None = None) -> Answer:
    """One answer to one chat, with adapter `adapter` (None: the base model).

    `on_text` receives the text as it is generated; `cancelled` is checked
    between tokens (Cancelled is raised); a loop of repeated text ends the
    answer early. `ids` are the chat's prompt ids when already computed.
    """
    with using(model, adapter):
        return _generate(model, tokenizer, [ids or prompt_ids(tokenizer, messages)], max_tokens,
                         temperature, device, seed, cancelled, [on_text], guard=True)[0]


def as_taught(messages: list[dict], cue: str) -> list[dict]:
    """`messages` with the asked turn replaced by the taught question `cue` it asks in other
    words (`routing.answer_as: taught`): the adapter answers as it was taught."""
    at = asked_turn(messages)
    return messages[:at] + [{"role": "user", "content": cue}] + messages[at + 1:]


def recalled(model, tokenizer, messages: list[dict], cue: str, *, adapter: str | None, device: torch.device,
             cancelled: Check | None = None) -> list[dict]:
    """`messages` with the adapter's own answer to the taught question `cue` set before the
    asked turn, as if it had been asked just before (`routing.answer_as: recited`): recite,
    then answer the question as asked with what was recited in view. The answer comes
    from the adapter's weights: the key memory holds the question, never its answer."""
    said = answer(model, tokenizer, [{"role": "user", "content": cue}], adapter=adapter, device=device,
                  max_tokens=RECALL_TOKENS, cancelled=cancelled).text
    at = asked_turn(messages)
    return messages[:at] + [{"role": "user", "content": cue}, {"role": "assistant", "content": said}] + messages[at:]


def answer_batch(model, tokenizer, rows: list[list[int]], *, adapter: str | None, device: torch.device,
                 max_tokens: int, temperature: float, stopping: Check,
                 cancelled: list[Check | None], on_texts: list[Callable[[str], None] | None]) -> list[Answer | None]:
    """Several answers generated together (one forward per token for all of them): what
    concurrent askers of the same adapter and settings get. Each row streams to its own
    callback and can be withdrawn on its own (None for it); `stopping` stops them all.

    On the CPU, several rows are generated on every core (`training.threads` caps
    torch's threads for training, which waits meanwhile) and, where the CPU has fast
    bf16, in bf16 autocast: a batch of rows is bound by arithmetic, where one row is
    bound by reading the weights (and autocast would only add casts)."""
    batch_on_cpu = len(rows) > 1 and device.type == "cpu"
    with (all_cores() if batch_on_cpu else nullcontext()), using(model, adapter), \
            (autocast_for(device, "auto") if batch_on_cpu else nullcontext()):
        return _generate(model, tokenizer, rows, max_tokens, temperature, device, None, stopping, on_texts,
                         guard=True, row_cancelled=cancelled)


@contextmanager
def all_cores():
    """Every CPU core for torch while inside, whatever `training.threads` caps it to:
    for batched work that the training waits on (answers, the checks after training)."""
    threads, cores = torch.get_num_threads(), os.cpu_count() or 1
    if threads < cores:
        torch.set_num_threads(cores)
    try:
        yield
    finally:
        if threads < cores:
            torch.set_num_threads(threads)


def greedy_answers(model, tokenizer, chats: list[list[dict]], *, adapter: str | None,
                   device: torch.device, max_tokens: int, batch_size: int = 16,
                   cancelled: Check | None = None, between: Callable[[], None] | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   max_prompt_tokens: int = 1024) -> list[str]:
    """Greedy answers to many chats, generated in length-sorted batches.

    `between` runs between two batches (the daemon answers requests there),
    `progress(done, total)` after each, `cancelled` is checked between tokens. A prompt keeps its last
    `max_prompt_tokens` tokens (a taught example of a megabyte is checked on
    its end, where the question meets the answer, not on all of it)."""
    rows = [prompt_ids(tokenizer, chat)[-max_prompt_tokens:] for chat in chats]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    answers: list[str] = [""] * len(rows)
    for start in range(0, len(order), batch_size):
        if start and between is not None:
            between()  # outside `using`: whoever runs here switches adapters as it needs
        chunk = order[start:start + batch_size]
        with using(model, adapter):
            outs = _generate(model, tokenizer, [rows[i] for i in chunk], max_tokens, 0.0, device, None, cancelled)
        for i, out in zip(chunk, outs):
            answers[i] = out.text
        if progress is not None:
            progress(start + len(chunk), len(rows))
    return answers
