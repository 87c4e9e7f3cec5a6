"""Alerts: rules as data, evaluated on every twin change; one alert per (machine, rule).

Rule kinds: `threshold` (a signal above or below a level, with a `clear` level for hysteresis),
`all` / `any` (combinations of conditions), `risk` (failure probability at or above the model's
threshold, tied to the model version), `offline` (an `offline` status, or no message for
`timeout_s`), `stale` (a signal whose value has not changed for `stale_s`). Any rule may ask its
condition to hold `for_s` seconds first, and may `escalate` its severity at higher levels.

Lifecycle: an alert is `active` until its condition clears, then `cleared`; acknowledgement is
independent of that. While a (machine, rule) has an active alert, no second one is raised, however
many readings arrive: every evaluation runs on the journal thread, one message after another, so
two readings a millisecond apart cannot both raise one. Alerts are stored in SQLite and survive a
restart; cleared ones are kept for `TWIN_ALERT_RETENTION_S`.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from twin.errors import ConfigError, JournalError
from twin.state import FleetState, MachineTwin

log = logging.getLogger(__name__)

Severity = Literal["warning", "minor", "major", "critical"]
SEVERITIES: tuple[Severity, ...] = ("warning", "minor", "major", "critical")


class Condition(BaseModel):
    """A signal above or below a level; `clear` is where an active condition lets go."""

    model_config = ConfigDict(extra="forbid")

    signal: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    above: float | None = None
    below: float | None = None
    clear: float | None = None

    @model_validator(mode="after")
    def _one_direction(self) -> Condition:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of 'above' and 'below'")
        if self.clear is not None and self.above is not None and self.clear > self.above:
            raise ValueError("'clear' must not be above 'above' (hysteresis)")
        if self.clear is not None and self.below is not None and self.clear < self.below:
            raise ValueError("'clear' must not be below 'below' (hysteresis)")
        return self

    def holds(self, values: dict[str, tuple[float, int]], active: bool) -> bool:
        """Triggers past `above`/`below`; once active, holds until the value passes `clear`."""
        live = values.get(self.signal)
        if live is None:
            return False
        value = live[0]
        if self.above is not None:
            return value >= self.clear if active and self.clear is not None else value > self.above
        assert self.below is not None
        return value <= self.clear if active and self.clear is not None else value < self.below


class Rule(BaseModel):
    """One alert rule; see the module docstring for the kinds."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    kind: Literal["threshold", "all", "any", "risk", "offline", "stale"]
    severity: Severity = "major"
    message: str = "{machine}: {rule}"
    signal: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]{0,63}$")
    above: float | None = None
    below: float | None = None
    clear: float | None = None
    conditions: list[Condition] = Field(default_factory=list)
    for_s: float = Field(default=0.0, ge=0)
    timeout_s: float = Field(default=300.0, gt=0)
    stale_s: float = Field(default=600.0, gt=0)
    escalate: dict[Severity, float] = Field(
        default_factory=dict, description="severity -> level (signal value, or probability)"
    )

    @model_validator(mode="after")
    def _complete(self) -> Rule:
        if self.kind == "threshold":
            if self.signal is None:
                raise ValueError("a threshold rule needs 'signal'")
            self.conditions = [
                Condition(signal=self.signal, above=self.above, below=self.below, clear=self.clear)
            ]
        elif self.kind in ("all", "any") and not self.conditions:
            raise ValueError(f"an '{self.kind}' rule needs 'conditions'")
        elif self.kind == "stale" and self.signal is None:
            raise ValueError("a stale rule needs 'signal'")
        return self


DEFAULT_RULES = [
    Rule(
        id="failure_risk",
        kind="risk",
        severity="major",
        escalate={"critical": 0.9},
        message="{machine}: failure risk {probability:.0%} (threshold {threshold:.0%})",
    ),
    Rule(
        id="offline",
        kind="offline",
        severity="major",
        timeout_s=300,
        message="{machine} is offline",
    ),
    Rule(
        id="tool_wear_high",
        kind="threshold",
        signal="tool_wear_min",
        above=200,
        clear=20,
        severity="warning",
        message="{machine}: tool wear {value:.0f} min, a tool change is due",
    ),
]


def load_rules(path: Path | None) -> list[Rule]:
    """The default rules, extended (or overridden by id) by a TOML file of `[[rule]]` tables."""
    rules = {rule.id: rule for rule in DEFAULT_RULES}
    if path is None:
        return list(rules.values())
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the alert rules {path}: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    headers = [
        i + 1 for i, line in enumerate(text.splitlines()) if re.match(r"\s*\[\[rule\]\]", line)
    ]
    for index, raw in enumerate(data.get("rule", [])):
        line = headers[index] if index < len(headers) else "?"
        try:
            rule = Rule.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "rule"
            raise ConfigError(
                f"{path} line {line}: rule {raw.get('id', '?')!r}: {where}: {err['msg']}"
            ) from None
        rules[rule.id] = rule
    return list(rules.values())


