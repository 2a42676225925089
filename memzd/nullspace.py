"""Null-space updates (training.null_space): what a batch changes in an adapter
stays out of the input directions that general text uses.

A LoRA projection adds B·A·x to a frozen layer's output. If every row of A is
orthogonal to the inputs x that general prompts produce, the adapter adds
nothing there, and the adapter alone answers general prompts as the base
model does. This is AlphaEdit's null-space projection (Fang et al., 2025)
applied to LoRA's A: the base model reads general text (the anchors with
its own answers), each LoRA input's covariance is taken, and the
eigen-directions that hold `keep` of its energy are the ones A may not use.
Each step's gradient of A is projected before the optimizer sees it, and after
the step A is projected back (Adam's per-element scaling moves it out again):

    A <- A0 + (A - A0) · (I - U·Uᵀ)

where U holds the used directions and A0 is the parent's A (zero for a fresh
adapter, whose random start is projected too): a parent trained without the
constraint keeps its weights, and only what this batch changes is
constrained.

Cost: one pass of the base model's layers over the general texts and one
eigh per distinct LoRA input (q, k and v share one, as do gate and up). The
pass gives each distinct input an in_features² sum in host memory (`Inputs`;
~200 MB for the bundled model, ~11 GB for the top half of a Llama-7B layout):
sums of more texts add to them, so the learner gathers the anchors' once (~15
s for the bundled model on 2 CPU cores), caches them for the machine where
they are small enough, and adds each batch's own questions to a copy. What is
kept on the device is the narrower of the used and the unused directions,
in_features × min(k, in_features - k).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open

from . import lora
from .tokens import Encoded, causal_lm
from .trainer import autocast_for

BATCH = 16  # general texts per forward pass while measuring


class Subspace:
    """The directions A may not use, held as the narrower of two bases."""

    def __init__(self, basis: torch.Tensor, used: bool):
        self.basis, self.used = basis, used  # used: `basis` spans the used directions, else the free ones

    @property
    def free(self) -> int:
        """How many input dimensions A may still use."""
        n, k = self.basis.shape
        return n - k if self.used else k

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """x (rows over input features) with the used directions removed."""
        b = self.basis.to(x.dtype)
        inside = (x @ b) @ b.T
        return x - inside if self.used else inside


def _wrapped(model) -> dict[str, torch.nn.Module]:
    """`model`'s LoRA-wrapped modules by name."""
    return {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}


def sums_bytes(model) -> int:
    """At most how many bytes Inputs.gather's sums take for `model`'s LoRA-wrapped
    modules (an in_features² fp32 sum each; modules that share an input share one,
    which this does not count)."""
    return sum(m.base_layer.in_features ** 2 * 4 for m in _wrapped(model).values()
               if hasattr(m.base_layer, "in_features"))


