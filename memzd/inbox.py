"""The inbox: from a dropped file to examples committed in SQLite.

A file is streamed line by line (a per-line size cap keeps memory bounded),
each line validated on its own: bad lines go to inbox/rejected/ with their
line number and reason, good ones are committed to the store in chunks, and
only then does the file move to inbox/processed/. A crash before the move
means the file is read again, and its examples, already stored, are skipped
as duplicates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import Home
from .errors import ExampleError
from .examples import parse_example, question_key
from .files import set_aside, unique_path, write_atomic
from .store import Store
from .watch import held_for_writing

log = logging.getLogger("memz.inbox")

CHUNK_LINES = 5000        # examples per transaction: bounds memory on huge files...
CHUNK_BYTES = 8_000_000   # ...and so does this many bytes of example JSON per transaction
LISTED_ERRORS = 10_000    # bad lines listed one by one in <name>.errors.jsonl; the rest are counted
KEPT_ERRORS = 100         # bad lines also kept in IngestResult.line_errors
REASON_CHARS = 500        # a reason quotes at most this much of the line's keys or values


@dataclass
class IngestResult:
    """What became of one dropped file."""

    name: str
    file_id: int | None = None
    accepted: int = 0
    duplicates: int = 0
    gone: int = 0  # of the duplicates, examples forgotten or superseded: they stay out of training
    rejected: int = 0
    reason: str | None = None  # set when the whole file was refused
    interrupted: bool = False  # stopped part-way (the daemon stops): the file stays and is read again
    changed: bool = False  # it grew or changed while it was read: it stays and is read again once stable
    line_errors: list[tuple[int, str]] = field(default_factory=list)  # the first KEPT_ERRORS of them


def reject_whole(home: Home, path: Path, reason: str) -> Path:
    """Move an unusable entry to inbox/rejected/ with a .reason.txt beside it."""
    target = set_aside(path, home.rejected, reason)
    log.warning("rejected %s: %s", path.name, reason)
    return target


def _refusal(path: Path) -> str | None:
    """Why this entry may not be read at all, or None."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return "symbolic link: memz does not follow links out of the inbox; copy the file in instead"
    if stat.S_ISDIR(st.st_mode):
        return "a directory, not a file; drop .jsonl files into inbox/ itself"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_nlink > 1:
        return "hard link to a file elsewhere: memz does not read linked files; copy the file in instead"
    if not path.name.endswith(".jsonl"):
        return "not a .jsonl file; examples go one JSON object per line in a file named *.jsonl"
    if st.st_size == 0:
        return "empty file: no examples in it"
    return None


def _lines(f, cap: int):
    """Yield (line_number, bytes or None if over the cap, ends_with_newline)."""
    number = 0
    while True:
        raw = f.readline(cap + 1)
        if not raw:
            return
        number += 1
        if len(raw) > cap and not raw.endswith(b"\n"):
            while True:  # skip the rest of an oversized line without holding it
                rest = f.readline(1 << 20)
                if not rest or rest.endswith(b"\n"):
                    break
            yield number, None, True
            continue
        yield number, raw, raw.endswith(b"\n")


def _decode(raw: bytes, first: bool) -> str:
    text = raw.decode("utf-8")
    if first and text.startswith("\ufeff"):
        text = text[1:]
    return text.strip()


def read_examples(f, max_line_bytes: int):
    """Stream a binary file of JSONL examples: yield (line number, Example or None,
    error or None, raw bytes or None) for each non-blank line. memzctl add
    checks a file with this before it enters the inbox; the daemon ingests with it."""
    for number, raw, newline in _lines(f, max_line_bytes):
        if raw is None:
            yield number, None, f"line longer than the {max_line_bytes}-byte cap", None
            continue
        try:
            text = _decode(raw, number == 1)
            if not text:
                yield number, None, None, raw  # blank: nothing to store, nothing wrong
                continue
            example = parse_example(json.loads(text))
            example.hash, example.json  # computed (and kept) here: a lone surrogate fails only now
        except UnicodeDecodeError as exc:
            yield number, None, f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}", raw
        except UnicodeEncodeError:  # JSON escapes such as \ud800 decode to text UTF-8 cannot hold
            yield number, None, "invalid Unicode: a lone surrogate escape (\\ud800-\\udfff) in a string", raw
        except json.JSONDecodeError as exc:
            why = "partial last line (no newline at the end)" if not newline else "invalid JSON"
            yield number, None, f"{why}: {exc.msg} at column {exc.colno}", raw
        except RecursionError:
            yield number, None, "invalid JSON: nested too deeply", raw
        except ValueError as exc:  # e.g. an integer of more digits than Python converts
            yield number, None, f"invalid JSON: {exc}", raw
        except ExampleError as exc:
            yield number, None, str(exc), raw
        else:
            yield number, example, None, raw


