"""Allocating production tasks to machines by their live health.

A task may go to a machine that is online, below the risk limit, and of the required type and
site; a machine with an accepted maintenance window in the horizon takes work after it ends.
The assignment minimises, in this order of weight: tasks left unassigned (by priority),
then makespan + expected failure cost (duration x risk) + lateness (by priority), within each
machine's horizon. On each machine tasks run in earliest-due-date order, which minimises its
maximum lateness. Up to `MILP_MAX_PAIRS` eligible (task, machine) pairs, a mixed-integer
programme (scipy's HiGHS) solves it exactly for makespan and failure cost; the greedy heuristic
(tasks by priority, due time, longest first, each to the eligible machine where it adds least)
runs too, and the better of the two on the scheduled objective is kept. Above that size, the
heuristic alone. Same input and fleet, same answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

MILP_MAX_PAIRS = 2_000
MILP_TIME_LIMIT_S = 5.0
_UNASSIGNED = 10_000.0  # per minute of an unassigned task, times its priority: always worse


@dataclass(frozen=True)
class Task:
    id: str
    duration_min: float
    machine_type: str | None = None
    site: str | None = None
    due_min: float | None = None
    priority: float = 1.0


@dataclass(frozen=True)
class Machine:
    machine: str
    site: str
    type: str | None
    online: bool | None
    risk: float | None  # failure probability; None when not scored
    contributions: dict[str, float] = field(default_factory=dict)
    load_min: float = 0.0  # already committed work
    maintenance: tuple[float, float] | None = None  # next accepted window (start, end min)


@dataclass
class Allocation:
    assignments: list[dict[str, Any]]
    unassigned: list[dict[str, Any]]
    excluded: list[dict[str, Any]]
    objective: dict[str, float]
    solver: dict[str, Any]


def usable_machines(
    machines: list[Machine], max_risk: float
) -> tuple[list[Machine], list[dict[str, Any]]]:
    """The machines online and scored at or under `max_risk`, and the others with why."""
    usable: list[Machine] = []
    excluded: list[dict[str, Any]] = []
    for m in machines:
        if m.online is not True:
            excluded.append(
                {
                    "machine": m.machine,
                    "site": m.site,
                    "reason": "offline" if m.online is False else "no status yet",
                }
            )
        elif m.risk is None:
            excluded.append({"machine": m.machine, "site": m.site, "reason": "no risk score"})
        elif m.risk > max_risk:
            top = dict(list(m.contributions.items())[:3])
            excluded.append(
                {
                    "machine": m.machine,
                    "site": m.site,
                    "reason": f"risk {m.risk:.2f} above the limit {max_risk:.2f}",
                    "risk": m.risk,
                    "contributions": top,
                }
            )
        else:
            usable.append(m)
    return usable, excluded


def _around_maintenance(
    machines: list[Machine], horizon: float
) -> tuple[list[Machine], list[dict[str, Any]]]:
    """An accepted maintenance window within the horizon: the machine takes work only after
    it ends, or none when it ends beyond the horizon. Conservative (the time before a later
    window stays unused), and never overlaps a window."""
    usable: list[Machine] = []
    excluded: list[dict[str, Any]] = []
    for m in machines:
        if m.maintenance is None or m.maintenance[0] >= horizon:
            usable.append(m)
        elif m.maintenance[1] >= horizon:
            start, end = m.maintenance
            reason = f"maintenance window from {start:.0f} to {end:.0f} min"
            excluded.append({"machine": m.machine, "site": m.site, "reason": reason})
        else:
            usable.append(replace(m, load_min=max(m.load_min, m.maintenance[1])))
    return usable, excluded


def _eligible(task: Task, machine: Machine, horizon: float) -> str | None:
    """None when `machine` can take `task`, else why not."""
    if task.machine_type is not None and machine.type != task.machine_type:
        return "type"
    if task.site is not None and machine.site != task.site:
        return "site"
    if machine.load_min + task.duration_min > horizon:
        return "horizon"
    return None


def allocate(
    tasks: list[Task],
    machines: list[Machine],
    horizon_min: float,
    max_risk: float,
    method: str = "auto",
) -> Allocation:
    """`method`: "auto" (MILP up to MILP_MAX_PAIRS pairs), or force "milp" or "greedy"."""
    started = time.perf_counter()
    tasks = sorted(tasks, key=lambda t: t.id)
    usable, excluded = usable_machines(sorted(machines, key=lambda m: m.machine), max_risk)
    usable, serviced = _around_maintenance(usable, horizon_min)
    excluded += serviced
    count = _pair_count(tasks, usable)
    use_milp = method == "milp" or (method == "auto" and count <= MILP_MAX_PAIRS)
    pairs = (
        [
            (ti, mi)
            for ti, t in enumerate(tasks)
            for mi, m in enumerate(usable)
            if _eligible(t, m, horizon_min) is None
        ]
        if use_milp
        else []
    )
    chosen: dict[int, int] | None = None
    solver: dict[str, Any] = {}
    if pairs and use_milp:
        chosen, solver = _milp(tasks, usable, pairs, horizon_min)
        if chosen is not None:
            # The MILP is exact for makespan and failure cost but leaves lateness to the EDD
            # schedule; judged on the whole scheduled objective, keep the better of the two.
            greedy = _greedy(tasks, usable, horizon_min)
            if _score(tasks, usable, greedy, horizon_min) < _score(
                tasks, usable, chosen, horizon_min
            ):
                reason = "better than the MILP's answer on the scheduled objective"
                chosen, solver = greedy, {**solver, "name": "greedy", "reason": reason}
    if chosen is None:
        chosen = _greedy(tasks, usable, horizon_min)
        if not use_milp:
            reason = (
                "asked for" if method == "greedy" else "more eligible pairs than the MILP limit"
            )
        else:
            reason = "no MILP solution within its time limit"
        solver = {**solver, "name": "greedy", "reason": reason}
    result = _schedule(tasks, usable, chosen, horizon_min, excluded)
    result.solver = {
        **solver,
        "pairs": count,
        "seconds": round(time.perf_counter() - started, 4),
    }
    return result


def _pair_count(tasks: list[Task], machines: list[Machine]) -> int:
    """Eligible (task, machine) pairs by type and site, without listing them."""
    groups: dict[tuple[str | None, str | None], int] = {}
    for m in machines:
        for key in {(m.type, m.site), (m.type, None), (None, m.site), (None, None)}:
            groups[key] = groups.get(key, 0) + 1
    return sum(groups.get((t.machine_type, t.site), 0) for t in tasks)


def _costs(task: Task, machine: Machine) -> float:
    return task.duration_min * (machine.risk or 0.0)


def _milp(
    tasks: list[Task], machines: list[Machine], pairs: list[tuple[int, int]], horizon: float
) -> tuple[dict[int, int] | None, dict[str, Any]]:
    n_pairs = len(pairs)
    # Variables: x[pair] binary, then the makespan C. Lateness depends on the order on each
    # machine, which this model leaves out: it is judged on the EDD schedule afterwards.
    n = n_pairs + 1
    c = np.zeros(n)
    for k, (ti, mi) in enumerate(pairs):
        t = tasks[ti]
        c[k] = _costs(t, machines[mi]) - _UNASSIGNED * t.priority * t.duration_min
    c[n_pairs] = 1.0
    rows: list[np.ndarray] = []
    lower: list[float] = []
    upper: list[float] = []

    def row() -> np.ndarray:
        r = np.zeros(n)
        rows.append(r)
        return r

    by_task: dict[int, list[int]] = {}
    by_machine: dict[int, list[int]] = {}
    for k, (ti, mi) in enumerate(pairs):
        by_task.setdefault(ti, []).append(k)
        by_machine.setdefault(mi, []).append(k)
    for ks in by_task.values():  # each task at most once
        r = row()
        r[ks] = 1
        lower.append(-np.inf)
        upper.append(1)
    for mi, ks in by_machine.items():
        load = np.asarray([tasks[pairs[k][0]].duration_min for k in ks])
        base = machines[mi].load_min
        r = row()  # within the horizon
        r[ks] = load
        lower.append(-np.inf)
        upper.append(horizon - base)
        r = row()  # makespan covers it: load - C <= -base
        r[ks] = load
        r[n_pairs] = -1
        lower.append(-np.inf)
        upper.append(-base)
    integrality = np.zeros(n, dtype=np.int8)
    integrality[:n_pairs] = 1
    bounds = Bounds(np.zeros(n), np.concatenate([np.ones(n_pairs), [np.inf]]))
    constraints = LinearConstraint(np.vstack(rows), lower, upper) if rows else ()
    result = milp(
        c,
        integrality=integrality,
        bounds=bounds,
        constraints=constraints,
        options={"time_limit": MILP_TIME_LIMIT_S, "disp": False},
    )
    info = {"name": "milp (HiGHS)", "status": result.message, "optimal": result.status == 0}
    if result.x is None:
        return None, info
    chosen = {pairs[k][0]: pairs[k][1] for k in range(n_pairs) if result.x[k] > 0.5}
    return chosen, info


def _greedy(tasks: list[Task], machines: list[Machine], horizon: float) -> dict[int, int]:
    """Tasks by priority, due time, longest first; each where it adds least (vectorised)."""
    load = np.asarray([m.load_min for m in machines], dtype=float)
    risk = np.asarray([m.risk or 0.0 for m in machines], dtype=float)
    candidates: dict[tuple[str | None, str | None], np.ndarray] = {}
    chosen: dict[int, int] = {}
    order = sorted(
        range(len(tasks)),
        key=lambda i: (
            -tasks[i].priority,
            tasks[i].due_min if tasks[i].due_min is not None else np.inf,
            -tasks[i].duration_min,
            tasks[i].id,
        ),
    )
    for ti in order:
        t = tasks[ti]
        key = (t.machine_type, t.site)
        idx = candidates.get(key)
        if idx is None:
            idx = candidates[key] = np.asarray(
                [
                    mi
                    for mi, m in enumerate(machines)
                    if (t.machine_type is None or m.type == t.machine_type)
                    and (t.site is None or m.site == t.site)
                ],
                dtype=int,
            )
        if len(idx) == 0:
            continue
        end = load[idx] + t.duration_min
        cost = end + t.duration_min * risk[idx]
        if t.due_min is not None:
            cost += np.maximum(end - t.due_min, 0.0) * t.priority
        cost[end > horizon] = np.inf
        best = int(np.argmin(cost))
        if np.isfinite(cost[best]):
            chosen[ti] = int(idx[best])
            load[idx[best]] += t.duration_min
    return chosen


def _score(
    tasks: list[Task], machines: list[Machine], chosen: dict[int, int], horizon: float
) -> float:
    """The objective an assignment reaches, unassigned work included, as the MILP weighs it."""
    objective = _schedule(tasks, machines, chosen, horizon, []).objective
    left = sum(t.priority * t.duration_min for i, t in enumerate(tasks) if i not in chosen)
    return float(objective["total"]) + _UNASSIGNED * left


def _schedule(
    tasks: list[Task],
    machines: list[Machine],
    chosen: dict[int, int],
    horizon: float,
    excluded: list[dict[str, Any]],
) -> Allocation:
    assignments: list[dict[str, Any]] = []
    per_machine: dict[int, list[int]] = {}
    for ti, mi in chosen.items():
        per_machine.setdefault(mi, []).append(ti)
    lateness = failure = 0.0
    makespan = max((m.load_min for m in machines), default=0.0)
    for mi, tis in sorted(per_machine.items()):
        m = machines[mi]
        clock = m.load_min
        for ti in sorted(
            tis,
            key=lambda i: (
                tasks[i].due_min if tasks[i].due_min is not None else np.inf,
                tasks[i].id,
            ),
        ):
            t = tasks[ti]
            start, clock = clock, clock + t.duration_min
            late = max(0.0, clock - t.due_min) if t.due_min is not None else 0.0
            lateness += late * t.priority
            failure += _costs(t, m)
            needs = [
                f"type {t.machine_type}" if t.machine_type else None,
                f"site {t.site}" if t.site else None,
            ]
            assignments.append(
                {
                    "task": t.id,
                    "machine": m.machine,
                    "site": m.site,
                    "start_min": round(start, 3),
                    "end_min": round(clock, 3),
                    "risk": m.risk,
                    "late_min": round(late, 3),
                    "why": (
                        f"risk {m.risk:.3f}, load {clock:.0f}/{horizon:.0f} min"
                        + "".join(f", meets {n}" for n in needs if n)
                    ),
                }
            )
        makespan = max(makespan, clock)
    unassigned = []
    for ti, t in enumerate(tasks):
        if ti in chosen:
            continue
        reasons = {_eligible(t, m, horizon) for m in machines}
        if not machines:
            why = "no machine is online and below the risk limit"
        elif "type" in reasons and len(reasons) == 1:
            why = f"no usable machine of type {t.machine_type}"
        elif reasons <= {"type", "site"}:
            why = (
                f"no usable machine of type {t.machine_type} at site {t.site}"
                if t.machine_type
                else f"no usable machine at site {t.site}"
            )
        elif t.duration_min > horizon:
            why = f"longer ({t.duration_min:g} min) than the horizon ({horizon:g} min)"
        else:
            why = "no capacity left within the horizon on the machines that could take it"
        unassigned.append({"task": t.id, "reason": why})
    assignments.sort(key=lambda a: (a["machine"], a["start_min"]))
    return Allocation(
        assignments,
        unassigned,
        excluded,
        {
            "makespan_min": round(makespan, 3),
            "expected_failure_cost": round(failure, 4),
            "weighted_lateness_min": round(lateness, 3),
            "total": round(makespan + failure + lateness, 4),
            "assigned": len(assignments),
            "unassigned": len(unassigned),
        },
        {},
    )