class Inputs:
    """What some texts put into each LoRA-wrapped module: for each distinct input
    the sum of its x·xᵀ over every token (fp32, in host memory), and which modules
    read the same input (q, k and v read one tensor, as do gate and up). Sums of
    two sets of texts add up, so the anchors' can be gathered once and a batch's
    own questions added to them."""

    def __init__(self, sums: dict[str, torch.Tensor], shares: dict[str, str]):
        self.sums, self.shares = sums, shares

    @property
    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.sums.values())

    def copy(self) -> "Inputs":
        return Inputs({n: s.clone() for n, s in self.sums.items()}, dict(self.shares))

    def to_bytes(self) -> bytes:
        """As a safetensors file (the sums, and which modules share them in its metadata)."""
        from safetensors.torch import save

        return save({n: s.contiguous() for n, s in self.sums.items()}, metadata={"shares": json.dumps(self.shares)})

    @classmethod
    def read(cls, path: Path) -> "Inputs | None":
        """What to_bytes wrote to `path`; None where it is missing or unreadable."""
        try:
            with safe_open(str(path), "pt") as f:
                shares = json.loads((f.metadata() or {})["shares"])
                sums = {k: f.get_tensor(k) for k in f.keys()}
        except (OSError, SafetensorError, KeyError, ValueError):
            return None
        return cls(sums, shares) if set(shares.values()) == set(sums) else None

    @classmethod
    @torch.no_grad()
    def gather(cls, model, texts: list[Encoded], device: torch.device, pad_id: int,
               between: Callable[[], None] | None = None, onto: "Inputs | None" = None) -> "Inputs":
        """Run the base model (no adapter) over `texts`, summing each LoRA input's
        x·xᵀ (`onto`: into those sums, in place). `between` runs between two
        passes, outside them (the daemon answers requests there)."""
        modules = _wrapped(model)
        sums: dict[str, torch.Tensor] = onto.sums if onto is not None else {}
        shares: dict[str, str] = onto.shares if onto is not None else {}  # module -> the module whose input it shares
        seen: dict = {"x": None, "name": None, "mask": None}  # mask None: not measuring (another forward)

        def grab(name):
            def hook(module, args):
                x = args[0]
                if seen["mask"] is None:
                    return
                if x is seen["x"]:
                    shares[name] = seen["name"]
                    return
                seen["x"], seen["name"] = x, name
                shares[name] = name
                rows = x.reshape(-1, x.shape[-1])[seen["mask"]].float()
                with torch.autocast(rows.device.type, enabled=False):  # the sums in fp32, whatever the layers ran in
                    # ...and in host memory: a 7B's sums (~11 GB) would not fit beside it on the GPU
                    if name in sums:
                        sums[name] += (rows.T @ rows).cpu()
                    else:
                        sums[name] = (rows.T @ rows).cpu()
            return hook

        decoder = causal_lm(model).model  # the layers without the LM head: only their inputs are wanted
        hooks = [m.base_layer.register_forward_pre_hook(grab(n)) for n, m in modules.items()]
        try:
            ordered = sorted(texts, key=lambda e: len(e.input_ids))
            for start in range(0, len(ordered), BATCH):
                if start and between is not None:
                    between()
                chunk = ordered[start:start + BATCH]
                width = max(len(e.input_ids) for e in chunk)
                ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.bool)
                for row, e in enumerate(chunk):
                    ids[row, :len(e.input_ids)] = torch.tensor(e.input_ids)
                    mask[row, :len(e.input_ids)] = True
                seen.update(x=None, name=None, mask=mask.reshape(-1).to(device))
                try:
                    with lora.using(model, None), autocast_for(device, "auto"):
                        decoder(input_ids=ids.to(device), attention_mask=mask.long().to(device), use_cache=False)
                finally:
                    seen.update(x=None, mask=None)
        finally:
            for h in hooks:
                h.remove()
        return onto if onto is not None else cls(sums, shares)

    def null_space(self, keep: float, device: torch.device) -> "NullSpace":
        """`keep` (0 < keep < 1): the share of each input's energy that A must stay
        out of. The sums are left as they are."""
        spaces: dict[str, Subspace] = {}
        for name, owner in self.shares.items():
            if owner not in spaces:
                values, vectors = torch.linalg.eigh(self.sums[owner].to(device))  # ascending, one on the device at a time
                values, vectors = values.clamp(min=0).flip(0), vectors.flip(1)
                energy = values.cumsum(0) / values.sum().clamp(min=1e-30)
                n_used = min(int((energy < keep).sum().item()) + 1, len(values))  # the top ones holding `keep`
                used = n_used <= len(values) - n_used
                basis = vectors[:, :n_used] if used else vectors[:, n_used:]
                spaces[owner] = Subspace(basis.contiguous(), used)
            spaces[name] = spaces[owner]
        return NullSpace(spaces)


class NullSpace:
    """For each LoRA-wrapped module (by name), the input directions general text
    leaves nearly unused."""

    def __init__(self, spaces: dict[str, Subspace]):
        self.spaces = spaces

    @property
    def kept(self) -> dict[str, int]:
        """module -> input dimensions A may still use."""
        return {name: space.free for name, space in self.spaces.items()}

    @classmethod
    def measure(cls, model, texts: list[Encoded], keep: float, device: torch.device, pad_id: int,
                between: Callable[[], None] | None = None) -> "NullSpace":
        """Inputs.gather(...).null_space(keep): the null space of `texts` in one go."""
        return Inputs.gather(model, texts, device, pad_id, between).null_space(keep, device)

    def bind(self, model, adapter: str, parent: bool) -> "Projection":
        """The projection of `adapter`'s A matrices as they are now (`parent`: they
        are a parent's trained weights, kept; else a fresh start, projected too)."""
        weights = []
        for name, module in model.named_modules():
            if name in self.spaces and adapter in getattr(module, "lora_A", {}):
                a = module.lora_A[adapter].weight
                start = a.detach().clone() if parent else torch.zeros_like(a)
                weights.append((a, start, self.spaces[name]))
        projection = Projection(weights)
        projection()
        return projection


class Projection:
    """The trainer's constraint (memzd.trainer.Constraint): each LoRA A's gradient
    projected before an optimizer step, and A <- A0 + project(A - A0) after it."""

    def __init__(self, weights: list[tuple[torch.Tensor, torch.Tensor, Subspace]]):
        self.weights = weights

    @torch.no_grad()
    def gradients(self) -> None:
        """Before a step: Adam's moments then see only the directions A may move in. Left
        in, the used directions' large gradients fill its second moment and shrink the
        steps the free ones get (one batch of the bench's facts needed 80 steps at keep 0.99,
        36 with its gradients projected too)."""
        for a, _, space in self.weights:
            if a.grad is not None:
                a.grad.copy_(space.project(a.grad))

    @torch.no_grad()
    def __call__(self) -> None:
        for a, start, space in self.weights:
            a.copy_(start + space.project(a - start))
