"""The twin as a simulator: what-if, risk over time and setpoint advice, on detached snapshots.

Every question is answered on a `MachineSnapshot` (a copy taken under the fleet's lock, with a
fork of the twin's history) with the model that scores the machine live, through the scorer's
own row builder: nothing here writes to the live state, and the answers equal what the live
scorer would give a machine whose readings carried the scenario.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twin.errors import InvalidRequest, NotFound
from twin.foresight.advice import Controls, advise, load_controls
from twin.foresight.forecast import MAX_STEPS, Trajectory, forecast, trajectories
from twin.foresight.scenario import TOOL_CHANGE, WEAR, Scenario, check, project, whatif
from twin.model import Predictor
from twin.planning.maintenance import Action, Costs, MachinePath, plan
from twin.planning.schedule import MaintenanceSchedule
from twin.risk import RiskScorer, model_for, model_row
from twin.state import FleetState, MachineSnapshot

__all__ = [
    "Action",
    "Controls",
    "Costs",
    "Foresight",
    "PlanRequest",
    "Scenario",
    "Trajectory",
    "load_controls",
    "plan_maintenance",
]


class Foresight:
    """What-if, forecasts and advice for the live fleet (any thread: reads only)."""

    def __init__(
        self,
        state: FleetState,
        scorer: RiskScorer,
        controls: Controls,
        schedule: MaintenanceSchedule,
    ) -> None:
        self.state = state
        self.scorer = scorer
        self.controls = controls
        self.schedule = schedule

    def machine(self, machine: str) -> tuple[Predictor, MachineSnapshot]:
        """The model that scores `machine` and a snapshot of it; 404, or 422 if unscorable."""
        snap = self.state.snapshot(machine)
        if snap is None:
            raise NotFound(f"no machine {machine!r} has reported")
        model = model_for(self.scorer.models(), snap.site)
        if model is None:
            raise InvalidRequest(f"{machine} cannot be scored: no active model")
        # A 422 naming the missing signals, before any projection: the row is enough to know.
        row = model_row(model, snap.values, snap.attributes, snap.history, snap.latest_ts)
        if row.values is None:
            raise InvalidRequest(f"{machine} cannot be scored: {row.reason}")
        serviced = snap.last_events.get("maintenance")
        changed = serviced and serviced["code"] == TOOL_CHANGE and serviced["ts"] >= snap.latest_ts
        if changed and WEAR in snap.values:
            # The tool was changed at or after the last reading (its history has the event
            # already; a failure's repair carries its reading's time): the future starts from
            # a new tool.
            snap = dataclasses.replace(snap, values={**snap.values, WEAR: 0.0})
        return model, snap

    def whatif(self, machine: str, scenario: Scenario) -> dict[str, Any]:
        model, snap = self.machine(machine)
        return whatif(model, snap, scenario)

    def forecast(
        self, machine: str, horizon_min: float, step_min: float, window_min: float
    ) -> dict[str, Any]:
        check_steps(horizon_min, step_min)
        model, snap = self.machine(machine)
        return forecast(model, snap, horizon_min, step_min, window_min)

    def paths(
        self,
        machines: list[str],
        horizon_min: float,
        step_min: float,
        actions: list[str],
        new_until_min: float = 0.0,
    ) -> tuple[
        dict[str, tuple[MachineSnapshot, Trajectory, dict[str, Trajectory]]], dict[str, str]
    ]:
        """Per machine: its snapshot, its path if left alone, and after each action done now
        (for planning), scored together per model; and the machines left out, with why. A tool
        younger than `new_until_min` counts as new (see `trajectories`)."""
        found: dict[str, tuple[Predictor, MachineSnapshot]] = {}
        skipped: dict[str, str] = {}
        for machine in machines:
            try:
                model, snap = self.machine(machine)
                for action in actions:
                    check(model, snap, Scenario(events=[action]))
            except InvalidRequest as exc:
                skipped[machine] = str(exc)
                continue
            found[machine] = (model, snap)
        by_model: dict[str, list[str]] = {}
        for machine, (model, _) in found.items():
            by_model.setdefault(model.version, []).append(machine)
        out = {}
        for names in by_model.values():
            model = found[names[0]][0]
            snaps = [found[m][1] for m in names]
            scenarios = [project(s, Scenario(events=[a])) for s in snaps for a in actions]
            paths = trajectories(
                model, snaps + scenarios, horizon_min, step_min, new_until_min=new_until_min
            )
            for i, machine in enumerate(names):
                after = paths[len(names) + i * len(actions) : len(names) + (i + 1) * len(actions)]
                out[machine] = (snaps[i], paths[i], dict(zip(actions, after, strict=True)))
        return out, skipped

    def advice(
        self,
        machine: str,
        target: float | None,
        controllable: Mapping[str, tuple[float, float]] | None,
    ) -> dict[str, Any]:
        model, snap = self.machine(machine)
        bounds = dict(controllable) if controllable else self.controls.for_type(snap.type)
        bounds = {k: v for k, v in bounds.items() if controllable or k in snap.values}
        if not bounds:
            raise InvalidRequest(
                f"no controllable signal of {machine} is configured (type {snap.type}); "
                "give 'controllable' or set TWIN_CONTROLS"
            )
        return advise(model, snap, model.threshold if target is None else target, bounds)


def check_steps(horizon_min: float, step_min: float) -> None:
    if step_min > horizon_min:
        raise InvalidRequest("the step must not be longer than the horizon")
    if horizon_min / step_min > MAX_STEPS:
        raise InvalidRequest(f"at most {MAX_STEPS} steps: make the step longer")


@dataclass(frozen=True)
class PlanRequest:
    horizon_min: float
    step_min: float
    crews: int
    actions: list[Action]
    costs: Costs
    interval_min: float
    min_interval_min: float = 0.0
    machines: list[str] | None = None
    site: str | None = None


def plan_maintenance(foresight: Foresight, request: PlanRequest) -> dict[str, Any]:
    """A maintenance plan from every chosen machine's forecast; stored, not yet accepted."""
    check_steps(request.horizon_min, request.step_min)
    created = int(time.time() * 1000)
    fleet = foresight.state.summaries()
    if request.machines is not None:
        names = request.machines
        unknown = sorted(set(names) - {t.machine for t in fleet})
        if unknown:
            raise InvalidRequest(f"no machine {', '.join(unknown)} has reported")
    else:
        names = [t.machine for t in fleet if request.site is None or t.site == request.site]
    slots = round(request.horizon_min / request.step_min)
    actions = [a.name for a in request.actions]
    # Below the minimum interval a tool counts as new: the bundled model finds a new tool half
    # as likely to fail as a 30-minute-old one, which would make any tool change pay for itself.
    found, left_out = foresight.paths(
        sorted(names), request.horizon_min, request.step_min, actions, request.min_interval_min
    )
    if request.machines is not None and left_out:
        raise InvalidRequest("; ".join(left_out.values()))
    skipped = [{"machine": m, "reason": why} for m, why in left_out.items()]
    paths = [
        MachinePath(
            machine,
            snap.site,
            base.hazard[:slots],
            {a: t.hazard[:slots] for a, t in after.items()},
            since_maintenance(snap),
        )
        for machine, (snap, base, after) in sorted(found.items())
    ]
    result = plan(
        paths,
        request.actions,
        request.costs,
        request.crews,
        request.step_min,
        request.interval_min,
        request.min_interval_min,
    )
    body = {
        "horizon_min": request.horizon_min,
        "step_min": request.step_min,
        "crews": request.crews,
        "min_interval_min": request.min_interval_min,
        "actions": [dataclasses.asdict(a) for a in request.actions],
        "costs": dataclasses.asdict(request.costs),
        "machines": [p.machine for p in paths],
        "skipped": skipped,
        **result,
    }
    plan_id = foresight.schedule.add_plan(created, body)
    return {**body, "id": plan_id, "created_at": created, "accepted_at": None}


def since_maintenance(snap: MachineSnapshot) -> float | None:
    """Minutes of operation since the last maintenance: the tool wear where the machine sends
    it (it counts the tool's minutes), else event time since its last maintenance event."""
    if WEAR in snap.values:
        return snap.values[WEAR]
    last = snap.last_events.get("maintenance")
    return None if last is None else max(0.0, (snap.latest_ts - last["ts"]) / 60_000)
