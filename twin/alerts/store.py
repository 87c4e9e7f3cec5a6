"""Where alerts are kept: a table in the twin's SQLite file, so they survive a restart."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from twin import database
from twin.alerts.alert import Alert
from twin.errors import StorageError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    machine TEXT NOT NULL, site TEXT NOT NULL, rule TEXT NOT NULL, kind TEXT NOT NULL,
    severity TEXT NOT NULL, state TEXT NOT NULL, message TEXT NOT NULL,
    raised_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, cleared_at INTEGER,
    acknowledged INTEGER NOT NULL, acknowledged_by TEXT, acknowledged_at INTEGER, comment TEXT,
    model_version TEXT
);
CREATE INDEX IF NOT EXISTS alerts_state ON alerts (state, machine);
"""
_FIELDS = list(Alert.__dataclass_fields__)


class AlertStore:
    """Loads every stored alert at start, then writes each change; one writer at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def open(self) -> list[Alert]:
        """Open the table and return the alerts stored in it, oldest first."""
        try:
            db = self._db = database.connect(self.path)
            db.executescript(_SCHEMA)
            rows = db.execute(f"SELECT {', '.join(_FIELDS)} FROM alerts ORDER BY id").fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the alerts in {self.path}: {exc}") from exc
        alerts = []
        for row in rows:
            alert = Alert(*row)
            alert.acknowledged = bool(alert.acknowledged)
            alerts.append(alert)
        return alerts

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One commit for all the changes inside, not one (and one fsync) per alert."""
        db = self._db
        if db is None or db.in_transaction:
            yield
            return
        db.execute("BEGIN")
        try:
            yield
        finally:
            db.execute("COMMIT")

    def save(self, alert: Alert) -> None:
        if self._db is None:
            return
        row = asdict(alert)
        try:
            self._db.execute(
                f"INSERT OR REPLACE INTO alerts ({', '.join(_FIELDS)}) "
                f"VALUES ({', '.join('?' * len(_FIELDS))})",
                [row[f] for f in _FIELDS],
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot store alert {alert.id}: {exc}") from exc

    def delete(self, ids: Iterable[int]) -> None:
        if self._db is None:
            return
        with self.transaction():
            self._db.executemany("DELETE FROM alerts WHERE id = ?", [(i,) for i in ids])