@dataclass
class Alert:
    id: int
    machine: str
    site: str
    rule: str
    kind: str
    severity: str
    state: str  # active | cleared
    message: str
    raised_at: int
    updated_at: int
    cleared_at: int | None = None
    acknowledged: bool = False
    acknowledged_by: str | None = None
    acknowledged_at: int | None = None
    comment: str | None = None
    model_version: str | None = None


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


class AlertManager:
    """Evaluates the rules, keeps the alerts, stores them, and tells listeners of each change."""

    def __init__(
        self, state: FleetState, rules: list[Rule], path: Path, retention_s: float
    ) -> None:
        self.state = state
        self.rules = rules
        self.path = path
        self.retention_ms = int(retention_s * 1000)
        self.listeners: list[Callable[[Alert], None]] = []
        self._db: sqlite3.Connection | None = None
        self._alerts: dict[int, Alert] = {}
        self._active: dict[tuple[str, str], Alert] = {}
        self._pending: dict[tuple[str, str], int] = {}  # condition first held at (for for_s)
        self._unchanged: dict[tuple[str, str], tuple[float, int]] = {}  # stale: value, since
        self._next_id = 1
        self._last_sweep = 0.0
        self._lock = threading.RLock()

    def open(self) -> None:
        try:
            db = self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            rows = db.execute(f"SELECT {', '.join(_FIELDS)} FROM alerts ORDER BY id").fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open the alerts in {self.path}: {exc}") from exc
        for row in rows:
            alert = Alert(*row)
            alert.acknowledged = bool(alert.acknowledged)
            self._alerts[alert.id] = alert
            if alert.state == "active":
                self._active[(alert.machine, alert.rule)] = alert
        self._next_id = max(self._alerts, default=0) + 1
        log.info("%d alert rules; %d active alerts restored", len(self.rules), len(self._active))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- evaluation (journal thread) -----------------------------------------------------------

    def evaluate(self, twins: Iterable[MachineTwin], now_ms: int | None = None) -> None:
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        with self.state.lock, self._lock, self._transaction():
            for twin in twins:
                for rule in self.rules:
                    self._evaluate(rule, twin, now)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One commit for all the alert changes inside, not one (and one fsync) per alert."""
        db = self._db
        if db is None or db.in_transaction:
            yield
            return
        db.execute("BEGIN")
        try:
            yield
        finally:
            db.execute("COMMIT")

    def sweep(self, interval_s: float = 1.0) -> None:
        """Time-based rules (offline by inactivity, stale) and retention, at most every interval."""
        if time.monotonic() - self._last_sweep < interval_s:
            return
        self._last_sweep = time.monotonic()
        with self.state.lock:
            twins = list(self.state.twins())
        self.evaluate(twins)
        self._expire(int(time.time() * 1000))

    def _evaluate(self, rule: Rule, twin: MachineTwin, now: int) -> None:
        key = (twin.machine, rule.id)
        active = self._active.get(key)
        held, level, context = self._holds(rule, twin, active is not None, now)
        if not held:
            self._pending.pop(key, None)
            if active is not None:
                self._clear(active, now)
            return
        if active is None:
            since = self._pending.setdefault(key, now)
            if now - since < rule.for_s * 1000:
                return
            self._pending.pop(key, None)
            self._raise(rule, twin, now, level, context)
            return
        severity = self._severity(rule, level)
        if SEVERITIES.index(severity) > SEVERITIES.index(active.severity):  # escalate only
            active.severity = severity
            active.message = self._message(rule, twin, context)
            active.updated_at = now
            self._changed(active)

    def _holds(
        self, rule: Rule, twin: MachineTwin, active: bool, now: int
    ) -> tuple[bool, float | None, dict[str, Any]]:
        values = twin.values
        if rule.kind in ("threshold", "all", "any"):
            states = [c.holds(values, active) for c in rule.conditions]
            held = any(states) if rule.kind == "any" else all(states)
            signal = rule.conditions[0].signal
            value = values[signal][0] if signal in values else None
            return held, value, {"value": value if value is not None else float("nan")}
        if rule.kind == "risk":
            risk = twin.risk
            if risk is None:
                return False, None, {}
            p, threshold = risk["probability"], risk["threshold"]
            limit = rule.clear if active and rule.clear is not None else threshold
            context = {
                "probability": p,
                "threshold": threshold,
                "model_version": risk["model_version"],
            }
            return p >= limit, p, context
        if rule.kind == "offline":
            silent = now - twin.last_seen > rule.timeout_s * 1000
            return twin.online is False or silent, None, {}
        # stale: the value has not changed for stale_s
        assert rule.signal is not None
        live = values.get(rule.signal)
        if live is None:
            return False, None, {}
        key = (twin.machine, rule.signal)
        seen = self._unchanged.get(key)
        if seen is None or seen[0] != live[0]:
            self._unchanged[key] = (live[0], now)
            return False, live[0], {}
        return now - seen[1] >= rule.stale_s * 1000, live[0], {"value": live[0]}

    @staticmethod
    def _severity(rule: Rule, level: float | None) -> Severity:
        severity = rule.severity
        if level is None:
            return severity
        for candidate, threshold in rule.escalate.items():
            if level >= threshold and SEVERITIES.index(candidate) > SEVERITIES.index(severity):
                severity = candidate
        return severity

    @staticmethod
    def _message(rule: Rule, twin: MachineTwin, context: dict[str, Any]) -> str:
        try:
            return rule.message.format(
                machine=twin.machine, site=twin.site, rule=rule.id, **context
            )
        except (KeyError, ValueError, IndexError):
            return f"{twin.machine}: {rule.id}"

    def _raise(
        self, rule: Rule, twin: MachineTwin, now: int, level: float | None, context: dict[str, Any]
    ) -> None:
        alert = Alert(
            id=self._next_id,
            machine=twin.machine,
            site=twin.site,
            rule=rule.id,
            kind=rule.kind,
            severity=self._severity(rule, level),
            state="active",
            message=self._message(rule, twin, context),
            raised_at=now,
            updated_at=now,
            model_version=context.get("model_version"),
        )
        self._next_id += 1
        self._alerts[alert.id] = alert
        self._active[(twin.machine, rule.id)] = alert
        log.info("alert %d raised: %s (%s)", alert.id, alert.message, alert.severity)
        self._changed(alert)

    def _clear(self, alert: Alert, now: int) -> None:
        alert.state = "cleared"
        alert.cleared_at = now
        alert.updated_at = now
        del self._active[(alert.machine, alert.rule)]
        log.info("alert %d cleared: %s", alert.id, alert.message)
        self._changed(alert)

    def _changed(self, alert: Alert) -> None:
        row = asdict(alert)
        if self._db is not None:
            self._db.execute(
                f"INSERT OR REPLACE INTO alerts ({', '.join(_FIELDS)}) "
                f"VALUES ({', '.join('?' * len(_FIELDS))})",
                [row[f] for f in _FIELDS],
            )
        for listener in self.listeners:
            listener(alert)

    def _expire(self, now: int) -> None:
        with self._lock:
            old = [
                a.id
                for a in self._alerts.values()
                if a.state == "cleared" and a.cleared_at and now - a.cleared_at > self.retention_ms
            ]
            for alert_id in old:
                del self._alerts[alert_id]
            if old and self._db is not None:
                with self._transaction():
                    self._db.executemany("DELETE FROM alerts WHERE id = ?", [(i,) for i in old])

    # -- reading and acknowledging (API threads) ---------------------------------------------

    def get(self, alert_id: int) -> Alert | None:
        with self._lock:
            return self._alerts.get(alert_id)

    def active_for(self, machine: str) -> list[Alert]:
        with self._lock:
            return [a for (m, _), a in self._active.items() if m == machine]

    def query(
        self,
        *,
        machine: str | None = None,
        site: str | None = None,
        state: str | None = None,
        severity: str | None = None,
        acknowledged: bool | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[Alert]]:
        """Newest first."""
        with self._lock:
            found = [
                a
                for a in reversed(self._alerts.values())
                if (machine is None or a.machine == machine)
                and (site is None or a.site == site)
                and (state is None or a.state == state)
                and (severity is None or a.severity == severity)
                and (acknowledged is None or a.acknowledged is acknowledged)
            ]
        return len(found), found[offset : offset + limit]

    def acknowledge(self, alert_id: int, by: str | None, comment: str | None) -> Alert | None:
        with self._lock:
            alert = self._alerts.get(alert_id)
            if alert is None:
                return None
            if not alert.acknowledged:
                now = int(time.time() * 1000)
                alert.acknowledged = True
                alert.acknowledged_by = by
                alert.acknowledged_at = now
                alert.comment = comment
                alert.updated_at = now
                self._changed(alert)
            return alert
