"""The allocation ledger: allocations against the live fleet, kept, marked when an alert hits,
re-planned.

Allocations are kept in memory (they describe work about to start; a restart drops them). When a
machine with assigned work raises a risk or offline alert, every allocation using it is marked
affected and the change goes out on `/stream` (`allocation` events); `replan` moves the affected
tasks to machines that are usable now, keeping the rest of the allocation as it was.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable
from typing import Any

from twin.alerts import Alert
from twin.errors import NotFound
from twin.model import DEFAULT_SCOPE
from twin.planning.allocation import Allocation, Machine, Task, allocate
from twin.planning.schedule import MaintenanceSchedule
from twin.risk import RiskScorer
from twin.state import FleetState
from twin.stream import EventHub

DEFAULT_MAX_RISK = 0.5  # the risk limit without a default model (else its threshold)


class AllocationLedger:
    """Solves allocations on the live fleet and keeps them (in memory) for re-planning."""

    def __init__(
        self,
        state: FleetState,
        scorer: RiskScorer,
        hub: EventHub,
        schedule: MaintenanceSchedule | None = None,
    ) -> None:
        self.state = state
        self.scorer = scorer
        self.hub = hub
        self.schedule = schedule  # accepted maintenance windows, kept free of work
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.allocations: dict[int, dict[str, Any]] = {}

    def machine_types(self) -> set[str]:
        return {t.type for t in self.state.summaries() if t.type}

    def healthy_machines(self) -> dict[str, int]:
        """Per site: machines online and below the default risk limit."""
        return healthy_by_site(
            (
                (t.site, t.online, None if t.risk is None else t.risk.probability)
                for t in self.state.summaries()
            ),
            self.default_max_risk(),
        )

    def default_max_risk(self) -> float:
        model = self.scorer.model(DEFAULT_SCOPE)
        return model.threshold if model is not None else DEFAULT_MAX_RISK

    def committed(self, now_ms: float) -> dict[str, float]:
        """Per machine, the minutes from now until its kept allocations' work ends."""
        with self._lock:
            ends: dict[str, float] = {}
            for record in self.allocations.values():
                for a in record["assignments"]:
                    end = record["created_at"] + a["end_min"] * 60_000
                    ends[a["machine"]] = max(ends.get(a["machine"], now_ms), end)
        return {m: (end - now_ms) / 60_000 for m, end in ends.items() if end > now_ms}

    def fleet(self, load: dict[str, float] | None = None) -> list[Machine]:
        """Every machine as planning sees it: health, `load` (minutes), its next window."""
        load = load or {}
        now = time.time() * 1000
        windows = {} if self.schedule is None else self.schedule.upcoming()
        maintenance = {
            m: ((start - now) / 60_000, (end - now) / 60_000) for m, (start, end) in windows.items()
        }
        return [
            Machine(
                t.machine,
                t.site,
                t.type,
                t.online,
                None if t.risk is None else t.risk.probability,
                {} if t.risk is None else dict(t.risk.contributions),
                load.get(t.machine, 0.0),
                maintenance.get(t.machine),
            )
            for t in self.state.summaries()
        ]

    def allocate(
        self, tasks: list[Task], horizon_min: float, max_risk: float | None
    ) -> dict[str, Any]:
        limit = self.default_max_risk() if max_risk is None else max_risk
        result = allocate(tasks, self.fleet(), horizon_min, limit)
        with self._lock:
            record = new_record(next(self._ids), tasks, horizon_min, limit, result)
            self.allocations[record["id"]] = record
        return public(record)

    def get(self, allocation_id: int) -> dict[str, Any]:
        with self._lock:
            return public(self._record(allocation_id))

    def _record(self, allocation_id: int) -> dict[str, Any]:
        record = self.allocations.get(allocation_id)
        if record is None:
            raise NotFound(f"no allocation {allocation_id}")
        return record

    def on_alert(self, alert: Alert) -> None:
        """A risk or offline alert on a machine with assigned work marks its allocations."""
        if not marks(alert.state, alert.kind):
            return
        with self._lock:
            for record in self.allocations.values():
                if mark_affected(record, alert.machine, alert.id, alert.rule, alert.updated_at):
                    self.hub.publish("allocation", alert.site, alert.machine, public(record))

    def replan(self, allocation_id: int) -> dict[str, Any]:
        """Move the tasks of affected machines; keep every other assignment."""
        with self._lock:
            record = self._record(allocation_id)
            affected, keep, moving, load = replan_inputs(record)
        fleet = [m for m in self.fleet(load) if m.machine not in affected]
        moved = allocate(moving, fleet, record["horizon_min"], record["max_risk"])
        with self._lock:
            apply_replan(record, keep, moved)
            return public(record)


