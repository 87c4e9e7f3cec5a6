"""Maintenance policies on the simulated fleet, costed: which one a plant should run.

A seeded fleet (devices/, the AI4I process) runs a number of processes per machine under each
policy, with the same process draws for every policy (the simulator keeps the tools' draws in a
stream of their own), so the policies differ only by what they do to the tools:

- run to failure: a tool is changed when it fails (TWF or OSF);
- fixed interval: a tool change when the tool has cut for the interval (several intervals are
  tried and each reported: the best of them is the baseline to beat, tuned with hindsight);
- react at threshold: a tool change as soon as a reading's live risk reaches the threshold;
- planned: the readings go into a live twin, `POST /maintenance/plans` plans the next 8 h from
  its forecasts, the plan is accepted, and the windows that start before the next plan are
  carried out (the next plan's windows replace those not carried out, as the twin supersedes
  them). The first plan comes 10 minutes in, as soon as the twin has a few readings of every
  machine, then one every simulated hour;
- for reference, not a baseline: one fixed interval per machine type, the best the
  simulator's own hazards give (`--type-intervals`): what knowing each type's wear-out exactly
  is worth over one interval for all, about the most a plan could gain here.

The policies that read risk (react at threshold, planned) run with each of two models of the
default kind: the bundled AI4I model, and the plant's own, fitted the way `twin train --csv`
fits it on a history the plant exported in the AI4I format: another fleet of the same process
(its own seed and machines, tools replaced as the process replaces them), as many processes
per machine. The bundled model is the AI4I data set's view of this process, and its wear curve
is off where a plan looks hardest (a fresh tool far safer than a half-worn one, a hump at
100-130 min on H machines); the plant's own model has smaller ones.

Every policy shares the crews (a tool change takes a free one when it starts; with none free,
the machine runs on until one is) and the costs: a failure (the machine stops for a repair,
counted as downtime too), a maintenance action, an hour of downtime. Failures that no tool
change prevents (heat dissipation, power, random) hit every policy alike; they are counted
apart.

Run: `python -m bench.maintenance [--machines 50] [--processes 2000] [--seed 3] [--crews 10]`
(about 12 minutes at the defaults).
"""

from __future__ import annotations

import argparse
import csv
import heapq
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from devices.simulator import Event, Machine, make_fleet
from tests.conftest import feed_pipeline
from twin.app import create_app
from twin.config import Settings
from twin.model import BUNDLED_CSV, Predictor, Registry, feature_row, fit, read_ai4i_csv
from twin.model.training import AI4I_COLUMNS, AI4I_LABEL
from twin.service import Twin

COSTS = {"failure": 10_000.0, "maintenance": 200.0, "downtime_per_h": 300.0}
TOOL_CHANGE_MIN = 30
REPAIR_MIN = 60
WEAR_FAILURES = ("TWF", "OSF")
MINUTE_MS = 60_000
HOUR_MIN = 60
FIRST_PLAN_MIN = 10
HISTORY_SEED = 1_000  # the plant's own history: another fleet, seed + this


@dataclass
class Tally:
    wear_failures: int = 0
    other_failures: int = 0
    actions: int = 0
    downtime_min: float = 0.0

    def costs(self) -> dict[str, float]:
        failure = COSTS["failure"] * (self.wear_failures + self.other_failures)
        maintenance = COSTS["maintenance"] * self.actions
        downtime = COSTS["downtime_per_h"] * self.downtime_min / 60
        return {
            "failure": failure,
            "maintenance": maintenance,
            "downtime": downtime,
            "total": failure + maintenance + downtime,
        }


class Crews:
    """Tool changes wait for a free crew, taken when the change starts."""

    def __init__(self, count: int) -> None:
        self.free_at = [0.0] * count

    def free(self, at: float) -> float:
        """When a crew is free, from `at` on."""
        return max(at, min(self.free_at))

    def take(self, at: float, minutes: float) -> None:
        crew = int(np.argmin(self.free_at))
        self.free_at[crew] = at + minutes


@dataclass
class Simulated:
    machine: Machine
    clock: float = 0.0  # simulated minutes
    done: int = 0  # processes
    pending: float | None = None  # a booked tool change starts then, or once a crew is free
    messages: list[tuple[str, Any]] = field(default_factory=list)  # for the twin, if it listens


Hook = Callable[[Simulated, dict[str, float]], None]


