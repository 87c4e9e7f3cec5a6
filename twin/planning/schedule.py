"""Maintenance plans and the windows accepted from them, kept in the twin's SQLite file.

A plan is stored as it was answered (its times are minutes from its creation). Accepting it
turns its windows into absolute times and keeps them: `scheduled` until the window starts,
`due` from then (the `maintenance_due` alert is raised), `done` when the machine reports a
`maintenance` event after the plan was accepted (the alert clears), or `superseded` when a
later accepted plan covers the same machine before the window started. Windows still
scheduled or due are held in memory too: the alert rule asks about them every sweep and the
allocation engine before every allocation.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from twin import database
from twin.errors import Conflict, NotFound, StorageError

WindowState = Literal["scheduled", "due", "done", "superseded"]
_OPEN = ("scheduled", "due")
MINUTE_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS maintenance_plans (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at INTEGER NOT NULL,
    accepted_at INTEGER,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS maintenance_windows (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    plan INTEGER NOT NULL, machine TEXT NOT NULL, site TEXT NOT NULL, action TEXT NOT NULL,
    start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL, state TEXT NOT NULL,
    accepted_at INTEGER NOT NULL, done_at INTEGER, reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS maintenance_windows_state ON maintenance_windows (state, machine);
"""
_FIELDS = "id, plan, machine, site, action, start_ms, end_ms, state, accepted_at, done_at, reason"


@dataclass
class Window:
    id: int
    plan: int
    machine: str
    site: str
    action: str
    start_ms: int
    end_ms: int
    state: WindowState
    accepted_at: int
    done_at: int | None
    reason: dict[str, Any]

    def public(self) -> dict[str, Any]:
        return asdict(self)


class MaintenanceSchedule:
    """Plans and accepted windows (any thread; one lock, one connection)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._open: dict[str, list[Window]] = {}  # machine -> its scheduled or due windows

    def open(self) -> None:
        try:
            db = self._db = database.connect(self.path)
            db.executescript(_SCHEMA)
            rows = db.execute(
                f"SELECT {_FIELDS} FROM maintenance_windows WHERE state IN (?, ?) "
                "ORDER BY start_ms",
                _OPEN,
            ).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the maintenance plans in {self.path}: {exc}") from exc
        for row in rows:
            window = _window(row)
            self._open.setdefault(window.machine, []).append(window)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        assert self._db is not None, "the schedule is not open"
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise StorageError(f"maintenance plans in {self.path}: {exc}") from exc

    # -- plans ----------------------------------------------------------------------------

    def add_plan(self, created_at: int, body: dict[str, Any]) -> int:
        with self._lock:
            cursor = self._execute(
                "INSERT INTO maintenance_plans (created_at, body) VALUES (?, ?)",
                (created_at, json.dumps(body)),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def plan(self, plan_id: int) -> dict[str, Any]:
        with self._lock:
            row = self._execute(
                "SELECT id, created_at, accepted_at, body FROM maintenance_plans WHERE id = ?",
                (plan_id,),
            ).fetchone()
        if row is None:
            raise NotFound(f"no maintenance plan {plan_id}")
        body: dict[str, Any] = json.loads(row[3])
        return {**body, "id": row[0], "created_at": row[1], "accepted_at": row[2]}

    def accept(self, plan_id: int, now_ms: int) -> list[Window]:
        """Keep the plan's windows; supersede the machines' windows that have not started."""
        plan = self.plan(plan_id)
        if plan["accepted_at"] is not None:
            raise Conflict(f"maintenance plan {plan_id} was accepted already")
        created = plan["created_at"]
        with self._lock:
            assert self._db is not None
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "UPDATE maintenance_plans SET accepted_at = ? WHERE id = ?", (now_ms, plan_id)
                )
                machines = {w["machine"] for w in plan["windows"]}
                for machine in machines:
                    for old in self._open.get(machine, []):
                        if old.state == "scheduled":
                            old.state = "superseded"
                            self._db.execute(
                                "UPDATE maintenance_windows SET state = ? WHERE id = ?",
                                (old.state, old.id),
                            )
                    kept = [w for w in self._open.get(machine, []) if w.state in _OPEN]
                    self._open[machine] = kept
                accepted = []
                for w in plan["windows"]:
                    window = Window(
                        0,
                        plan_id,
                        w["machine"],
                        w["site"],
                        w["action"],
                        created + round(w["start_min"] * MINUTE_MS),
                        created + round(w["end_min"] * MINUTE_MS),
                        "scheduled",
                        now_ms,
                        None,
                        w["reason"],
                    )
                    cursor = self._db.execute(
                        "INSERT INTO maintenance_windows (plan, machine, site, action, start_ms, "
                        "end_ms, state, accepted_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            plan_id,
                            window.machine,
                            window.site,
                            window.action,
                            window.start_ms,
                            window.end_ms,
                            window.state,
                            now_ms,
                            json.dumps(window.reason),
                        ),
                    )
                    assert cursor.lastrowid is not None
                    window.id = cursor.lastrowid
                    accepted.append(window)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StorageError(f"maintenance plans in {self.path}: {exc}") from exc
            for window in accepted:
                self._open.setdefault(window.machine, []).append(window)
                self._open[window.machine].sort(key=lambda w: w.start_ms)
            return accepted

    def windows(
        self, machine: str | None = None, state: str | None = None, limit: int = 1000
    ) -> list[Window]:
        sql = f"SELECT {_FIELDS} FROM maintenance_windows"
        where, args = [], []
        if machine is not None:
            where.append("machine = ?")
            args.append(machine)
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start_ms, machine LIMIT ?"
        with self._lock:
            rows = self._execute(sql, (*args, limit)).fetchall()
        return [_window(row) for row in rows]

    # -- the live side: the alert rule and allocations ------------------------------------

    def due(self, machine: str, now_ms: int, serviced_ms: int | None) -> Window | None:
        """The machine's window that has started and is not done; a window the machine was
        serviced for since its plan was accepted (`serviced_ms`: its last maintenance event)
        is marked done first."""
        if machine not in self._open:  # the common case, without the lock
            return None
        with self._lock:
            windows = self._open.get(machine, [])
            for window in windows:
                if serviced_ms is not None and serviced_ms >= window.accepted_at:
                    self._set(window, "done", serviced_ms)
                elif window.start_ms <= now_ms and window.state == "scheduled":
                    self._set(window, "due", None)
            left = [w for w in windows if w.state in _OPEN]
            if left:
                self._open[machine] = left
            else:
                self._open.pop(machine, None)
            return next((w for w in left if w.state == "due"), None)

    def _set(self, window: Window, state: WindowState, done_at: int | None) -> None:
        window.state, window.done_at = state, done_at
        self._execute(
            "UPDATE maintenance_windows SET state = ?, done_at = ? WHERE id = ?",
            (state, done_at, window.id),
        )

    def upcoming(self) -> dict[str, tuple[int, int]]:
        """Per machine, its next open window (start, end ms): what allocations keep free."""
        with self._lock:
            return {m: (ws[0].start_ms, ws[0].end_ms) for m, ws in self._open.items() if ws}


def _window(row: tuple[Any, ...]) -> Window:
    id_, plan, machine, site, action, start, end, state, accepted, done, reason = row
    return Window(
        id_, plan, machine, site, action, start, end, state, accepted, done, json.loads(reason)
    )