# An allocation record, the same in `twin serve` (in memory) and in cluster mode (a KV entry):
# the solved allocation, its tasks (id -> Task), the machines in alert since, replans so far.


def new_record(
    allocation_id: int, tasks: list[Task], horizon_min: float, limit: float, result: Allocation
) -> dict[str, Any]:
    return {
        "id": allocation_id,
        "created_at": int(time.time() * 1000),
        "horizon_min": horizon_min,
        "max_risk": limit,
        "tasks": {t.id: t for t in tasks},
        "affected": [],
        "replans": 0,
        **_as_dict(result),
    }


def public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "tasks"}


def marks(state: str, kind: str) -> bool:
    """Whether an alert change marks the allocations using its machine."""
    return state == "active" and kind in ("risk", "offline")


def mark_affected(record: dict[str, Any], machine: str, alert_id: int, rule: str, at: int) -> bool:
    """Mark the allocation if it has work on `machine` not marked yet; True if it did."""
    uses = any(a["machine"] == machine for a in record["assignments"])
    if not uses or machine in {x["machine"] for x in record["affected"]}:
        return False
    record["affected"].append({"machine": machine, "alert": alert_id, "rule": rule, "at": at})
    return True


def replan_inputs(
    record: dict[str, Any],
) -> tuple[set[str], list[dict[str, Any]], list[Task], dict[str, float]]:
    """The machines in alert, the assignments kept, the tasks to move, the kept load."""
    affected = {x["machine"] for x in record["affected"]}
    keep = [a for a in record["assignments"] if a["machine"] not in affected]
    moving = [record["tasks"][a["task"]] for a in record["assignments"] if a["machine"] in affected]
    load: dict[str, float] = {}
    for a in keep:
        load[a["machine"]] = max(load.get(a["machine"], 0.0), a["end_min"])
    return affected, keep, moving, load


def apply_replan(record: dict[str, Any], keep: list[dict[str, Any]], moved: Allocation) -> None:
    was = {a["task"]: a["machine"] for a in record["assignments"]}
    record["assignments"] = sorted(
        keep + moved.assignments, key=lambda a: (a["machine"], a["start_min"])
    )
    record["unassigned"] = record["unassigned"] + moved.unassigned
    record["moves"] = [
        {"task": a["task"], "from": was[a["task"]], "to": a["machine"]} for a in moved.assignments
    ]
    record["affected"] = []
    record["replans"] += 1
    record["replan_objective"] = moved.objective
    record["solver"] = moved.solver


def healthy_by_site(
    machines: Iterable[tuple[str, bool | None, float | None]], limit: float
) -> dict[str, int]:
    """Per site, the machines (site, online, risk) online and scored at or below `limit`."""
    counts: dict[str, int] = {}
    for site, online, risk in machines:
        if online and risk is not None and risk <= limit:
            counts[site] = counts.get(site, 0) + 1
    return counts


def _as_dict(result: Allocation) -> dict[str, Any]:
    return {
        "assignments": result.assignments,
        "unassigned": result.unassigned,
        "excluded": result.excluded,
        "objective": result.objective,
        "solver": result.solver,
    }
