"""The durable journal: every received MQTT message, committed before it is acknowledged.

One SQLite file (WAL) holds the journal, the latest state snapshot and journal counters. Messages
are stored raw (topic, payload, receive time) and decoded again on replay, so a replay runs the
very code path live ingest ran, duplicates and rejections included.

Durability: with `journal_sync = "normal"` (the default) a commit survives the twin's process
being killed at any point; `"full"` also survives a power cut, at the cost of an fsync per commit.

Size bound: rows covered by the snapshot (and, later, by every consumer's cursor) are deleted.
When more than `max_rows` remain, the oldest are dropped and counted in `dropped`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from twin import database
from twin.errors import JournalError
from twin.messages import RawMessage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ms INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    journal_id INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    state BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sink_cursors (
    name TEXT PRIMARY KEY,
    journal_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS journal_counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class Journal:
    """Append-only message log with snapshots. Used from one thread at a time."""

    def __init__(self, path: Path, max_rows: int = 2_000_000, sync: str = "normal") -> None:
        self.path = path
        self.max_rows = max_rows
        self.sync = sync
        self._db: sqlite3.Connection | None = None
        self.last_id = 0
        self.rows = 0
        self.dropped = 0

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalError("the journal is not open")
        return self._db

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = database.connect(self.path, sync=self.sync, wal=True)
            db.executescript(_SCHEMA)
            # A write now, so a read-only file or a full disk fails start-up, not the first commit.
            db.execute("INSERT OR IGNORE INTO journal_counters VALUES ('dropped', 0)")
            (seq,) = db.execute(
                "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'journal'"
            ).fetchone()
            (snap,) = db.execute("SELECT coalesce(max(journal_id), 0) FROM snapshot").fetchone()
            (self.rows,) = db.execute("SELECT count(*) FROM journal").fetchone()
            (self.dropped,) = db.execute(
                "SELECT value FROM journal_counters WHERE name = 'dropped'"
            ).fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"cannot open the journal at {self.path}: {exc}") from exc
        self.last_id = max(seq, snap)
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def append(self, messages: Sequence[RawMessage]) -> int:
        """Commit `messages` in one transaction; return the id of the last one."""
        first = self.last_id + 1
        rows = [(first + i, m.received_ms, m.topic, m.payload) for i, m in enumerate(messages)]
        try:
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany("INSERT INTO journal VALUES (?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            raise JournalError(f"journal commit failed: {exc}") from exc
        self.last_id += len(rows)
        self.rows += len(rows)
        return self.last_id

    def read_after(self, after_id: int, limit: int = 10_000) -> list[tuple[int, RawMessage]]:
        """Messages with id > `after_id`, oldest first."""
        return read_after(self.db, after_id, limit)

    def save_snapshot(self, journal_id: int, state: bytes) -> None:
        try:
            with self.db:
                self.db.execute("BEGIN")
                self.db.execute(
                    "INSERT OR REPLACE INTO snapshot VALUES (1, ?, ?, ?)",
                    (journal_id, int(time.time() * 1000), state),
                )
        except sqlite3.Error as exc:
            raise JournalError(f"snapshot failed: {exc}") from exc

    def load_snapshot(self) -> tuple[int, bytes] | None:
        row = self.db.execute("SELECT journal_id, state FROM snapshot WHERE id = 1").fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    def prune(self, covered_id: int) -> int:
        """Delete rows every reader is done with, then enforce `max_rows`; return rows dropped.

        The readers are the snapshot (`covered_id`) and every sink's cursor.
        """
        try:
            (slowest,) = self.db.execute("SELECT min(journal_id) FROM sink_cursors").fetchone()
            if slowest is not None:
                covered_id = min(covered_id, slowest)
            with self.db:
                self.db.execute("BEGIN")
                deleted = self.db.execute(
                    "DELETE FROM journal WHERE id <= ?", (covered_id,)
                ).rowcount
                self.rows -= deleted
                dropped = 0
                if self.rows > self.max_rows:
                    cut = self.last_id - self.max_rows
                    dropped = self.db.execute("DELETE FROM journal WHERE id <= ?", (cut,)).rowcount
                    self.rows -= dropped
                    self.dropped += dropped
                    self.db.execute(
                        "UPDATE journal_counters SET value = ? WHERE name = 'dropped'",
                        (self.dropped,),
                    )
        except sqlite3.Error as exc:
            raise JournalError(f"journal prune failed: {exc}") from exc
        return dropped


def read_after(db: sqlite3.Connection, after_id: int, limit: int) -> list[tuple[int, RawMessage]]:
    """Journal rows with id > `after_id`, oldest first, from any connection to the journal."""
    cursor = db.execute(
        "SELECT id, received_ms, topic, payload FROM journal WHERE id > ? ORDER BY id LIMIT ?",
        (after_id, limit),
    )
    return [(row[0], RawMessage(row[2], bytes(row[3]), row[1])) for row in cursor]
