"""The SQLite store: every row memz keeps, and all of its SQL.

Tables: files (what was dropped), examples (content hash unique), batches,
checkpoints (lineage, status, metrics), metrics (per step), events, and a small
key/value `state` (the current checkpoint). Schema changes are numbered,
append-only sqlite-utils migrations; the constructor applies them, so a fresh
and an old database take the same path. WAL and a busy timeout let memzctl
read while the daemon writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import sqlite_utils
from sqlite_utils import Migrations

from .errors import ExampleError, MemzError
from .examples import (answer_of, parse_example, question_key, question_of, restated, same_fact, system_of,
                       without_statements)

migrations = Migrations("memz")


@migrations()
def m001_files_examples(db: sqlite_utils.Database) -> None:
    db["files"].create(
        {"id": int, "name": str, "sha256": str, "size": int, "received_at": str,
         "accepted": int, "duplicates": int, "rejected": int, "status": str},
        pk="id",
    )
    db["examples"].create(
        {"id": int, "hash": str, "kind": str, "data": str, "file_id": int, "line": int,
         "created_at": float, "batch_id": int},
        pk="id",
        foreign_keys=[("file_id", "files", "id")],
    )
    db["examples"].create_index(["hash"], unique=True)
    db["examples"].create_index(["batch_id"])


@migrations()
def m002_batches_checkpoints(db: sqlite_utils.Database) -> None:
    db["batches"].create(
        {"id": int, "status": str, "created_at": str, "finished_at": str, "n_examples": int,
         "checkpoint_id": str, "error": str, "attempts": int},
        pk="id",
    )
    db["checkpoints"].create(
        {"id": str, "seq": int, "parent": str, "batch_id": int, "status": str, "created_at": str,
         "path": str, "base_model": str, "metrics": str},
        pk="id",
    )
    db["metrics"].create(
        {"id": int, "batch_id": int, "step": int, "name": str, "value": float, "at": float},
        pk="id",
    )
    db["metrics"].create_index(["batch_id", "name"])
    db["events"].create(
        {"id": int, "at": str, "kind": str, "message": str, "data": str}, pk="id"
    )
    db["state"].create({"key": str, "value": str}, pk="key")


@migrations()
def m004_users(db: sqlite_utils.Database) -> None:
    """One memory per user: examples, batches and checkpoints carry the user they belong
    to (NULL: shared); the current checkpoint of a user is state `current_checkpoint@NAME`."""
    for table in ("examples", "batches", "checkpoints"):
        db[table].add_column("user", str)
    db["examples"].create_index(["user", "batch_id"])


@migrations()
def m005_forget(db: sqlite_utils.Database) -> None:
    """Forgetting on request: a forgotten example leaves all future training, and a
    'forget' batch (batches.kind) teaches the lineage to stop giving its answer."""
    db["examples"].add_column("forgotten_at", str)
    db["examples"].add_column("forget_batch", int)
    db["batches"].add_column("kind", str)


@migrations()
def m006_question_keys(db: sqlite_utils.Database) -> None:
    """The normalised question an example answers, so that a later answer to the same
    question can supersede an earlier one without reading the lineage."""
    db["examples"].add_column("qkey", str)
    db["examples"].create_index(["qkey", "user"])


@migrations()
def m007_answers(db: sqlite_utils.Database) -> None:
    """Every answer memz gives (or refuses), as simonw/llm logs its responses."""
    db["answers"].create(
        {"id": int, "at": str, "request_id": str, "source": str, "user": str, "prompt": str, "response": str,
         "checkpoint": str, "routed_to": str, "latency_ms": int, "error": str},
        pk="id",
    )
    db["answers"].create_index(["at"])


@migrations()
def m008_answered_as(db: sqlite_utils.Database) -> None:
    """The taught question an answer was given as (routing.answer_as), where it was one."""
    db["answers"].add_column("answered_as", str)


# One example row; read from the inbox it has no batch yet. A duplicate (the same hash) is
# ignored, so that a script may send the same file again, and a forgotten or superseded
# example stays out of training however often it comes back; only one trained into a
# checkpoint that was rolled back (and not forgotten) is taught again: it waits for a batch.
_INSERT_EXAMPLE = (
    "INSERT INTO examples (hash, kind, data, file_id, line, created_at, user, qkey, batch_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(hash) DO UPDATE SET batch_id = NULL, file_id = excluded.file_id, "
    "line = excluded.line, created_at = excluded.created_at "
    "WHERE examples.forgotten_at IS NULL AND examples.batch_id IN "
    "(SELECT batches.id FROM batches JOIN checkpoints ON checkpoints.id = batches.checkpoint_id "
    "WHERE checkpoints.status = 'rolled_back')")


def _asked(question: str, answer: str, asked_in: dict, tagged_as: dict) -> dict:
    """A question taught anew with a later answer: with the system turn it was asked under,
    and the tags of the example that gave the answer."""
    return {"input": question, "output": answer,
            **{k: v for k, v in (("system", system_of(asked_in)), ("tags", tagged_as.get("tags"))) if v}}


def utcnow() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ParentMoved(Exception):
    """A new checkpoint's parent no longer serves (a rollback or a newer checkpoint intervened)."""

    def __init__(self, parent: str | None, current: str | None):
        super().__init__(f"trained from {parent or 'the base model'}, but {current or 'the base model'} "
                         "serves now")
        self.parent, self.current = parent, current


