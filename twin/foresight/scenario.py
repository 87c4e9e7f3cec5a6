"""What-if: a machine's risk with some values changed, after maintenance, after operating on.

A scenario is applied to a `MachineSnapshot` (a detached copy of the twin), never to the twin:
the changed values replace the live ones, each event is a maintenance action recorded in the
snapshot's history fork (`tool_change` also sets `tool_wear_min` to 0), and `operate_min`
minutes of operation are rolled forward as readings fed to that fork once a minute: the held
values, with `tool_wear_min` growing one minute per minute of operation (the AI4I process: wear
counts the tool's cutting minutes). The projected snapshot is scored through `model_row`, the
scorer's own path, so a site model's window features are recomputed from the rolled-forward
history exactly as if the machine had sent those readings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from twin.errors import InvalidRequest
from twin.messages import DeviceEvent
from twin.model import Predictor
from twin.model.predictor import ranked
from twin.risk import model_row
from twin.state import MachineSnapshot

WEAR = "tool_wear_min"
TOOL_CHANGE = "tool_change"
MINUTE_MS = 60_000
# AI4I 2020's process: each quality variant adds this many minutes of tool wear per process,
# the minutes its tool cuts; a process model needs the machine's type to be one of them.
MINUTES_PER_PROCESS = {"L": 2, "M": 3, "H": 5}


@dataclass(frozen=True)
class Scenario:
    values: Mapping[str, float] = dataclasses.field(default_factory=dict)
    events: Sequence[str] = ()
    operate_min: float = 0.0


@dataclass(frozen=True)
class Scored:
    """One scoring of a (projected) machine."""

    probability: float
    threshold: float
    model_version: str
    contributions: dict[str, float]

    def public(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def actions(model: Predictor) -> list[str]:
    """The maintenance actions a scenario may apply for `model`: a tool change always, and
    every maintenance code a site model's features know."""
    known = [TOOL_CHANGE]
    if model.fleet is not None:
        events = model.fleet.events
        known += [c for kind, c in events if kind == "maintenance" and c != TOOL_CHANGE]
    return known


def check(model: Predictor, snap: MachineSnapshot, scenario: Scenario) -> None:
    """A 422 naming what the scenario asks that this machine or model does not have."""
    unknown = sorted(set(scenario.values) - set(snap.values))
    if unknown:
        raise InvalidRequest(
            f"{snap.machine} has no signal {', '.join(unknown)}; it sends "
            f"{', '.join(sorted(snap.values)) or 'nothing yet'}"
        )
    allowed = actions(model)
    bad = sorted(set(scenario.events) - set(allowed))
    if bad:
        raise InvalidRequest(
            f"unknown maintenance action(s) {', '.join(bad)}; known: {', '.join(allowed)}"
        )


def project(snap: MachineSnapshot, scenario: Scenario) -> MachineSnapshot:
    """The snapshot after the scenario (see the module docstring); `snap` is left as it was."""
    values = {**snap.values, **{k: float(v) for k, v in scenario.values.items()}}
    history = snap.history.fork()
    ts = snap.latest_ts
    for action in scenario.events:
        if action == TOOL_CHANGE and WEAR in values:
            values[WEAR] = 0.0
        history.event(DeviceEvent(type="maintenance", code=action, ts=ts))
    for minute in range(1, round(scenario.operate_min) + 1):
        ts = snap.latest_ts + minute * MINUTE_MS
        if WEAR in values:
            values[WEAR] += 1.0
        history.add(ts, dict(values), {k: (v, ts) for k, v in values.items()})
    return dataclasses.replace(snap, values=values, latest_ts=ts, history=history)


def score(model: Predictor, snap: MachineSnapshot) -> Scored:
    """The model's risk for the snapshot; a 422 when the model cannot score it."""
    row = model_row(model, snap.values, snap.attributes, snap.history, snap.latest_ts)
    if row.values is None:
        raise InvalidRequest(f"{snap.machine} cannot be scored: {row.reason}")
    probabilities, shares = model.score(np.asarray([row.values]))
    return Scored(
        float(probabilities[0]),
        model.threshold,
        model.version,
        ranked(model.groups, shares[0].tolist()),
    )


def whatif(model: Predictor, snap: MachineSnapshot, scenario: Scenario) -> dict[str, object]:
    check(model, snap, scenario)
    return {
        "machine": snap.machine,
        "model_version": model.version,
        "now": score(model, snap).public(),
        "whatif": score(model, project(snap, scenario)).public(),
        "scenario": {
            "values": dict(scenario.values),
            "events": list(scenario.events),
            "operate_min": scenario.operate_min,
        },
    }
