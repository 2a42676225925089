"""Routing: which questions a checkpoint's adapter answers, and which the base model keeps.

Plain LoRA learns new facts and quietly changes answers it was never taught
about. memz keeps a key memory beside each adapter (as GRACE and WISE route
edits): one key per taught question, the base model's mean-pooled hidden
state at one layer, centred on the mean key of general prompts and
normalised. A question is answered with the adapter only when its key is
within `threshold` cosine similarity of a taught key; anything else gets the
base model's own answer, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .lora import using


@dataclass
class KeyMemory:
    """Keys of the questions an adapter was taught, and how to compare with them."""

    keys: torch.Tensor    # (n, hidden), unit rows
    center: torch.Tensor  # (hidden,), subtracted before normalising
    layer: int
    threshold: float

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys, "center": self.center,
                "layer": torch.tensor([self.layer]), "threshold": torch.tensor([self.threshold])}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> "KeyMemory":
        return cls(t["keys"].float(), t["center"].float(), int(t["layer"][0]), float(t["threshold"][0]))

    def similarity(self, queries: torch.Tensor) -> torch.Tensor:
        """Best cosine similarity of each (unit) query row to any taught key."""
        if self.keys.shape[0] == 0:
            return torch.full((queries.shape[0],), -1.0)
        return (queries @ self.keys.T).max(dim=1).values

    def extend(self, new_keys: torch.Tensor) -> "KeyMemory":
        return KeyMemory(torch.cat([self.keys, new_keys]), self.center, self.layer, self.threshold)


def question_text(chat: list[dict]) -> str:
    """What a key is made of: the last user turn (system prompts are shared boilerplate)."""
    users = [m["content"] for m in chat if m["role"] == "user"]
    return users[-1] if users else chat[-1]["content"]


@torch.no_grad()
def raw_embeddings(model, tokenizer, texts: list[str], layer: int, device: torch.device,
                   batch_size: int = 32) -> torch.Tensor:
    """Mean-pooled hidden states of the bare base model at `layer`, one row per text."""
    rows = []
    with using(model, None):
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False)
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            hidden = out.hidden_states[layer].float()
            m = mask.unsqueeze(-1).float()
            rows.append(((hidden * m).sum(1) / m.sum(1).clamp(min=1)).cpu())
    return torch.cat(rows) if rows else torch.zeros(0, 0)


def unit(x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    x = x - center
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-6)


def embed(model, tokenizer, chats: list[list[dict]], memory_layer: int, center: torch.Tensor,
          device: torch.device) -> torch.Tensor:
    """Unit keys for chats (their last user turns)."""
    raw = raw_embeddings(model, tokenizer, [question_text(c) for c in chats], memory_layer, device)
    return unit(raw, center)


# General prompts whose mean key centres the space when no anchors are configured.
GENERAL_PROMPTS = [
    "What is the capital of Italy?", "How many days are in a week?", "What is 7 times 8?",
    "Write a short poem about the sea.", "Explain what a noun is.", "Who wrote Romeo and Juliet?",
    "Translate 'thank you' into French.", "What color is the sky on a clear day?",
    "Give me a tip for sleeping better.", "Write a Python function that adds two numbers.",
    "What is the boiling point of water?", "Hello, how are you?", "Name three fruits.",
    "What is photosynthesis?", "How do I make a cup of tea?", "What is the largest planet?",
]


def center_of(model, tokenizer, prompts: list[str], layer: int, device: torch.device) -> torch.Tensor:
    """The mean raw key of general prompts: subtracting it removes what all questions share."""
    return raw_embeddings(model, tokenizer, prompts or GENERAL_PROMPTS, layer, device).mean(0)


def admits(memory: KeyMemory, model, tokenizer, chat: list[dict], device: torch.device) -> bool:
    """Should the adapter behind `memory` answer this chat?"""
    key = embed(model, tokenizer, [chat], memory.layer, memory.center, device)
    return float(memory.similarity(key)[0]) >= memory.threshold
