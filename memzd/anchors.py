"""Anchors: the prompts that measure forgetting, and the base model's answers to them.

A provider yields anchor chats: `local` reads a JSONL file or every *.jsonl in
a folder (one {"prompt"} or {"messages"} per line, an optional "answer",
"system" and "category"), `hf` reads a dataset through the `datasets` library,
`none` yields nothing. A seeded sample of `anchor_sample` is drawn once, so
every checkpoint is measured on the same prompts. Reference answers default
to the base model's own greedy answers, computed once per base model and
anchor set and cached for the user (every home on the machine shares them).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from .config import EvaluationConfig, Home
from .errors import ConfigError
from .files import write_json_atomic


@dataclass
class Anchor:
    """One anchor: the chat that asks, and the answer the base model is held to."""

    chat: list[dict]
    answer: str | None = None
    category: str = ""


def _from_record(obj: dict, where: str) -> Anchor:
    system = [{"role": "system", "content": obj["system"]}] if isinstance(obj.get("system"), str) else []
    if isinstance(obj.get("messages"), list):
        chat = system + [m for m in obj["messages"] if m.get("role") in ("system", "user")]
    elif isinstance(obj.get("prompt"), str) and obj["prompt"].strip():
        chat = system + [{"role": "user", "content": obj["prompt"]}]
    else:
        raise ConfigError(f"{where}: an anchor needs a non-empty 'prompt' (or 'messages')")
    answer = obj.get("answer") if isinstance(obj.get("answer"), str) else None
    return Anchor(chat=chat, answer=answer, category=str(obj.get("category", "")))


def _read_jsonl(path: Path) -> list[Anchor]:
    anchors = []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{number}: invalid JSON in anchor file: {exc.msg}") from exc
            if not isinstance(obj, dict):
                raise ConfigError(f"{path}:{number}: an anchor must be a JSON object")
            anchors.append(_from_record(obj, f"{path}:{number}"))
    return anchors


def load_anchors(cfg: EvaluationConfig, home: Home) -> list[Anchor]:
    """All anchors of the configured provider (before sampling)."""
    if cfg.anchor_provider == "none":
        return []
    if cfg.anchor_provider == "hf":
        return _load_hf(cfg.anchor_dataset)
    path = Path(cfg.anchor_dataset).expanduser()
    if not path.is_absolute():
        path = home.root / path
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
    elif path.is_file():
        files = [path]
    else:
        raise ConfigError(f"config.yaml: evaluation.anchor_dataset '{cfg.anchor_dataset}' does not exist "
                          f"(looked at {path}); point it at a folder or a .jsonl file, or set "
                          "evaluation.anchor_provider: none")
    anchors = [a for f in files for a in _read_jsonl(f)]
    if not anchors:
        raise ConfigError(f"config.yaml: evaluation.anchor_dataset '{cfg.anchor_dataset}' holds no anchors")
    return anchors


def _load_hf(dataset_id: str) -> list[Anchor]:
    try:
        import datasets  # optional: only this provider needs it
    except ImportError as exc:
        raise ConfigError("evaluation.anchor_provider 'hf' needs the 'datasets' package "
                          "(pip install datasets), or use 'local'") from exc
    try:
        data = datasets.load_dataset(dataset_id, split="train")
    except Exception as exc:  # the hub is unreachable, or the id is wrong
        raise ConfigError(f"evaluation.anchor_dataset '{dataset_id}' could not be loaded from the hub: "
                          f"{exc}; use anchor_provider: local") from exc
    anchors = []
    for i, row in enumerate(data):
        record = dict(row)
        if "prompt" not in record:
            for key in ("question", "instruction", "input", "text"):
                if isinstance(record.get(key), str):
                    record["prompt"] = record[key]
                    break
        anchors.append(_from_record(record, f"{dataset_id}[{i}]"))
    return anchors


def sample(anchors: list[Anchor], n: int, seed: int) -> list[Anchor]:
    """The same seeded sample for every checkpoint."""
    if len(anchors) <= n:
        return list(anchors)
    idx = sorted(random.Random(seed).sample(range(len(anchors)), n))
    return [anchors[i] for i in idx]


CACHE_FORMAT = 2  # bump when the cached fields change


def cache_key(base_name: str, anchors: list[Anchor], max_tokens: int) -> str:
    blob = json.dumps([CACHE_FORMAT, base_name, max_tokens, [a.chat for a in anchors]], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_reference(folder: Path, key: str) -> dict | None:
    """The base model's answers to an anchor sample, cached per machine (see model.cache_root)."""
    path = folder / f"anchors-{key}.json"
    if path.exists():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
    return None


def store_reference(folder: Path, key: str, reference: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / f"anchors-{key}.json", reference)
