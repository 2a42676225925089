"""The frozen-prefix cache: a training step that skips the layers below LoRA.

LoRA sits on the top layers only (`lora.layers: top-half` by
default), so the layers below the first adapted one are frozen and see the
same input every epoch: their output for an example never changes during a
run. The first pass over an example records the hidden state entering the
first adapted layer; later epochs start there and run only the top layers.
A batch is trained for several epochs (the stop rule needs ~6 on ten facts),
so this saves the bottom half's forward pass on all epochs but the first. The
figures are the same as a full pass (checked once per run on a real example;
a model whose decoder does not fit the scheme simply runs whole).
"""

from __future__ import annotations

import contextlib
import logging

import torch

from .tokens import Batch, Encoded, causal_lm, collate

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

    def _run(self, batch: Batch, **inputs) -> torch.Tensor:
        return self.decoder(**inputs, attention_mask=batch.mask, position_ids=batch.positions,
                            use_cache=False).last_hidden_state

    def _full(self, examples: list[Encoded], batch: Batch) -> torch.Tensor:
        """A whole pass, keeping each example's hidden state at the first adapted layer."""
        seen = {}

        def grab(_module, args, kwargs):
            seen["h"] = (args[0] if args else kwargs["hidden_states"]).detach()

        hook = self.decoder.layers[self.first].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            out = self._run(batch, input_ids=batch.ids)
        finally:
            hook.remove()
        for e, (row, start) in zip(examples, batch.places):
            self.cache[id(e)] = seen["h"][row, start:start + len(e.input_ids)].clone()
        return out

    def _from_cache(self, examples: list[Encoded], batch: Batch) -> torch.Tensor:
        first = self.cache[id(examples[0])]
        hidden = first.new_zeros((*batch.ids.shape, first.shape[-1]))
        for e, (row, start) in zip(examples, batch.places):
            hidden[row, start:start + len(e.input_ids)] = self.cache[id(e)]
        with self._top_only():
            return self._run(batch, inputs_embeds=hidden)

    def hidden(self, examples: list[Encoded], batch: Batch) -> torch.Tensor:
        """The decoder's last hidden state for `batch`, the tensors of `examples`."""
        if all(id(e) in self.cache for e in examples):
            return self._from_cache(examples, batch)
        return self._full(examples, batch)

    @torch.no_grad()
    def agrees(self, example: Encoded, device: torch.device) -> bool:
        """Does starting from the cache give the whole pass's result for this model?"""
        batch = collate([example], 0, device)
        was = self.decoder.training
        self.decoder.eval()
        try:
            whole = self._full([example], batch)
            part = self._from_cache([example], batch)
        finally:
            self.decoder.train(was)
            self.cache.clear()
        same = torch.allclose(whole, part, rtol=1e-4, atol=1e-4)
        if not same:
            log.info("this model's decoder does not start cleanly at layer %d; training runs whole passes",
                     self.first)
        return same
