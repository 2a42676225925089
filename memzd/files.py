"""Files memz writes for others to read: one atomic write, one "set aside with a reason".

Everything a reader may see (a response, a meta.json, a cached reference, a
file handed to the inbox) is written to a dotfile beside its target, fsynced,
renamed into place, and the folder fsynced: a reader sees the old file or the
new one, never half of one, and a crash or power cut keeps the rename. An
entry that cannot be used is moved into a folder of its own with a
`<name>.reason.txt` beside it. Imports no torch: the CLI uses this too.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

NAME_BYTES = 200  # longest name memz gives a file it creates (most file systems allow 255)
IGNORED_SUFFIXES = (".tmp", ".part")
OWN_FOLDERS = ("processed", "rejected")  # inbox/ and requests/ folders memz keeps its own files in


def waiting_file(name: str) -> bool:
    """Is an entry of inbox/ or requests/ of this name one memzd should read? Dotfiles,
    *.tmp and *.part are being written by someone (left be); memz's own folders are not."""
    return not (name.startswith(".") or name.endswith(IGNORED_SUFFIXES) or name in OWN_FOLDERS)


def unread(folder: Path) -> int:
    """How many entries of `folder` wait to be read."""
    try:
        return sum(waiting_file(p.name) for p in folder.iterdir())
    except FileNotFoundError:
        return 0


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str, mode: int | None = None) -> None:
    """Write `data` to `path` whole or not at all."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = path.with_name(f".{path.name[:NAME_BYTES]}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, payload, indent: int | None = None) -> None:
    """JSON, atomically. Text that UTF-8 cannot hold (a lone surrogate from a request)
    is \\u-escaped rather than refused."""
    try:
        data = json.dumps(payload, ensure_ascii=False, indent=indent, default=str).encode("utf-8")
    except UnicodeEncodeError:
        data = json.dumps(payload, indent=indent, default=str).encode("ascii")
    write_atomic(path, data)


def safe_name(name: str, limit: int = NAME_BYTES) -> str:
    """`name` cut to a length every file system takes (bytes, not characters), keeping its end."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return name
    return raw[-limit:].decode("utf-8", "ignore").lstrip(".") or "file"


def unique_path(path: Path) -> Path:
    """`path`, or a free name beside it (name.<time>-<n>.ext) if it is taken."""
    path = path.with_name(safe_name(path.name))
    if not path.exists() and not path.is_symlink():
        return path
    stem, dot, ext = path.name.partition(".")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for n in range(1, 100000):
        candidate = path.with_name(safe_name(f"{stem}.{stamp}-{n}{dot}{ext}"))
        if not candidate.exists() and not candidate.is_symlink():
            return candidate
    raise FileExistsError(f"no free name for {path}")


def set_aside(path: Path, folder: Path, reason: str, name: str | None = None) -> Path:
    """Move `path` into `folder` under a free name (its own, or `name`), with
    `<name>.reason.txt` saying why.

    The move comes first: if the reason cannot be written (disk full), the
    entry is still out of the way and the reason is in the log.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = unique_path(folder / (name or path.name))
    os.rename(path, target)
    write_atomic(target.with_name(target.name + ".reason.txt"), (reason or "no reason given") + "\n")
    return target
