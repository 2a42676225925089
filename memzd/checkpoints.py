"""Checkpoint folders: written whole or not at all, and checked before they serve.

A checkpoint is a standard PEFT adapter folder (adapter_model.safetensors,
adapter_config.json) plus meta.json (parent, batch, base model, config,
metrics) and, when routing is on, memz_keys.safetensors. It is written into
checkpoints/.staging/, fsynced, and renamed into place; only then does the
daemon record it. Loading accepts safetensors only and checks the keys,
shapes and values before an adapter may serve.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

from .config import Home
from .errors import CheckpointError
from .files import write_atomic

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig as PeftLoraConfig

log = logging.getLogger("memz.checkpoints")

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
META = "meta.json"
KEYS = "memz_keys.safetensors"
UNSAFE = ("adapter_model.bin", "pytorch_model.bin", "adapter_model.pt")

META_DEFAULTS = {"parent": None, "batch_id": None, "base_model": None, "config": {},
                 "metrics": {}, "created_at": None, "n_examples": 0, "format": 1}


def new_id(seq: int, now: datetime | None = None) -> str:
    """A_<date>_<sequence>: sorts by time, unique within a home."""
    now = now or datetime.now(timezone.utc)
    return f"A_{now:%Y-%m-%d}_{seq:04d}"


class StorageError(OSError):
    """Writing a checkpoint failed for a reason of the disk's (full, read-only, gone),
    not the batch's: the daemon retries later without counting it against the batch."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_file(tensors: dict, filename: str, metadata: dict | None = None) -> None:
    """safetensors' writer (torch is imported only when weights are written)."""
    from safetensors.torch import save_file as save

    save(tensors, filename, metadata=metadata)


def write_checkpoint(home: Home, checkpoint_id: str, state: dict[str, torch.Tensor],
                     config: PeftLoraConfig, meta: dict,
                     keys: tuple[dict[str, torch.Tensor], dict[str, str]] | None = None) -> Path:
    """Write a checkpoint folder atomically and return its final path.

    meta.json records the weights' sha256, so that weights changed on disk
    (corrupted with finite values) are refused when they are loaded.
    A failure of the disk raises StorageError; the staging folder is removed.
    """
    final = home.checkpoints / checkpoint_id
    if final.exists():
        raise CheckpointError(f"checkpoint {checkpoint_id} already exists at {final}")
    staging = None
    try:
        home.staging.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{checkpoint_id}-", dir=home.staging))
        save_file({k: v.contiguous() for k, v in state.items()}, str(staging / WEIGHTS),
                  metadata={"format": "pt"})
        config.save_pretrained(str(staging))
        if keys is not None:
            tensors, key_meta = keys
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging / KEYS), metadata=key_meta)
        meta = {**META_DEFAULTS, **meta, "weights_sha256": sha256_of(staging / WEIGHTS)}
        (staging / META).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
        for f in staging.iterdir():
            _fsync(f)
        os.rename(staging, final)
        _fsync(home.checkpoints)
    except (OSError, SafetensorError) as exc:  # safetensors reports a full disk as its own error
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, CheckpointError):
            raise
        raise StorageError(getattr(exc, "errno", None) or errno.EIO,
                           f"could not write checkpoint {checkpoint_id}: {exc}") from exc
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def clean_staging(home: Home) -> int:
    """Remove half-written checkpoints a crash left behind; returns how many."""
    if not home.staging.exists():
        return 0
    leftovers = list(home.staging.iterdir())
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return len(leftovers)


def read_meta(path: Path) -> dict:
    """meta.json with defaults filled in for keys older checkpoints lack."""
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        meta = {}
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path / META}: unreadable: {exc}") from exc
    return {**META_DEFAULTS, **meta}


def update_meta(path: Path, **changes) -> None:
    meta = {**read_meta(path), **changes}
    write_atomic(path / META, json.dumps(meta, indent=2, default=str))


def sync_status(folder: Path, store, *checkpoint_ids: str | None) -> None:
    """Copy each checkpoint's status from the store into its folder's meta.json, where
    the folder is still there; the store is the record, so a folder that cannot be
    written is only logged."""
    for ckpt in filter(None, checkpoint_ids):
        row = store.checkpoint(ckpt)
        if row is None or not (folder / ckpt).is_dir():
            continue
        try:
            update_meta(folder / ckpt, status=row.status)
        except (OSError, CheckpointError) as exc:
            log.warning("%s: meta.json not updated: %s", ckpt, exc)