class World:
    """The fleet under one policy."""

    def __init__(self, args: argparse.Namespace, record: bool) -> None:
        self.processes = args.processes
        self.crews = Crews(args.crews)
        self.tally = Tally()
        self.record = record
        self.base = int(time.time() * 1000) - 30 * 86_400_000  # event times in the past
        self.fleet = []
        for machine in make_fleet(args.machines, args.seed):
            machine.auto_tool_change = False
            sim = Simulated(machine)
            status = {"state": "online", "type": machine.type, "ts": self.base}
            self._say(sim, "status", status)
            self.fleet.append(sim)

    def _say(self, sim: Simulated, kind: str, body: dict[str, Any]) -> None:
        if self.record:
            sim.messages.append((f"factory/bench/{sim.machine.name}/{kind}", body))

    def _event(self, sim: Simulated, event: Event) -> None:
        ts = self.base + round(sim.clock * MINUTE_MS)
        self._say(sim, "event", {"type": event.type, "code": event.code, "ts": ts})

    def active(self) -> list[Simulated]:
        return [s for s in self.fleet if s.done < self.processes]

    def book(self, sim: Simulated, at: float) -> None:
        if sim.pending is None:
            sim.pending = at

    def supersede(self) -> None:
        """A new plan's windows replace those not carried out yet, as the twin's accept
        supersedes them: a machine stopped for a repair past its window's start has not
        worn its tool as the plan that set the window expected."""
        for sim in self.fleet:
            sim.pending = None

    def run(self, until: float, after: Hook | None) -> None:
        """Every machine up to simulated minute `until` (or its last process), in time order
        across the fleet, so that crews are taken in the order the changes come."""
        queue = [(sim.clock, i) for i, sim in enumerate(self.active())]
        active = self.active()
        heapq.heapify(queue)
        while queue:
            _, i = heapq.heappop(queue)
            sim = active[i]
            if sim.clock >= until or sim.done >= self.processes:
                continue
            self._next(sim, after)
            heapq.heappush(queue, (sim.clock, i))

    def _next(self, sim: Simulated, after: Hook | None) -> None:
        """One process, or the tool change booked for now if a crew is free (else the
        machine runs on until one is)."""
        m = sim.machine
        if sim.pending is not None and sim.clock >= sim.pending:
            sim.pending = self.crews.free(sim.clock)
        if sim.pending is not None and sim.clock >= sim.pending:
            self.crews.take(sim.clock, TOOL_CHANGE_MIN)
            sim.clock += TOOL_CHANGE_MIN
            self.tally.actions += 1
            self.tally.downtime_min += TOOL_CHANGE_MIN
            self._event(sim, m.service())
            sim.pending = None
            return
        values, events = m.step()
        sim.clock += m.process_minutes
        sim.done += 1
        ts = self.base + round(sim.clock * MINUTE_MS)
        self._say(sim, "telemetry", {"seq": sim.done, "ts": ts, "values": values})
        for event in events:
            self._event(sim, event)
        modes = {e.code for e in events if e.type == "failure"}
        if modes:
            if modes & set(WEAR_FAILURES):
                self.tally.wear_failures += 1
            else:
                self.tally.other_failures += 1
            sim.clock += REPAIR_MIN
            self.tally.downtime_min += REPAIR_MIN
        if after is not None:
            after(sim, values)


def run_to_failure(args: argparse.Namespace) -> Tally:
    world = World(args, record=False)
    world.run(float("inf"), None)
    return world.tally


def fixed_interval(args: argparse.Namespace, interval: float | dict[str, float]) -> Tally:
    """One interval for every machine, or one per machine type."""
    world = World(args, record=False)

    def after(sim: Simulated, values: dict[str, float]) -> None:
        due = interval if isinstance(interval, float) else interval[sim.machine.type]
        if sim.machine.tool_wear_min >= due:
            world.book(sim, sim.clock)

    world.run(float("inf"), after)
    return world.tally


def at_threshold(args: argparse.Namespace, model: Predictor) -> Tally:
    """Scored in batches of 10 simulated minutes, as the live twin scores in micro-batches:
    a reading over the threshold books a tool change at its own time."""
    world = World(args, record=False)
    batch: list[tuple[Simulated, dict[str, float], float]] = []

    def after(sim: Simulated, values: dict[str, float]) -> None:
        batch.append((sim, values, sim.clock))

    until = 0.0
    while world.active():
        until += 10
        world.run(until, after)
        if batch:
            rows = np.asarray([feature_row(v, sim.machine.type) for sim, v, _ in batch])
            for (sim, _, at), p in zip(batch, model.score(rows)[0], strict=True):
                if p >= model.threshold:
                    world.book(sim, at)
            batch.clear()
    return world.tally


