"""memzd: the loop, the watcher and the signals; it wires the steps and does none of them.

One worker thread owns the model and does everything, in this order, each
time it wakes (on a file event, a submitted question, or every
`rescan_seconds`): read stable inbox files (memzd.inbox), answer questions
(memzd.queries), and train a batch if one is due (memzd.batcher, then
memzd.learner). While a batch trains or the anchors are prepared, questions
are answered between steps. Other threads (the HTTP front end) hand
questions over with `submit`.

SIGINT, SIGTERM and SIGHUP set `stop`; training, evaluation and generation
check it between steps, micro-batches and tokens, so the daemon exits within
seconds at any point. Whatever was interrupted is done again at the next
start: a batch trains again, a request stays in requests/, a file stays in
the inbox.
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import platform
import queue
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

from . import anchors as anchor_mod
from . import control, lora
from .adapters import Adapters
from .batcher import batch_limit, due_batches
from .checkpoints import StorageError, clean_staging
from .config import Config, Home
from .errors import ConfigError
from .inbox import ingest_file
from .files import set_aside
from .learner import Hooks, Learner, NothingToTrain, Retrain
from .model import load_base_for
from .queries import Answerer, Pending, Question
from .store import Store, utcnow
from .trainer import Interrupted
from .watch import StableFiles, Watcher

log = logging.getLogger("memz.daemon")

MAX_ATTEMPTS = 3             # a batch that fails this often is set aside as failed
STORAGE_RETRY_SECONDS = 60   # after a disk failure (full, read-only), wait this long before trying again
ANSWER_ROUNDS = 3            # rounds of waiting questions answered before training goes on (bounded: training is not starved)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def setup_logging(home: Home, level: str) -> None:
    home.logs.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in (logging.StreamHandler(sys.stderr),
                    logging.handlers.RotatingFileHandler(home.logs / "memzd.log", maxBytes=10_000_000,
                                                         backupCount=3)):
        handler.setFormatter(fmt)
        root.addHandler(handler)
    for noisy in ("watchdog", "transformers", "peft", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def hardware(device: torch.device) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        name = f"Apple {platform.machine()} (MPS)"
    else:
        name = _cpu_name()
    return {"device": name, "backend": device.type, "threads": torch.get_num_threads()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Daemon:
    """A running memz for one home."""

    def __init__(self, home: Home, once: bool = False, http: str | None = None):
        self.home, self.once = home, once
        self.stop = threading.Event()
        self.checkpointed = threading.Event()  # set each time a checkpoint is recorded
        self._pause_until = 0.0  # time.monotonic() before which no batch trains (after a disk failure)
        self.config: Config = home.load_config()  # refuses a bad config before anything starts
        self.inbox_files = StableFiles(self.config.daemon.stable_seconds)
        self.request_files = StableFiles(0)  # requests are renamed into place: read at once
        self.questions: queue.Queue[Pending] = queue.Queue()
        self.watcher: Watcher | None = None
        self.http = None  # memzd.http.Server while the HTTP API runs
        self._phase, self._phase_at = "", ""  # what set_activity last said, and since when
        if http:  # memzd --http HOST:PORT overrides the config
            host, _, port = http.rpartition(":")
            if not port.isdigit() or not 1 <= int(port) <= 65535 or not host:
                raise ConfigError(f"--http must be HOST:PORT, such as 127.0.0.1:8000, not {http!r}")
            self.config.http.host, self.config.http.port = host.strip("[]"), int(port)
        self.config.http.check_exposure()  # refused before anything loads
        if self.config.http.port and not once:
            from .http import require

            require()

    # -- start-up ---------------------------------------------------------------

    def start(self) -> None:
        anchor_mod.load_anchors(self.config.evaluation, self.home)  # a bad anchor set is refused at start
        self.home.ensure()
        self._lock = control.acquire_lock(self.home)
        self.store = Store(self.home.db_path)
        self.reconcile()
        t0 = time.perf_counter()
        if self.config.training.threads:
            torch.set_num_threads(self.config.training.threads)
        base = load_base_for(self.config)
        model = lora.wrap(base.model, self.config.lora)
        log.info("base model %s on %s (%s) loaded in %.1fs", base.name, base.device, base.info.get("dtype"),
                 time.perf_counter() - t0)
        info = base.describe()
        self.store.set_json("hardware", {**hardware(base.device), **info})
        self.store.set_json("daemon", {"pid": os.getpid(), "started": utcnow(), "base_model": base.name})
        self.adapters = Adapters(self.home, self.store, model, base.tokenizer, base.device, base.name,
                                 self.config.routing)
        self.answerer = Answerer(self.home, self.store, self.adapters, self.config.daemon.max_request_bytes,
                                 self.config.daemon.max_prompt_tokens,
                                 getattr(base.model.config, "max_position_embeddings", None))
        self.learner = Learner(self.home, self.store, self.config, self.adapters, base.name, info)
        self.hooks = Hooks(between=self.serve_requests, stop=self.stop, activity=self.set_activity)
        self.adapters.serving()  # loads it; one that cannot serve is rolled back to its parent
        self.watcher = Watcher([self.home.inbox, self.home.requests])
        self.watcher.start()
        if self.config.http.port and not self.once:
            from .http import Server

            self.http = Server(self, self.config.http)
            self.http.start()
        self.set_activity("starting: reading the inbox and preparing the anchors")

    def reconcile(self) -> None:
        """Undo what a crash left: half-written and unrecorded checkpoint folders."""
        removed = clean_staging(self.home)
        recorded = {c.id for c in self.store.checkpoints()}
        for path in self.home.checkpoints.iterdir():
            if path.is_dir() and not path.name.startswith(".") and path.name not in recorded:
                orphan = self.home.checkpoints / ".orphaned" / path.name
                orphan.parent.mkdir(exist_ok=True)
                os.rename(path, orphan)
                removed += 1
                log.warning("checkpoint folder %s was never recorded (a crash before its commit); "
                            "moved to checkpoints/.orphaned/ and its batch will train again", path.name)
        if removed:
            self.store.log_event("recovered", f"set aside {removed} unfinished checkpoint folder(s)")

    def set_activity(self, text: str) -> None:
        """Say what the daemon does now; "at" is when this phase began (the text before its first
        ':'), so that a batch's steps or the anchors' progress do not restart it."""
        phase = text.split(":", 1)[0]
        if phase != self._phase:
            self._phase, self._phase_at = phase, utcnow()
        self.store.set_json("activity", {"text": text, "at": self._phase_at, "pid": os.getpid()})

    # -- the loop -----------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped (or, with --once, until the inbox and queue are drained)."""
        try:
            self.start()
            log.info("memzd watching %s (pid %d)%s", self.home.root, os.getpid(), " --once" if self.once else "")
            while not self.stop.is_set():
                self.watcher.wake.clear()
                ingested = self.ingest()
                self.serve_requests()
                trained = self.train_due()
                settling = self.inbox_files.waiting() or self.request_files.waiting()
                idle = not (ingested or trained or settling)
                if idle and not self.learner.anchors.ready and not self.stop.is_set():
                    try:  # idle: prepare the anchors (once per machine) before a batch needs them;
                        # files dropped meanwhile are read (so status counts them), not trained
                        self.learner.anchors.get(replace(self.hooks, between=self._between_anchors))
                    except Interrupted:
                        break
                    self.set_activity("idle")
                    continue
                if self.once and idle:
                    self.serve_requests()
                    break
                if not (ingested or trained):
                    wait = 0.2 if settling else self.config.daemon.rescan_seconds
                    self.watcher.wake.wait(wait)
        finally:
            self.shutdown()
        return 0

    def _between_anchors(self) -> None:
        self.ingest()
        self.serve_requests()

    def request_stop(self) -> None:
        """Stop at the next step, micro-batch or token, or at once when idle. Safe in a signal
        handler: the loop may hold `wake`'s lock when the signal lands, so another thread sets it."""
        self.stop.set()
        if self.watcher is not None:
            threading.Thread(target=self.watcher.wake.set, daemon=True).start()

    def shutdown(self) -> None:
        while True:  # questions still queued get an answer, not silence
            try:
                pending = self.questions.get_nowait()
            except queue.Empty:
                break
            if not pending.future.done():
                pending.future.set_result({"id": pending.question.id, "error": {
                    "code": "stopping", "message": "memzd is stopping; ask again once it runs"}})
        if self.http is not None:
            self.http.stop()
        if self.watcher is not None:
            self.watcher.stop()
        if hasattr(self, "store"):
            self.set_activity("stopped")
            self.store.close()
        if hasattr(self, "_lock"):
            self._lock.close()  # releases the flock now, not whenever this object is collected
        log.info("memzd stopped")

    # -- questions ------------------------------------------------------------------

    def submit(self, question: Question, on_text=None, source: str = "api") -> Pending:
        """Hand a question to the worker from any thread; the future gives the response."""
        pending = Pending(question, on_text, source)
        if self.stop.is_set():
            pending.future.set_result({"id": question.id, "error": {
                "code": "stopping", "message": "memzd is stopping; ask again once it runs"}})
            return pending
        self.questions.put(pending)
        if self.watcher is not None:
            self.watcher.wake.set()
        return pending

    def serve_requests(self) -> None:
        """Answer submitted questions and request files (called between training steps too)."""
        for _ in range(ANSWER_ROUNDS):  # questions that came while others were answered go next
            waiting = []
            while not self.stop.is_set():
                try:
                    waiting.append(self.questions.get_nowait())
                except queue.Empty:
                    break
            if not waiting:
                break
            self.answerer.settle_many(waiting, self.stop.is_set)  # all that wait, together
        for path in self.request_files.ready(self.home.requests):
            if self.stop.is_set():
                return
            if self.answerer.handle(path, self.stop.is_set):
                self.request_files.forget(path)

    # -- the inbox --------------------------------------------------------------------

    def ingest(self) -> int:
        """Read every stable inbox file; returns how many were handled."""
        handled = 0
        for path in self.inbox_files.ready(self.home.inbox):
            if self.stop.is_set():
                break
            try:
                big = path.stat().st_size > 10_000_000  # a big file takes a while: status says so
                if big:
                    self.set_activity(f"reading inbox/{path.name} ({path.stat().st_size / 1e6:.0f} MB)")
                result = ingest_file(path, self.store, self.home, self.config.daemon.max_line_bytes,
                                     stop=self.stop.is_set, between=self.serve_requests)
            except OSError as exc:
                if exc.errno in DISK_FULL:  # not the file's fault: it stays, and is read again later
                    log.error("disk full while reading %s: free some space; it is read again", path.name)
                    self.store.log_event("disk_full", f"{path.name}: {exc}; free some space")
                else:  # vanished, unreadable: leave it and say so
                    log.error("could not read %s: %s", path.name, exc)
                continue
            except Exception as exc:  # a bug met by one odd file must not stop the daemon
                log.exception("could not ingest %s", path.name)
                self._set_aside(path, f"could not be read: {type(exc).__name__}: {exc}")
                continue
            finally:
                self.inbox_files.forget(path)
            if result.interrupted:
                break
            if big:
                self.set_activity("idle")
            handled += 1
            gone = (f" ({result.gone} of them forgotten or superseded: they stay out of training; "
                    "reword one to teach it again)") if result.gone else ""
            said = (f"rejected whole: {result.reason} (see inbox/rejected/)" if result.reason else
                    f"{result.accepted} new, {result.duplicates} duplicate{gone}, {result.rejected} rejected")
            self.store.log_event("file", f"{path.name}: {said}", reason=result.reason)
            while self.config.update_mode == "immediate" and result.accepted:
                if self.store.create_batch(batch_limit(self.config), file_id=result.file_id) is None:  # per user
                    break
        return handled

    def _set_aside(self, path: Path, reason: str) -> None:
        try:
            set_aside(path, self.home.rejected, reason)
        except OSError as exc:
            log.error("could not move %s to inbox/rejected/: %s", path.name, exc)

    # -- training ------------------------------------------------------------------------

    def train_due(self) -> bool:
        """Form the batches that are due and train the oldest one; True if one trained."""
        flag = self.home.inbox / control.TRAIN_NOW
        forced = self.once or flag.exists()
        due_batches(self.store, self.config, force=forced)
        if forced and not self.once:
            flag.unlink(missing_ok=True)
            log.info("train-now asked for: every waiting example is batched")
        batch_id = self.store.next_batch()
        if batch_id is None or self.stop.is_set() or time.monotonic() < self._pause_until:
            return False
        self.train_batch(batch_id)
        return True

    def train_batch(self, batch_id: int) -> None:
        attempt = self.store.start_batch(batch_id)
        self.set_activity(f"training batch {batch_id}: starting")
        try:
            self.learner.learn(batch_id, self.hooks)
            self.checkpointed.set()
        except Interrupted:
            self.store.set_batch_status(batch_id, "pending", "interrupted; trains again at the next start",
                                        attempts=attempt - 1)
            log.info("batch %d interrupted; it trains again at the next start", batch_id)
        except NothingToTrain as exc:
            self.store.set_batch_status(batch_id, "done", str(exc), attempts=attempt - 1)
            log.info("%s", exc)
        except Retrain as exc:  # not the batch's fault: not an attempt
            self.store.set_batch_status(batch_id, "pending", f"retrains: {exc}", attempts=attempt - 1)
            log.info("batch %d trains again: %s", batch_id, exc)
        except StorageError as exc:  # the disk's fault, not the batch's: not an attempt, try later
            kind = "disk_full" if exc.errno in DISK_FULL else "storage"
            self.store.set_batch_status(batch_id, "pending", f"{kind.replace('_', ' ')}: {exc}", attempts=attempt - 1)
            self.store.log_event(kind, f"batch {batch_id}: {exc}; it trains again in {STORAGE_RETRY_SECONDS} s",
                                 batch=batch_id)
            log.error("batch %d could not be saved (%s); it trains again in %d s", batch_id, exc,
                      STORAGE_RETRY_SECONDS)
            self._pause_until = time.monotonic() + STORAGE_RETRY_SECONDS
        except Exception as exc:  # one bad batch must not stop the daemon
            final = attempt >= MAX_ATTEMPTS
            self.store.set_batch_status(batch_id, "failed" if final else "pending", f"{type(exc).__name__}: {exc}")
            self.store.log_event("batch_failed", f"batch {batch_id} attempt {attempt}: {exc}", batch=batch_id)
            log.exception("batch %d failed (attempt %d of %d)", batch_id, attempt, MAX_ATTEMPTS)
            if final:
                log.error("batch %d set aside as failed; its examples stay in the database", batch_id)
        finally:
            self.set_activity("idle")


def main_loop(home: Home, once: bool, http: str | None = None) -> int:
    daemon = Daemon(home, once=once, http=http)

    def on_signal(number, _frame):
        log.info("%s: stopping", signal.Signals(number).name)
        daemon.request_stop()

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    return daemon.run()
