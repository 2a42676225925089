"""The HTTP front end: memz's own API and an OpenAI-compatible one, over the same core.

A thin layer: questions go to `Daemon.submit` and are parsed by
`memzd.queries` exactly as request files are (one code path for answering);
examples are validated by `memzd.examples` and written into inbox/ as one
JSONL file, so that the inbox path stores and deduplicates them (one code
path for accepting examples; the job id names that file). FastAPI and
uvicorn run on their own thread; the daemon's worker never waits on a
client: streamed text is handed over without blocking, and a client that
goes away cancels its generation at the next token.

    POST /search              {"prompt" | "messages", "max_tokens", "temperature", "checkpoint", "user"}
    POST /update              {"examples": [...], "tags": [...], "user"}  -> {"job_id", "queued": true}
    GET  /jobs/{id}           what became of an /update
    GET  /info[?user=NAME]    the `memzctl status --json` object
    GET  /v1/models[/{id}]    OpenAI-compatible
    POST /v1/chat/completions OpenAI-compatible, "stream": true as server-sent events

Loopback only unless `http.host` says otherwise, and then every request needs
`Authorization: Bearer <http.token or $MEMZ_HTTP_TOKEN>`.
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations
# (Request) at run time, and they name classes imported inside create_app.
import asyncio
import hmac
import json
import logging
import threading
import time
import uuid

from . import control
from .config import HttpConfig
from .errors import ExampleError, MemzError, RequestError
from .examples import parse_example
from .files import write_atomic
from .queries import Question, parse_body, user_name

log = logging.getLogger("memz.http")

STATUS = {"invalid_json": 400, "invalid_request": 400, "too_long": 400, "too_large": 413,
          "unknown_checkpoint": 404, "bad_checkpoint": 409, "stopping": 503, "cancelled": 499, "internal": 500}


def create_app(daemon, http: HttpConfig):
    """The FastAPI application for a running daemon (anything with submit, home, store)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="memz", description="A language model that keeps learning.", docs_url=None,
                  redoc_url=None)
    token = http.bearer()

    def error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token:
            scheme, _, sent = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), token.encode()):
                return error(401, "unauthorized", "send Authorization: Bearer <http.token>")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > http.max_request_bytes):
            return error(413, "too_large", f"request bodies are limited to {http.max_request_bytes} bytes "
                         "(http.max_request_bytes)")
        return await call_next(request)

    async def body_of(request: Request):
        raw = b""
        async for chunk in request.stream():  # bounded even without a Content-Length
            raw += chunk
            if len(raw) > http.max_request_bytes:
                raise RequestError("too_large", f"request bodies are limited to {http.max_request_bytes} bytes")
        try:
            return json.loads(raw.decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
            raise RequestError("invalid_json", f"request is not valid UTF-8 JSON: {exc}") from exc

    async def answer(request: Request, question: Question, on_text=None) -> dict:
        """Submit, then wait; a client that goes away cancels the generation."""
        pending = daemon.submit(question, on_text, source="http")
        waiting = asyncio.ensure_future(asyncio.wrap_future(pending.future))
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=0.25)
                if done:
                    return waiting.result()
                if await request.is_disconnected():
                    pending.cancel()
                    raise asyncio.CancelledError()
        except BaseException:
            pending.cancel()
            raise

    def respond(payload: dict) -> JSONResponse:
        if "error" in payload:
            return JSONResponse(payload, status_code=STATUS.get(payload["error"]["code"], 500))
        return JSONResponse(payload)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):  # 404, 405: memz's shape too
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        allowed = f" ({exc.headers['Allow']} only)" if exc.headers and "Allow" in exc.headers else ""
        return error(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}{allowed}")

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError):
        return error(STATUS.get(exc.code, 400), exc.code, str(exc))

    @app.post("/search")
    async def search(request: Request):
        body = await body_of(request)
        question = parse_body(f"h-{uuid.uuid4().hex[:12]}", body)
        return respond(await answer(request, question))

    @app.post("/update")
    async def update(request: Request):
        body = await body_of(request)
        if not isinstance(body, dict) or not isinstance(body.get("examples"), list) or not body["examples"]:
            raise RequestError("invalid_request", "send {\"examples\": [...], \"tags\": [...], \"user\": ...} "
                                                  "with at least one example")
        unknown = set(body) - {"examples", "tags", "user"}
        if unknown:
            raise RequestError("invalid_request", f"unknown field '{sorted(unknown)[0]}'; allowed: "
                                                  "examples, tags, user")
        tags = body.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise RequestError("invalid_request", "'tags' must be a list of strings")
        if body.get("user") is not None:  # the same as a "user:NAME" tag on every example
            tags = tags + [f"user:{user_name(body['user'])}"]
        lines = []
        for i, example in enumerate(body["examples"]):
            if isinstance(example, dict) and tags:
                example = {**example, "tags": list(example.get("tags", [])) + tags}
            try:
                lines.append(parse_example(example).json)
            except ExampleError as exc:
                raise RequestError("invalid_request", f"examples[{i}]: {exc}") from None
        job = f"{time.time_ns():016x}{uuid.uuid4().hex[:6]}"  # in the order sent: the inbox reads by name
        await asyncio.to_thread(write_atomic, daemon.home.inbox / f"http-{job}.jsonl",
                                "".join(line + "\n" for line in lines))
        return {"job_id": job, "queued": True, "examples": len(lines)}

    @app.get("/jobs/{job_id}")
    async def job(job_id: str):
        if not job_id.isalnum() or len(job_id) > 64:
            return error(404, "unknown_job", f"no job '{job_id}'")
        name = f"http-{job_id}.jsonl"
        if (daemon.home.inbox / name).exists():
            return {"job_id": job_id, "status": "waiting", "detail": "in inbox/, not read yet"}
        found = await asyncio.to_thread(_job_row, daemon.home, name)
        if found is None:
            return error(404, "unknown_job", f"no job '{job_id}'")
        return {"job_id": job_id, **found}

    @app.get("/info")
    async def info(user: str | None = None):
        return await asyncio.to_thread(control.status_data, daemon.home,
                                       user_name(user) if user is not None else None)

    @app.get("/v1/models")
    async def models():
        data = await asyncio.to_thread(control.status_data, daemon.home)
        ids = ["memz"] + ([data["current_checkpoint"]] if data["current_checkpoint"] else [])
        return {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "memz"}
                                           for i in ids]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str):
        listed = (await models())["data"]
        found = [m for m in listed if m["id"] == model_id]
        if not found:
            return error(404, "unknown_checkpoint", f"no model '{model_id}'; GET /v1/models lists them")
        return found[0]

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await body_of(request)
        if not isinstance(body, dict):
            raise RequestError("invalid_request", "request must be a JSON object")
        model = body.get("model") or "memz"
        messages = body.get("messages")
        if isinstance(messages, list):
            messages = [_plain_message(m) for m in messages]
        fields = {"messages": messages, "user": body.get("user")}
        if body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None:
            fields["max_tokens"] = body.get("max_tokens") or body.get("max_completion_tokens")
        if body.get("temperature") is not None:
            fields["temperature"] = body["temperature"]
        if model != "memz":
            fields["checkpoint"] = model
        question = parse_body(f"chatcmpl-{uuid.uuid4().hex[:12]}", {k: v for k, v in fields.items() if v is not None})
        created = int(time.time())

        def chunk(delta: dict, finish: str | None = None) -> str:
            return "data: " + json.dumps({"id": question.id, "object": "chat.completion.chunk", "created": created,
                                          "model": model, "choices": [{"index": 0, "delta": delta,
                                                                       "finish_reason": finish}]}) + "\n\n"

        def finish(payload: dict) -> str:
            return "length" if payload["usage"]["max_tokens_reached"] else "stop"

        def usage(payload: dict) -> dict:
            prompt, completion = payload["usage"]["prompt_tokens"], payload["usage"]["completion_tokens"]
            return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

        if not body.get("stream"):
            payload = await answer(request, question)
            if "error" in payload:
                return respond(payload)
            return {"id": question.id, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": payload["response"]},
                                 "finish_reason": finish(payload)}],
                    "usage": usage(payload),
                    "memz": {k: payload[k] for k in ("checkpoint", "routed_to", "format", "answered_as", "latency_ms")
                             if k in payload}}

        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()

        def on_text(text: str) -> None:  # the daemon's worker thread: hand over, never wait
            loop.call_soon_threadsafe(pieces.put_nowait, text)

        # Wait for the first text (or the end) before the 200 goes out, so that a question
        # refused when the worker takes it up (too long, unknown checkpoint) gets its 4xx.
        pending = daemon.submit(question, on_text, source="http")
        done = asyncio.wrap_future(pending.future)
        first = asyncio.ensure_future(pieces.get())
        try:
            while not (await asyncio.wait({first, done}, timeout=0.25, return_when=asyncio.FIRST_COMPLETED))[0]:
                if await request.is_disconnected():
                    raise asyncio.CancelledError()
        except BaseException:
            pending.cancel()
            first.cancel()
            raise
        if not first.done():
            first.cancel()
            if "error" in done.result():
                return respond(done.result())

        async def events():
            try:
                yield chunk({"role": "assistant", "content": ""})
                getter = first
                while True:
                    if getter.done() and not getter.cancelled():
                        yield chunk({"content": getter.result()})
                    if not done.done():
                        getter = asyncio.ensure_future(pieces.get())
                        await asyncio.wait({getter, done}, return_when=asyncio.FIRST_COMPLETED)
                        continue
                    getter.cancel()
                    while not pieces.empty():
                        yield chunk({"content": pieces.get_nowait()})
                    payload = done.result()
                    if "error" in payload:  # begun, then failed: said in the stream
                        yield "data: " + json.dumps(payload) + "\n\n"
                        yield chunk({}, "stop")
                    else:
                        yield chunk({}, finish(payload))
                        if (body.get("stream_options") or {}).get("include_usage"):
                            yield "data: " + json.dumps({"id": question.id, "object": "chat.completion.chunk",
                                                         "created": created, "model": model, "choices": [],
                                                         "usage": usage(payload)}) + "\n\n"
                    yield "data: [DONE]\n\n"
                    return
            finally:  # the client went away (or the stream ended): stop generating
                pending.cancel()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def _plain_message(message):
    """An OpenAI chat message as memz reads one: a "developer" turn is a system turn, and
    content given as text parts ([{"type": "text", "text": ...}]) is their text joined.
    Anything else is left for memz's own check to refuse."""
    if not isinstance(message, dict):
        return message
    content = message.get("content")
    if isinstance(content, list) and content and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        content = "".join(p["text"] for p in content)
    role = "system" if message.get("role") == "developer" else message.get("role")
    return {"role": role, "content": content}


