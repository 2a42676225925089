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
from .examples import parse_example
from .store import Store

log = logging.getLogger("memz.inbox")

CHUNK_LINES = 5000  # examples per transaction: bounds memory on huge files


@dataclass
class IngestResult:
    """What became of one dropped file."""

    name: str
    file_id: int | None = None
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    reason: str | None = None  # set when the whole file was refused
    line_errors: list[tuple[int, str]] = field(default_factory=list)


def _unique(path: Path) -> Path:
    if not path.exists() and not path.is_symlink():
        return path
    stem, suffix = path.name.split(".", 1)[0], "." + path.name.split(".", 1)[1] if "." in path.name else ""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for n in range(1, 100000):
        candidate = path.with_name(f"{stem}.{stamp}-{n}{suffix}")
        if not candidate.exists() and not candidate.is_symlink():
            return candidate
    raise RuntimeError(f"no free name for {path}")


def reject_whole(home: Home, path: Path, reason: str) -> Path:
    """Move an unusable entry to inbox/rejected/ with a .reason.txt beside it."""
    home.rejected.mkdir(parents=True, exist_ok=True)
    target = _unique(home.rejected / path.name)
    os.rename(path, target)
    (target.parent / (target.name + ".reason.txt")).write_text(reason + "\n", encoding="utf-8")
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


def ingest_file(path: Path, store: Store, home: Home, max_line_bytes: int = 1_000_000) -> IngestResult:
    """Read one stable inbox entry into the store and move it out of the inbox."""
    result = IngestResult(name=path.name)
    refusal = _refusal(path)
    if refusal:
        result.reason = refusal
        reject_whole(home, path, refusal)
        return result

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        result.file_id = store.add_file(path.name, "", os.fstat(f.fileno()).st_size)
        chunk: list[tuple[int, str, str, str]] = []
        for number, raw, newline in _lines(f, max_line_bytes):
            if raw is None:
                result.line_errors.append((number, f"line longer than the {max_line_bytes}-byte cap"))
                continue
            digest.update(raw)
            try:
                text = _decode(raw, number == 1)
                if not text:
                    continue
                example = parse_example(json.loads(text))
            except UnicodeDecodeError as exc:
                result.line_errors.append((number, f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}"))
                continue
            except json.JSONDecodeError as exc:
                why = "partial last line (no newline at the end)" if not newline else "invalid JSON"
                result.line_errors.append((number, f"{why}: {exc.msg} at column {exc.colno}"))
                continue
            except ExampleError as exc:
                result.line_errors.append((number, str(exc)))
                continue
            chunk.append((number, example.hash, example.kind, example.json))
            if len(chunk) >= CHUNK_LINES:
                _commit(store, result, chunk)
                chunk = []
        _commit(store, result, chunk)
    result.rejected = len(result.line_errors)
    if result.line_errors:
        _write_line_errors(home, path.name, result.line_errors)
    status = "processed" if result.accepted + result.duplicates else "rejected"
    store.db["files"].update(result.file_id, {"sha256": digest.hexdigest()})
    store.finish_file(result.file_id, status, result.rejected)
    if status == "processed":
        home.processed.mkdir(parents=True, exist_ok=True)
        os.rename(path, _unique(home.processed / path.name))
    else:
        result.reason = "no usable line: see the .errors.jsonl beside it"
        reject_whole(home, path, result.reason)
    log.info("%s: %d new, %d duplicate, %d rejected lines", path.name,
             result.accepted, result.duplicates, result.rejected)
    return result


def _commit(store: Store, result: IngestResult, chunk: list) -> None:
    if chunk:
        new, dup = store.add_examples(result.file_id, chunk)
        result.accepted += new
        result.duplicates += dup


def _write_line_errors(home: Home, name: str, errors: list[tuple[int, str]]) -> None:
    home.rejected.mkdir(parents=True, exist_ok=True)
    target = _unique(home.rejected / f"{name}.errors.jsonl")
    with open(target, "w", encoding="utf-8") as out:
        for number, reason in errors:
            out.write(json.dumps({"file": name, "line": number, "reason": reason}) + "\n")
