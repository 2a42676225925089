"""Noticing files: watchdog events, periodic rescans, and the stable-file rule.

The watchdog callback only records that work exists (sets an Event); the one
daemon worker then scans the folder. Events get lost, so the worker also
rescans on a timer. A file is handed over only once its size and mtime have
held for `stable_seconds` and no process holds it open for writing, so a
file copied in slowly, or appended to by a writer that keeps it open, is read
once, whole.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from .files import waiting_file


def _not_stop_noise(record: logging.LogRecord) -> bool:
    """watchdog 7's inotify emitter logs an ERROR when it reads once more while being
    stopped, which every clean stop of memzd does: not an error, and not worth a user's look."""
    return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_not_stop_noise)


class _Wake(FileSystemEventHandler):
    def __init__(self, event: threading.Event):
        self.event = event

    def on_any_event(self, event) -> None:
        self.event.set()


class Watcher:
    """Sets `wake` whenever something changes in any of the folders."""

    def __init__(self, folders: list[Path]):
        self.wake = threading.Event()
        self._observer = Observer()
        for folder in folders:
            self._observer.schedule(_Wake(self.wake), str(folder), recursive=False)

    def start(self) -> None:
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)


def held_for_writing(path: Path) -> bool:
    """Does a process of ours hold `path` open for writing? (Linux, through /proc; elsewhere
    False.) A writer that keeps a file open and pauses between lines is not finished."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return False
    try:
        st = path.stat()
    except OSError:
        return False
    target = (st.st_dev, st.st_ino)
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        fds = proc / pid / "fd"
        try:
            names = os.listdir(fds)
        except OSError:  # gone, or another user's
            continue
        for fd in names:
            try:
                fst = os.stat(fds / fd)
                if (fst.st_dev, fst.st_ino) != target:
                    continue
                flags = int((proc / pid / "fdinfo" / fd).read_text().split("flags:")[1].split()[0], 8)
            except (OSError, IndexError, ValueError):
                continue
            if flags & (os.O_WRONLY | os.O_RDWR):
                return True
    return False


class StableFiles:
    """Tracks entries until their (size, mtime) has held for `stable_seconds`."""

    def __init__(self, stable_seconds: float, clock=time.monotonic):
        self.stable_seconds = stable_seconds
        self.clock = clock
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}

    def ready(self, folder: Path) -> list[Path]:
        """Entries of `folder` (not ignored, not sub-folders we own) that are stable now."""
        now = self.clock()
        ready, present = [], set()
        try:
            entries = sorted(folder.iterdir())
        except FileNotFoundError:
            return []
        for path in entries:
            name = path.name
            if not waiting_file(name):
                continue
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            present.add(name)
            sig = (st.st_size, st.st_mtime_ns)
            prev = self._seen.get(name)
            if prev is None or prev[0] != sig:
                self._seen[name] = (sig, now)
                if self.stable_seconds > 0:
                    continue
                prev = self._seen[name]
            if now - prev[1] >= self.stable_seconds and not held_for_writing(path):
                ready.append(path)
        for name in list(self._seen):
            if name not in present:
                del self._seen[name]
        return ready

    def forget(self, path: Path) -> None:
        self._seen.pop(path.name, None)

    def waiting(self) -> bool:
        """True while some entry is still settling (so the worker should look again soon)."""
        return bool(self._seen)
