"""From examples and prompts to token ids, and the answer-only loss.

Training and evaluation share these: an example becomes input ids plus labels
that are -100 everywhere but on what is learned (assistant turns, what the
user states in a conversation, or the whole of a {"text"} example), rendered
with the model's own chat template. The loss
runs the LM head only at answer positions: on a 49k-word vocabulary that head
is a large share of the work, and the prompt's logits are never used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

from .examples import is_statement, sentences, to_chat

IGNORE = -100


@dataclass
class Encoded:
    """One example as the model sees it."""

    input_ids: list[int]
    labels: list[int]
    cut: int = 0  # tokens dropped from the front to fit max_len
    # Per position, where the label is what a note or a user states: trained on,
    # but not held to the word (of ten notes that open with "The", none can be the
    # first choice after it); the questions written about it are
    # (memzd.examples.questions_about). None: every label is held.
    stated: list[bool] | None = None

    @property
    def n_answer(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)

    @property
    def n_held(self) -> int:
        """Answer tokens held to the word (not stated)."""
        if not self.stated:
            return self.n_answer
        return sum(1 for t, free in zip(self.labels, self.stated) if t != IGNORE and not free)

    def all_held(self) -> "Encoded":
        """The same example with every label held to the word."""
        return replace(self, stated=None)

    def part(self, span: slice) -> "Encoded":
        """These positions only, each with its label and whether it is stated."""
        return replace(self, input_ids=self.input_ids[span], labels=self.labels[span],
                       stated=self.stated[span] if self.stated else None)


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a chat ready for the assistant's answer."""
    return _ids(tokenizer, _render(tokenizer, messages, add_generation_prompt=True))