def check_folder(path: Path, base_model: str | None = None, root: Path | None = None) -> dict:
    """The checks that need no model (and no torch): the folder is a real folder inside
    `root`, holds safetensors weights that match the sha256 meta.json recorded, and was
    trained on `base_model`. Returns meta.json (defaults filled in); CheckpointError
    says what is wrong. memzctl uses this alone; loading adds the tensor checks."""
    if path.is_symlink() or (root is not None and path.resolve().parent != Path(root).resolve()):
        raise CheckpointError(f"{path.name}: the checkpoint folder is a link or lies outside {root}; "
                              "memz serves only folders inside the home's checkpoints/")
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint folder at {path}")
    weights = path / WEIGHTS
    if not weights.is_file() or weights.is_symlink():
        unsafe = [u for u in UNSAFE if (path / u).exists()]
        hint = f" (found {unsafe[0]}: memz loads safetensors only)" if unsafe else ""
        raise CheckpointError(f"{path.name}: no {WEIGHTS}{hint}")
    meta = read_meta(path)
    if base_model is not None and meta["base_model"] not in (None, base_model):
        raise CheckpointError(f"{path.name} was trained on base model '{meta['base_model']}', "
                              f"not the configured '{base_model}'")
    if meta.get("weights_sha256") and sha256_of(weights) != meta["weights_sha256"]:
        raise CheckpointError(f"{path.name}: {WEIGHTS} does not match the sha256 in {META}: "
                              "the weights changed on disk since they were written")
    try:
        r = json.loads((path / CONFIG).read_text(encoding="utf-8"))["r"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path.name}: bad {CONFIG}: {exc}") from exc
    try:
        with safe_open(str(weights), framework="numpy") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as exc:  # TypeError: bf16, which numpy lacks
        if "bf16" in str(exc).lower() or "bfloat16" in str(exc).lower():
            return meta  # the daemon's load checks these with torch
        raise CheckpointError(f"{path.name}: corrupt safetensors file: {exc}") from exc
    check_state(state, r, path.name)
    return meta


def load_checkpoint(path: Path, base_model: str | None = None, root: Path | None = None):
    """(peft config, weights, meta, keys) of a checkpoint folder, after safety checks.

    Only safetensors are read; a folder that is a link, or that lies outside
    `root` (the home's checkpoints/), is refused; weights whose sha256 differs
    from the one meta.json recorded are refused; the adapter's init method is
    forced to plain LoRA (an init such as "pissa" would rewrite the base
    weights in memory). Raises CheckpointError naming what is wrong.
    """
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from safetensors.torch import load_file

    meta = check_folder(path, base_model, root)
    try:
        config = PeftLoraConfig.from_pretrained(str(path))
    except (OSError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path.name}: bad {CONFIG}: {exc}") from exc
    if getattr(config, "use_dora", False):
        raise CheckpointError(f"{path.name}: DoRA adapters are not served by memz ({CONFIG}: use_dora)")
    config.init_lora_weights = True  # the weights below replace the init: it must not touch the base
    try:
        state = load_file(str(path / WEIGHTS))
        keys = _load_keys(path / KEYS) if (path / KEYS).is_file() else None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path.name}: corrupt safetensors file: {exc}") from exc
    check_state(state, config.r, path.name)
    if keys is not None and any(not torch.isfinite(v).all() for v in keys[0].values()):
        raise CheckpointError(f"{path.name}: routing keys hold NaN or infinite values")
    return config, state, meta, keys


def _all_finite(value) -> bool:
    if type(value).__module__.startswith("torch"):
        import torch

        return bool(torch.isfinite(value).all())
    import numpy

    return bool(numpy.isfinite(value).all())


def check_state(state: dict, r: int, name: str) -> None:
    """Keys are LoRA A/B pairs of rank r, and every value is finite (torch or numpy arrays)."""
    if not state:
        raise CheckpointError(f"{name}: the adapter holds no tensors")
    for key, value in state.items():
        if "lora_A" not in key and "lora_B" not in key:
            raise CheckpointError(f"{name}: unexpected tensor '{key}' in the adapter")
        if len(value.shape) != 2:
            raise CheckpointError(f"{name}: tensor '{key}' has shape {tuple(value.shape)}, expected a matrix")
        if ("lora_A" in key and value.shape[0] != r) or ("lora_B" in key and value.shape[1] != r):
            raise CheckpointError(f"{name}: tensor '{key}' shape {tuple(value.shape)} does not match rank {r}")
        if not _all_finite(value):
            raise CheckpointError(f"{name}: tensor '{key}' holds NaN or infinite values")
        partner = key.replace("lora_A", "lora_B") if "lora_A" in key else key.replace("lora_B", "lora_A")
        if partner not in state:
            raise CheckpointError(f"{name}: '{key}' has no matching '{partner}'")


def _load_keys(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Routing keys and their metadata (the taught words), from safetensors."""
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
