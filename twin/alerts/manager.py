"""Alert evaluation and lifecycle: one alert per (machine, rule), told to listeners as it changes.

Lifecycle: an alert is `active` until its condition clears, then `cleared`; acknowledgement is
independent of that. While a (machine, rule) has an active alert, no second one is raised, however
many readings arrive: every evaluation runs on the journal thread, one batch after another, so
two readings a millisecond apart cannot both raise one. Alerts are stored (`AlertStore`) and
survive a restart; cleared ones are kept for `TWIN_ALERT_RETENTION_S`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from twin.alerts.alert import SEVERITIES, Alert, Severity
from twin.alerts.rules import Rule
from twin.alerts.store import AlertStore
from twin.errors import NotFound
from twin.state import FleetState, MachineTwin

if TYPE_CHECKING:
    from twin.planning.schedule import MaintenanceSchedule

log = logging.getLogger(__name__)

Listener = Callable[[Alert], None]


class LateOrders(Protocol):
    def late_on(self, machine: str, now_ms: int) -> dict[str, Any] | None:
        """A late order whose next operation is on `machine` (order, eta, due), or None."""


class Episodes(Protocol):
    """Where a cluster keeps its open alerts, one per (site, machine, rule), so that two
    workers (a former owner of a partition and the next) never raise the same one twice."""

    def open(self, alert: Alert) -> Alert:
        """Record `alert` as the open episode, or return the one already open."""

    def changed(self, alert: Alert) -> None:
        """Store a change, first taking what others wrote into `alert` (an acknowledgement)."""

    def close(self, alert: Alert) -> None:
        """The episode is over."""


# The kinds whose condition can change with time alone.
_TIMED = ("offline", "stale", "maintenance", "order")


class AlertManager:
    """Evaluates the rules, keeps the alerts, stores them, and tells listeners of each change."""

    def __init__(
        self,
        state: FleetState,
        store: AlertStore,
        retention_s: float,
        listeners: Sequence[Listener] = (),
        episodes: Episodes | None = None,
        schedule: MaintenanceSchedule | None = None,
        orders: LateOrders | None = None,
    ) -> None:
        self.state = state
        self.orders = orders  # the order book, for `order` rules
        self.episodes = episodes
        self.schedule = schedule  # accepted maintenance windows, for `maintenance` rules
        self.store = store
        self.retention_ms = int(retention_s * 1000)
        self.listeners = tuple(listeners)
        self.rules: list[Rule] = []
        self._alerts: dict[int, Alert] = {}
        self._active: dict[str, dict[str, Alert]] = {}  # machine -> rule -> its active alert
        self._pending: dict[tuple[str, str], int] = {}  # condition first held at (for for_s)
        self._unchanged: dict[tuple[str, str], tuple[float, int]] = {}  # stale: value, since
        self._next_id = 1
        self._last_sweep = 0.0
        self._swept = False
        self._lock = threading.RLock()

    def open(self, rules: Sequence[Rule]) -> None:
        """Evaluate `rules` from now on; restore the stored alerts."""
        self.rules = list(rules)
        for alert in self.store.open():
            self._alerts[alert.id] = alert
            if alert.state == "active":
                self._active.setdefault(alert.machine, {})[alert.rule] = alert
        self._next_id = max(self._alerts, default=0) + 1
        active = sum(len(rules) for rules in self._active.values())
        log.info("%d alert rules; %d active alerts restored", len(self.rules), active)

    def close(self) -> None:
        self.store.close()

    # -- evaluation (journal thread) -----------------------------------------------------------

    def evaluate(
        self,
        twins: Iterable[MachineTwin],
        now_ms: int | None = None,
        rules: Sequence[Rule] | None = None,
    ) -> None:
        """Evaluate `rules` (every rule by default) on each of `twins`."""
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        with self._lock, self.store.transaction():
            for twin in twins:
                for rule in self.rules if rules is None else rules:
                    self._evaluate(rule, twin, now)

    def sweep(self, interval_s: float = 1.0) -> None:
        """What time alone can change, at most every interval: offline by silence, stale values,
        conditions waiting out `for_s`; and retention. The first sweep evaluates every rule on
        every twin once (twins restored at start, rules added since)."""
        if time.monotonic() - self._last_sweep < interval_s:
            return
        self._last_sweep = time.monotonic()
        now = int(time.time() * 1000)
        if not self._swept:
            self._swept = True
            self.evaluate(self.state.twins(), now)
        else:
            by_id = {rule.id: rule for rule in self.rules if rule.kind not in _TIMED}
            with self._lock, self.store.transaction():
                timed = [rule for rule in self.rules if rule.kind in _TIMED]
                self.evaluate(self.state.twins(), now, timed)
                for machine, rule_id in list(self._pending):
                    waiting, pending = by_id.get(rule_id), self.state.twin(machine)
                    if waiting is not None and pending is not None:
                        self._evaluate(waiting, pending, now)
        self._expire(now)

    def _evaluate(self, rule: Rule, twin: MachineTwin, now: int) -> None:
        key = (twin.machine, rule.id)
        active = self._active.get(twin.machine, {}).get(rule.id)
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
            p, threshold = risk.probability, risk.threshold
            limit = rule.clear if active and rule.clear is not None else threshold
            context = {
                "probability": p,
                "threshold": threshold,
                "model_version": risk.model_version,
            }
            return p >= limit, p, context
        if rule.kind == "maintenance":
            if self.schedule is None:
                return False, None, {}
            serviced = twin.last_events.get("maintenance")
            window = self.schedule.due(twin.machine, now, serviced["ts"] if serviced else None)
            if window is None:
                return False, None, {}
            start = datetime.fromtimestamp(window.start_ms / 1000, UTC).isoformat(
                timespec="seconds"
            )
            return True, None, {"action": window.action, "start": start, "window": window.id}
        if rule.kind == "order":
            late = None if self.orders is None else self.orders.late_on(twin.machine, now)
            return late is not None, None, late or {}
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
        if self.episodes is not None:
            kept = self.episodes.open(alert)
            if kept is not alert:  # raised already, by this partition's former owner
                self._adopt(kept)
                return
        self._alerts[alert.id] = alert
        self._active.setdefault(twin.machine, {})[rule.id] = alert
        log.info("alert %d raised: %s (%s)", alert.id, alert.message, alert.severity)
        self._changed(alert, recorded=True)

    def _clear(self, alert: Alert, now: int) -> None:
        alert.state = "cleared"
        alert.cleared_at = now
        alert.updated_at = now
        rules = self._active[alert.machine]
        del rules[alert.rule]
        if not rules:
            del self._active[alert.machine]
        log.info("alert %d cleared: %s", alert.id, alert.message)
        if self.episodes is not None:
            self.episodes.close(alert)
        self._changed(alert, recorded=True)

    def _changed(self, alert: Alert, recorded: bool = False) -> None:
        """Store and tell; `recorded`: the episodes have it already (opened or closed)."""
        if self.episodes is not None and not recorded:
            self.episodes.changed(alert)
        self.store.save(alert)
        for listener in self.listeners:
            listener(alert)

    def _adopt(self, alert: Alert) -> None:
        self._alerts[alert.id] = alert
        self._active.setdefault(alert.machine, {})[alert.rule] = alert
        self.store.save(alert)

    def adopt(self, alerts: Iterable[Alert]) -> None:
        """Take over open alerts of machines this twin holds now (a partition taken over)."""
        with self._lock, self.store.transaction():
            for alert in alerts:
                if alert.state == "active":
                    self._adopt(alert)

    def forget(self, machines: Iterable[str]) -> None:
        """Let go of machines' active alerts (a partition given up); they stay open for the
        next holder."""
        with self._lock:
            dropped = []
            for machine in machines:
                for alert in self._active.pop(machine, {}).values():
                    self._alerts.pop(alert.id, None)
                    dropped.append(alert.id)
                for key in [k for k in self._pending if k[0] == machine]:
                    del self._pending[key]
            if dropped:
                self.store.delete(dropped)

    def _expire(self, now: int) -> None:
        with self._lock:
            old = [
                a.id
                for a in self._alerts.values()
                if a.state == "cleared" and a.cleared_at and now - a.cleared_at > self.retention_ms
            ]
            for alert_id in old:
                del self._alerts[alert_id]
            if old:
                self.store.delete(old)

    # -- reading and acknowledging (API threads) ---------------------------------------------

    def get(self, alert_id: int) -> Alert:
        with self._lock:
            alert = self._alerts.get(alert_id)
        if alert is None:
            raise NotFound(f"no alert {alert_id}")
        return alert

    def active_for(self, machine: str) -> list[Alert]:
        with self._lock:
            return list(self._active.get(machine, {}).values())

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

    def acknowledge(self, alert_id: int, by: str | None, comment: str | None) -> Alert:
        with self._lock:
            alert = self.get(alert_id)
            if not alert.acknowledged:
                now = int(time.time() * 1000)
                alert.acknowledged = True
                alert.acknowledged_by = by
                alert.acknowledged_at = now
                alert.comment = comment
                alert.updated_at = now
                self._changed(alert)
            return alert