def encode(data: dict, tokenizer, max_len: int) -> Encoded:
    """Tokenise one canonical example with labels on its answer tokens only."""
    chat = to_chat(data)
    if chat is None:
        ids = _ids(tokenizer, data["text"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        return _truncate(Encoded(ids, list(ids), stated=[True] * len(ids)), max_len)
    ids: list[int] = []
    labels: list[int] = []
    stated: list[bool] = []
    done = ""  # the text rendered so far
    for i, message in enumerate(chat):
        if message["role"] == "user" and is_statement(message["content"]):
            # What the user states is memory: the loss is on its words (not on the
            # template around them), as on an answer; a question is only context,
            # also a question asked in the same turn ("... named Mochi. Any tips?").
            upto = _render(tokenizer, chat[: i + 1], add_generation_prompt=False)
            if not upto.startswith(done):
                raise ValueError("this tokenizer's chat template does not render turn by turn")
            content = message["content"].strip()  # templates may trim it
            at = upto.rfind(content)
            if at < len(done):  # the template rewrote the content: it stays context
                continue
            context = _ids(tokenizer, upto[len(done):at])
            ids += context
            labels += [IGNORE] * len(context)
            stated += [False] * len(context)
            for piece, tells in sentences(content):
                piece_ids = _ids(tokenizer, piece)
                ids += piece_ids
                labels += piece_ids if tells else [IGNORE] * len(piece_ids)
                stated += [tells] * len(piece_ids)
            done = upto[:at + len(content)]
            continue
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, chat[:i], add_generation_prompt=True)
        upto = _render(tokenizer, chat[: i + 1], add_generation_prompt=False)
        if not (before.startswith(done) and upto.startswith(before)):
            raise ValueError("this tokenizer's chat template does not render turn by turn")
        context = _ids(tokenizer, before[len(done):])
        answer = _ids(tokenizer, upto[len(before):].rstrip("\n"))
        ids += context + answer
        labels += [IGNORE] * len(context) + answer
        stated += [False] * (len(context) + len(answer))
        done = before + upto[len(before):].rstrip("\n")
    return _truncate(Encoded(ids, labels, stated=stated if any(stated) else None), max_len)


def _truncate(enc: Encoded, max_len: int) -> Encoded:
    """Keep the last `max_len` tokens: the answer matters more than an old prompt."""
    if len(enc.input_ids) <= max_len:
        return enc
    return replace(enc.part(slice(-max_len, None)), cut=len(enc.input_ids) - max_len)


@dataclass
class Batch:
    """Examples as tensors, in one of two layouts.

    Padded (`collate`): one example per row, right-padded; `mask` marks the
    real tokens. Packed (`pack`): several examples one after another in a row,
    each with its own positions counted from 0; from those `positions` the
    model builds a block-diagonal causal mask, so no example sees another,
    and there is no `mask`. Either way `owner` says which example each
    position belongs to (-1 on padding) and `places` where each one starts.
    """

    ids: torch.Tensor
    labels: torch.Tensor
    owner: torch.Tensor
    places: list[tuple[int, int]]  # each example's (row, first position)
    mask: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    stated: torch.Tensor | None = None  # bool, where a label is stated (Encoded.stated); None: nowhere

    @property
    def n_examples(self) -> int:
        return len(self.places)


def collate(batch: list[Encoded], pad_id: int, device: torch.device) -> Batch:
    """One example per row, right-padded to the longest."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    owner = torch.full((len(batch), width), -1, dtype=torch.long)
    stated = torch.zeros((len(batch), width), dtype=torch.bool) if any(e.stated for e in batch) else None
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels)
        owner[row, :n] = row
        if stated is not None and e.stated:
            stated[row, :n] = torch.tensor(e.stated)
    return Batch(ids.to(device), labels.to(device), owner.to(device), [(row, 0) for row in range(len(batch))],
                 mask=mask.to(device), stated=stated.to(device) if stated is not None else None)


def _fill_rows(lengths: list[int], cap: int) -> list[list[int]]:
    """Example indices in as few rows of at most `cap` tokens as fit, the rows
    as even as the longest-first rule makes them (an even split keeps the
    padding to the longest row small)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n_rows = -(-sum(lengths) // cap)
    while True:
        rows: list[list[int]] = [[] for _ in range(n_rows)]
        loads = [0] * n_rows
        for i in order:
            r = min(range(n_rows), key=loads.__getitem__)
            rows[r].append(i)
            loads[r] += lengths[i]
        if max(loads) <= cap:  # true at the latest with one example per row (cap >= the longest)
            return rows
        n_rows += 1


def pack(batch: list[Encoded], pad_id: int, device: torch.device, row_tokens: int) -> Batch:
    """Examples end to end in rows of about `row_tokens` tokens (or the longest
    example, if longer): little padding, and attention over short rows. Each
    example's first label is dropped: a row's loss never predicts one example's
    first token from the end of another (padded rows never predict it either)."""
    lengths = [len(e.input_ids) for e in batch]
    rows = _fill_rows(lengths, max(row_tokens, max(lengths)))
    width = max(sum(lengths[i] for i in row) for row in rows)
    has_stated = any(e.stated for e in batch)
    ids, labels, owner, positions, stated = [], [], [], [], []
    places: list[tuple[int, int]] = [(0, 0)] * len(batch)
    for r, row in enumerate(rows):
        r_ids, r_labels, r_owner, r_positions, r_stated = [], [], [], [], []
        for i in row:
            places[i] = (r, len(r_ids))
            r_ids += batch[i].input_ids
            r_labels += [IGNORE] + batch[i].labels[1:]
            r_owner += [i] * lengths[i]
            r_positions += range(lengths[i])
            if has_stated:
                r_stated += batch[i].stated or [False] * lengths[i]
        pad = width - len(r_ids)  # padding continues the row's last example, which cannot see it
        last = lengths[row[-1]]
        ids.append(r_ids + [pad_id] * pad)
        labels.append(r_labels + [IGNORE] * pad)
        owner.append(r_owner + [-1] * pad)
        positions.append(r_positions + list(range(last, last + pad)))
        if has_stated:
            stated.append(r_stated + [False] * pad)

    def tensor(values, dtype=torch.long):
        return torch.tensor(values, dtype=dtype, device=device)

    return Batch(tensor(ids), tensor(labels), tensor(owner), places, positions=tensor(positions),
                 stated=tensor(stated, torch.bool) if has_stated else None)


def causal_lm(model):
    """The transformers *ForCausalLM inside a PeftModel (or the model itself)."""
    inner = model
    while not hasattr(inner, "get_output_embeddings") or inner.get_output_embeddings() is None:
        inner = inner.base_model if hasattr(inner, "base_model") and inner.base_model is not inner else inner.model
    return inner


class RowLoss(NamedTuple):
    """Per-row answer figures: summed loss, answer tokens, and whether every
    answer token held to the word (not stated, see Encoded.stated) was the
    model's first choice (teacher-forced exact recall)."""

    loss: torch.Tensor
    tokens: torch.Tensor
    all_top1: torch.Tensor
    first_miss: torch.Tensor  # how many answer tokens, from the first, were the first choice
    held_loss: torch.Tensor | None = None  # the summed loss and the count of the held tokens
    held_tokens: torch.Tensor | None = None  # (None: every token is held; loss and tokens say it)


CE_ROWS = 16  # logit rows per chunk on the CPU: 16 x 49k fp32 stays in cache
LN2 = math.log(2.0)


class AnswerCE(torch.autograd.Function):
    """Per-row cross-entropy of `logits` against `target`, and whether each target
    is the row's only top choice: the figures of F.cross_entropy, at about half
    its cost on the CPU. Rows go through in chunks that stay in cache, the full
    log-softmax is never stored (only each row's log-sum-exp), and the backward
    pass writes softmax minus one-hot straight from the logits, in their dtype
    (bf16 under autocast). A tie for first place counts as a miss: greedy
    decoding could take the other word."""

    @staticmethod
    def forward(ctx, logits, target):
        n = logits.shape[0]
        rows = CE_ROWS if logits.device.type == "cpu" else max(n, 1)
        lse = torch.empty((n, 1), dtype=torch.float32, device=logits.device)
        picked = torch.empty_like(lse)
        top1 = torch.empty(n, dtype=torch.bool, device=logits.device)
        buf = torch.empty((min(rows, n), logits.shape[1]), dtype=torch.float32, device=logits.device)
        for a in range(0, n, rows):
            b = a + rows
            chunk = logits[a:b]
            x = buf[:len(chunk)].copy_(chunk)  # one buffer: fresh memory for each chunk costs page faults
            peak = x.amax(-1, keepdim=True)
            t = x.gather(1, target[a:b, None])
            lse[a:b] = x.sub_(peak).exp_().sum(-1, keepdim=True).log_().add_(peak)
            picked[a:b] = t
            first = (t >= peak).squeeze(1)
            # p(target) > 1/2 leaves no room for a tie; below that, count the rivals
            unsure = first & (lse[a:b] - t >= LN2).squeeze(1)
            if unsure.any():
                first[unsure] = (chunk[unsure].float() >= t[unsure]).sum(-1) == 1
            top1[a:b] = first
        ctx.rows = rows
        ctx.save_for_backward(logits, target, lse)
        ctx.mark_non_differentiable(top1)
        return (lse - picked).squeeze(1), top1

    @staticmethod
    def backward(ctx, grad, _top1_grad):
        logits, target, lse = ctx.saved_tensors
        out = torch.empty_like(logits)
        buf = torch.empty((min(ctx.rows, len(logits)), logits.shape[1]), dtype=torch.float32, device=logits.device)
        for a in range(0, logits.shape[0], ctx.rows):
            b = a + ctx.rows
            g = grad[a:b, None].float()
            p = buf[:len(g)].copy_(logits[a:b]).sub_(lse[a:b]).exp_().mul_(g)  # softmax * g
            p.scatter_add_(1, target[a:b, None], -g)  # minus one-hot * g
            out[a:b] = p
        return out, None


def answer_loss(model, batch: Batch, reduction: str = "sum", hidden=None):
    """Cross-entropy on answer tokens, with the LM head run only where it counts.

    Returns (loss, n_tokens). reduction="none" gives a RowLoss, one entry per
    example. No KV cache is built (use_cache=False): a loss never needs one.
    `hidden`, when given, is the decoder's last hidden state, already computed
    (see memzd.prefix); otherwise the decoder runs here.
    """
    lm = causal_lm(model)
    if hidden is None:
        hidden = lm.get_decoder()(input_ids=batch.ids, attention_mask=batch.mask, position_ids=batch.positions,
                                  use_cache=False).last_hidden_state
    target = batch.labels[:, 1:]
    keep = target != IGNORE
    logits = lm.get_output_embeddings()(hidden[:, :-1][keep])
    token_loss, top1 = AnswerCE.apply(logits, target[keep])
    n = int(keep.sum())
    if reduction == "none":
        owner = batch.owner[:, 1:][keep]
        zeros = torch.zeros(batch.n_examples, device=token_loss.device)
        counts = torch.bincount(owner, minlength=batch.n_examples)
        # An example's answer tokens lie together, in order: a token's place in its
        # answer is its index less the index of its answer's first token.
        index = torch.arange(owner.numel(), device=owner.device)
        start = torch.full_like(counts, owner.numel()).scatter_reduce(0, owner, index, "amin")
        place = index - start[owner]
        first_miss = counts.clone().scatter_reduce(0, owner, torch.where(top1, counts[owner], place), "amin")
        loss = zeros.index_add(0, owner, token_loss)
        if batch.stated is None:
            return RowLoss(loss, counts, zeros.index_add(0, owner, (~top1).float()) == 0, first_miss)
        held = ~batch.stated[:, 1:][keep]
        return RowLoss(loss, counts, zeros.index_add(0, owner, ((~top1) & held).float()) == 0, first_miss,
                       zeros.index_add(0, owner, token_loss * held),
                       torch.bincount(owner[held], minlength=batch.n_examples))
    return token_loss.sum(), n
