"""Store and forward: every reading is written to SQLite before it is published, and deleted
only once the broker has acknowledged it, so a broker outage (or a gateway restart) loses
nothing. Each machine's readings carry a sequence number kept in the same file, so what is sent
twice (published, then the gateway stopped before the acknowledgement was recorded) is a
duplicate the twin recognises. Bounded: past `max_rows` the oldest readings are dropped, and
counted."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from twin import database
from twin.errors import StorageError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the sender goes by it
    machine TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sequences (machine TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    machine: str
    payload: bytes


class Outbox:
    """One SQLite file; used from one thread at a time."""

    def __init__(self, path: Path, max_rows: int) -> None:
        self.path = path
        self.max_rows = max_rows
        self.dropped = 0
        self._db: sqlite3.Connection | None = None
        self._seq: dict[str, int] = {}
        self._rows = 0

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._db = database.connect(self.path, sync="normal", wal=True)
            db.executescript(_SCHEMA)
            self._seq = dict(db.execute("SELECT machine, seq FROM sequences").fetchall())
            self._rows = int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the outbox {self.path}: {exc}") from exc

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageError("the outbox is not open")
        return self._db

    def __len__(self) -> int:
        return self._rows

    def next_seq(self, machine: str) -> int:
        """The sequence number the machine's next reading gets (kept by `put`)."""
        return self._seq.get(machine, 0) + 1

    def put(self, items: list[tuple[str, int, bytes]]) -> int:
        """Store (machine, seq, payload) readings in one transaction; return how many old ones
        were dropped to stay within `max_rows`."""
        if not items:
            return 0
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO outbox (machine, payload) VALUES (?, ?)",
                [(machine, payload) for machine, _, payload in items],
            )
            for machine, seq, _ in items:
                self._seq[machine] = max(seq, self._seq.get(machine, 0))
            self.db.executemany(
                "INSERT OR REPLACE INTO sequences VALUES (?, ?)",
                [(m, self._seq[m]) for m in {machine for machine, _, _ in items}],
            )
            self._rows += len(items)
            over = self._rows - self.max_rows
            if over > 0:
                self.db.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                    (over,),
                )
                self._rows -= over
                self.dropped += over
        return max(over, 0)

    def after(self, last_id: int, limit: int) -> list[Row]:
        """The oldest stored readings after `last_id`."""
        rows = self.db.execute(
            "SELECT id, machine, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (last_id, limit),
        ).fetchall()
        return [Row(*row) for row in rows]

    def delete(self, ids: list[int]) -> None:
        """Forget readings the broker acknowledged."""
        if not ids:
            return
        with self.db:
            cursor = self.db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
            self._rows -= cursor.rowcount
