"""Questions and answers: parsing a request, answering it, and the folder front end.

A question comes from requests/<id>.json or from another front end (HTTP)
through `Daemon.submit`; either way it is parsed by `parse_request` and
answered by `Answerer.answer`, one code path. The checkpoint that serves,
and where a question is routed, are memzd.adapters' to say; this module only
parses and answers.

The folder protocol (memzd.control is the asker's side): the answer is
written atomically to `responses/<id>.json`, then the request is removed.
While it is generated, its text so far is appended to
`responses/.<id>.partial`. An asker that removes its request file has given
up: generation stops at the next token and no response is written. A bad
request gets an error response; a file whose name cannot be a response id is
set aside in requests/rejected/.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .adapters import Adapters, Route
from .config import Home
from .control import partial_path
from .errors import CheckpointError, RequestError
from .examples import USER_RE
from .files import set_aside, write_json_atomic
from .inference import Answer, Cancelled, answer, answer_batch, as_taught, recalled
from .store import Store
from .tokens import prompt_ids

log = logging.getLogger("memz.queries")

ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")  # fullmatch: "$" would let a final newline in
MAX_TOKENS_LIMIT = 4096
FIELDS = ("prompt", "messages", "max_tokens", "temperature", "checkpoint", "user", "id")


@dataclass
class Question:
    """A validated request, from any front end."""

    id: str
    messages: list[dict]
    max_tokens: int = 256
    temperature: float = 0.2
    checkpoint: str | None = None
    user: str | None = None


@dataclass
class Pending:
    """A question submitted to the daemon: `future` gives the response object."""

    question: Question
    on_text: Callable[[str], None] | None = None
    source: str = "api"
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """The asker went away: stop generating at the next token."""
        self._cancelled.set()
        self.future.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


def request_id(path: Path) -> str | None:
    """The id of requests/<id>.json, or None when the name is not allowed."""
    if not path.name.endswith(".json"):
        return None
    rid = path.name[: -len(".json")]
    return rid if ID_RE.fullmatch(rid) else None


def _string(value, what: str) -> str:
    if not isinstance(value, str):
        raise RequestError("invalid_request", f"{what} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError("invalid_request", f"{what} holds a lone surrogate escape (\\ud800-\\udfff): "
                           "not valid Unicode") from exc
    return value


def parse_request(rid: str, raw: bytes, max_bytes: int) -> Question:
    """Validate a request body; RequestError says which field is wrong."""
    if len(raw) > max_bytes:
        raise RequestError("too_large", f"request is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        body = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise RequestError("invalid_json", f"request is not valid UTF-8 JSON: {exc}") from exc
    return parse_body(rid, body)


def parse_body(rid: str, body) -> Question:
    """Validate a decoded request object (the HTTP front end decodes its own)."""
    if not isinstance(body, dict):
        raise RequestError("invalid_request", "request must be a JSON object")
    unknown = set(body) - set(FIELDS)
    if unknown:
        raise RequestError("invalid_request", f"unknown field '{sorted(unknown)[0]}'; allowed: "
                           + ", ".join(FIELDS[:-1]))
    if "messages" in body and "prompt" in body:
        raise RequestError("invalid_request", "give 'prompt' or 'messages', not both")
    if "messages" in body:
        msgs = body["messages"]
        if (not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) for m in msgs)):
            raise RequestError("invalid_request", "'messages' must be a non-empty list of "
                               "{\"role\": system|user|assistant, \"content\": string}")
        messages = [{"role": m["role"], "content": _string(m["content"], f"messages[{i}].content")}
                    for i, m in enumerate(msgs)]
    elif isinstance(body.get("prompt"), str) and body["prompt"].strip():
        messages = [{"role": "user", "content": _string(body["prompt"], "'prompt'")}]
    else:
        raise RequestError("invalid_request", "request needs a non-empty string 'prompt' (or 'messages')")
    q = Question(id=rid, messages=messages)
    if "max_tokens" in body:
        mt = body["max_tokens"]
        if isinstance(mt, bool) or not isinstance(mt, int) or not 1 <= mt <= MAX_TOKENS_LIMIT:
            raise RequestError("invalid_request", f"'max_tokens' must be an integer from 1 to {MAX_TOKENS_LIMIT}")
        q.max_tokens = mt
    if "temperature" in body:
        t = body["temperature"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 2:
            raise RequestError("invalid_request", "'temperature' must be a number from 0 to 2 (0 is greedy)")
        q.temperature = float(t)
    if body.get("checkpoint") is not None:
        if not isinstance(body["checkpoint"], str) or not ID_RE.fullmatch(body["checkpoint"]):
            raise RequestError("invalid_request", "'checkpoint' must be a checkpoint id string")
        q.checkpoint = body["checkpoint"]
    if body.get("user") is not None:
        q.user = user_name(body["user"])
    return q


def user_name(value) -> str:
    """A request's user name, checked (RequestError for one that is not a name)."""
    if not isinstance(value, str) or not USER_RE.fullmatch(value):
        raise RequestError("invalid_request", "'user' must be 1-64 of A-Z a-z 0-9 _ . @ -")
    return value


