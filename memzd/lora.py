"""The live LoRA model: one frozen base, several named adapters, switched in memory.

The daemon keeps a single PeftModel. The adapter being trained is "candidate";
each checkpoint that serves is loaded once under its own id and then switched
to by name, so a new checkpoint serves without reloading the base model.
"""

from __future__ import annotations

import contextlib
import warnings
from functools import partial

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora.layer import Linear as LoraLinear

from .config import LoraConfig
from .errors import ConfigError

TRAIN = "candidate"  # the adapter being trained ("train" would clash with nn.Module.train)


def peft_config(cfg: LoraConfig, n_layers: int) -> PeftLoraConfig:
    return PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.target_modules), bias="none",
                          layers_to_transform=cfg.layer_indices(n_layers), task_type="CAUSAL_LM")


def n_layers(model) -> int:
    config = model.config if not isinstance(model, PeftModel) else model.base_model.model.config
    return int(config.num_hidden_layers)


def wrap(base_model: torch.nn.Module, cfg: LoraConfig) -> PeftModel:
    """Wrap the frozen base once; the first adapter is the (empty) training one."""
    names = {name.rsplit(".", 1)[-1] for name, _ in base_model.named_modules()}
    unknown = [m for m in cfg.target_modules if m not in names]
    if unknown:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in base_model.named_modules()
                         if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"config.yaml: lora.target_modules: '{unknown[0]}' is no module of the base model "
                          f"(its linear ones: {', '.join(linear)})")
    with warnings.catch_warnings():  # peft probes an attribute transformers 5 deprecates
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        model = get_peft_model(base_model, peft_config(cfg, n_layers(base_model)), adapter_name=TRAIN)
    model.eval()
    return model


def has_adapter(model: PeftModel, name: str) -> bool:
    return name in model.peft_config


def add_adapter(model: PeftModel, name: str, config: PeftLoraConfig,
                state: dict[str, torch.Tensor] | None = None) -> None:
    """Add adapter `name` (replacing one of that name) and load `state` into it."""
    if has_adapter(model, name):
        drop_adapter(model, name)
    model.add_adapter(name, config)
    if state is not None:
        result = set_peft_model_state_dict(model, state, adapter_name=name)
        missing = [k for k in result.missing_keys if "lora_" in k and f".{name}." in k]
        if missing or result.unexpected_keys:
            drop_adapter(model, name)
            bad = (missing or result.unexpected_keys)[0]
            raise KeyError(f"adapter weights do not fit this model (e.g. {bad})")
    for n, p in model.named_parameters():
        if f".{name}." in n:
            p.requires_grad_(False)


def drop_adapter(model: PeftModel, name: str) -> None:
    if has_adapter(model, name):
        active = model.active_adapter
        if active == name:  # peft will not delete the active adapter's last copy otherwise
            others = [a for a in model.peft_config if a != name]
            if others:
                model.set_adapter(others[0])
        model.delete_adapter(name)


def adapter_state(model: PeftModel, name: str) -> dict[str, torch.Tensor]:
    """The adapter's weights as PEFT saves them (keys without the adapter name)."""
    return {k: v.detach().to("cpu").clone()
            for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}


def start_training(model: PeftModel, cfg: LoraConfig, parent_state: dict | None) -> list[torch.nn.Parameter]:
    """Reset the "candidate" adapter to the parent's weights (or empty) and make it trainable."""
    add_adapter(model, TRAIN, peft_config(cfg, n_layers(model)), parent_state)
    model.set_adapter(TRAIN)
    params = []
    for n, p in model.named_parameters():
        trainable = f".{TRAIN}." in n
        p.requires_grad_(trainable)
        if trainable:
            params.append(p)
    return params


@contextlib.contextmanager
def using(model: PeftModel, name: str | None):
    """Run inference with adapter `name`, or with the bare base model when None."""
    previous = model.active_adapter
    grads = {n: p.requires_grad for n, p in model.named_parameters() if p.requires_grad}
    was_training = model.training
    model.eval()
    try:
        if name is None:
            with model.disable_adapter(), torch.inference_mode():
                yield model
        else:
            model.base_model.set_adapter(name)
            with torch.inference_mode():
                yield model
    finally:
        if model.active_adapter != previous:
            model.base_model.set_adapter(previous)
        for n, p in model.named_parameters():  # set_adapter toggles requires_grad; restore it
            p.requires_grad_(grads.get(n, False))
        if was_training:
            model.train()


class _FusedLinear(torch.autograd.Function):
    """y = x W^T + s (x A^T) B^T with W frozen, as one autograd node.

    peft computes the same as five nodes (the base projection, A, B, the
    scaling, the sum), each with its own pass over the output in both
    directions; here the LoRA term is added into the base output by the
    matmul itself (addmm_), and the backward pass is five matmuls."""

    @staticmethod
    def forward(ctx, x, weight, a, b, scale):
        x2 = x.reshape(-1, x.shape[-1])
        z = x2 @ a.t()
        y = (x2 @ weight.t()).addmm_(z, b.t(), alpha=scale)
        ctx.save_for_backward(x2, weight, a, b, z)
        ctx.scale, ctx.x_shape = scale, x.shape
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, weight, a, b, z = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        u = g @ b
        gx = (g @ weight).addmm_(u, a, alpha=ctx.scale).view(ctx.x_shape) if ctx.needs_input_grad[0] else None
        ga = (u.t() @ x2).mul_(ctx.scale) if ctx.needs_input_grad[2] else None
        gb = (g.t() @ z).mul_(ctx.scale) if ctx.needs_input_grad[3] else None
        return gx, None, ga, gb, None


def _fused_forward(module: LoraLinear, name: str, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else module.base_layer.weight.dtype
    return _FusedLinear.apply(x.to(dtype), module.base_layer.weight.to(dtype),
                              module.lora_A[name].weight.to(dtype), module.lora_B[name].weight.to(dtype),
                              module.scaling[name])


def _fusable(module) -> str | None:
    """The adapter a LoRA projection would run fused, or None (peft's own forward then)."""
    if not isinstance(module, LoraLinear) or module.merged or module.disable_adapters:
        return None
    if len(module.active_adapters) != 1:
        return None
    name = module.active_adapters[0]
    base = module.base_layer
    fits = (name in module.lora_A and name not in module.lora_variant and base.bias is None
            and isinstance(base, torch.nn.Linear) and not base.weight.requires_grad
            and isinstance(module.lora_dropout[name], torch.nn.Identity))
    return name if fits else None


class FusedLoRA:
    """Each LoRA projection of the active adapter run as one autograd node
    (_FusedLinear) instead of peft's five, while `active()` is held; the
    numbers are the same. Projections it does not fit (dropout, a bias, a
    LoRA variant) keep peft's forward."""

    def __init__(self, model):
        self.targets = [(m, name) for m in model.modules() if (name := _fusable(m)) is not None]

    @contextlib.contextmanager
    def active(self):
        for module, name in self.targets:
            module.forward = partial(_fused_forward, module, name)
        try:
            yield
        finally:
            for module, _ in self.targets:
                del module.forward