def ingest_file(path: Path, store: Store, home: Home, max_line_bytes: int = 1_000_000,
                stop=lambda: False, between=lambda: None) -> IngestResult:
    """Read one stable inbox entry into the store and move it out of the inbox.

    Between chunks, `between` runs (the daemon answers questions there) and
    `stop` is checked: a stopped read leaves the file in place, and what was
    stored is skipped as duplicates when it is read again. A file that changed
    while it was read (someone still appends to it) also stays, to be read
    again once it is stable.
    """
    result = IngestResult(name=path.name)
    refusal = _refusal(path)
    if refusal:
        result.reason = refusal
        reject_whole(home, path, refusal)
        return result

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    digest = hashlib.sha256()
    errors = _LineErrors(home, path.name, result)
    with os.fdopen(fd, "rb") as f, errors:
        before = os.fstat(f.fileno())
        result.file_id = store.add_file(path.name, "", before.st_size)
        chunk: list[tuple[int, str, str, str]] = []
        chunk_bytes = 0
        for number, example, error, raw in read_examples(f, max_line_bytes):
            if raw is not None:
                digest.update(raw)
            if error:
                errors.add(number, error)
                continue
            if example is None:
                continue  # a blank line
            row = (number, example.hash, example.kind, example.json, example.user, question_key(example.data))
            chunk.append(row)
            chunk_bytes += len(row[3])
            if len(chunk) >= CHUNK_LINES or chunk_bytes >= CHUNK_BYTES:
                _commit(store, result, chunk)
                chunk, chunk_bytes = [], 0
                between()
                if stop():
                    result.interrupted = True
                    break
        _commit(store, result, chunk)
        after = os.fstat(f.fileno())
    if result.interrupted or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        result.changed = not result.interrupted
        store.finish_file(result.file_id, "interrupted" if result.interrupted else "changed", result.rejected)
        log.info("%s: %s while it was read; it stays in the inbox and is read again (stored lines are "
                 "skipped as duplicates)", path.name, "stopped" if result.interrupted else "changed")
        return result
    status = "processed" if result.accepted + result.duplicates else "rejected"
    store.db["files"].update(result.file_id, {"sha256": digest.hexdigest()})
    store.finish_file(result.file_id, status, result.rejected)
    if status == "processed":
        home.processed.mkdir(parents=True, exist_ok=True)
        moved = unique_path(home.processed / path.name)
        os.rename(path, moved)
        _return_late_lines(moved, after.st_size, home)
    else:
        result.reason = ("no usable line: see the .errors.jsonl beside it" if result.rejected
                         else "no example in it: only blank lines")
        reject_whole(home, path, result.reason)
    log.info("%s: %d new, %d duplicate, %d rejected lines", path.name,
             result.accepted, result.duplicates, result.rejected)
    return result


def _return_late_lines(moved: Path, read_bytes: int, home: Home, settle_seconds: float = 2.0) -> None:
    """Lines appended between the read and the move (`echo ... >> file` at that moment) went
    into the moved file: they go back to the inbox as a file of their own, to be read next."""
    deadline = time.monotonic() + settle_seconds
    while held_for_writing(moved) and time.monotonic() < deadline:
        time.sleep(0.05)  # a writer that opened the file before the move finishes its line
    try:
        with open(moved, "rb") as f:
            f.seek(read_bytes)
            late = f.read()
    except OSError:
        return
    if late:
        back = unique_path(home.inbox / f"{moved.stem}.late{moved.suffix}")
        write_atomic(back, late)
        log.info("%s: %d bytes were appended while it was moved; they are read again as %s",
                 moved.name, len(late), back.name)


def _commit(store: Store, result: IngestResult, chunk: list) -> None:
    if chunk:
        new, dup = store.add_examples(result.file_id, chunk)
        result.accepted += new
        result.duplicates += dup
        if dup:  # (the insert leaves forgotten examples as they were)
            result.gone += store.left_training([row[1] for row in chunk])


class _LineErrors:
    """Bad lines, written to inbox/rejected/<name>.errors.jsonl as they are met.

    Memory and disk stay bounded however many bad lines a file has: the first
    LISTED_ERRORS are listed, the rest only counted in a last line.
    """

    def __init__(self, home: Home, name: str, result: IngestResult):
        self.home, self.name, self.result = home, name, result
        self.out = None

    def add(self, number: int, reason: str) -> None:
        reason = reason if len(reason) <= REASON_CHARS else reason[:REASON_CHARS] + "..."
        self.result.rejected += 1
        if len(self.result.line_errors) < KEPT_ERRORS:
            self.result.line_errors.append((number, reason))
        if self.result.rejected <= LISTED_ERRORS:
            self._write({"file": self.name, "line": number, "reason": reason})

    def _write(self, record: dict) -> None:
        if self.out is None:
            self.home.rejected.mkdir(parents=True, exist_ok=True)
            self.out = open(unique_path(self.home.rejected / f"{self.name}.errors.jsonl"), "w", encoding="utf-8")
        self.out.write(json.dumps(record) + "\n")

    def __enter__(self) -> "_LineErrors":
        return self

    def __exit__(self, *exc) -> None:
        if self.out is None:
            return
        unlisted = self.result.rejected - LISTED_ERRORS
        if unlisted > 0:
            self._write({"file": self.name, "line": None,
                         "reason": f"... and {unlisted} more bad lines, not listed"})
        self.out.close()
