"""Maintenance planned from predicted risk: a MILP over time slots (scipy's HiGHS).

The horizon is cut into K slots of `step_min`. For each machine the forecast gives the chance
of a failure in each slot if it is left alone (`base`), and after each action done (`after`,
the path of a machine serviced now, started when the service ends). A plan decides each
machine's next service: whether, which action and from which slot s (it takes D slots).

Costs are counted over the horizon's work, K slots of operation: a service delays that work by
D slots (downtime), it does not remove it, so stopping a machine never looks like a way to
avoid the failures no service prevents. The decision values a service at s as
`failure x sum(base[:s]) + service + r x (K - s)` against `failure x sum(base)` left alone,
where `service` is the maintenance cost plus D slots of downtime and r the machine's renewal
rate after the action (the cheapest cost per slot of work of running a fresh start for T slots
and servicing it again: the age-replacement rate).
Without that tail a service looks cheaper the later it comes (the fresh start's own wear-out
falls beyond the horizon) and an hourly re-plan would put it off for ever. A binary per
(machine, action, start) that gains; at most one per machine; in every slot at most `crews`
machines in service; none sooner than `min_interval_min` of operation after the machine's
last maintenance (the renewal rate's cycles are that long at least). Later services are the
next plans' to decide.

The minimum interval guards against a model's shape at low wear: the default AI4I model gives
a fresh tool half the failure chance of a 30-minute-old one (a spline wiggle: in the AI4I
process wear below ~150 min does not matter), and with failures 28 times dearer than a tool
change that alone would have a plan change tools every hour. The forecasts a plan reads take
a tool younger than the minimum interval as new (`Foresight.paths`), so that the same wiggle
does not make each fresh start look cheaper and every service come at the minimum interval.

Reported costs are the expected costs of the horizon's work, for the plan and for two baselines
costed in the same call with the same forecasts: run to failure (no service), and a fixed
interval (each machine serviced with the first action whenever its time since maintenance
reaches `interval_min`, earliest due first, within crew capacity).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

MILP_TIME_LIMIT_S = 10.0


@dataclass(frozen=True)
class Action:
    name: str
    duration_min: float


@dataclass(frozen=True)
class Costs:
    failure: float
    maintenance: float
    downtime_per_h: float


@dataclass
class MachinePath:
    """One machine's chance of a failure per slot: left alone, and after each action."""

    machine: str
    site: str
    base: np.ndarray
    after: dict[str, np.ndarray] = field(default_factory=dict)
    since_maintenance_min: float | None = None  # for the fixed-interval baseline


@dataclass(frozen=True)
class Service:
    machine: int  # index into the paths
    action: int  # index into the actions
    start: int  # slot
    slots: int


class _Model:
    """The cost of every choice, shared by the MILP and the baselines."""

    def __init__(
        self,
        paths: list[MachinePath],
        actions: list[Action],
        costs: Costs,
        step_min: float,
        min_interval_min: float = 0.0,
    ) -> None:
        self.paths, self.actions, self.costs, self.step = paths, actions, costs, step_min
        self.min_interval = min_interval_min
        self.min_slots = max(1, math.ceil(min_interval_min / step_min - 1e-9))  # a cycle's least
        self.slots = min((len(p.base) for p in paths), default=0)
        self.durations = [max(1, math.ceil(a.duration_min / step_min - 1e-9)) for a in actions]

    def failures(self, m: int, services: list[Service]) -> float:
        """Expected failures over the horizon's work (K slots of operation) with these services
        of machine m: a service delays the work, it does not remove it (a machine in service
        does not fail, but the processes it did not run still have to run)."""
        path, K = self.paths[m], self.slots
        total, running, since, work = 0.0, path.base, 0, 0  # the current tool, from slot 0
        for service in sorted(services, key=lambda s: s.start):
            ran = service.start - since
            total += float(running[:ran].sum())
            work += ran
            running = path.after[self.actions[service.action].name]
            since = service.start + service.slots
        return total + float(running[: K - work].sum())

    def service_cost(self, service: Service) -> float:
        return self.costs.maintenance + self.costs.downtime_per_h * service.slots * self.step / 60

    def cost(self, m: int, services: list[Service]) -> float:
        return self.costs.failure * self.failures(m, services) + sum(
            self.service_cost(s) for s in services
        )

    def renewal_rate(self, m: int, action: int) -> float:
        """Cost per slot of work of a fresh start run at its best interval: min over T (at
        least the minimum interval) of (failures in T slots + one service) / T, the classic
        age-replacement rate."""
        after = self.paths[m].after[self.actions[action].name][: self.slots]
        service = self.service_cost(Service(m, action, 0, self.durations[action]))
        runs = np.arange(1, len(after) + 1)
        rates = (self.costs.failure * np.cumsum(after) + service) / runs
        return float(rates[min(self.min_slots, len(rates)) - 1 :].min())

    def summary(self, services: list[Service]) -> dict[str, Any]:
        by_machine: dict[int, list[Service]] = {}
        for service in services:
            by_machine.setdefault(service.machine, []).append(service)
        failures = sum(self.failures(m, by_machine.get(m, [])) for m in range(len(self.paths)))
        downtime = sum(s.slots * self.step / 60 for s in services)
        c = self.costs
        parts = {
            "failure": c.failure * failures,
            "maintenance": c.maintenance * len(services),
            "downtime": c.downtime_per_h * downtime,
        }
        return {
            "expected_failures": round(failures, 6),
            "actions": len(services),
            "downtime_h": round(downtime, 4),
            "cost": {k: round(v, 2) for k, v in parts.items()},
            "total": round(sum(parts.values()), 2),
        }