@dataclass
class CheckpointRow:
    """One checkpoint as the store records it."""

    id: str
    seq: int
    parent: str | None
    batch_id: int | None
    status: str
    created_at: str
    path: str
    base_model: str
    metrics: dict
    user: str | None = None  # whose lineage (None: the shared one)

    @classmethod
    def from_row(cls, row: dict) -> "CheckpointRow":
        return cls(**{**row, "metrics": json.loads(row["metrics"] or "{}")})


class Store:
    """All reads and writes of memz.db."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():  # every example is private to its user: 0600 from the start
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False,
                               isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        try:
            self.db.execute("PRAGMA busy_timeout = 30000")
            self._use_wal()
            self.db.execute("PRAGMA synchronous = NORMAL")
            self.db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            conn.close()
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise MemzError(f"{self.path} is not a readable memz database ({exc}); move it aside "
                            "(memz starts a new one) or restore it from a backup") from exc

    def _use_wal(self) -> None:
        """Switch to WAL (kept in the file, so only a new database changes).

        The switch needs an exclusive lock and SQLite does not call the busy
        handler for it, so connections opening a new file together try again.
        """
        for attempt in range(100):
            try:
                self.db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise
                time.sleep(0.05)

    def _migrate(self) -> None:
        """Apply pending migrations, one connection at a time.

        A current schema is only read. Otherwise BEGIN IMMEDIATE takes the write
        lock before anything is checked, so a second process opening a new home at
        the same moment waits (busy_timeout) and then finds nothing left to apply.
        """
        if not migrations.pending(self.db):
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            migrations.apply(self.db)
        except BaseException:
            self.db.conn.rollback()
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.conn.close()

    @contextlib.contextmanager
    def write(self):
        """A write transaction that takes the write lock first (BEGIN IMMEDIATE).

        A plain BEGIN reads under a snapshot and then asks for the lock; if another
        connection wrote meanwhile, SQLite answers "database is locked" at once,
        without waiting on busy_timeout. Taking the lock first makes the second
        writer wait its turn. Nested uses are savepoints.
        """
        if self.db.conn.in_transaction:
            with self.db.atomic():
                yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.conn.rollback()
            raise
        self.db.execute("COMMIT")

    # -- files and examples -------------------------------------------------

    def add_file(self, name: str, sha256: str, size: int) -> int:
        return self.db["files"].insert(
            {"name": name, "sha256": sha256, "size": size, "received_at": utcnow(),
             "accepted": 0, "duplicates": 0, "rejected": 0, "status": "reading"}
        ).last_pk

    def add_examples(self, file_id: int, rows: Iterable[tuple]) -> tuple[int, int]:
        """Insert (line, hash, kind, json[, user[, question key]]) rows in one transaction;
        return (new, duplicates)."""
        now = time.time()
        rows = [tuple(r) + (None,) * (6 - len(r)) for r in rows]
        with self.write():
            before = self.db.execute("SELECT total_changes()").fetchone()[0]
            self.db.conn.executemany(
                _INSERT_EXAMPLE,
                [(h, kind, data, file_id, line, now, user, qkey, None) for line, h, kind, data, user, qkey in rows],
            )
            new = self.db.execute("SELECT total_changes()").fetchone()[0] - before
            self.db.execute(
                "UPDATE files SET accepted = accepted + ?, duplicates = duplicates + ? WHERE id = ?",
                [new, len(rows) - new, file_id],
            )
        return new, len(rows) - new

    def known(self, hashes: list[str]) -> tuple[int, int]:
        """Of these examples, how many the daemon would find already stored (duplicates: an
        example trained only into a rolled-back checkpoint is not one), and how many of those
        left training (forgotten or superseded)."""
        known = gone = 0
        unique = list(dict.fromkeys(hashes))
        for i in range(0, len(unique), 500):
            chunk = unique[i:i + 500]
            row = self.db.execute(
                f"SELECT count(*), total(forgotten_at IS NOT NULL) FROM examples WHERE hash IN "
                f"({','.join('?' * len(chunk))}) AND NOT (forgotten_at IS NULL AND batch_id IN "
                "(SELECT batches.id FROM batches JOIN checkpoints ON checkpoints.id = batches.checkpoint_id "
                "WHERE checkpoints.status = 'rolled_back'))", chunk).fetchone()
            known, gone = known + row[0], gone + int(row[1])
        return known + len(hashes) - len(unique), gone

    def left_training(self, hashes: list[str]) -> int:
        """How many of these examples are stored and out of training (forgotten or superseded)."""
        if not hashes:
            return 0
        return self.db.execute(f"SELECT count(*) FROM examples WHERE forgotten_at IS NOT NULL AND hash IN "
                               f"({','.join('?' * len(hashes))})", hashes).fetchone()[0]

    def finish_file(self, file_id: int, status: str, rejected: int) -> None:
        self.db["files"].update(file_id, {"status": status, "rejected": rejected})

    def file_row(self, file_id: int) -> dict:
        return self.db["files"].get(file_id)

    def job(self, name: str) -> dict | None:
        """What became of a dropped file (an HTTP job): its newest files row, and the
        batches and checkpoints its examples went into."""
        row = self.db.execute("SELECT * FROM files WHERE name = ? ORDER BY id DESC LIMIT 1", [name]).fetchone()
        if row is None:
            return None
        cols = [d[0] for d in self.db.execute("SELECT * FROM files LIMIT 0").description]
        f = dict(zip(cols, row))
        batches = [dict(zip(("id", "status", "checkpoint_id", "error"), r)) for r in self.db.execute(
            "SELECT DISTINCT b.id, b.status, b.checkpoint_id, b.error FROM examples e JOIN batches b "
            "ON b.id = e.batch_id WHERE e.file_id IN (SELECT id FROM files WHERE name = ?) ORDER BY b.id", [name])]
        return {"file": f["name"], "status": f["status"], "accepted": f["accepted"], "duplicates": f["duplicates"],
                "rejected": f["rejected"], "received_at": f["received_at"], "batches": batches}

    def files(self) -> list[dict]:
        return list(self.db["files"].rows_where(order_by="id"))

    def example_count(self) -> int:
        return self.db["examples"].count

    # -- the queue and batches ----------------------------------------------

    _PENDING = ("forgotten_at IS NULL AND (batch_id IS NULL OR batch_id IN "
                "(SELECT id FROM batches WHERE status IN ('pending', 'training')))")

    def queue_depth(self) -> int:
        """Accepted examples that no checkpoint has trained on yet."""
        return self.db.execute(f"SELECT count(*) FROM examples WHERE {self._PENDING}").fetchone()[0]

    def unbatched(self, user: str | None = None) -> tuple[int, float | None]:
        """(count, created_at of the oldest) of one user's examples not yet in a batch."""
        n, oldest = self.db.execute(
            "SELECT count(*), min(created_at) FROM examples WHERE batch_id IS NULL AND user IS ? "
            "AND forgotten_at IS NULL", [user]
        ).fetchone()
        return n, oldest

    def waiting_users(self) -> list[str | None]:
        """The users (None: shared) with examples not yet in a batch, shared first."""
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT user FROM examples WHERE batch_id IS NULL AND forgotten_at IS NULL "
            "ORDER BY user IS NOT NULL, user")]

    def create_batch(self, limit: int | None = None, file_id: int | None = None,
                     user: str | None = None) -> int | None:
        """Put one user's unbatched examples (oldest first) into a new pending batch
        (with `file_id`: that file's, of whichever user comes first)."""
        with self.write():
            if file_id is not None:
                row = self.db.execute("SELECT user FROM examples WHERE batch_id IS NULL AND file_id = ? "
                                      "ORDER BY id LIMIT 1", [file_id]).fetchone()
                if row is None:
                    return None
                user = row[0]
                where, args = "batch_id IS NULL AND forgotten_at IS NULL AND user IS ? AND file_id = ?", [user, file_id]
            else:
                where, args = "batch_id IS NULL AND forgotten_at IS NULL AND user IS ?", [user]
            ids = [r[0] for r in self.db.execute(
                f"SELECT id FROM examples WHERE {where} ORDER BY id LIMIT ?", args + [limit or -1])]
            if not ids:
                return None
            batch_id = self.db["batches"].insert(
                {"status": "pending", "created_at": utcnow(), "n_examples": len(ids), "user": user}
            ).last_pk
            self.db.conn.executemany("UPDATE examples SET batch_id = ? WHERE id = ?",
                                     [(batch_id, i) for i in ids])
        return batch_id

    def pending_batches(self) -> int:
        """How many batches wait to train (not counting one in training)."""
        return self.db.execute("SELECT count(*) FROM batches WHERE status = 'pending'").fetchone()[0]

    def next_batch(self) -> int | None:
        """The oldest batch still to train: pending, or interrupted while training."""
        row = self.db.execute(
            "SELECT id FROM batches WHERE status IN ('pending', 'training') ORDER BY id LIMIT 1"
        ).fetchone()
        return row[0] if row else None

    def batch(self, batch_id: int) -> dict:
        return self.db["batches"].get(batch_id)

    def batch_examples(self, batch_id: int) -> list[dict]:
        """What a batch trains: its examples (none forgotten since), or for a 'forget'
        batch the examples it makes the lineage forget."""
        if (self.batch(batch_id).get("kind") or "learn") == "forget":
            return [json.loads(r[0]) for r in self.db.execute(
                "SELECT data FROM examples WHERE forget_batch = ? ORDER BY id", [batch_id])]
        return [json.loads(r[0]) for r in self.db.execute(
            "SELECT data FROM examples WHERE batch_id = ? AND forgotten_at IS NULL ORDER BY id", [batch_id])]

    # -- forgetting -------------------------------------------------------------

    def find_examples(self, text: str | None = None, example_id: int | None = None,
                      file: str | None = None, tag: str | None = None, user: str | None = None,
                      gone: bool = False) -> list[dict]:
        """Examples (not yet forgotten; with `gone`, only those forgotten or superseded
        already) matching all that is given: text anywhere in the example, its id, the
        name of the file it came in, a tag; within one user's memory."""
        where = ["forgotten_at IS NOT NULL" if gone else "forgotten_at IS NULL", "examples.user IS ?"]
        args: list = [user]
        if text is not None:
            where.append("instr(lower(data), lower(?)) > 0")
            args.append(json.dumps(text, ensure_ascii=False)[1:-1])  # as it is stored, escapes and all
        if example_id is not None:
            where.append("examples.id = ?")
            args.append(example_id)
        if file is not None:  # as dropped, or as given to memzctl add (which names it <stem>-<8 hex>.jsonl)
            where.append("file_id IN (SELECT id FROM files WHERE name = ? OR name GLOB ?)")
            stem = re.sub(r"[][*?]", lambda m: f"[{m.group()}]", Path(file).stem[:150])
            args += [Path(file).name, f"{stem}-{'[0-9a-f]' * 8}.jsonl"]
        if tag is not None:
            where.append("EXISTS (SELECT 1 FROM json_each(examples.data, '$.tags') WHERE value = ?)")
            args.append(tag)
        rows = self.db.execute(
            f"SELECT examples.id, data, batch_id, files.name FROM examples LEFT JOIN files ON files.id = file_id "
            f"WHERE {' AND '.join(where)} ORDER BY examples.id", args).fetchall()
        return [{"id": i, "data": json.loads(d), "batch_id": b, "file": f} for i, d, b, f in rows]

    def supersede(self, batch_id: int, lineage_of: str | None) -> list[dict]:
        """Earlier examples of `lineage_of`'s lineage that a question of this batch answers
        again, differently, and their other phrasings (examples.same_fact): they leave all
        future training (replay) and are returned, so that their keys leave the key memory
        too. An other phrasing's question joins this batch with the new answer (`_reteach`).
        So do the notes and chats this batch says again (`_restate`). An event records each.
        Within the batch, the last answer to a question stands (the order sent: files by
        name, then lines); the earlier ones leave it, never trained."""
        batches = [c.batch_id for c in self.lineage(lineage_of) if c.batch_id is not None]
        with self.write():
            self._supersede_within(batch_id)
            said = self._restate(batch_id, batches)
        if not batches:
            return said
        marks = ",".join("?" * len(batches))
        with self.write():
            rows = self.db.execute(
                f"SELECT old.id, old.data, new.id, new.data, new.user FROM examples new JOIN examples old "
                f"ON old.qkey = new.qkey AND old.user IS new.user AND old.hash != new.hash "
                f"WHERE new.batch_id = ? AND new.qkey IS NOT NULL AND old.forgotten_at IS NULL "
                f"AND old.batch_id IN ({marks})", [batch_id, *batches]).fetchall()
            old: dict[int, tuple[dict, int]] = {}  # superseded example -> (its data, the superseding example)
            changes = []  # (old data, new data, new id): what this batch answers differently
            for old_id, data, new_id, new_data, _ in rows:
                if old_id not in old:
                    old[old_id] = (json.loads(data), new_id)
                    changes.append((old[old_id][0], json.loads(new_data), new_id))
            siblings = self._same_facts(batches, rows[0][4], old, changes) if rows else {}
            old.update(siblings)
            retaught = self._reteach(batch_id, siblings, {new_id: new for _, new, new_id in changes})
            if old:
                self.db.execute(f"UPDATE examples SET forgotten_at = ? WHERE id IN ({','.join('?' * len(old))})",
                                [utcnow(), *old])
                for old_id, (_, new_id) in old.items():
                    how = ""
                    if old_id in siblings:
                        how = ": the same fact, asked another way" + (
                            f"; its question is taught with the new answer as #{retaught[old_id]}"
                            if old_id in retaught else "")
                    self.log_event("supersede", f"example #{old_id} is superseded by #{new_id} (batch {batch_id}){how}",
                                   example=old_id, by=new_id, batch=batch_id)
        return [data for data, _ in old.values()] + said

    def _restate(self, batch_id: int, batches: list[int]) -> list[dict]:
        """Examples of the lineage (or earlier in this batch) that one of this batch says
        again with another value, where either states it in a note or a chat
        (examples.restated: "Actually, my sister lives in Madrid now."; a question and
        answer says what its answer says): they leave all future training and are
        returned. This batch teaches the earlier question ("My sister lives where?", as
        memz wrote it about the earlier statement) with the new answer, so that the adapter
        unlearns the old one, and what else the earlier example states, without it
        (examples.without_statements), each from that example's file and line. An event
        names each statement said again."""
        news = [(i, json.loads(d), u, k) for i, d, u, k in self.db.execute(
            "SELECT id, data, user, kind FROM examples WHERE batch_id = ? AND forgotten_at IS NULL ORDER BY id",
            [batch_id])]
        if not news:
            return []
        # two questions and answers are the question key's (below); a statement is a note's or a chat's
        shapes = "" if any(k in ("messages", "text") for *_, k in news) else "AND kind IN ('messages', 'text') "
        found: dict[int, tuple[dict, list]] = {}  # old id -> (its data, [(Restated, the new example)])
        marks = ",".join("?" * (len(batches) + 1))
        for old_id, data, user in self.db.execute(
                f"SELECT id, data, user FROM examples WHERE batch_id IN ({marks}) AND forgotten_at IS NULL "
                f"{shapes}ORDER BY id", [*batches, batch_id]).fetchall():
            old = json.loads(data)
            for new_id, new, new_user, _ in news:
                if new_id > old_id and new_user == user:
                    again = [(r, new_id, new) for r in restated(old, new)]
                    if again:
                        found.setdefault(old_id, (old, []))[1].extend(again)
        for old_id, (old, again) in found.items():
            rest = without_statements(old, {(r.statement, r.clause) for r, _, _ in again})
            copy = self._insert_copy(rest, old_id, batch_id) if rest else None
            self.db.execute("UPDATE examples SET forgotten_at = ? WHERE id = ?", [utcnow(), old_id])
            for n, (r, new_id, new) in enumerate(again):
                taught = self._insert_copy(_asked(r.question, r.answer, old, new), old_id, batch_id)
                self.log_event("supersede", f"example #{old_id} is superseded by #{new_id} (batch {batch_id}): "
                               f"{r.clause if r.clause != r.statement else r.statement!r} "
                               f"{'is taken back by' if r.taken_back else 'is said again as'} {r.now!r}"
                               + (f"; {r.question!r} is taught with the new answer as #{taught}" if taught else "")
                               + (f"; the rest of it is taught as #{copy}" if copy and n == 0 else ""),
                               example=old_id, by=new_id, batch=batch_id)
        return [old for old, _ in found.values()]

    def _insert_copy(self, data: dict, like: int, batch_id: int) -> int | None:
        """`data` as an example of this batch, from example `like`'s file and line; its id,
        or None where it is not a valid example or is stored already."""
        try:
            example = parse_example(data)
        except ExampleError:
            return None
        file_id, line = self.db.execute("SELECT file_id, line FROM examples WHERE id = ?", [like]).fetchone()
        cursor = self.db.execute(_INSERT_EXAMPLE, [example.hash, example.kind, example.json, file_id, line,
                                                   time.time(), example.user, question_key(example.data), batch_id])
        return cursor.lastrowid if cursor.rowcount else None

    def _supersede_within(self, batch_id: int) -> None:
        """Examples of this batch that a later example of it answers differently (the same
        question, the same user) leave it; an event names the one that stands."""
        rows = self.db.execute(
            "SELECT old.id, max(new.id) FROM examples new JOIN examples old ON old.qkey = new.qkey "
            "AND old.user IS new.user AND old.id < new.id WHERE new.batch_id = ? AND old.batch_id = ? "
            "AND new.qkey IS NOT NULL AND old.forgotten_at IS NULL AND new.forgotten_at IS NULL "
            "GROUP BY old.id", [batch_id, batch_id]).fetchall()
        if not rows:
            return
        self.db.execute(f"UPDATE examples SET forgotten_at = ? WHERE id IN ({','.join('?' * len(rows))})",
                        [utcnow(), *(old_id for old_id, _ in rows)])
        for old_id, new_id in rows:
            self.log_event("supersede", f"example #{old_id} is superseded by #{new_id} (batch {batch_id}): "
                           "a later answer to the same question in the same batch", example=old_id, by=new_id,
                           batch=batch_id)

    def _reteach(self, batch_id: int, siblings: dict[int, tuple[dict, int]], news: dict[int, dict]) -> dict[int, int]:
        """The question of each other phrasing of a changed fact, with the new answer, as an
        example of this batch (from the new example's file and line, with its tags): "What
        did Orla name her cat?" was answered Biscuit; once "What is Orla's cat called?" says
        Pepper, it is taught "Orla's cat is called Pepper." too, rather than left to carry
        over. Returns {sibling id: the new example's id} (none where that example exists)."""
        out = {}
        for old_id, (other, new_id) in siblings.items():
            taught = self._insert_copy(_asked(question_of(other), answer_of(news[new_id]), other, news[new_id]),
                                       new_id, batch_id)
            if taught:
                out[old_id] = taught
        return out

    def _same_facts(self, batches: list[int], user: str | None, old: dict, changes: list) -> dict:
        """Other phrasings of the facts this batch changed (examples.same_fact): an earlier
        question of the user's that is not asked again but gives the old value about the same thing."""
        marks = ",".join("?" * len(batches))
        candidates = self.db.execute(
            f"SELECT id, data FROM examples WHERE batch_id IN ({marks}) AND qkey IS NOT NULL "
            f"AND forgotten_at IS NULL AND user IS ?", [*batches, user]).fetchall()
        found = {}
        for other_id, data in candidates:
            if other_id in old:
                continue
            other = json.loads(data)
            for was, now, new_id in changes:
                if same_fact(was, now, other):
                    found[other_id] = (other, new_id)
                    break
        return found

    def forget(self, ids: list[int], why: str, user: str | None = None) -> int | None:
        """Take examples out of all future training; those already trained go into the
        user's pending 'forget' batch (returned; made if none waits) that makes the lineage
        stop giving their answers."""
        with self.write():
            marks = ",".join("?" * len(ids))
            trained = [r[0] for r in self.db.execute(
                f"SELECT id FROM examples WHERE id IN ({marks}) AND batch_id IN "
                "(SELECT id FROM batches WHERE status = 'done')", ids)]
            batch_id = None
            if trained:  # one forget batch: a forget asked for before the last one trained joins it
                waiting = self.db.execute("SELECT id, n_examples FROM batches WHERE status = 'pending' AND "
                                          "kind = 'forget' AND user IS ? ORDER BY id LIMIT 1", [user]).fetchone()
                if waiting:
                    batch_id = waiting[0]
                    self.db["batches"].update(batch_id, {"n_examples": waiting[1] + len(trained)})
                else:
                    batch_id = self.db["batches"].insert(
                        {"status": "pending", "created_at": utcnow(), "n_examples": len(trained), "user": user,
                         "kind": "forget"}).last_pk
                self.db.execute(f"UPDATE examples SET forget_batch = ? WHERE id IN ({','.join('?' * len(trained))})",
                                [batch_id, *trained])
            self.db.execute(f"UPDATE examples SET forgotten_at = ? WHERE id IN ({marks})", [utcnow(), *ids])
            self.log_event("forget", why, examples=ids, batch=batch_id, user=user)
        return batch_id

    def start_batch(self, batch_id: int) -> int:
        """Mark a batch training (a retry starts its curves afresh); returns the attempt number."""
        with self.write():
            attempts = (self.batch(batch_id)["attempts"] or 0) + 1
            self.db["batches"].update(batch_id, {"status": "training", "attempts": attempts, "error": None})
            self.db.execute("DELETE FROM metrics WHERE batch_id = ?", [batch_id])
        return attempts

    def set_batch_status(self, batch_id: int, status: str, error: str | None = None,
                         attempts: int | None = None) -> None:
        """Set a batch's status; `attempts` rewrites the count (a failure that was not the batch's)."""
        changes = {"status": status, "error": error, "finished_at": utcnow()}
        if attempts is not None:
            changes["attempts"] = attempts
        self.db["batches"].update(batch_id, changes)

    def failed_batches(self) -> list[dict]:
        return list(self.db["batches"].rows_where("status = 'failed'", order_by="id"))

    def replay_sample(self, checkpoint_id: str | None, n: int, seed: int,
                      exclude_batch: int | None = None, stop_at: set[str] = frozenset()) -> list[dict]:
        """A seeded sample of at most `n` examples trained into `checkpoint_id` and its
        ancestors up to (not including) the first in `stop_at` (for replay). Only the
        sample leaves SQLite: the cost does not grow with the lineage. The order is a
        fixed hash of (id, seed): the same seed draws the same sample."""
        chain = []
        for c in self.lineage(checkpoint_id):
            if c.id in stop_at:
                break
            chain.append(c)
        batch_ids = [c.batch_id for c in chain if c.batch_id not in (None, exclude_batch)]
        if not batch_ids or n <= 0:
            return []
        marks = ",".join("?" * len(batch_ids))
        return [json.loads(r[0]) for r in self.db.execute(
            f"SELECT data FROM examples WHERE batch_id IN ({marks}) AND forgotten_at IS NULL "
            "ORDER BY ((id + ?) * 2654435761) % 4294967296 LIMIT ?", [*batch_ids, seed, n])]

    def held(self, checkpoint_id: str | None, batch_id: int) -> list[dict]:
        """Every example that `batch_id` and the batches of `checkpoint_id`'s lineage
        trained and that is neither forgotten nor superseded, oldest first."""
        batch_ids = [batch_id, *(c.batch_id for c in self.lineage(checkpoint_id) if c.batch_id is not None)]
        marks = ",".join("?" * len(batch_ids))
        return [json.loads(r[0]) for r in self.db.execute(
            f"SELECT data FROM examples WHERE batch_id IN ({marks}) AND forgotten_at IS NULL ORDER BY id",
            batch_ids)]

    # -- metrics --------------------------------------------------------------

    def add_metric(self, batch_id: int, step: int, name: str, value: float) -> None:
        self.db["metrics"].insert({"batch_id": batch_id, "step": step, "name": name,
                                   "value": float(value), "at": time.time()})

    def curve(self, batch_id: int, name: str) -> list[float]:
        return [r[0] for r in self.db.execute(
            "SELECT value FROM metrics WHERE batch_id = ? AND name = ? ORDER BY step, id",
            [batch_id, name])]

    # -- checkpoints ----------------------------------------------------------

    def next_checkpoint_seq(self) -> int:
        return (self.db.execute("SELECT max(seq) FROM checkpoints").fetchone()[0] or 0) + 1

    def add_checkpoint(self, row: CheckpointRow, make_current: bool) -> None:
        """Record a checkpoint already renamed into place, and finish its batch, atomically.

        With `make_current`, the checkpoint becomes current only if its parent
        still is (checked inside the transaction): if a rollback or another
        checkpoint intervened while it trained, ParentMoved is raised and
        nothing is recorded.
        """
        with self.write():
            if make_current and self.current_checkpoint(row.user) != row.parent:
                raise ParentMoved(row.parent, self.current_checkpoint(row.user))
            self.db["checkpoints"].insert({**row.__dict__, "metrics": json.dumps(row.metrics)})
            if row.batch_id is not None:
                self.db["batches"].update(row.batch_id, {"status": "done", "checkpoint_id": row.id,
                                                         "finished_at": utcnow()})
            if make_current:
                self._set_state(_current_key(row.user), row.id)

    def checkpoint(self, checkpoint_id: str) -> CheckpointRow | None:
        row = self.db.execute("SELECT * FROM checkpoints WHERE id = ?", [checkpoint_id]).fetchone()
        if row is None:
            return None
        cols = [d[0] for d in self.db.execute("SELECT * FROM checkpoints LIMIT 0").description]
        return CheckpointRow.from_row(dict(zip(cols, row)))

    def checkpoints(self, user: str | None = None, every_user: bool = True) -> list[CheckpointRow]:
        """Checkpoints, newest first: all of them, or (every_user=False) one user's lineages."""
        if every_user:
            rows = self.db["checkpoints"].rows_where(order_by="seq desc")
        else:
            rows = self.db["checkpoints"].rows_where("user IS ?", [user], order_by="seq desc")
        return [CheckpointRow.from_row(r) for r in rows]

    def users(self) -> list[str]:
        """Users with a memory of their own."""
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT user FROM examples WHERE user IS NOT NULL ORDER BY user")]

    def lineage(self, checkpoint_id: str | None) -> list[CheckpointRow]:
        """The checkpoint and its ancestors, newest first (one query)."""
        if not checkpoint_id:
            return []
        rows = self.db.execute(
            "WITH RECURSIVE chain(id, depth) AS ("
            " SELECT id, 0 FROM checkpoints WHERE id = ?"
            " UNION SELECT c.parent, chain.depth + 1 FROM checkpoints c JOIN chain ON c.id = chain.id"
            "  WHERE c.parent IS NOT NULL AND chain.depth < 100000)"
            " SELECT c.* FROM chain JOIN checkpoints c ON c.id = chain.id ORDER BY chain.depth",
            [checkpoint_id])
        cols = [d[0] for d in rows.description]
        chain, seen = [], set()
        for values in rows.fetchall():
            row = CheckpointRow.from_row(dict(zip(cols, values)))
            if row.id in seen:  # a loop in a hand-edited database
                break
            seen.add(row.id)
            chain.append(row)
        return chain

    def set_checkpoint_status(self, checkpoint_id: str, status: str) -> None:
        self.db["checkpoints"].update(checkpoint_id, {"status": status})

    def update_checkpoint_metrics(self, checkpoint_id: str, metrics: dict) -> None:
        self.db["checkpoints"].update(checkpoint_id, {"metrics": json.dumps(metrics)})

    def current_checkpoint(self, user: str | None = None) -> str | None:
        """The checkpoint that serves (a user's, or the shared one); None: the base model."""
        return self._get_state(_current_key(user))

    def set_current(self, checkpoint_id: str | None, user: str | None = None) -> None:
        with self.write():
            self._set_state(_current_key(user), checkpoint_id)

    def roll_back(self, current: str | None, target: str | None, why: str, user: str | None = None) -> None:
        """Serve `target` (None: the base model) instead of `current` in `user`'s lineage,
        in one transaction: `current` is marked rolled_back, a rolled-back `target`
        stable again, and an event says why."""
        with self.write():
            if current and current != target and self.checkpoint(current):
                self.set_checkpoint_status(current, "rolled_back")
            if target and self.checkpoint(target).status == "rolled_back":
                self.set_checkpoint_status(target, "stable")
            self.set_current(target, user)
            self.log_event("rollback", why, checkpoint=current, user=user)

    # -- the answer log -----------------------------------------------------------

    def log_answer(self, request_id: str, source: str, messages: list[dict], response: str | None,
                   checkpoint: str | None, routed_to: str | None, latency_ms: int | None,
                   error: str | None = None, user: str | None = None, answered_as: str | None = None) -> None:
        self.db["answers"].insert({"at": utcnow(), "request_id": request_id, "source": source, "user": user,
                                   "prompt": json.dumps(messages, ensure_ascii=False), "response": response,
                                   "checkpoint": checkpoint, "routed_to": routed_to, "answered_as": answered_as,
                                   "latency_ms": latency_ms, "error": error})

    def answers(self, limit: int = 10, user: str | None = None) -> list[dict]:
        """The newest answers first (with `user`: only those asked as that user)."""
        where, args = ("user = ?", [user]) if user is not None else (None, [])
        rows = list(self.db["answers"].rows_where(where, args, order_by="id desc", limit=limit))
        for r in rows:
            r["prompt"] = json.loads(r["prompt"] or "[]")
        return rows

    # -- events and state -----------------------------------------------------

    def log_event(self, kind: str, message: str, **data: Any) -> None:
        self.db["events"].insert({"at": utcnow(), "kind": kind, "message": message,
                                  "data": json.dumps(data, default=str)})

    def events(self, limit: int = 20, user: str | None = None, every_user: bool = True) -> list[dict]:
        """The newest events; with every_user False, only those of `user`'s lineage (None: the
        shared one) and those of no lineage (files read, recoveries): an event names its user,
        or a batch whose user it is."""
        if every_user:
            return list(self.db["events"].rows_where(order_by="id desc", limit=limit))
        return list(self.db["events"].rows_where(
            "CASE WHEN json_type(data, '$.user') IS NOT NULL THEN json_extract(data, '$.user') IS ? "
            "WHEN json_type(data, '$.batch') IS NOT NULL THEN "
            "(SELECT user FROM batches WHERE batches.id = json_extract(events.data, '$.batch')) IS ? ELSE 1 END",
            [user, user], order_by="id desc", limit=limit))

    def get_json(self, key: str):
        value = self._get_state(key)
        return json.loads(value) if value else None

    def set_json(self, key: str, value) -> None:
        self._set_state(key, json.dumps(value))

    def last_update(self, user: str | None = None) -> str | None:
        row = self.db.execute("SELECT max(created_at) FROM checkpoints WHERE user IS ?", [user]).fetchone()
        return row[0]

    def _get_state(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM state WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def _set_state(self, key: str, value: str | None) -> None:
        self.db["state"].upsert({"key": key, "value": value}, pk="key")


def _current_key(user: str | None) -> str:
    return "current_checkpoint" if user is None else f"current_checkpoint@{user}"
