"""The light control layer: what memzctl needs to drive a home without the ML stack.

Owns the daemon's lock and pid, what makes a folder a home, the status
object, asking a running daemon to train now, and asking it a question
through requests/ (with the answer streamed as it is generated, and the
request cancelled when the asker gives up). Imports no torch: every command
that needs no model starts in a fraction of a second.

The folder protocol for a question, shared with memzd.queries:
- the asker writes requests/<id>.json atomically;
- while answering, the daemon appends the text so far to responses/.<id>.partial;
- the answer lands atomically as responses/<id>.json, then the request and the
  partial file are removed;
- an asker that gives up removes requests/<id>.json: the daemon stops
  generating at the next token and writes no response.
"""

from __future__ import annotations

import codecs
import fcntl
import json
import os
import shutil
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .config import Config, Home, base_model_name
from .errors import DaemonNotRunning, MemzError
from .files import unread, write_atomic, write_json_atomic

TRAIN_NOW = ".train-now"  # in inbox/: a running daemon trains what waits, then removes it


# -- one daemon per home -------------------------------------------------------

def acquire_lock(home: Home):
    """One daemon per home: hold an flock on logs/memzd.pid for the process's life."""
    home.logs.mkdir(parents=True, exist_ok=True)
    f = open(home.pid_file, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise MemzError(f"another memzd (pid {pid}) already runs for {home.root}")
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def daemon_pid(home: Home) -> int | None:
    """The pid of the memzd running for this home, or None."""
    if not home.pid_file.exists():
        return None
    try:
        f = open(home.pid_file, "r")
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


# -- homes --------------------------------------------------------------------

def is_home(home: Home) -> bool:
    """A memz home has its config.yaml or its database."""
    return home.config_path.is_file() or home.db_path.is_file()


def require_home(home: Home) -> None:
    """Refuse a folder that is not a memz home, with the command that makes one."""
    if not home.root.is_dir():
        raise MemzError(f"{home.root} does not exist; create a home there with: {command('memzctl')} init {home.root}")
    if not is_home(home):
        raise MemzError(f"{home.root} is not a memz home (no config.yaml or memz.db); "
                        f"create one with: {command('memzctl')} init {home.root}")


def defaults() -> Path:
    """The shipped defaults (config.yaml, anchors/), inside the installed package."""
    return Path(__file__).resolve().parent / "defaults"


def init_home(home: Home) -> bool:
    """Make `home` a memz home: its folders, the shipped default config.yaml and anchors
    (what is there already is kept), and its database. True if it was not a home before."""
    import shutil

    Store = _import_store().Store

    fresh = not is_home(home)
    home.ensure()
    if not home.config_path.exists():
        write_atomic(home.config_path, (defaults() / "config.yaml").read_bytes())
    if not home.anchors.exists():
        shutil.copytree(defaults() / "anchors", home.anchors)
    Store(home.db_path).close()
    return fresh


def _import_store():
    """memzd.store, without numpy where numpy is not loaded yet.

    sqlite_utils imports numpy when it can (about 100 ms of a 0.5 s `memzctl status`)
    only to map numpy types to column types when it creates or alters a table from
    values; memz creates its tables with declared types and stores Python values, so a
    command that needs no model skips it. numpy imports normally afterwards."""
    import sys

    if "numpy" in sys.modules or "sqlite_utils" in sys.modules:
        from . import store
        return store
    sys.modules["numpy"] = None  # makes `import numpy` raise ImportError for the moment
    try:
        from . import store
    finally:
        del sys.modules["numpy"]
    return store


def open_store(home: Home):
    """The home's database, refusing a folder that is not a home (imports no torch)."""
    Store = _import_store().Store
    require_home(home)
    return Store(home.db_path)  # a home whose daemon never ran gets its (empty) database now


# -- status --------------------------------------------------------------------

def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def next_batch(store, config: Config, now: float | None = None, unread_files: int = 0,
               train_asked: bool = False) -> dict:
    """When the next batch trains, and why: {"at": ISO time or None, "why": text};
    `unread_files`: files in inbox/ that memzd has not read yet; `train_asked`: a
    `memzctl train` the daemon has not taken up yet."""
    now = time.time() if now is None else now
    pending = store.next_batch()
    if pending is not None:
        queued = store.pending_batches()
        if store.batch(pending).get("status") == "training":  # begun (or interrupted, and taken up again)
            more = f"; {queued} more queued" if queued else ""
            return {"at": _iso(now), "why": f"batch {pending} is training now{more}"}
        more = f" ({queued - 1} more queued after it)" if queued > 1 else ""
        return {"at": _iso(now), "why": f"batch {pending} is queued and trains next{more}"}
    waiting = [store.unbatched(user) for user in store.waiting_users()]
    count = sum(n for n, _ in waiting)
    oldest = min((o for _, o in waiting if o is not None), default=None)
    if count == 0 and unread_files:
        return {"at": None, "why": f"{unread_files} file(s) in inbox/ not read yet: a running memzd "
                                   "reads them in a moment, then says when they train"}
    if count == 0:
        return {"at": None, "why": "nothing waits: drop a .jsonl file into inbox/ (or memzctl add FILE)"}
    if config.update_mode == "immediate":
        return {"at": _iso(now), "why": f"{count} example(s) wait; immediate mode trains them now"}
    if train_asked:
        return {"at": _iso(now), "why": f"{count} example(s) wait; memzctl train asked for them: they train "
                                        "as soon as the daemon is free"}
    limit, age = config.batch.max_examples, config.batch.max_age_minutes * 60
    due = oldest + age
    return {"at": _iso(max(due, now)),
            "why": f"{count} of {limit} examples wait; a batch trains at {limit} or when the oldest "
                   f"is {config.batch.max_age_minutes:g} min old (memzctl train: now)"}


RECENT_EVENTS = 5  # the lineage's latest events that `memzctl status` shows (files read, supersedes, ...)


def _formats(home: Home, checkpoint: str | None) -> list[str]:
    """The exact formats a checkpoint answers by (memzd.formats), described; [] if none
    or its meta.json cannot be read (memzd says why when it loads it)."""
    from .formats import Format
    if checkpoint is None:
        return []
    try:
        meta = json.loads((home.checkpoints / checkpoint / "meta.json").read_text(encoding="utf-8"))
        return [Format.from_dict(f).describe() for f in meta.get("formats") or []]
    except (OSError, ValueError, AttributeError, TypeError):
        return []


def status_data(home: Home, user: str | None = None) -> dict:
    """Everything `memzctl status` shows (the `status --json` object), for the shared
    lineage or for `user`'s own."""
    config = home.load_config()
    store = open_store(home)
    try:
        current = store.current_checkpoint(user)
        row = store.checkpoint(current) if current else None
        lineage = list(reversed(store.lineage(current)))
        rows = store.checkpoints(user, every_user=False)
        latest = rows[0] if rows else None
        curve_batch = latest.batch_id if latest else None
        hw = store.get_json("hardware") or {"device": "not known until memzd has run", "backend": config.backend}
        pid = daemon_pid(home)
        activity = store.get_json("activity") or {}
        inbox_unread = unread(home.inbox)
        metrics = row.metrics if row else {}
        return {
            "home": str(home.root),
            "user": user,
            "users": store.users(),
            "base_model": base_model_name(config.base_model),
            "current_checkpoint": current,
            "checkpoint_status": row.status if row else None,
            "adapters": metrics.get("adapters", 1 if row else 0),  # >1: the lineage is held in shards
            "queue_depth": store.queue_depth(),
            "inbox_unread": inbox_unread,
            "last_update": store.last_update(user),
            "next_batch": next_batch(store, config, unread_files=inbox_unread,
                                     train_asked=(home.inbox / TRAIN_NOW).exists()),
            "daemon": {"running": pid is not None, "pid": pid,
                       "activity": activity.get("text") if pid else "not running",
                       "since": activity.get("at") if pid else None},
            "loss_curves": {
                "finetune_loss": store.curve(curve_batch, "finetune_loss") if curve_batch else [],
                "forgetting_loss": store.curve(curve_batch, "forgetting_loss") if curve_batch else [],
                "eval_loss": [c.metrics.get("eval_loss") for c in lineage if c.metrics.get("eval_loss") is not None],
            },
            "formats": _formats(home, current),
            "forgetting_summary": {k: metrics.get(k) for k in
                                   ("anchor_ce_delta", "retention_score", "forgetting_loss",
                                    "adapter_anchor_ce_delta", "adapter_retention_score")},
            "latest": {"checkpoint": latest.id if latest else None, "status": latest.status if latest else None,
                       "recall": latest.metrics.get("recall") if latest else None,
                       "rounds": latest.metrics.get("rounds") if latest else None},
            "failed_batches": len(store.failed_batches()),
            "update_mode": config.update_mode,
            "rollback_mode": config.evaluation.rollback_mode,
            "hardware": hw,
            "recent_events": [{"at": e["at"], "kind": e["kind"], "message": e["message"]}
                              for e in store.events(RECENT_EVENTS, user, every_user=False)],
        }
    finally:
        store.close()


# -- rollback -----------------------------------------------------------------------

def roll_back(home: Home, to: str | None = None, user: str | None = None) -> tuple[str | None, str | None]:
    """Serve `to` (default: the current checkpoint's parent) in `user`'s lineage (None:
    the shared one); the current one is marked rolled_back. Returns (was, now).
    A target that cannot serve (the checks that need no model) changes nothing."""
    from .checkpoints import check_folder, sync_status

    base = base_model_name(home.load_config().base_model)
    store = open_store(home)
    try:
        current = store.current_checkpoint(user)
        whose = f"{user}'s lineage" if user else "the shared lineage"
        if to is None:
            if current is None:
                raise MemzError(f"nothing to roll back: the base model already serves {whose}")
            target = store.checkpoint(current).parent
        else:
            row = store.checkpoint(to)
            if row is None:
                raise MemzError(f"no checkpoint '{to}'; see memzctl checkpoints")
            if row.user != user:
                owner = f"--user {row.user}" if row.user else "no --user (the shared lineage)"
                raise MemzError(f"{to} belongs to {f'{row.user}' if row.user else 'the shared lineage'}, "
                                f"not {whose}; use {owner}")
            if row.base_model != base:
                raise MemzError(f"{to} was trained on '{row.base_model}', but this home's base model is '{base}'")
            if not (home.checkpoints / to).is_dir():
                raise MemzError(f"{to} is recorded but its folder {home.checkpoints / to} is missing")
            target = to
        if target:  # the daemon checks the tensors too, and rolls back one that cannot serve
            try:
                check_folder(home.checkpoints / target, base, home.checkpoints)
            except MemzError as exc:
                raise MemzError(f"{target} cannot serve: {exc}; nothing was changed") from exc
        store.roll_back(current, target, f"by hand: {current or 'base model'} -> {target or 'base model'}", user)
        sync_status(home.checkpoints, store, current, target)
        return current, target
    finally:
        store.close()


# -- forgetting -----------------------------------------------------------------------

def forget(home: Home, text: str | None = None, example_id: int | None = None, file: str | None = None,
           tag: str | None = None, user: str | None = None, dry_run: bool = False) -> tuple[list[dict], int | None]:
    """Find the examples to forget; unless `dry_run`, take them out of all future training
    and queue a 'forget' batch for those already trained. Returns (examples, batch id)."""
    if text is None and example_id is None and file is None and tag is None:
        raise MemzError("say what to forget: TEXT, --id N, --file NAME or --tag T")
    store = open_store(home)
    try:
        found = store.find_examples(text, example_id, file, tag, user)
        if dry_run or not found:
            return found, None
        what = " ".join(f"{k}={v!r}" for k, v in (("text", text), ("id", example_id), ("file", file),
                                                      ("tag", tag), ("user", user)) if v is not None)
        batch = store.forget([e["id"] for e in found], f"forget {what}: {len(found)} example(s)", user)
        return found, batch
    finally:
        store.close()


def already_gone(home: Home, text: str | None = None, example_id: int | None = None, file: str | None = None,
                 tag: str | None = None, user: str | None = None) -> list[dict]:
    """The matching examples that are out of training already (forgotten, or superseded
    by a later answer): what `forget` says when nothing is left to forget."""
    store = open_store(home)
    try:
        return store.find_examples(text, example_id, file, tag, user, gone=True)
    finally:
        store.close()


# -- driving a running daemon ---------------------------------------------------

def command(name: str) -> str:
    """How to call memz's `name` (memzd, memzctl) in a hint: the name when it is on PATH,
    else its full path beside the running one (a clone's .venv/bin never activated)."""
    if shutil.which(name):
        return name
    beside = Path(sys.argv[0]).resolve().parent / name
    return str(beside) if beside.is_file() else name


def require_daemon(home: Home) -> int:
    pid = daemon_pid(home)
    if pid is None:
        raise DaemonNotRunning(f"no memzd is running for {home.root}; start one with: "
                               f"{command('memzd')} --home {home.root}")
    return pid


def request_training(home: Home) -> None:
    """Ask the running daemon to train every example that waits, below the batch thresholds too."""
    require_home(home)
    require_daemon(home)
    home.inbox.mkdir(parents=True, exist_ok=True)
    write_atomic(home.inbox / TRAIN_NOW, _iso(time.time()) + "\n")


def partial_path(home: Home, rid: str) -> Path:
    """Where the daemon streams an answer's text as it is generated."""
    return home.responses / f".{rid}.partial"


def ask(home: Home, body: dict, timeout: float = 120.0,
        on_text: Callable[[str], None] | None = None, poll: float = 0.05) -> dict:
    """Ask the running daemon `body` (a request object) and return its response.

    Text is passed to `on_text` as it is generated. If no answer comes within
    `timeout` seconds (or the caller is interrupted), the request is withdrawn,
    the daemon stops generating it, and MemzError (or KeyboardInterrupt) is raised.
    """
    require_home(home)
    require_daemon(home)
    rid = body.get("id") or f"q-{uuid.uuid4().hex[:12]}"
    request = home.requests / f"{rid}.json"
    response = home.responses / f"{rid}.json"
    partial = partial_path(home, rid)
    home.requests.mkdir(parents=True, exist_ok=True)
    write_json_atomic(request, {k: v for k, v in body.items() if k != "id"})
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    shown: list[str] = []

    def show(text: str) -> None:
        shown.append(text)
        on_text(text)

    offset = 0
    deadline = time.monotonic() + timeout
    try:
        while True:
            if on_text is not None:
                offset = _follow(partial, offset, decoder, show)
            if response.exists():
                break
            if time.monotonic() > deadline:
                raise MemzError(f"no answer within {timeout:g}s (the daemon may be busy: memzctl status); "
                                "the question was withdrawn")
            if daemon_pid(home) is None:
                raise DaemonNotRunning("memzd stopped before answering")
            time.sleep(poll)
    except BaseException:
        _withdraw(request, response)
        raise
    payload = json.loads(response.read_text(encoding="utf-8"))
    response.unlink(missing_ok=True)
    if on_text is not None and isinstance(payload.get("response"), str):
        # The partial file is removed with the answer: show what it had not carried yet.
        so_far = "".join(shown).strip()
        final = payload["response"]
        if final.startswith(so_far) and len(final) > len(so_far):
            on_text(final[len(so_far):] if so_far else final)
    return payload


def _follow(partial: Path, offset: int, decoder, on_text) -> int:
    try:
        with open(partial, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return offset
    if chunk:
        text = decoder.decode(chunk)
        if text:
            on_text(text)
    return offset + len(chunk)


def _withdraw(request: Path, response: Path) -> None:
    """The asker gave up: the daemon sees the request gone and stops; no answer is left behind."""
    request.unlink(missing_ok=True)
    response.unlink(missing_ok=True)
