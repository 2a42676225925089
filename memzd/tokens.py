"""From examples and prompts to token ids, and the answer-only loss.

Training and evaluation share these: an example becomes input ids plus labels
that are -100 everywhere but on the answer (assistant turns, or the whole of
a {"text"} example), rendered with the model's own chat template. The loss
runs the LM head only at answer positions: on a 49k-word vocabulary that head
is a large share of the work, and the prompt's logits are never used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

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


def causal_lm(model):
    """The transformers *ForCausalLM inside a PeftModel (or the model itself)."""
    inner = model
    while not hasattr(inner, "get_output_embeddings") or inner.get_output_embeddings() is None:
        inner = inner.base_model if hasattr(inner, "base_model") and inner.base_model is not inner else inner.model
    return inner


class RowLoss(NamedTuple):
    """Per-row answer figures: summed loss, answer tokens, and whether every
    answer token was the model's first choice (teacher-forced exact recall)."""

    loss: torch.Tensor
    tokens: torch.Tensor
    all_top1: torch.Tensor


def answer_loss(model, ids, mask, labels, reduction: str = "sum", hidden=None):
    """Cross-entropy on answer tokens, with the LM head run only where it counts.

    Returns (loss, n_tokens). reduction="none" gives a RowLoss, one entry per row.
    No KV cache is built (use_cache=False): a loss never needs one. `hidden`,
    when given, is the decoder's last hidden state, already computed (see
    memzd.prefix); otherwise the decoder runs here.
    """
    lm = causal_lm(model)
    if hidden is None:
        hidden = lm.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE
    logits = lm.get_output_embeddings()(hidden[:, :-1][keep]).float()
    token_loss = F.cross_entropy(logits, target[keep], reduction="none")
    n = int(keep.sum())
    if reduction == "none":
        rows = keep.nonzero()[:, 0]
        missed = (logits.detach().argmax(-1) != target[keep]).float()
        zeros = torch.zeros(ids.shape[0], device=ids.device)
        return RowLoss(zeros.index_add(0, rows, token_loss), keep.sum(1),
                       zeros.index_add(0, rows, missed) == 0)
    return token_loss.sum(), n
