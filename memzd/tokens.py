"""From examples and prompts to token ids, and the answer-only loss.

Training and evaluation share these: an example becomes input ids plus labels
that are -100 everywhere but on the answer (assistant turns, or the whole of
a {"text"} example), rendered with the model's own chat template. The loss
runs the LM head only at answer positions: on a 49k-word vocabulary that head
is a large share of the work, and the prompt's logits are never used.

Training packs several examples into one row instead of padding each to the
longest (`pack`): position ids restart at every example, which transformers
turns into a block-diagonal causal mask, so no example sees another and no
compute goes to padding (bench/speed.py measures the difference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .examples import to_chat

IGNORE = -100


@dataclass
class Encoded:
    """One example as the model sees it."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_answer(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


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
        return _truncate(Encoded(ids, list(ids)), max_len)
    ids: list[int] = []
    labels: list[int] = []
    done = ""  # the text rendered so far
    for i, message in enumerate(chat):
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
        done = before + upto[len(before):].rstrip("\n")
    return _truncate(Encoded(ids, labels), max_len)


def _truncate(enc: Encoded, max_len: int) -> Encoded:
    """Keep the last `max_len` tokens: the answer matters more than an old prompt."""
    if len(enc.input_ids) <= max_len:
        return enc
    return Encoded(enc.input_ids[-max_len:], enc.labels[-max_len:])


def collate(batch: list[Encoded], pad_id: int, device: torch.device):
    """Right-pad a micro-batch; returns input_ids, attention_mask, labels tensors."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels)
    return ids.to(device), mask.to(device), labels.to(device)


def _bins(lengths: list[int], width: int) -> list[list[int]]:
    """First-fit-decreasing: indices grouped into rows of at most `width` tokens."""
    rows: list[list[int]] = []
    fill: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, used in enumerate(fill):
            if used + lengths[i] <= width:
                rows[r].append(i)
                fill[r] += lengths[i]
                break
        else:
            rows.append([i])
            fill.append(lengths[i])
    return rows


def pack(batch: list[Encoded], pad_id: int, device: torch.device, row_tokens: int = 256):
    """Pack a micro-batch into rows of about `row_tokens` tokens; returns ids, position_ids, labels.

    Each example keeps its own positions (0, 1, ...), so attention stays inside
    it; the first token of each example gets no label (nothing before it in
    its own context predicts it). Rows are topped up with pad tokens that form
    their own segment and carry no labels.
    """
    lengths = [len(e.input_ids) for e in batch]
    rows = _bins(lengths, max(row_tokens, max(lengths)))
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids, pos, labels = [], [], []
    for row in rows:
        r_ids, r_pos, r_lab = [], [], []
        for i in row:
            e = batch[i]
            r_ids += e.input_ids
            r_pos += range(lengths[i])
            r_lab += [IGNORE] + e.labels[1:]
        gap = width - len(r_ids)
        ids.append(r_ids + [pad_id] * gap)
        pos.append(r_pos + list(range(gap)))
        labels.append(r_lab + [IGNORE] * gap)
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.long, device=device)  # noqa: E731
    return as_tensor(ids), as_tensor(pos), as_tensor(labels)


def causal_lm(model):
    """The transformers *ForCausalLM inside a PeftModel (or the model itself)."""
    inner = model
    while not hasattr(inner, "get_output_embeddings") or inner.get_output_embeddings() is None:
        inner = inner.base_model if hasattr(inner, "base_model") and inner.base_model is not inner else inner.model
    return inner


def answer_loss(model, ids, mask, labels, reduction: str = "sum", position_ids=None):
    """Cross-entropy on answer tokens, with the LM head run only where it counts.

    Returns (loss, n_tokens). reduction="none" gives one summed loss per row.
    Packed rows (from `pack`) pass `position_ids` and mask=None.
    """
    lm = causal_lm(model)
    hidden = lm.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                              use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE
    logits = lm.get_output_embeddings()(hidden[:, :-1][keep]).float()
    token_loss = F.cross_entropy(logits, target[keep], reduction="none")
    n = int(keep.sum())
    if reduction == "none":
        rows = keep.nonzero()[:, 0]
        return torch.zeros(ids.shape[0], device=ids.device).index_add_(0, rows, token_loss), keep.sum(1)
    return token_loss.sum(), n
