"""Allocation: the twin's solvers against a greedy first-fit baseline, on the same instances.

Instances: a random fleet (types L/M/H, some offline, risks from a skewed distribution) and
random tasks (some needing a type, some with due times). For each: first-fit (tasks in order, to
the first eligible machine with room), the twin's heuristic, and, where the MILP is used (or small
enough to try), the MILP. Prints solve time and the objective parts.

The MILP is exact for makespan and failure cost; lateness is judged on the schedule afterwards,
and the twin keeps whichever of the MILP's and the heuristic's answers is better on the total.
HiGHS may print a line of its own to stdout. Run: `python -m bench.allocation`.
"""

from __future__ import annotations

import random
import sys
import time

from twin.planning.allocation import Machine, Task, _excluded, _schedule, allocate

MAX_RISK = 0.5
HORIZON = 480.0


def instance(machines: int, tasks: int, seed: int) -> tuple[list[Machine], list[Task]]:
    rng = random.Random(seed)
    fleet = [
        Machine(
            f"m{i:05d}",
            f"site{i % 4}",
            rng.choice("LLLMMH"),
            rng.random() > 0.05,
            min(1.0, rng.expovariate(12)),
        )
        for i in range(machines)
    ]
    work = [
        Task(
            f"t{i:06d}",
            rng.choice([15, 30, 45, 60, 90, 120]),
            rng.choice([None, None, None, "H", "M"]),
            None,
            rng.choice([None, None, rng.uniform(60, HORIZON)]),
            rng.choice([1.0, 1.0, 2.0, 5.0]),
        )
        for i in range(tasks)
    ]
    return fleet, work


def first_fit(fleet: list[Machine], work: list[Task]) -> tuple[dict[str, float], float]:
    """The baseline: each task, in order, to the first machine that may take it and has room."""
    started = time.perf_counter()
    usable, excluded = _excluded(fleet, MAX_RISK)
    load = [0.0] * len(usable)
    chosen: dict[int, int] = {}
    for ti, t in enumerate(work):
        for mi, m in enumerate(usable):
            if (t.machine_type is None or m.type == t.machine_type) and load[
                mi
            ] + t.duration_min <= HORIZON:
                chosen[ti] = mi
                load[mi] += t.duration_min
                break
    result = _schedule(work, usable, chosen, HORIZON, excluded)
    return result.objective, time.perf_counter() - started


def row(name: str, objective: dict[str, float], seconds: float) -> None:
    print(
        f"  {name:22} {seconds:8.2f}s  assigned {objective['assigned']:>6}  "
        f"makespan {objective['makespan_min']:>6.0f}  "
        f"failure cost {objective['expected_failure_cost']:>9.1f}  "
        f"lateness {objective['weighted_lateness_min']:>9.0f}  total {objective['total']:>10.1f}"
    )


def main() -> int:
    for machines, tasks, try_milp in [
        (12, 60, True),
        (40, 200, True),
        (200, 1000, False),
        (2000, 10000, False),
    ]:
        fleet, work = instance(machines, tasks, seed=machines)
        print(
            f"{machines} machines x {tasks} jobs (horizon {HORIZON:.0f} min, risk limit {MAX_RISK})"
        )
        objective, seconds = first_fit(fleet, work)
        row("first-fit (baseline)", objective, seconds)
        greedy = allocate(work, fleet, HORIZON, MAX_RISK, method="greedy")
        row("twin heuristic", greedy.objective, greedy.solver["seconds"])
        if try_milp:
            exact = allocate(work, fleet, HORIZON, MAX_RISK, method="milp")
            label = "optimal" if exact.solver.get("optimal") else "time limit"
            if exact.solver["name"] == "greedy":
                label += "; heuristic kept"
            row(f"twin MILP ({label})", exact.objective, exact.solver["seconds"])
        auto = allocate(work, fleet, HORIZON, MAX_RISK)
        print(f"  'auto' chose: {auto.solver['name']} ({auto.solver['pairs']} eligible pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
