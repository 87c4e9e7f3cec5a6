"""The one place that opens the data directory's SQLite file, with the project's settings.

Every store (journal, history, alerts, sink cursors) shares one file in WAL mode, so readers
never block the writer. Connections run in autocommit (`isolation_level=None`): each store says
`BEGIN` where it wants a transaction. A busy file is waited for, not failed at once.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

BUSY_TIMEOUT_MS = 10_000


def connect(path: Path, *, sync: str | None = None, wal: bool = False) -> sqlite3.Connection:
    """A connection usable from any one thread at a time; `sync` sets `PRAGMA synchronous`,
    `wal` switches the file to WAL (the journal, which creates the file, does this)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    if sync is not None:
        db.execute(f"PRAGMA synchronous={sync.upper()}")
    return db
