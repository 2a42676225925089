"""Noticing files: watchdog events, periodic rescans, and the stable-file rule.

The watchdog callback only records that work exists (sets an Event); the one
daemon worker then scans the folder. Events get lost, so the worker also
rescans on a timer. A file is handed over only once its size and mtime have
held for `stable_seconds`, so a file copied in slowly is read once, whole.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

IGNORED_SUFFIXES = (".tmp", ".part")


def is_ignored(name: str) -> bool:
    """Dotfiles, *.tmp and *.part are being written by someone: leave them be."""
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES)


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
            if is_ignored(name) or name in ("processed", "rejected"):
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
            if now - prev[1] >= self.stable_seconds:
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