def _job_row(home, name: str) -> dict | None:
    store = control.open_store(home)
    try:
        return store.job(name)
    finally:
        store.close()


def require() -> None:
    """Refuse, naming the extra to install, when FastAPI or uvicorn is missing (checked
    before the daemon loads its model, so that a missing extra fails at once)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise MemzError(f"the HTTP API needs FastAPI and uvicorn: pip install 'memz[http]' ({exc})") from exc


class Server:
    """uvicorn on its own thread; `stop()` returns within a few seconds."""

    def __init__(self, daemon, http: HttpConfig):
        require()
        import uvicorn

        http.check_exposure()
        self.config = uvicorn.Config(create_app(daemon, http), host=http.host, port=http.port,
                                     log_level="warning", lifespan="off", access_log=False,
                                     timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="memz-http", daemon=True)

    def start(self, timeout: float = 30) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise MemzError(f"the HTTP API could not listen on {self.config.host}:{self.config.port} "
                                "(is the port in use?)")
            time.sleep(0.02)
        log.info("HTTP API on http://%s:%d", self.config.host, self.port)

    @property
    def port(self) -> int:
        servers = getattr(self.server, "servers", None) or []
        for s in servers:
            for sock in s.sockets:
                return sock.getsockname()[1]
        return self.config.port

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)
