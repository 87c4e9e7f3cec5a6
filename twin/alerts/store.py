"""Where alerts are kept: a table in the twin's SQLite file, so they survive a restart."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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
_UPSERT = (
    f"INSERT OR REPLACE INTO alerts ({', '.join(_FIELDS)}) VALUES ({', '.join('?' * len(_FIELDS))})"
)


class AlertStore:
    """Loads every stored alert at start, then writes each change; one writer at a time.

    Changes saved inside `transaction()` are written together when it ends, in one statement
    and one commit (an alert changed twice in it is written once, as it ended).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._unsaved: dict[int, Alert] | None = None  # inside a transaction

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
        """One statement and one commit for all the changes inside, not one per alert."""
        if self._unsaved is not None:
            yield
            return
        self._unsaved = {}
        try:
            yield
        finally:
            unsaved, self._unsaved = self._unsaved, None
            self._write(list(unsaved.values()))

    def save(self, alert: Alert) -> None:
        if self._unsaved is not None:
            self._unsaved[alert.id] = alert
        else:
            self._write([alert])

    def _write(self, alerts: list[Alert]) -> None:
        if self._db is None or not alerts:
            return
        rows = [[getattr(alert, f) for f in _FIELDS] for alert in alerts]
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(_UPSERT, rows)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot store {len(rows)} alert changes: {exc}") from exc

    def delete(self, ids: Iterable[int]) -> None:
        if self._db is None:
            return
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("DELETE FROM alerts WHERE id = ?", [(i,) for i in ids])
        except sqlite3.Error as exc:
            raise StorageError(f"cannot delete expired alerts: {exc}") from exc