def plan(
    paths: list[MachinePath],
    actions: list[Action],
    costs: Costs,
    crews: int,
    step_min: float,
    interval_min: float,
    min_interval_min: float = 0.0,
) -> dict[str, Any]:
    """The plan (windows, objective, solver) and the two baselines."""
    started = time.perf_counter()
    model = _Model(paths, actions, costs, step_min, min_interval_min)
    services, solver = _solve(model, crews)
    windows = [_window(model, s) for s in services]
    windows.sort(key=lambda w: (w["start_min"], w["machine"]))
    planned = model.summary(services)
    baselines = {
        "run_to_failure": model.summary([]),
        "fixed_interval": {
            "interval_min": interval_min,
            **model.summary(_fixed_interval(model, crews, interval_min)),
        },
    }
    best = min(b["total"] for b in baselines.values())
    planned["saving_vs_best_baseline"] = round(best - planned["total"], 2)
    solver["seconds"] = round(time.perf_counter() - started, 4)
    return {"windows": windows, "objective": planned, "baselines": baselines, "solver": solver}


def _window(model: _Model, s: Service) -> dict[str, Any]:
    path = model.paths[s.machine]
    action = model.actions[s.action]
    left = model.failures(s.machine, [])
    done = model.failures(s.machine, [s])
    step = model.step
    return {
        "machine": path.machine,
        "site": path.site,
        "action": action.name,
        "start_min": round(s.start * step, 3),
        "end_min": round((s.start + s.slots) * step, 3),
        "reason": {
            "risk_before": round(float(path.base[s.start]), 6),
            "risk_after": round(float(path.after[action.name][0]), 6),
            "peak_risk_if_left": round(float(path.base[: model.slots].max()), 6),
            "expected_failures_avoided": round(left - done, 6),
            "expected_cost_avoided": round(
                model.cost(s.machine, []) - model.cost(s.machine, [s]), 2
            ),
        },
    }


def _candidates(model: _Model) -> tuple[list[Service], np.ndarray]:
    """Every first service that would pay on its own, and its gain (negative). Judged with the
    rest of the horizon after it at the machine's renewal rate: truncated at the horizon's end,
    a fresh start looks cheaper the later it comes, and each hourly re-plan would put the
    service off again."""
    services: list[Service] = []
    deltas: list[float] = []
    F, K = model.costs.failure, model.slots
    for m, path in enumerate(model.paths):
        base = np.concatenate([[0.0], np.cumsum(path.base[:K])])  # failures before each slot
        since = path.since_maintenance_min or 0.0
        first = max(0, math.ceil((model.min_interval - since) / model.step - 1e-9))
        for a, slots in enumerate(model.durations):
            rate = model.renewal_rate(m, a)
            cost = model.service_cost(Service(m, a, 0, slots))
            for start in range(first, K - slots + 1):
                delta = F * base[start] + cost + rate * (K - start) - F * base[K]
                if delta < 0:
                    services.append(Service(m, a, start, slots))
                    deltas.append(delta)
    return services, np.asarray(deltas)


def _solve(model: _Model, crews: int) -> tuple[list[Service], dict[str, Any]]:
    services, deltas = _candidates(model)
    info: dict[str, Any] = {"name": "milp (HiGHS)", "variables": len(services)}
    if not services:
        return [], {**info, "status": "nothing to gain from a service", "optimal": True}
    n = len(services)
    machines = sorted({s.machine for s in services})
    row_of = {m: i for i, m in enumerate(machines)}
    rows, cols = [], []
    for k, s in enumerate(services):  # one service per machine at most
        rows.append(row_of[s.machine])
        cols.append(k)
    base = len(machines)
    for k, s in enumerate(services):  # crews: machines in service in each slot
        for j in range(s.start, s.start + s.slots):
            rows.append(base + j)
            cols.append(k)
    shape = (base + model.slots, n)
    A = sparse.csr_array((np.ones(len(rows)), (rows, cols)), shape=shape)
    upper = np.concatenate([np.ones(base), np.full(model.slots, float(crews))])
    result = milp(
        deltas,
        integrality=np.ones(n, dtype=np.int8),
        bounds=Bounds(np.zeros(n), np.ones(n)),
        constraints=LinearConstraint(A, -np.inf, upper),
        # No presolve: on 1,000 machines (42,000 binaries) HiGHS's presolve took 87 s, past the
        # time limit it does not check, where the solve without it takes 0.7 s to the same
        # optimum (the LP relaxation of this assignment is integral in practice).
        options={"time_limit": MILP_TIME_LIMIT_S, "disp": False, "presolve": False},
    )
    info.update(status=result.message, optimal=result.status == 0)
    if result.x is None:
        return [], info
    return [s for k, s in enumerate(services) if result.x[k] > 0.5], info


def _fixed_interval(model: _Model, crews: int, interval_min: float) -> list[Service]:
    """Each machine serviced (first action) whenever its time since maintenance reaches the
    interval, earliest due first, in the first slot from then with a crew free."""
    if not model.actions:
        return []
    slots = model.durations[0]
    every = max(1, math.ceil(interval_min / model.step - 1e-9))
    busy = np.zeros(model.slots, dtype=int)
    due = []
    for m, path in enumerate(model.paths):
        since = path.since_maintenance_min or 0.0
        due.append((max(0, math.ceil((interval_min - since) / model.step - 1e-9)), path.machine, m))
    chosen = []
    while due:
        due.sort()
        start, name, m = due.pop(0)
        for s in range(start, model.slots - slots + 1):
            if (busy[s : s + slots] < crews).all():
                busy[s : s + slots] += 1
                chosen.append(Service(m, 0, s, slots))
                due.append((s + slots + every, name, m))
                break
    return chosen
