"""Maintenance planned from predicted risk: a MILP over time slots (scipy's HiGHS).

The horizon is cut into slots of `step_min`. For each machine the forecast gives the chance of
a failure in each slot if it is left alone (`base`), and after each action done (`after`, the
path of a machine serviced now, started when the service ends). Servicing machine m with
action a from slot s (it takes D slots, within the horizon) is expected to cost

    failure x (sum(base[:s]) + sum(after[a][:K - s - D]))  +  maintenance  +  downtime/h x D slots

(no failures while it is serviced), against `failure x sum(base)` left alone. A binary per
(machine, action, start) that saves something; at most one service per machine in a plan; in
every slot at most `crews` machines in service. Minimising the total is exact for this model;
re-planning as forecasts move (every hour, say) is how later services are found.

Two baselines are costed in the same call with the same model: run to failure (no service),
and a fixed interval (each machine serviced with the first action when its time since the last
maintenance reaches `interval_min`, earliest first within crew capacity).
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
        self, paths: list[MachinePath], actions: list[Action], costs: Costs, step_min: float
    ) -> None:
        self.paths, self.actions, self.costs, self.step = paths, actions, costs, step_min
        self.slots = min((len(p.base) for p in paths), default=0)
        self.durations = [max(1, math.ceil(a.duration_min / step_min - 1e-9)) for a in actions]

    def failures(self, m: int, service: Service | None) -> float:
        path, K = self.paths[m], self.slots
        if service is None:
            return float(path.base[:K].sum())
        after = path.after[self.actions[service.action].name]
        rest = K - service.start - service.slots
        return float(path.base[: service.start].sum() + after[:rest].sum())

    def downtime_h(self, service: Service) -> float:
        return service.slots * self.step / 60

    def cost(self, m: int, service: Service | None) -> float:
        c = self.costs
        if service is None:
            return c.failure * self.failures(m, None)
        return (
            c.failure * self.failures(m, service)
            + c.maintenance
            + c.downtime_per_h * self.downtime_h(service)
        )

    def summary(self, services: list[Service]) -> dict[str, Any]:
        by_machine = {s.machine: s for s in services}
        failures = sum(self.failures(m, by_machine.get(m)) for m in range(len(self.paths)))
        downtime = sum(self.downtime_h(s) for s in services)
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
) -> dict[str, Any]:
    """The plan (windows, objective, solver) and the two baselines."""
    started = time.perf_counter()
    model = _Model(paths, actions, costs, step_min)
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
    left = model.failures(s.machine, None)
    done = model.failures(s.machine, s)
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
                model.cost(s.machine, None) - model.cost(s.machine, s), 2
            ),
        },
    }


def _candidates(model: _Model) -> tuple[list[Service], np.ndarray]:
    """Every service that would save something on its own, and what each saves (negative)."""
    services: list[Service] = []
    deltas: list[float] = []
    for m in range(len(model.paths)):
        alone = model.cost(m, None)
        for a, slots in enumerate(model.durations):
            for start in range(model.slots - slots + 1):
                s = Service(m, a, start, slots)
                delta = model.cost(m, s) - alone
                if delta < 0:
                    services.append(s)
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
        options={"time_limit": MILP_TIME_LIMIT_S, "disp": False},
    )
    info.update(status=result.message, optimal=result.status == 0)
    if result.x is None:
        return [], info
    return [s for k, s in enumerate(services) if result.x[k] > 0.5], info


def _fixed_interval(model: _Model, crews: int, interval_min: float) -> list[Service]:
    """Each machine serviced (first action) once its time since maintenance reaches the
    interval, earliest due first, in the first slot from then with a crew free."""
    if not model.actions:
        return []
    slots = model.durations[0]
    busy = np.zeros(model.slots, dtype=int)
    due = []
    for m, path in enumerate(model.paths):
        since = path.since_maintenance_min or 0.0
        due.append((max(0, math.ceil((interval_min - since) / model.step - 1e-9)), path.machine, m))
    chosen = []
    for start, _, m in sorted(due):
        for s in range(start, model.slots - slots + 1):
            if (busy[s : s + slots] < crews).all():
                busy[s : s + slots] += 1
                chosen.append(Service(m, 0, s, slots))
                break
    return chosen
