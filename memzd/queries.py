"""Questions in requests/, answers in responses/, from the checkpoint that serves.

A request is `requests/<id>.json` ({"prompt" | "messages", "max_tokens",
"temperature", "checkpoint"}); its answer is written atomically to
`responses/<id>.json`, then the request is removed. A bad request gets an
error response; a file whose name cannot be a response id is moved to
requests/rejected/. Checkpoints are loaded into the one live model once, by
name, and switched to in memory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from . import gate, lora
from .checkpoints import load_checkpoint, sync_status
from .config import Home, RoutingConfig
from .errors import CheckpointError, RequestError
from .inference import answer
from .store import Store

log = logging.getLogger("memz.queries")

ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")  # fullmatch: "$" would let a final newline in
MAX_TOKENS_LIMIT = 4096
LOADED_ADAPTERS = 4  # checkpoints kept in memory at once (each a few MB)


@dataclass
class Request:
    """A validated request."""

    id: str
    messages: list[dict]
    max_tokens: int = 256
    temperature: float = 0.2
    checkpoint: str | None = None


def request_id(path: Path) -> str | None:
    """The id of requests/<id>.json, or None when the name is not allowed."""
    if not path.name.endswith(".json"):
        return None
    rid = path.name[: -len(".json")]
    return rid if ID_RE.fullmatch(rid) else None


def parse_request(rid: str, raw: bytes, max_bytes: int) -> Request:
    """Validate a request body; RequestError says which field is wrong."""
    if len(raw) > max_bytes:
        raise RequestError("too_large", f"request is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        body = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise RequestError("invalid_json", f"request is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestError("invalid_request", "request must be a JSON object")
    unknown = set(body) - {"prompt", "messages", "max_tokens", "temperature", "checkpoint", "id"}
    if unknown:
        raise RequestError("invalid_request", f"unknown field '{sorted(unknown)[0]}'; allowed: prompt, "
                           "messages, max_tokens, temperature, checkpoint")
    if "messages" in body:
        msgs = body["messages"]
        if (not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) for m in msgs)):
            raise RequestError("invalid_request", "'messages' must be a non-empty list of "
                               "{\"role\": system|user|assistant, \"content\": string}")
        messages = [{"role": m["role"], "content": m["content"]} for m in msgs]
    elif isinstance(body.get("prompt"), str) and body["prompt"].strip():
        messages = [{"role": "user", "content": body["prompt"]}]
    else:
        raise RequestError("invalid_request", "request needs a non-empty string 'prompt' (or 'messages')")
    req = Request(id=rid, messages=messages)
    if "max_tokens" in body:
        mt = body["max_tokens"]
        if isinstance(mt, bool) or not isinstance(mt, int) or not 1 <= mt <= MAX_TOKENS_LIMIT:
            raise RequestError("invalid_request", f"'max_tokens' must be an integer from 1 to {MAX_TOKENS_LIMIT}")
        req.max_tokens = mt
    if "temperature" in body:
        t = body["temperature"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 2:
            raise RequestError("invalid_request", "'temperature' must be a number from 0 to 2 (0 is greedy)")
        req.temperature = float(t)
    if body.get("checkpoint") is not None:
        if not isinstance(body["checkpoint"], str) or not ID_RE.fullmatch(body["checkpoint"]):
            raise RequestError("invalid_request", "'checkpoint' must be a checkpoint id string")
        req.checkpoint = body["checkpoint"]
    return req


def write_json_atomic(path: Path, payload: dict) -> None:
    try:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from the request: \u-escape everything
        data = json.dumps(payload).encode("ascii")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Server:
    """Answers requests with the current (or a pinned) checkpoint of the live model."""

    def __init__(self, home: Home, store: Store, model, tokenizer, device: torch.device,
                 base_name: str, routing: RoutingConfig, max_request_bytes: int):
        self.home, self.store = home, store
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.base_name = base_name
        self.routing = routing
        self.max_request_bytes = max_request_bytes
        self.memories: OrderedDict[str, gate.KeyMemory | None] = OrderedDict()
        self.configs: dict[str, object] = {}
        self.answered = 0

    # -- adapters ---------------------------------------------------------------

    def load(self, checkpoint_id: str):
        """Make a checkpoint's adapter available by name (loading it once)."""
        if checkpoint_id in self.memories:
            self.memories.move_to_end(checkpoint_id)
            return
        config, state, meta, keys = load_checkpoint(self.home.checkpoints / checkpoint_id, self.base_name)
        try:
            lora.add_adapter(self.model, checkpoint_id, config, state)
        except (KeyError, RuntimeError, ValueError) as exc:  # ValueError: target modules the base lacks
            lora.drop_adapter(self.model, checkpoint_id)
            raise CheckpointError(f"{checkpoint_id}: adapter does not fit the base model: {exc}") from exc
        self.remember(checkpoint_id, config, gate.KeyMemory.from_file(*keys) if keys else None)

    def current(self) -> str | None:
        """The current checkpoint, loaded. One that cannot serve is marked rolled_back and its
        parent made current (the base model at worst), so a bad adapter never stops memz."""
        ckpt, seen = self.store.current_checkpoint(), set()
        while ckpt is not None and ckpt not in seen:
            seen.add(ckpt)
            try:
                self.load(ckpt)
                return ckpt
            except CheckpointError as exc:
                row = self.store.checkpoint(ckpt)
                parent = row.parent if row else None
                log.error("current checkpoint %s cannot serve (%s); %s serves instead", ckpt, exc,
                          parent or "the base model")
                self.store.roll_back(ckpt, parent, f"{ckpt} could not serve: {exc}")
                sync_status(self.home.checkpoints, self.store, ckpt)
                ckpt = parent
        return None

    def remember(self, checkpoint_id: str, config, memory: "gate.KeyMemory | None") -> None:
        """Record an adapter already added to the model (e.g. a checkpoint just trained)."""
        self.memories[checkpoint_id] = memory
        self.configs[checkpoint_id] = config
        while len(self.memories) > LOADED_ADAPTERS:
            old, _ = self.memories.popitem(last=False)
            self.configs.pop(old, None)
            lora.drop_adapter(self.model, old)

    def adapter_state(self, checkpoint_id: str):
        """(peft config, weights, key memory) of a checkpoint, loading it if needed."""
        self.load(checkpoint_id)
        return self.configs[checkpoint_id], lora.adapter_state(self.model, checkpoint_id), self.memories[checkpoint_id]

    def route(self, checkpoint_id: str | None, chat: list[dict]) -> str | None:
        """The adapter that answers `chat`: the checkpoint's, or None for the base model."""
        if checkpoint_id is None:
            return None
        memory = self.memories.get(checkpoint_id)
        if not self.routing.enabled or memory is None:
            return checkpoint_id
        return checkpoint_id if memory.admits(self.model, self.tokenizer, chat, self.device) else None

    # -- requests ---------------------------------------------------------------

    def answer(self, req: Request) -> dict:
        """Answer one validated request; RequestError for a bad checkpoint."""
        start = time.perf_counter()
        ckpt = req.checkpoint or self.current()
        status = "base"
        if ckpt is not None:
            row = self.store.checkpoint(ckpt)
            if row is None:
                raise RequestError("unknown_checkpoint", f"no checkpoint '{ckpt}'; see memzctl checkpoints")
            try:
                self.load(ckpt)
            except CheckpointError as exc:
                raise RequestError("bad_checkpoint", str(exc)) from exc
            status = row.status
        adapter = self.route(ckpt, req.messages)
        text = answer(self.model, self.tokenizer, req.messages, adapter=adapter, device=self.device,
                      max_tokens=req.max_tokens, temperature=req.temperature)
        self.answered += 1
        return {"id": req.id, "response": text, "checkpoint": ckpt, "checkpoint_status": status,
                "routed_to": "adapter" if adapter else "base",
                "latency_ms": round((time.perf_counter() - start) * 1000)}

    def handle(self, path: Path) -> None:
        """Answer or refuse one request file; never raises for bad input."""
        rid = request_id(path)
        if rid is None or path.is_symlink() or not path.is_file():
            self._reject(path, "name is not <id>.json with an id of 1-64 of A-Z a-z 0-9 . _ -, "
                         "or not a regular file")
            return
        try:
            with open(path, "rb") as f:
                raw = f.read(self.max_request_bytes + 1)
            payload = self.answer(parse_request(rid, raw, self.max_request_bytes))
        except RequestError as exc:
            payload = {"id": rid, "error": {"code": exc.code, "message": str(exc)}}
            log.warning("request %s refused: %s", rid, exc)
        except Exception as exc:  # a bug or a model failure: answer it, keep serving
            log.exception("request %s failed", rid)
            payload = {"id": rid, "error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}}
        self.home.responses.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.home.responses / f"{rid}.json", payload)
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def _reject(self, path: Path, reason: str) -> None:
        log.warning("request file %r set aside: %s", path.name, reason)
        self.home.requests_rejected.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", path.name)[:100] or "request"
        target = self.home.requests_rejected / f"{safe}.{time.time_ns()}"
        try:
            os.rename(path, target)
            (target.parent / (target.name + ".reason.txt")).write_text(reason + "\n", encoding="utf-8")
        except OSError as exc:
            log.error("could not move %r aside: %s", path.name, exc)
