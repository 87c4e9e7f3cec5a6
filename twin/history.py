"""The history store: closed reading buckets and device events, in the twin's SQLite file.

This is what fleet models train on. Writes are idempotent (a bucket replaces its earlier copy,
an event is stored once), so a journal replay that re-derives them changes nothing. Readings
that arrive after their bucket closed count in the live state but not in the history buckets.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from twin.errors import JournalError
from twin.messages import DeviceEvent
from twin.state import Bucket

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    machine TEXT NOT NULL,
    site TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    signals BLOB NOT NULL,
    PRIMARY KEY (machine, start_ms)
);
CREATE INDEX IF NOT EXISTS buckets_site ON buckets (site, start_ms);
CREATE TABLE IF NOT EXISTS events (
    machine TEXT NOT NULL,
    site TEXT NOT NULL,
    ts INTEGER NOT NULL,
    type TEXT NOT NULL,
    code TEXT NOT NULL,
    UNIQUE (machine, ts, type, code)
);
CREATE INDEX IF NOT EXISTS events_site ON events (site, type);
"""


@dataclass
class MachineHistory:
    """One machine's stored history, oldest first."""

    site: str
    buckets: list[Bucket] = field(default_factory=list)
    events: list[tuple[int, str, str]] = field(default_factory=list)  # (ts, type, code)


class HistoryStore:
    """Writes from the journal's writer thread; reads open their own connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open the history in {self.path}: {exc}") from exc

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def write(
        self,
        buckets: Iterable[tuple[str, str, Bucket]],
        events: Iterable[tuple[str, str, DeviceEvent]],
    ) -> None:
        assert self._db is not None
        bucket_rows = [(m, s, b.start, msgspec.json.encode(b.signals)) for m, s, b in buckets]
        event_rows = [(m, s, e.ts, e.type, e.code) for m, s, e in events]
        if not bucket_rows and not event_rows:
            return
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR REPLACE INTO buckets VALUES (?, ?, ?, ?)", bucket_rows
                )
                self._db.executemany(
                    "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)", event_rows
                )
        except sqlite3.Error as exc:
            raise JournalError(f"history write failed: {exc}") from exc

    def failures(self, site: str | None = None) -> int:
        """How many failure events are stored (for one site, or all)."""
        with sqlite3.connect(self.path) as db:
            query = "SELECT count(*) FROM events WHERE type = 'failure'"
            args: tuple[Any, ...] = ()
            if site is not None:
                query += " AND site = ?"
                args = (site,)
            return int(db.execute(query, args).fetchone()[0])

    def load(self, site: str | None = None) -> dict[str, MachineHistory]:
        """Every machine's history (of one site, or all)."""
        where, args = ("WHERE site = ?", (site,)) if site is not None else ("", ())
        out: dict[str, MachineHistory] = {}
        with sqlite3.connect(self.path) as db:
            for machine, msite, start, blob in db.execute(
                f"SELECT machine, site, start_ms, signals FROM buckets {where} "
                "ORDER BY machine, start_ms",
                args,
            ):
                signals = {k: tuple(v) for k, v in msgspec.json.decode(blob).items()}
                out.setdefault(machine, MachineHistory(msite)).buckets.append(
                    Bucket(start, signals)
                )
            events: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
            for machine, ts, etype, code in db.execute(
                f"SELECT machine, ts, type, code FROM events {where} ORDER BY machine, ts", args
            ):
                events[machine].append((ts, etype, code))
        for machine, items in events.items():
            if machine in out:
                out[machine].events = items
        return out
