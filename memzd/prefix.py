"""Two ways to make a training step cheaper without changing what it computes.

Frozen prefix. LoRA sits on the top layers only (`lora.layers: top-half` by
default), so the layers below the first adapted one are frozen and see the
same input every epoch: their output for an example never changes during a
run. The first pass over an example records the hidden state entering the
first adapted layer; later epochs start there and run only the top layers.
A batch is trained for several epochs (the stop rule needs ~6 on ten facts),
so this saves the bottom half's forward pass on all epochs but the first. The
figures are the same as a full pass (checked once per run on a real example;
a model whose decoder does not fit the scheme simply runs whole).

bf16 weights. Under bf16 autocast every frozen fp32 weight is cast to bf16
again in every forward pass (autocast caches casts only of weights that
train). Keeping a bf16 copy of the frozen linear weights for the run and
pointing the layers at it while a micro-batch runs removes those casts. The
fp32 weights are put back around everything else (answering a query between
steps included), so serving never sees the copy.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from .tokens import Encoded, causal_lm

log = logging.getLogger("memz.prefix")


class FrozenPrefix:
    """Hidden states entering the first adapted layer, cached per example for one run."""

    def __init__(self, decoder, first: int):
        self.decoder, self.first = decoder, first
        self.cache: dict[int, torch.Tensor] = {}

    @classmethod
    def for_model(cls, model) -> "FrozenPrefix | None":
        """The cache for `model`'s trainable layers, or None where nothing below them is frozen."""
        decoder = causal_lm(model).get_decoder()
        layers = getattr(decoder, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList):
            return None
        if any(p.requires_grad for p in decoder.parameters(recurse=False)):
            return None
        first = next((i for i, layer in enumerate(layers) if any(p.requires_grad for p in layer.parameters())), None)
        if not first:
            return None  # no trainable layer, or the very first one trains
        return cls(decoder, first)

    @contextlib.contextmanager
    def _top_only(self):
        layers = self.decoder.layers
        self.decoder.layers = layers[self.first:]
        try:
            yield
        finally:
            self.decoder.layers = layers

    def _full(self, examples: list[Encoded], ids, mask) -> torch.Tensor:
        """A whole pass, keeping each example's hidden state at the first adapted layer."""
        seen = {}

        def grab(_module, args, kwargs):
            seen["h"] = (args[0] if args else kwargs["hidden_states"]).detach()

        hook = self.decoder.layers[self.first].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            out = self.decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        finally:
            hook.remove()
        for row, e in enumerate(examples):
            self.cache[id(e)] = seen["h"][row, :len(e.input_ids)].clone()
        return out

    def _from_cache(self, examples: list[Encoded], mask) -> torch.Tensor:
        start = self.cache[id(examples[0])]
        hidden = start.new_zeros((len(examples), mask.shape[1], start.shape[-1]))
        for row, e in enumerate(examples):
            hidden[row, :len(e.input_ids)] = self.cache[id(e)]
        with self._top_only():
            return self.decoder(inputs_embeds=hidden, attention_mask=mask, use_cache=False).last_hidden_state

    def hidden(self, examples: list[Encoded], ids, mask) -> torch.Tensor:
        """The decoder's last hidden state for a collated micro-batch of `examples`."""
        if all(id(e) in self.cache for e in examples):
            return self._from_cache(examples, mask)
        return self._full(examples, ids, mask)

    @torch.no_grad()
    def agrees(self, example: Encoded, device: torch.device) -> bool:
        """Does starting from the cache give the whole pass's result for this model?"""
        ids = torch.tensor([example.input_ids], device=device)
        mask = torch.ones_like(ids)
        was = self.decoder.training
        self.decoder.eval()
        try:
            whole = self._full([example], ids, mask)
            part = self._from_cache([example], mask)
        finally:
            self.decoder.train(was)
            self.cache.clear()
        same = torch.allclose(whole, part, rtol=1e-4, atol=1e-4)
        if not same:
            log.info("this model's decoder does not start cleanly at layer %d; training runs whole passes",
                     self.first)
        return same


class Bf16Weights:
    """bf16 copies of the frozen linear weights, swapped in while a micro-batch runs."""

    def __init__(self, model):
        self.pairs = []  # (parameter, fp32 data, bf16 data)
        for module in causal_lm(model).get_decoder().modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad \
                    and module.weight.dtype == torch.float32:
                w = module.weight
                self.pairs.append((w, w.data, w.data.to(torch.bfloat16)))

    @contextlib.contextmanager
    def active(self):
        for w, _, half in self.pairs:
            w.data = half
        try:
            yield
        finally:
            for w, full, _ in self.pairs:
                w.data = full
