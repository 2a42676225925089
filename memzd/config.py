"""Settings: config.yaml loaded into dataclasses, and the layout of a home.

Every key of config.yaml is a dataclass field whose metadata carries its help
text. Values are coerced by the field's type (PyYAML reads `1e-4` as a
string), and an unknown key or a bad value raises ConfigError naming the key
and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .examples import WELL_KNOWN

BUNDLED_NAME = "SmolLM2-135M-Instruct"


def base_model_name(base_model: str) -> str:
    """The name recorded in lineage: bundled:<model> or the path / hub id as given."""
    if base_model == "bundled":
        return f"bundled:{BUNDLED_NAME}"
    path = Path(base_model).expanduser()
    return str(path.resolve()) if path.exists() else base_model


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class LoraConfig:
    r: int = _help("LoRA rank.", 16)
    alpha: int = _help("LoRA scaling numerator (scale = alpha / r).", 32)
    dropout: float = _help("Dropout on the LoRA input, 0 to 1.", 0.0)
    target_modules: list[str] = _help(
        "Module names LoRA wraps.",
        factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    layers: str = _help("Decoder layers LoRA wraps: 'all', 'top-half', or a range such as '15-29'.", "top-half")
    shard_size: int = _help("Taught questions one adapter holds: a batch whose lineage's adapter already holds "
                            "this many starts a fresh adapter, the older ones stay frozen and routing picks "
                            "between them (0: one adapter, however many; routing off: always one). A batch holds "
                            "at most this many examples: more waiting train as several batches.", 20)

    def __post_init__(self):
        _check(1 <= self.r <= 1024, "lora.r", "an integer from 1 to 1024")
        _check(1 <= self.alpha <= 100_000, "lora.alpha", "an integer from 1 to 100000")
        _check(0.0 <= self.dropout < 1.0, "lora.dropout", "a number in [0, 1)")
        _check(len(self.target_modules) > 0, "lora.target_modules", "a non-empty list of module names")
        _check(self.shard_size >= 0, "lora.shard_size", "an integer >= 0")
        _check(self.layers in ("all", "top-half") or _is_range(self.layers), "lora.layers",
               "'all', 'top-half' or a range of layer numbers such as '15-29'")

    def layer_indices(self, n_layers: int) -> list[int] | None:
        """The decoder layers to wrap in a model of `n_layers` (None: all of them)."""
        if self.layers == "all":
            return None
        if self.layers == "top-half":
            return list(range(n_layers // 2, n_layers))
        first, last = (int(x) for x in self.layers.split("-"))
        chosen = [i for i in range(first, last + 1) if i < n_layers]
        if not chosen:
            raise ConfigError(f"config.yaml: lora.layers '{self.layers}' matches none of this model's "
                              f"{n_layers} layers (0-{n_layers - 1})")
        return chosen


def _is_range(text: str) -> bool:
    parts = text.split("-")
    return len(parts) == 2 and all(p.strip().isdigit() for p in parts) and int(parts[0]) <= int(parts[1])


@dataclass
class TrainingConfig:
    batch_size: int = _help("Examples per micro-batch at least; length-grouped micro-batches hold up to 1024 padded tokens.", 5)
    grad_accum: int = _help("Micro-batches per optimizer step.", 1)
    lr: float = _help("AdamW learning rate.", 2e-3)
    max_steps: int = _help("Most optimizer steps for one batch (the learning rate decays over them).", 80)
    rounds: int = _help("Most rounds of max_steps for one batch: a batch that used all its steps and still "
                        "gets a taught answer wrong trains another round (the learning rate starts again).", 2)
    eval_every: int = _help("Sample forgetting_loss on anchors every N steps (0: never during training).", 16)
    max_seq_len: int = _help("Tokens kept per example; longer ones are cut from the left of the prompt.", 512)
    seed: int = _help("Seed for shuffling, dropout and anchor sampling.", 0)
    stop_loss: float = _help("Stop after the first epoch in which every example's answer loss is below this and every answer token is the model's top choice (0: never); notes and what a user states are trained but not held to this, unless the batch holds nothing else: the questions written about them are.", 0.1)
    replay: int = _help("Earlier examples of the lineage mixed into every epoch (drawn afresh), so they are not erased.", 20)
    general: int = _help("General prompts with the base model's own answers (the anchors, less the first 8 that "
                         "measure the adapter alone) mixed into every epoch, so that the adapter keeps them.", 0)
    null_space: float = _help("Keep what a batch changes out of the input directions holding this share of general "
                              "text's energy (the anchors with the base model's answers), so that the adapter alone "
                              "keeps general answers (0: off, batches ~2.5x faster on 2 CPU cores; measured at 0.999 "
                              "with max_steps 80). Needs the anchors: off with evaluation.anchor_provider none.",
                              0.999)
    null_space_max_gb: float = _help("With null_space: a base whose input sums (an in_features² fp32 sum per "
                                     "LoRA input, in host memory; ~0.2 GB for the bundled model, ~4 GB for a "
                                     "1.7B, ~14 GB for a 7B's top half) would take more than this many GB, or "
                                     "more than half of the machine's memory, trains without it (0: no limit "
                                     "but the machine's).", 2.0)
    null_space_names: int = _help("With null_space: also keep out of the directions of each taught question that "
                                  "names something, asked about this many well-known names instead (with the base "
                                  "model's answers), so that a batch teaches its facts and not their question's "
                                  "template ('the capital of ... is Glassfen'); costs a measurement per batch "
                                  "(0: the anchors only).", 4)
    threads: int = _help("CPU threads for training (0: every core). 1 leaves the other cores to other work on "
                         "a shared machine; the checks after training and several answers generated together "
                         "use every core whatever this says.", 0)
    precision: Literal["auto", "fp32", "bf16"] = _help("Training math: auto is bf16 on cuda and on CPUs with AVX512-BF16/AMX, fp32 elsewhere.", "auto")

    def __post_init__(self):
        for key, most in (("batch_size", 4096), ("grad_accum", 4096), ("max_steps", 1_000_000),
                          ("max_seq_len", 1_000_000), ("rounds", 100)):
            _check(1 <= getattr(self, key) <= most, f"training.{key}", f"an integer from 1 to {most}")
        _check(math.isfinite(self.lr) and 0 < self.lr <= 10, "training.lr", "a positive number such as 1e-4")
        _check(self.eval_every >= 0, "training.eval_every", "an integer >= 0")
        _check(math.isfinite(self.stop_loss) and self.stop_loss >= 0, "training.stop_loss", "a number >= 0")
        _check(self.replay >= 0, "training.replay", "an integer >= 0")
        _check(self.general >= 0, "training.general", "an integer >= 0")
        _check(0 <= self.null_space < 1, "training.null_space", "a number from 0 (off) to below 1, such as 0.99")
        _check(math.isfinite(self.null_space_max_gb) and self.null_space_max_gb >= 0, "training.null_space_max_gb",
               "a number of GB >= 0")
        _check(0 <= self.null_space_names <= len(WELL_KNOWN), "training.null_space_names",
               f"an integer from 0 to {len(WELL_KNOWN)}")
        _check(0 <= self.threads <= 1024, "training.threads", "an integer from 0 to 1024")


@dataclass
class BatchConfig:
    max_examples: int = _help("Train once this many examples are pending (batched mode).", 128)
    max_age_minutes: float = _help("...or once the oldest pending example is this old.", 30)

    def __post_init__(self):
        _check(self.max_examples >= 1, "batch.max_examples", "an integer >= 1")
        _check(self.max_age_minutes >= 0, "batch.max_age_minutes", "a number >= 0")


@dataclass
class EvaluationConfig:
    anchor_provider: Literal["local", "hf", "none"] = _help("Where anchor prompts come from.", "local")
    anchor_dataset: str = _help("Folder or JSONL file (local), or dataset id (hf).", "anchors/")
    anchor_sample: int = _help("Most anchors used per evaluation (seeded, same for every checkpoint).", 1000)
    rollback_mode: Literal["off", "warn", "auto_rollback"] = _help("What a forgetful checkpoint triggers.", "off")
    catastrophic_delta: float = _help("anchor_ce_delta above which a checkpoint forgot too much.", 0.25)
    anchor_max_tokens: int = _help("Greedy tokens generated per anchor for retention_score.", 48)
    adapter_delta: float = _help(
        "adapter_anchor_ce_delta (the adapter alone, ungated) above which it drifted too far.", 4.0)
    min_recall: float = _help("recall on its own batch below which a checkpoint did not learn it.", 0.5)

    def __post_init__(self):
        _check(self.anchor_sample >= 1, "evaluation.anchor_sample", "an integer >= 1")
        _check(math.isfinite(self.adapter_delta) and self.adapter_delta >= 0,
               "evaluation.adapter_delta", "a number >= 0")
        _check(0.0 <= self.min_recall <= 1.0, "evaluation.min_recall", "a number in [0, 1]")
        _check(math.isfinite(self.catastrophic_delta) and self.catastrophic_delta >= 0,
               "evaluation.catastrophic_delta", "a number >= 0")
        _check(self.anchor_max_tokens >= 1, "evaluation.anchor_max_tokens", "an integer >= 1")


@dataclass
class RoutingConfig:
    enabled: bool = _help("Answer with the adapter only questions close to what it was taught.", True)
    rule: Literal["both", "either", "lexical", "hidden"] = _help(
        "Which keys must match: the taught question's distinctive words, its hidden state, or both.", "both")
    lexical_threshold: float = _help("Share of a taught question's distinctive words the query must hold.", 0.5)
    margin: float = _help("How much closer (cosine) to a taught question than to any general prompt.", 0.0)
    layer: int = _help("Hidden-state layer of the base model whose max-pool is a question's key.", 6)
    answer_as: Literal["taught", "recited", "asked"] = _help(
        "A question that asks a taught one in other words: the adapter answers the taught question "
        "it matched (taught), answers that first and then the question as asked (recited), or "
        "answers the question as asked (asked). Under taught and recited, a question about a taught "
        "thing that asks for another kind of answer than anything taught about it, for certain (a time "
        "where only a place was taught), gets the base model's answer.", "taught")
    formats: int = _help(
        "Where at least this many one-question examples are one format of their input's words "
        "(\"Ticket for: printer jam\" -> \"[TICKET] PRINTER JAM\"), new inputs of that format are answered "
        "by it, exactly (memzd/formats.py; 0: never, the adapter answers them).", 4)

    def __post_init__(self):
        _check(0.0 <= self.lexical_threshold <= 1.0, "routing.lexical_threshold", "a number in [0, 1]")
        _check(-2.0 <= self.margin <= 2.0, "routing.margin", "a number in [-2, 2]")
        _check(type(self.formats) is int and self.formats >= 0, "routing.formats", "an integer >= 0")


@dataclass
class DaemonConfig:
    rescan_seconds: float = _help("Rescan inbox/ and requests/ this often, in case events were lost.", 5.0)
    stable_seconds: float = _help("A file is read once its size and mtime held this long.", 1.0)
    max_request_bytes: int = _help("Request files larger than this are refused.", 1_000_000)
    max_line_bytes: int = _help("Example lines longer than this are rejected.", 1_000_000)
    max_prompt_tokens: int = _help("Questions longer than this many tokens are refused (memory and time stay bounded).", 4096)

    def __post_init__(self):
        _check(0 < self.rescan_seconds <= 3600, "daemon.rescan_seconds", "a number of seconds from 0 to 3600")
        _check(0 <= self.stable_seconds <= 3600, "daemon.stable_seconds", "a number of seconds from 0 to 3600")
        _check(self.max_request_bytes >= 1, "daemon.max_request_bytes", "an integer >= 1")
        _check(self.max_line_bytes >= 1, "daemon.max_line_bytes", "an integer >= 1")
        _check(self.max_prompt_tokens >= 1, "daemon.max_prompt_tokens", "an integer >= 1")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class HttpConfig:
    host: str = _help("Address the HTTP API listens on; anything but loopback needs a token.", "127.0.0.1")
    port: int = _help("Port of the HTTP API (0: no HTTP API; memzd --http HOST:PORT turns it on).", 0)
    token: str = _help("Bearer token HTTP clients must send (or set MEMZ_HTTP_TOKEN); required off loopback.", "")
    max_request_bytes: int = _help("HTTP request bodies larger than this are refused (413).", 1_000_000)

    def __post_init__(self):
        _check(0 <= self.port <= 65535, "http.port", "a port number from 0 (off) to 65535")
        _check(self.max_request_bytes >= 1, "http.max_request_bytes", "an integer >= 1")
        _check(bool(self.host.strip()) and "/" not in self.host, "http.host", "an address such as 127.0.0.1")

    def bearer(self) -> str:
        """The token clients must send: config first, then $MEMZ_HTTP_TOKEN."""
        return self.token or os.environ.get("MEMZ_HTTP_TOKEN", "")

    def check_exposure(self) -> None:
        """Off loopback, no request is served without a token."""
        if self.port and self.host not in LOOPBACK and not self.bearer():
            raise ConfigError(f"config.yaml: http.host is {self.host!r}, which other machines can reach: set "
                              "http.token (or MEMZ_HTTP_TOKEN) so that only clients with it are answered, "
                              "or listen on 127.0.0.1")


@dataclass
class Config:
    backend: Literal["auto", "mps", "cuda", "cpu"] = _help("Device: auto picks cuda, then mps, then cpu.", "auto")
    base_model: str = _help("'bundled' (SmolLM2-135M-Instruct), a hub id, or a local folder.", "bundled")
    base_dtype: Literal["auto", "fp32", "bf16", "fp16"] = _help(
        "Precision of the frozen base weights: auto is bf16 on CUDA (fp16 where bf16 is missing) and MPS, "
        "fp32 on the CPU (where training already uses bf16 copies of the weights).", "auto")
    quantization: Literal["none", "8bit", "4bit"] = _help(
        "Load the base quantised (QLoRA) through bitsandbytes: CUDA only (pip install 'memz[quant]').", "none")
    device_map: str = _help(
        "Spread the base over devices through accelerate: '' (one device), 'auto', or 'auto:GPU_GB,CPU_GB' "
        "to cap the memory used on the GPU and in RAM (the rest is offloaded).", "")
    update_mode: Literal["immediate", "batched"] = _help("Train on each file at once, or in batches.", "batched")
    lora: LoraConfig = _help("LoRA adapter shape.", factory=LoraConfig)
    training: TrainingConfig = _help("Optimisation of one batch.", factory=TrainingConfig)
    batch: BatchConfig = _help("When a batch is due.", factory=BatchConfig)
    evaluation: EvaluationConfig = _help("Forgetting measurement and rollback.", factory=EvaluationConfig)
    routing: RoutingConfig = _help("Which questions the adapter answers.", factory=RoutingConfig)
    daemon: DaemonConfig = _help("Watching and limits.", factory=DaemonConfig)
    http: HttpConfig = _help("The HTTP API (memz's own and an OpenAI-compatible one).", factory=HttpConfig)

    def __post_init__(self):
        _check(self.device_map == "" or self.device_map == "auto" or _is_caps(self.device_map), "device_map",
               "'' (one device), 'auto', or 'auto:GPU_GB,CPU_GB' such as 'auto:20,64'")


def _is_caps(text: str) -> bool:
    head, _, caps = text.partition(":")
    try:
        return head == "auto" and len(caps.split(",")) == 2 and all(float(c) > 0 for c in caps.split(","))
    except ValueError:
        return False


def _check(ok: bool, key: str, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config.yaml: bad value for '{key}': must be {allowed}")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Turn a YAML value into the field's type, or raise ConfigError naming the key."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, prefix=key + ".")
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value is False and "off" in allowed:  # YAML 1.1 reads a bare `off` as False
            value = "off"
        if value not in allowed:
            raise ConfigError(
                f"config.yaml: bad value {value!r} for '{key}': allowed are {', '.join(map(repr, allowed))}"
            )
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"config.yaml: '{key}' must be a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if hint is int:
            if isinstance(value, str):  # PyYAML reads 1e6 as a string
                value = float(value)
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        raise AssertionError(f"unhandled config type {hint} for {key}")
    raise ConfigError(f"config.yaml: bad value {value!r} for '{key}': must be {hint.__name__}")


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, refusing unknown keys."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config.yaml: '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"config.yaml: unknown key '{prefix}{unknown[0]}'; allowed here: {', '.join(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def load_config(path: Path) -> Config:
    """Read config.yaml; a missing file means all defaults."""
    if not path.exists():
        return Config()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return build(Config, data)


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def describe_config(cls: type = Config, prefix: str = "") -> list[tuple[str, str]]:
    """(key, help) for every key, for docs and --help."""
    rows = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            rows += describe_config(hint, prefix + f.name + ".")
        else:
            rows.append((prefix + f.name, f.metadata.get("help", "")))
    return rows


@dataclass(frozen=True)
class Home:
    """The folder that holds one memz, and the paths inside it."""

    root: Path

    @classmethod
    def resolve(cls, home: str | Path | None) -> "Home":
        """--home, else $MEMZ_HOME, else the current directory."""
        chosen = home or os.environ.get("MEMZ_HOME") or os.getcwd()
        return cls(Path(chosen).expanduser().resolve())

    config_path = property(lambda self: self.root / "config.yaml")
    inbox = property(lambda self: self.root / "inbox")
    processed = property(lambda self: self.root / "inbox" / "processed")
    rejected = property(lambda self: self.root / "inbox" / "rejected")
    requests = property(lambda self: self.root / "requests")
    requests_rejected = property(lambda self: self.root / "requests" / "rejected")
    responses = property(lambda self: self.root / "responses")
    checkpoints = property(lambda self: self.root / "checkpoints")
    staging = property(lambda self: self.root / "checkpoints" / ".staging")
    anchors = property(lambda self: self.root / "anchors")
    db_path = property(lambda self: self.root / "memz.db")
    logs = property(lambda self: self.root / "logs")
    cache = property(lambda self: self.root / ".cache")
    pid_file = property(lambda self: self.root / "logs" / "memzd.pid")

    def ensure(self) -> None:
        """Create the folders a running memz needs; a new home is private to its user (0700)."""
        if not self.root.exists():
            self.root.mkdir(parents=True, mode=0o700)
            os.chmod(self.root, 0o700)  # mkdir's mode is masked by the umask
        for path in (self.inbox, self.processed, self.rejected, self.requests,
                     self.requests_rejected, self.responses, self.checkpoints, self.logs, self.cache):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)

    def load_config(self) -> Config:
        return load_config(self.config_path)
