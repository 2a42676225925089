"""memzd: the loop that wires inbox -> store -> batcher -> trainer -> evaluator -> checkpoints -> queries.

One worker thread does everything, in this order, each time it wakes (on a
file event, or every `rescan_seconds`): read stable inbox files, answer
requests, and train a batch if one is due. While a batch trains, requests are
answered between training steps. SIGINT and SIGTERM stop it between steps.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import logging.handlers
import os
import platform
import random
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from . import anchors as anchor_mod
from . import gate, lora
from .batcher import due_batches
from .checkpoints import check_state, clean_staging, new_id, write_checkpoint
from .config import Config, Home
from .errors import MemzError
from .evaluator import AnchorSet, evaluate, forgetting_loss, prepare_anchor_set
from .examples import to_chat
from .inbox import ingest_file, reject_whole
from .model import cache_root, load_base
from .queries import Server
from .store import CheckpointRow, Store, utcnow
from .tokens import encode
from .trainer import Interrupted, TrainCallback, train
from .watch import StableFiles, Watcher

log = logging.getLogger("memz.daemon")

TRAINING_CURVE_ANCHORS = 8   # anchors sampled for the during-training forgetting curve (a few seconds each)
REPLAY_POOL = 10             # replay draws from at most this many times training.replay earlier examples
MAX_ATTEMPTS = 3             # a batch that fails this often is set aside as failed
DISK_FULL_RETRY_SECONDS = 60  # after a full disk, wait this long before training again
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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


def acquire_lock(home: Home):
    """One daemon per home: hold an flock on logs/memzd.pid for the process's life."""
    home.logs.mkdir(parents=True, exist_ok=True)
    f = open(home.pid_file, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        raise MemzError(f"another memzd (pid {f.read().strip() or '?'}) already runs for {home.root}")
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def daemon_pid(home: Home) -> int | None:
    """The pid of the memzd running for this home, or None."""
    if not home.pid_file.exists():
        return None
    with open(home.pid_file, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def _test_pause(home: Home, point: str) -> None:
    """Test-only: with MEMZ_TEST_PAUSE_AT=<point>, write logs/test-pause-<point> and sleep,
    so that tests/test_crash.py can kill -9 the daemon exactly there. A no-op otherwise."""
    if os.environ.get("MEMZ_TEST_PAUSE_AT") == point:
        (home.logs / f"test-pause-{point}").write_text(str(os.getpid()))
        time.sleep(3600)


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


class _Steps(TrainCallback):
    """Records each step, samples the forgetting curve, and answers requests between steps."""

    def __init__(self, daemon: "Daemon", batch_id: int, total: int):
        self.d, self.batch_id, self.total = daemon, batch_id, total
        self.started = time.perf_counter()

    def on_step(self, step: int, loss: float, tokens: int) -> None:
        d = self.d
        d.store.add_metric(self.batch_id, step, "finetune_loss", loss)
        every = d.config.training.eval_every
        if d.anchor_set and every and step % every == 0:
            fl = forgetting_loss(d.model, d.tokenizer, d.anchor_set, lora.TRAIN, d.device,
                                 d.config.training.max_seq_len, limit=TRAINING_CURVE_ANCHORS)
            d.store.add_metric(self.batch_id, step, "forgetting_loss", fl)
        d.set_activity(f"training batch {self.batch_id}: step {step}/{self.total}, loss {loss:.4f}")
        log.info("batch %d step %d/%d loss %.4f (%.1fs)", self.batch_id, step, self.total, loss,
                 time.perf_counter() - self.started)

    def between_steps(self, step: int) -> None:
        self.d.serve_requests()

    between_micro_batches = between_steps  # a step is several micro-batches: answer between them too

    def should_stop(self) -> bool:
        return self.d.stop.is_set()


class Daemon:
    """A running memz for one home."""

    def __init__(self, home: Home, once: bool = False):
        self.home, self.once = home, once
        self.stop = threading.Event()
        self.checkpointed = threading.Event()  # set each time a checkpoint is recorded
        self._train_after = 0.0  # time.monotonic() before which no batch trains (after a full disk)
        self.config: Config = home.load_config()  # refuses a bad config before anything starts
        self.inbox_files = StableFiles(self.config.daemon.stable_seconds)
        self.request_files = StableFiles(0)  # requests are renamed into place: read at once

    # -- start-up ---------------------------------------------------------------

    def start(self) -> None:
        anchor_mod.load_anchors(self.config.evaluation, self.home)  # a bad anchor set is refused at start
        self.home.ensure()
        self._lock = acquire_lock(self.home)
        self.store = Store(self.home.db_path)
        self.reconcile()
        t0 = time.perf_counter()
        if self.config.training.threads:
            torch.set_num_threads(self.config.training.threads)
        base = load_base(self.config.base_model, self.config.backend)
        self.base_name, self.device, self.tokenizer = base.name, base.device, base.tokenizer
        self.model = lora.wrap(base.model, self.config.lora)
        log.info("base model %s on %s loaded in %.1fs", base.name, self.device, time.perf_counter() - t0)
        self.store.set_json("hardware", hardware(self.device))
        self.store.set_json("daemon", {"pid": os.getpid(), "started": utcnow(), "base_model": base.name})
        self.server = Server(self.home, self.store, self.model, self.tokenizer, self.device, base.name,
                             self.config.routing, self.config.daemon.max_request_bytes)
        self.server.current()  # loads it; one that cannot serve is rolled back to its parent
        self._anchor_set: AnchorSet | None = None
        self._anchors_ready = False
        self.watcher = Watcher([self.home.inbox, self.home.requests])
        self.watcher.start()
        self.set_activity("idle")

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

    @property
    def anchor_set(self) -> AnchorSet | None:
        """The sampled anchors with cached base answers (prepared on first use)."""
        if not self._anchors_ready:
            self._anchors_ready = True
            cfg = self.config.evaluation
            all_anchors = anchor_mod.load_anchors(cfg, self.home)
            if all_anchors:
                sample = anchor_mod.sample(all_anchors, cfg.anchor_sample, self.config.training.seed)
                key = anchor_mod.cache_key(self.base_name, sample, cfg.anchor_max_tokens)
                cached = anchor_mod.cached_reference(cache_root() / "anchors", key)
                if cached is None:
                    log.info("computing the base model's answers to %d anchors (once per base model)", len(sample))
                self._anchor_set, fresh = prepare_anchor_set(
                    self.model, self.tokenizer, sample, self.device, cfg.anchor_max_tokens,
                    self.config.training.max_seq_len, cached)
                if cached is None:
                    anchor_mod.store_reference(cache_root() / "anchors", key, fresh)
        return self._anchor_set

    def set_activity(self, text: str) -> None:
        self.store.set_json("activity", {"text": text, "at": utcnow(), "pid": os.getpid()})

    # -- the loop -----------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped (or, with --once, until the inbox and queue are drained)."""
        self.start()
        log.info("memzd watching %s (pid %d)%s", self.home.root, os.getpid(), " --once" if self.once else "")
        try:
            while not self.stop.is_set():
                self.watcher.wake.clear()
                ingested = self.ingest()
                self.serve_requests()
                trained = self.train_due()
                idle = not (ingested or trained or self.inbox_files.waiting())
                if idle and not self._anchors_ready:
                    _ = self.anchor_set  # idle: prepare the anchors (once per machine) before a batch needs them
                    continue
                if self.once and idle:
                    self.serve_requests()
                    break
                if not (ingested or trained):
                    wait = 0.2 if self.inbox_files.waiting() else self.config.daemon.rescan_seconds
                    self.watcher.wake.wait(wait)
        finally:
            self.shutdown()
        return 0

    def request_stop(self) -> None:
        """Stop between two training steps, or at once when idle. Safe in a signal handler:
        the loop may hold `wake`'s lock when the signal lands, so another thread sets it."""
        self.stop.set()
        watcher = getattr(self, "watcher", None)
        if watcher is not None:
            threading.Thread(target=watcher.wake.set, daemon=True).start()

    def shutdown(self) -> None:
        self.watcher.stop()
        self.set_activity("stopped")
        self.store.close()
        self._lock.close()  # releases the flock now, not whenever this object is collected
        log.info("memzd stopped")

    def ingest(self) -> int:
        """Read every stable inbox file; returns how many were handled."""
        handled = 0
        for path in self.inbox_files.ready(self.home.inbox):
            if self.stop.is_set():
                break
            try:
                result = ingest_file(path, self.store, self.home, self.config.daemon.max_line_bytes)
            except OSError as exc:  # vanished, unreadable: leave it and say so
                log.error("could not read %s: %s", path.name, exc)
                continue
            except Exception as exc:  # a bug met by one odd file must not stop the daemon
                log.exception("could not ingest %s", path.name)
                self._set_aside(path, f"could not be read: {type(exc).__name__}: {exc}")
                continue
            finally:
                self.inbox_files.forget(path)
            handled += 1
            self.store.log_event("file", f"{path.name}: {result.accepted} new, {result.duplicates} duplicate, "
                                 f"{result.rejected} rejected", reason=result.reason)
            if self.config.update_mode == "immediate" and result.accepted:
                self.store.create_batch(file_id=result.file_id)
        return handled

    def _set_aside(self, path: Path, reason: str) -> None:
        try:
            reject_whole(self.home, path, reason)
        except OSError as exc:
            log.error("could not move %s to inbox/rejected/: %s", path.name, exc)

    def serve_requests(self) -> None:
        for path in self.request_files.ready(self.home.requests):
            self.server.handle(path)
            self.request_files.forget(path)

    def train_due(self) -> bool:
        """Form the batches that are due and train the oldest one; True if one trained."""
        due_batches(self.store, self.config, force=self.once)
        batch_id = self.store.next_batch()
        if batch_id is None or self.stop.is_set() or time.monotonic() < self._train_after:
            return False
        self.server.current()  # a parent that cannot serve (rolled back by hand to a bad one) is not trained on
        self.train_batch(batch_id)
        return True

    # -- one batch ------------------------------------------------------------------

    def train_batch(self, batch_id: int) -> None:
        attempt = self.store.start_batch(batch_id)
        try:
            self._train_batch(batch_id)
        except Interrupted:
            self.store.set_batch_status(batch_id, "pending", "interrupted; trains again at the next start")
            log.info("batch %d interrupted; it trains again at the next start", batch_id)
        except Exception as exc:  # one bad batch must not stop the daemon
            if isinstance(exc, OSError) and exc.errno in DISK_FULL:  # not the batch's fault: not an attempt
                self.store.set_batch_status(batch_id, "pending", f"disk full: {exc}", attempts=attempt - 1)
                self.store.log_event("disk_full", f"batch {batch_id}: {exc}; free some space", batch=batch_id)
                log.error("disk full while batch %d was saved (%s): free some space; it trains again in %d s",
                          batch_id, exc, DISK_FULL_RETRY_SECONDS)
                self._train_after = time.monotonic() + DISK_FULL_RETRY_SECONDS
                return
            final = attempt >= MAX_ATTEMPTS
            self.store.set_batch_status(batch_id, "failed" if final else "pending", f"{type(exc).__name__}: {exc}")
            self.store.log_event("batch_failed", f"batch {batch_id} attempt {attempt}: {exc}", batch=batch_id)
            log.exception("batch %d failed (attempt %d of %d)", batch_id, attempt, MAX_ATTEMPTS)
            if final:
                log.error("batch %d set aside as failed; its examples stay in the database", batch_id)
        finally:
            self.set_activity("idle")

    def _train_batch(self, batch_id: int) -> None:
        cfg = self.config
        t0 = time.perf_counter()
        examples = self.store.batch_examples(batch_id)
        parent = self.store.current_checkpoint()
        parent_state, parent_memory = None, None
        if parent:
            parent_config, parent_state, parent_memory = self.server.adapter_state(parent)
            wanted = lora.peft_config(cfg.lora, lora.n_layers(self.model))
            if (parent_config.r != wanted.r or set(parent_config.target_modules) != set(wanted.target_modules)
                    or parent_config.layers_to_transform != wanted.layers_to_transform):
                log.warning("lora settings changed since %s: this batch starts a fresh adapter", parent)
                parent_state = None
        # Replay: earlier examples of this lineage, drawn afresh every epoch from a pool
        # of at most REPLAY_POOL times the per-epoch count.
        replay = self.store.lineage_examples(parent, exclude_batch=batch_id) if cfg.training.replay else []
        rng = random.Random(cfg.training.seed + batch_id)
        replay = rng.sample(replay, min(len(replay), REPLAY_POOL * cfg.training.replay))
        encoded = [encode(e, self.tokenizer, cfg.training.max_seq_len) for e in examples]
        replayed = [encode(e, self.tokenizer, cfg.training.max_seq_len) for e in replay]
        anchor_set = self.anchor_set  # prepared before training, so its cost is not in the curve
        torch.manual_seed(cfg.training.seed)  # a fresh adapter's init, then the steps: reproducible
        lora.start_training(self.model, cfg.lora, parent_state)
        log.info("batch %d: training on %d examples (+%d per epoch replayed from %d earlier) from %s",
                 batch_id, len(examples), min(cfg.training.replay, len(replay)), len(replay),
                 parent or "the base model")
        result = train(self.model, encoded, cfg.training, pad_id=self.tokenizer.pad_token_id,
                       device=self.device, callback=_Steps(self, batch_id, cfg.training.max_steps),
                       replay=replayed)
        self.set_activity(f"evaluating batch {batch_id}")
        memory = self._memory(parent_memory, examples)
        def route(chat):
            if memory is None or memory.admits(self.model, self.tokenizer, chat, self.device):
                return lora.TRAIN
            return None

        metrics = evaluate(self.model, self.tokenizer, self.device, examples, anchor_set, route,
                           cfg.training.max_seq_len, cfg.evaluation.anchor_max_tokens)
        metrics.update(n_examples=len(examples),
                       finetune_loss=result.losses[-1] if result.losses else None, steps=len(result.losses),
                       train_seconds=round(result.seconds, 2), trained_tokens=result.tokens,
                       eval_seconds=round(time.perf_counter() - t0 - result.seconds, 2))
        status = self._verdict(metrics)
        self._commit(batch_id, parent, examples, metrics, status, memory)
        log.info("batch %d done in %.1fs: %s", batch_id, time.perf_counter() - t0,
                 ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))

    def _memory(self, parent_memory, examples) -> gate.KeyMemory | None:
        """The parent's key memory extended with this batch's questions (None: routing off)."""
        r = self.config.routing
        if not r.enabled:
            return None
        questions = [gate.question_text(c[:-1]) if c else e["text"] for e in examples for c in [to_chat(e)]]
        if parent_memory is None or parent_memory.layer != r.layer:
            parent_memory = gate.KeyMemory.create(self.model, self.tokenizer, r.layer, self.device)
        memory = parent_memory.extend(self.model, self.tokenizer, questions, self.device)
        return memory.with_rule(r.rule, r.lexical_threshold, r.margin)

    def _verdict(self, metrics: dict) -> str:
        ev = self.config.evaluation
        delta = metrics.get("anchor_ce_delta")
        if ev.rollback_mode == "off" or delta is None or delta <= ev.catastrophic_delta:
            return "stable"
        return "risky" if ev.rollback_mode == "warn" else "rolled_back"

    def _commit(self, batch_id, parent, examples, metrics, status, memory) -> None:
        state = lora.adapter_state(self.model, lora.TRAIN)
        config = self.model.peft_config[lora.TRAIN]
        check_state(state, config.r, f"batch {batch_id}'s adapter")  # a NaN from the last step never serves
        seq = self.store.next_checkpoint_seq()
        ckpt_id = new_id(seq)
        while (self.home.checkpoints / ckpt_id).exists() or (self.home.checkpoints / ".orphaned" / ckpt_id).exists():
            seq += 1
            ckpt_id = new_id(seq)
        meta = {"id": ckpt_id, "parent": parent, "batch_id": batch_id, "base_model": self.base_name,
                "created_at": utcnow(), "n_examples": len(examples), "status": status,
                "config": {"lora": vars(self.config.lora), "training": vars(self.config.training),
                           "routing": vars(self.config.routing)},
                "metrics": metrics,
                "curves": {"finetune_loss": self.store.curve(batch_id, "finetune_loss"),
                           "forgetting_loss": self.store.curve(batch_id, "forgetting_loss")}}
        path = write_checkpoint(self.home, ckpt_id, state, config, meta,
                                memory.to_file() if memory is not None else None,
                                after_weights=lambda: _test_pause(self.home, "checkpoint_write"))
        _test_pause(self.home, "before_commit")
        row = CheckpointRow(id=ckpt_id, seq=seq, parent=parent, batch_id=batch_id, status=status,
                            created_at=meta["created_at"], path=str(path), base_model=self.base_name,
                            metrics=metrics)
        self.store.add_checkpoint(row, make_current=status != "rolled_back")
        lora.add_adapter(self.model, ckpt_id, config, state)
        self.server.remember(ckpt_id, config, memory)
        verb = {"stable": "now serves", "risky": "serves, marked risky",
                "rolled_back": "was rolled back; its parent keeps serving"}[status]
        self.store.log_event("checkpoint", f"{ckpt_id} {verb}", checkpoint=ckpt_id, batch=batch_id)
        self.checkpointed.set()
        log.info("checkpoint %s %s", ckpt_id, verb)


def main_loop(home: Home, once: bool) -> int:
    daemon = Daemon(home, once=once)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: daemon.request_stop())
    return daemon.run()
