"""The live LoRA model: one frozen base, several named adapters, switched in memory.

The daemon keeps a single PeftModel. The adapter being trained is "candidate";
each checkpoint that serves is loaded once under its own id and then switched
to by name, so a new checkpoint serves without reloading the base model.
"""

from __future__ import annotations

import contextlib

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from .config import LoraConfig

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