def _cancelled(q: Question) -> dict:
    return {"id": q.id, "error": {"code": "cancelled", "message": "the question was withdrawn or the daemon "
                                                                    "is stopping"}}


def error_payload(rid: str, exc: Exception) -> dict:
    if isinstance(exc, RequestError):
        return {"id": rid, "error": {"code": exc.code, "message": str(exc)}}
    return {"id": rid, "error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}}


class Answerer:
    """Answers questions with the checkpoint that serves (or a pinned one)."""

    def __init__(self, home: Home, store: Store, adapters: Adapters, max_request_bytes: int,
                 max_prompt_tokens: int, context: int | None = None):
        self.home, self.store, self.adapters = home, store, adapters
        self.max_request_bytes, self.max_prompt_tokens = max_request_bytes, max_prompt_tokens
        self.context = context  # the most tokens the base model reads (None: not known)
        self.answered = 0

    def _prepare(self, q: Question) -> tuple[list[int], str | None, Route, str]:
        """(prompt ids, checkpoint, route, checkpoint status) of a question; RequestError
        for what the asker got wrong."""
        a = self.adapters
        ids = prompt_ids(a.tokenizer, q.messages)
        if len(ids) > self.max_prompt_tokens:
            raise RequestError("too_long", f"the prompt is {len(ids)} tokens; the limit is "
                               f"{self.max_prompt_tokens} (daemon.max_prompt_tokens)")
        if self.context and len(ids) >= self.context:  # past it a model's answers fall apart
            raise RequestError("too_long", f"the prompt is {len(ids)} tokens; the base model reads at most "
                               f"{self.context} tokens, its answer included (daemon.max_prompt_tokens is "
                               f"{self.max_prompt_tokens})")
        if q.checkpoint is not None:  # pinned: that checkpoint's route
            ckpt = q.checkpoint
            pinned = self.store.checkpoint(ckpt)
            if pinned is None:
                raise RequestError("unknown_checkpoint", f"no checkpoint '{ckpt}'; see memzctl checkpoints")
            if pinned.user is not None and pinned.user != q.user:  # a user's own or the shared lineage's only
                raise RequestError("unknown_checkpoint", f"checkpoint '{ckpt}' is in another user's memory: "
                                   "pin it with that user (memzctl checkpoints --user NAME lists theirs)")
            try:
                a.ensure(ckpt)
            except CheckpointError as exc:
                raise RequestError("bad_checkpoint", str(exc)) from exc
            route = a.route(ckpt, q.messages)
        else:
            ckpt, route = a.answering(q.messages, q.user)
        row = self.store.checkpoint(ckpt) if ckpt else None
        return ids, ckpt, route, row.status if row else "base"

    def _prompt(self, q: Question, ids: list[int], route: Route,
                cancelled: Callable[[], bool] | None) -> tuple[list[int], str | None]:
        """(prompt ids, taught question) of what the adapter answers: where the question asks a
        taught one in other words (`route.cue`), that taught question in its place
        (`routing.answer_as: taught`), or it after the adapter's answer to the taught one
        (`recited`, `inference.recalled`); else, or where that prompt would not fit, as asked."""
        if route.cue is None:
            return ids, None
        a = self.adapters
        if a.routing.answer_as == "recited":
            chat = recalled(a.model, a.tokenizer, q.messages, route.cue, adapter=route.adapter, device=a.device,
                            cancelled=cancelled)
        else:
            chat = as_taught(q.messages, route.cue)
        prompt = prompt_ids(a.tokenizer, chat)
        if len(prompt) > self.max_prompt_tokens or (self.context and len(prompt) >= self.context):
            return ids, None
        return prompt, route.cue

    def _formatted(self, q: Question, ids: list[int], start: float,
                   on_text: Callable[[str], None] | None) -> dict | None:
        """The payload of a question that is a new input of an exact format its checkpoint
        holds (memzd.formats: written by the format, not generated), else None."""
        a = self.adapters
        pinned = [q.checkpoint] if q.checkpoint is not None else None
        found = a.formatted(q.messages, pinned or [*([a.serving(q.user)] if q.user else []), a.serving()])
        if found is None:
            return None
        ckpt, fmt, reply = found
        tokens = a.tokenizer.encode(reply, add_special_tokens=False)
        if len(tokens) > q.max_tokens:
            reply = a.tokenizer.decode(tokens[:q.max_tokens])
        if on_text is not None:
            on_text(reply)
        row = self.store.checkpoint(ckpt)
        return self._payload(q, Answer(reply, min(len(tokens), q.max_tokens)), ckpt, Route(ckpt), None,
                             row.status if row else "base", start, ids, fmt.describe())

    def _payload(self, q: Question, answered: Answer, ckpt, route: Route, cue: str | None, status,
                 start: float, ids: list[int], fmt: str | None = None) -> dict:
        self.answered += 1
        routed = "format" if fmt else "adapter" if route.adapter else "base"
        return {"id": q.id, "response": answered.text, "checkpoint": ckpt, "checkpoint_status": status,
                "routed_to": routed, **({"format": fmt} if fmt else {}), **({"answered_as": cue} if cue else {}),
                **({"user": q.user} if q.user else {}),
                "latency_ms": round((time.perf_counter() - start) * 1000),
                "usage": {"prompt_tokens": len(ids), "completion_tokens": answered.tokens,
                          "max_tokens_reached": answered.tokens >= q.max_tokens}}

    def answer(self, q: Question, cancelled: Callable[[], bool] | None = None,
               on_text: Callable[[str], None] | None = None) -> dict:
        """Answer one validated question; RequestError for what the asker got wrong,
        Cancelled when `cancelled()` turns true while it is generated."""
        start = time.perf_counter()
        a = self.adapters
        ids, ckpt, route, status = self._prepare(q)
        formatted = self._formatted(q, ids, start, on_text)
        if formatted is not None:
            return formatted
        prompt, cue = self._prompt(q, ids, route, cancelled)
        answered = answer(a.model, a.tokenizer, q.messages, adapter=route.adapter, device=a.device,
                          max_tokens=q.max_tokens, temperature=q.temperature, cancelled=cancelled,
                          on_text=on_text, ids=prompt)
        return self._payload(q, answered, ckpt, route, cue, status, start, ids)

    def settle(self, pending: Pending, stopping: Callable[[], bool]) -> None:
        """Answer one submitted question and resolve its future (never raises)."""
        self.settle_many([pending], stopping)

    def settle_many(self, pendings: list[Pending], stopping: Callable[[], bool]) -> None:
        """Answer submitted questions and resolve their futures (never raises). Questions
        for the same adapter with the same settings are generated together, one forward
        per token for all of them: twenty chat clients at once cost little more than one."""
        start = time.perf_counter()
        groups: dict[tuple, list] = {}
        for pending in pendings:
            if pending.cancelled or not pending.future.set_running_or_notify_cancel():
                continue
            q = pending.question
            try:
                ids, ckpt, route, status = self._prepare(q)
                formatted = self._formatted(q, ids, start, pending.on_text)
                if formatted is not None:
                    self._resolve(pending, formatted)
                    continue
                prompt, cue = self._prompt(q, ids, route, lambda p=pending: stopping() or p.cancelled)
            except Cancelled:  # withdrawn, or the daemon stops, while the taught answer was recited
                self._resolve(pending, _cancelled(q))
                continue
            except Exception as exc:  # a bad question, or a bug: answer it, keep serving
                self._resolve(pending, self._failure(q, exc))
                continue
            groups.setdefault((route.adapter, q.temperature, q.max_tokens), []).append(
                (pending, ids, ckpt, route, status, prompt, cue))
        a = self.adapters
        for (adapter, temperature, max_tokens), items in groups.items():
            try:
                answers = answer_batch(a.model, a.tokenizer, [prompt for *_, prompt, _ in items], adapter=adapter,
                                       device=a.device, max_tokens=max_tokens, temperature=temperature,
                                       stopping=stopping, cancelled=[lambda p=p: p.cancelled for p, *_ in items],
                                       on_texts=[p.on_text for p, *_ in items])
            except Cancelled:
                answers = [None] * len(items)
            except Exception as exc:
                log.exception("answering %d question(s) failed", len(items))
                for pending, *_ in items:
                    self._resolve(pending, self._failure(pending.question, exc))
                continue
            for (pending, ids, ckpt, route, status, _, cue), answered in zip(items, answers):
                q = pending.question
                if answered is None:
                    payload = _cancelled(q)
                else:
                    payload = self._payload(q, answered, ckpt, route, cue, status, start, ids)
                self._resolve(pending, payload)

    def _failure(self, q: Question, exc: Exception) -> dict:
        if not isinstance(exc, RequestError):
            log.error("question %s failed: %s: %s", q.id, type(exc).__name__, exc)
        return error_payload(q.id, exc)

    def _resolve(self, pending: Pending, payload: dict) -> None:
        self._log(pending.question, payload, pending.source)
        if not pending.future.done():
            pending.future.set_result(payload)

    def handle(self, path: Path, stopping: Callable[[], bool]) -> bool:
        """Answer or refuse one request file; never raises for bad input. False when the
        file is not complete yet (written in place, still being written): try again later."""
        rid = request_id(path)
        if rid is None or path.is_symlink() or not path.is_file():
            self._reject(path, "name is not <id>.json with an id of 1-64 of A-Z a-z 0-9 . _ -, "
                         "or not a regular file")
            return True
        partial = partial_path(self.home, rid)
        q = None
        try:
            with open(path, "rb") as f:
                raw = f.read(self.max_request_bytes + 1)
                mtime = _mtime(f)
            try:
                q = parse_request(rid, raw, self.max_request_bytes)
            except RequestError as exc:
                if exc.code == "invalid_json" and time.time() - mtime < 1.0:
                    return False  # written in place a moment ago: maybe not finished
                raise

            def withdrawn() -> bool:
                return stopping() or not path.exists()

            stream = _Appender(partial)
            try:
                payload = self.answer(q, cancelled=withdrawn, on_text=stream.write)
            finally:
                stream.close()
        except FileNotFoundError:
            partial.unlink(missing_ok=True)
            return True  # withdrawn before it was read
        except Cancelled:
            partial.unlink(missing_ok=True)
            if stopping() and path.exists():
                return False  # the daemon stops: the request stays for the next start
            log.info("request %s withdrawn by its asker; no answer written", rid)
            return True
        except Exception as exc:
            if not isinstance(exc, RequestError):
                log.exception("request %s failed", rid)
            else:
                log.warning("request %s refused: %s", rid, exc)
            payload = error_payload(rid, exc)
        self._log(q, payload, "folder", rid)
        if not path.exists():  # withdrawn while the answer was finished: leave no orphan
            partial.unlink(missing_ok=True)
            return True
        self.home.responses.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.home.responses / f"{rid}.json", payload)
        partial.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        return True

    def _log(self, q: Question | None, payload: dict, source: str, rid: str | None = None) -> None:
        """Every answer and refusal is kept in memz.db (memzctl logs)."""
        try:
            error = payload.get("error")
            self.store.log_answer(request_id=payload.get("id") or rid or "", source=source,
                       messages=q.messages if q else [], response=payload.get("response"),
                       checkpoint=payload.get("checkpoint"), routed_to=payload.get("routed_to"),
                       answered_as=payload.get("answered_as"), latency_ms=payload.get("latency_ms"),
                       error=f"{error['code']}: {error['message']}" if error else None,
                       user=q.user if q else None)
        except Exception:  # the log is a record, not a reason to fail an answer
            log.exception("could not record the answer to %s", payload.get("id"))

    def _reject(self, path: Path, reason: str) -> None:
        log.warning("request file %r set aside: %s", path.name, reason)
        name = re.sub(r"[^A-Za-z0-9._-]", "_", path.name).lstrip(".") or "request"
        try:
            set_aside(path, self.home.requests_rejected, reason, name=name)
        except OSError as exc:
            log.error("could not move %r aside: %s", path.name, exc)


def _mtime(f) -> float:
    return os.fstat(f.fileno()).st_mtime


class _Appender:
    """responses/.<id>.partial: the answer's text so far, for an asker that streams."""

    def __init__(self, path: Path):
        self.path, self.f = path, None

    def write(self, text: str) -> None:
        try:
            if self.f is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.f = open(self.path, "ab")
            self.f.write(text.encode("utf-8", "replace"))
            self.f.flush()
        except OSError:  # streaming is a courtesy; the answer still lands whole
            pass

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
