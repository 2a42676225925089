"""bf16 training on the CPU without the casts autocast adds.

Under bf16 autocast the model keeps its fp32 weights and residual stream, and
every matmul casts its operands to bf16 on the way in. On one CPU thread the
casts, not the matmuls, become the cost: each frozen weight is cast again in
every pass (autocast caches casts only of weights that train), and a layer's
normalised input is cast once per projection that reads it (q, k, v and
their LoRA A: six times), then cast back to fp32 for LoRA by peft. Two
switches, each on only while a micro-batch runs (bench/speed.py measures
them, memzd.trainer.Levers turns them on):

- Bf16Weights: bf16 copies of the frozen linear weights, the LM head's
  included, are put in place of the fp32 ones.
- Bf16Activations: the normalisation layers and the rotary tables give their
  output in bf16, once; peft's cast of a LoRA input back to its fp32 weight's
  dtype is switched off (peft.helpers.disable_input_dtype_casting). The
  projections then read what autocast would have given them; the residual
  stream, the softmax and the loss stay fp32.

Around everything else (answering a query between steps included) the model
is as it was: fp32 weights, no hooks, so serving never sees either.
"""

from __future__ import annotations

import contextlib

import torch
from peft.helpers import disable_input_dtype_casting

from .tokens import causal_lm


class Bf16Weights:
    """bf16 copies of the frozen linear weights, the LM head's included, put in
    place while a micro-batch runs. A module's weight is swapped, not its data,
    so an LM head tied to the input embeddings keeps the embeddings fp32."""

    def __init__(self, model):
        lm = causal_lm(model)
        linears = [m for m in lm.get_decoder().modules() if isinstance(m, torch.nn.Linear)]
        head = lm.get_output_embeddings()
        if isinstance(head, torch.nn.Linear):
            linears.append(head)
        self.swaps = []  # (module, fp32 weight, bf16 copy)
        for module in linears:
            w = module.weight
            if not w.requires_grad and w.dtype == torch.float32:
                half = torch.nn.Parameter(w.detach().to(torch.bfloat16), requires_grad=False)
                self.swaps.append((module, w, half))

    @contextlib.contextmanager
    def active(self):
        for module, _, half in self.swaps:
            module.weight = half
        try:
            yield
        finally:
            for module, full, _ in self.swaps:
                module.weight = full


def _to_bf16(_module, _args, out):
    if isinstance(out, tuple):
        return tuple(o.to(torch.bfloat16) if torch.is_tensor(o) and o.is_floating_point() else o for o in out)
    return out.to(torch.bfloat16)


class Bf16Activations:
    """Normalisation outputs and rotary tables in bf16, cast once, while a micro-batch runs."""

    def __init__(self, model):
        self.model = model
        decoder = causal_lm(model).get_decoder()
        self.modules = [m for m in decoder.modules() if type(m).__name__.endswith(("RMSNorm", "LayerNorm"))]
        rotary = getattr(decoder, "rotary_emb", None)
        if isinstance(rotary, torch.nn.Module):
            self.modules.append(rotary)

    @contextlib.contextmanager
    def active(self):
        hooks = [m.register_forward_hook(_to_bf16) for m in self.modules]
        try:
            with disable_input_dtype_casting(self.model):
                yield
        finally:
            for h in hooks:
                h.remove()