def plant_history(args: argparse.Namespace, path: Path) -> Path:
    """The CSV a plant would export from its own history, in the AI4I format: another fleet of
    the same process (seed + HISTORY_SEED, machines named h...), tools replaced as the process
    replaces them (at the tool's life, or after a failure), `args.processes` processes each."""
    columns = ["UDI", "Product ID", "Type", *AI4I_COLUMNS, AI4I_LABEL]
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(columns)
        udi = 0
        for machine in make_fleet(args.machines, args.seed + HISTORY_SEED, prefix="h"):
            for _ in range(args.processes):
                values, events = machine.step()
                udi += 1
                failed = any(e.type == "failure" for e in events)
                signals = [values[s] for s in AI4I_COLUMNS.values()]
                out.writerow([udi, machine.name, machine.type, *signals, int(failed)])
    return path


def planned(
    args: argparse.Namespace, data_dir: Path, min_interval: float
) -> tuple[Tally, list[float], int]:
    """The twin plans: feed it the readings so far, plan 8 h, accept, carry out what starts
    before the next plan; the first plan at FIRST_PLAN_MIN, then every simulated hour."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        mqtt_url="mqtt://127.0.0.1:9",  # fed through its inbox: the broker is not measured
        data_dir=data_dir,
        journal_commit_ms=5,
        score_interval_ms=1,
    )
    twin = Twin(settings)
    world = World(args, record=True)
    seconds: list[float] = []
    windows = 0
    request = {
        "horizon": "8h",
        "step": "10m",
        "crews": args.crews,
        "actions": [{"name": "tool_change", "duration_min": TOOL_CHANGE_MIN}],
        "costs": COSTS,
        "min_interval_min": min_interval,
    }
    with TestClient(create_app(settings, twin)) as client:
        start = FIRST_PLAN_MIN
        while world.active():
            world.run(start, None)  # up to the plan: a process that crosses it finishes first
            messages = [m for sim in world.fleet for m in sim.messages]
            for sim in world.fleet:
                sim.messages.clear()
            if messages:
                feed_pipeline(twin, *messages, wait=120)
            active = [s.machine.name for s in world.active()]
            if not active:
                break
            began = time.perf_counter()
            plan = client.post("/maintenance/plans", json={**request, "machines": active})
            assert plan.status_code == 200, plan.text
            body = plan.json()
            client.post(f"/maintenance/plans/{body['id']}/accept").raise_for_status()
            seconds.append(time.perf_counter() - began)
            by_name = {s.machine.name: s for s in world.fleet}
            following = (start // HOUR_MIN + 1) * HOUR_MIN  # the next plan
            world.supersede()
            for w in body["windows"]:
                if w["start_min"] < following - start:
                    world.book(by_name[w["machine"]], start + w["start_min"])
                    windows += 1
            start = following
            hour = start // HOUR_MIN
            if hour % 24 == 0:
                done = sum(s.done for s in world.fleet)
                print(
                    f"  planned: {hour} simulated hours, {done:,} processes, "
                    f"last plan {seconds[-1] * 1000:.0f} ms",
                    flush=True,
                )
        advice = []
        for sim in world.fleet:  # setpoint advice on every machine, as the fleet stands
            began = time.perf_counter()
            client.post(f"/machines/{sim.machine.name}/advice", json={}).raise_for_status()
            advice.append(time.perf_counter() - began)
        print(
            f"  advice through the API: median {statistics.median(advice) * 1000:.0f} ms, max "
            f"{max(advice) * 1000:.0f} ms a machine",
            flush=True,
        )
    return world.tally, seconds, windows


def row(name: str, tally: Tally) -> str:
    c = tally.costs()
    return (
        f"{name:34} {tally.wear_failures:>6} {tally.other_failures:>6} {tally.actions:>7} "
        f"{tally.downtime_min / 60:>9.1f} {c['failure']:>12,.0f} {c['maintenance']:>10,.0f} "
        f"{c['downtime']:>10,.0f} {c['total']:>12,.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, default=50)
    parser.add_argument("--processes", type=int, default=2000, help="per machine")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--crews", type=int, default=10, help="tool changes at once")
    parser.add_argument(
        "--intervals",
        default="140,150,160,170,180,190,210",
        help="fixed-interval baselines, minutes of wear",
    )
    parser.add_argument(
        "--type-intervals",
        default="L:150,M:160,H:180",
        help="a reference, not a baseline: an interval per machine type, the best the "
        "simulator's own hazards give (what a policy could gain over one interval for all)",
    )
    parser.add_argument(
        "--min-intervals", default="120", help="the plans' min_interval_min (120: the API default)"
    )
    args = parser.parse_args()
    print(
        f"{args.machines} simulated machines x {args.processes} processes (seed {args.seed}), "
        f"{args.crews} crews; failure {COSTS['failure']:,.0f} + {REPAIR_MIN} min repair, tool "
        f"change {COSTS['maintenance']:,.0f} + {TOOL_CHANGE_MIN} min, downtime "
        f"{COSTS['downtime_per_h']:,.0f}/h",
        flush=True,
    )
    root = Path(tempfile.mkdtemp(prefix="bench-maintenance-"))
    try:
        sources = {"AI4I model": BUNDLED_CSV, "own model": plant_history(args, root / "own.csv")}
        models = {}
        for name, csv_path in sources.items():
            data = read_ai4i_csv(csv_path)
            began = time.perf_counter()
            fitted = fit(data, full_report=False)
            models[name] = Registry(root / name / "models").add(fitted, data)
            print(
                f"{name}: {len(data.y):,} rows, {data.positives:,} failures, fitted in "
                f"{time.perf_counter() - began:.0f} s; out-of-fold AP "
                f"{fitted.metrics['cv5']['average_precision']:.3f}",
                flush=True,
            )
        results: list[tuple[str, Tally]] = [("run to failure", run_to_failure(args))]
        for interval in (float(i) for i in args.intervals.split(",")):
            results.append((f"fixed interval {interval:.0f} min", fixed_interval(args, interval)))
        for name, model in models.items():
            results.append((f"react at threshold, {name}", at_threshold(args, model)))
        per_type = {k: float(v) for k, v in (i.split(":") for i in args.type_intervals.split(","))}
        label = "/".join(f"{v:.0f}" for v in per_type.values())
        reference = (f"per type {label} (reference)", fixed_interval(args, per_type))
        ours: list[tuple[str, Tally, list[float], int]] = []
        for name in models:
            for minimum in (float(m) for m in args.min_intervals.split(",")):
                label = f"planned, {name}, min {minimum:.0f}"
                print(f"{label}:", flush=True)
                run = root / f"{name} {minimum:.0f}"
                shutil.copytree(root / name / "models", run / "models")
                tally, seconds, windows = planned(args, run, minimum)
                ours.append((label, tally, seconds, windows))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(
        f"{'policy':34} {'wear':>6} {'other':>6} {'actions':>7} {'downtime':>9} "
        f"{'failures':>12} {'maint.':>10} {'downtime':>10} {'total':>12}"
    )
    units = ("fail.", "fail.", "", "h", "cost", "cost", "cost", "cost")
    widths = (6, 6, 7, 9, 12, 10, 10, 12)
    print(f"{'':34} " + " ".join(f"{u:>{w}}" for u, w in zip(units, widths, strict=True)))
    for name, t in results:
        print(row(name, t))
    for name, t, _, _ in ours:
        print(row(name, t))
    print(row(*reference))
    best_name, best = min(results, key=lambda r: r[1].costs()["total"])
    print()
    gain = best.costs()["total"] - reference[1].costs()["total"]
    print(
        f"what one interval per type would gain over the best baseline ({best_name}), with the "
        f"simulator's own hazards: {gain:+,.0f} ({gain / best.costs()['total']:+.2%} of its total)"
    )
    for name, t, seconds, windows in ours:
        mine, theirs = t.costs()["total"], best.costs()["total"]
        print(
            f"{name} vs the best baseline ({best_name}): {theirs - mine:+,.0f} "
            f"({(theirs - mine) / theirs:+.2%} of its total); the part a policy can change "
            f"(wear failures, maintenance, downtime): {_preventable(best):,.0f} -> "
            f"{_preventable(t):,.0f}"
        )
        print(
            f"  {len(seconds)} plans, {windows} windows carried out; plan + accept through the "
            f"API: median {statistics.median(seconds) * 1000:.0f} ms, max "
            f"{max(seconds) * 1000:.0f} ms ({args.machines} machines, 8 h in 10 min slots)"
        )


def _preventable(tally: Tally) -> float:
    c = tally.costs()
    return (
        c["total"]
        - COSTS["failure"] * tally.other_failures
        - (COSTS["downtime_per_h"] * REPAIR_MIN / 60 * tally.other_failures)
    )


if __name__ == "__main__":
    main()
