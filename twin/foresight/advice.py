"""Setpoint advice: the smallest change of the controllable signals that brings the risk under a
target, or the honest answer that none within the bounds does, and which maintenance would.

The distance is Euclidean in units of each signal's range (`(x - x0) / (high - low)`), so a
change of 100 rpm on a 1,600 rpm range weighs like 3.75 Nm on a 60 Nm one. The search is a grid
over the box (dense enough to find a feasible region of a spline model's risk, which need not be
convex: too slow is a heat-dissipation failure, too fast a power failure), then scipy's SLSQP
from the nearest feasible grid point, minimising the distance under `p(x) <= target` within the
bounds. Only the live values change (what-if with `operate_min` 0), so a site model's window
features stay as the history has them. Deterministic: no random start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.optimize import NonlinearConstraint, minimize

from twin.config import read_toml
from twin.errors import InvalidRequest
from twin.foresight.scenario import Scenario, actions, project, score
from twin.model import Predictor, feature_matrix
from twin.risk import model_row
from twin.state import MachineSnapshot

BUNDLED_CONTROLS = Path(__file__).with_name("controls.toml")
GRID = {1: 401, 2: 61, 3: 19, 4: 9}  # points per signal: under 7,000 candidates
MAX_CONTROLLABLE = max(GRID)

Bounds = dict[str, tuple[float, float]]


class Controls(BaseModel):
    """The controls file: per machine type (`"*"` for any other), signal -> [low, high]."""

    model_config = ConfigDict(extra="forbid")

    types: dict[str, dict[str, tuple[float, float]]] = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> Controls:
        for kind, signals in self.types.items():
            if len(signals) > MAX_CONTROLLABLE:
                raise ValueError(f"type {kind}: at most {MAX_CONTROLLABLE} controllable signals")
            for name, (low, high) in signals.items():
                if not low < high:
                    raise ValueError(f"type {kind}: {name}: the low bound must be below the high")
        return self

    def for_type(self, machine_type: str | None) -> Bounds:
        return dict(self.types.get(machine_type or "*") or self.types.get("*") or {})


def load_controls(path: Path | None) -> Controls:
    """The controls file (`TWIN_CONTROLS`), else the bundled one; a bad file names itself."""
    return read_toml(path or BUNDLED_CONTROLS, Controls)


class _Risk:
    """The model's probability for many settings of the controllable signals at once."""

    def __init__(self, model: Predictor, snap: MachineSnapshot, names: list[str]) -> None:
        self.model = model
        self.names = names
        self.snap = snap
        self.spec = model.fleet
        if self.spec is not None:
            row = model_row(model, snap.values, snap.attributes, snap.history, snap.latest_ts)
            assert row.values is not None  # scored already
            base = [name for name, _ in self.spec.base_columns()]
            self.base = np.asarray(row.values)[: len(base)]
            self.columns = [base.index(n) for n in names]  # the latest values' features

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if self.spec is not None:
            rows = np.tile(self.base, (len(X), 1))
            rows[:, self.columns] = X
            rows = self.spec.interact(rows)
        else:
            values: dict[str, np.ndarray] = {
                k: np.full(len(X), v) for k, v in self.snap.values.items()
            }
            values.update({n: X[:, i] for i, n in enumerate(self.names)})
            rows = feature_matrix(values, self.snap.type)
        return np.asarray(self.model.score(rows)[0])


def advise(
    model: Predictor,
    snap: MachineSnapshot,
    target: float,
    bounds: Mapping[str, tuple[float, float]],
) -> dict[str, Any]:
    started = time.perf_counter()
    names = sorted(bounds)
    unknown = [n for n in names if n not in snap.values]
    if unknown:
        raise InvalidRequest(f"{snap.machine} has no signal {', '.join(unknown)} to control")
    if not 1 <= len(names) <= MAX_CONTROLLABLE:
        raise InvalidRequest(f"give 1 to {MAX_CONTROLLABLE} controllable signals")
    for n in names:
        if not bounds[n][0] < bounds[n][1]:
            raise InvalidRequest(f"{n}: the low bound must be below the high")
    now = score(model, snap)
    low = np.asarray([bounds[n][0] for n in names], dtype=float)
    high = np.asarray([bounds[n][1] for n in names], dtype=float)
    span = high - low
    x0 = np.asarray([snap.values[n] for n in names], dtype=float)
    risk = _Risk(model, snap, names)

    def distance(x: np.ndarray) -> np.ndarray:
        return np.asarray((((x - x0) / span) ** 2).sum(axis=-1))

    def gradient(x: np.ndarray) -> np.ndarray:  # of the distance
        return np.asarray(2 * (x - x0) / span**2)

    axes = [np.linspace(lo, hi, GRID[len(names)]) for lo, hi in zip(low, high, strict=True)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(names))
    grid = np.vstack([np.clip(x0, low, high), grid])  # the nearest point in the box first
    p = risk(grid)
    feasible = np.nonzero(p <= target)[0]
    answer: dict[str, Any] = {
        "machine": snap.machine,
        "model_version": model.version,
        "target": target,
        "controllable": {n: [float(bounds[n][0]), float(bounds[n][1])] for n in names},
        "now": now.public(),
    }
    inside = bool((x0 >= low).all() and (x0 <= high).all())
    if now.probability <= target and inside:
        answer.update(feasible=True, change={}, advice="the risk is under the target already")
        answer["result"] = now.public()
    elif len(feasible):
        best = grid[feasible[np.argmin(distance(grid[feasible]))]]
        x = _refine(risk, distance, gradient, best, low, high, target)
        change = {
            n: {
                "from": float(x0[i]),
                "to": round(float(x[i]), 4),
                "delta": round(float(x[i] - x0[i]), 4),
            }
            for i, n in enumerate(names)
            if abs(x[i] - x0[i]) > 1e-9 * max(1.0, span[i])
        }
        result = score(
            model, project(snap, Scenario(values={n: c["to"] for n, c in change.items()}))
        )
        words = [
            f"{'raise' if c['delta'] > 0 else 'lower'} {n} from {c['from']:g} to {c['to']:g}"
            for n, c in change.items()
        ]
        answer.update(
            feasible=True,
            change=change,
            distance=round(float(np.sqrt(distance(x))), 6),
            result=result.public(),
            advice=" and ".join(words) + f": risk {result.probability:.2f} (target {target:.2f})",
        )
    else:
        lowest = grid[int(np.argmin(p))]
        setting = {n: float(lowest[i]) for i, n in enumerate(names)}
        tried = []
        for action in actions(model):
            here = score(model, project(snap, Scenario(events=[action])))
            best_setting = score(model, project(snap, Scenario(values=setting, events=[action])))
            tried.append(
                {
                    "action": action,
                    "probability": here.probability,
                    "brings_under_target": here.probability <= target,
                    "with_best_setting": {
                        "values": setting,
                        "probability": best_setting.probability,
                    },
                }
            )
        helps = [t for t in tried if t["brings_under_target"]]
        answer.update(
            feasible=False,
            change=None,
            best_within_bounds={"values": setting, "probability": float(p.min())},
            maintenance=tried,
            advice=(
                f"no setting within the bounds brings the risk under {target:.2f} "
                f"(the lowest is {float(p.min()):.2f}); "
                + (
                    f"{helps[0]['action']} would ({helps[0]['probability']:.2f})"
                    if helps
                    else "neither would any known maintenance action"
                )
            ),
        )
    answer["seconds"] = round(time.perf_counter() - started, 4)
    return answer


Vector = npt.NDArray[np.float64]


REFINE_ITERATIONS = 30
STEP = 1e-6  # the constraint's finite differences, in units of each signal's range


def _refine(
    risk: _Risk,
    distance: Callable[[Vector], np.ndarray],
    gradient: Callable[[Vector], np.ndarray],
    best: Vector,
    low: Vector,
    high: Vector,
    target: float,
) -> Vector:
    """SLSQP from the nearest feasible grid point; the grid point if it finds nothing nearer.

    The distance's gradient is exact, and the constraint and its finite differences are scored
    in one call per point: scoring has a fixed cost per call (a few ms), and where the risk has
    a cliff (the heat-dissipation edge) SLSQP iterates until its limit."""
    h = STEP * (high - low)
    last: dict[bytes, Vector] = {}

    def at(x: Vector) -> Vector:
        """The risk at x and at x + h along each signal, from one scoring call."""
        key = x.tobytes()
        if key not in last:
            last.clear()
            last[key] = risk(np.vstack([x, x + np.diag(h)]))
        return last[key]

    def objective(x: Vector) -> float:
        return float(distance(x))

    def margin(x: Vector) -> Vector:
        return target - at(x)[:1]  # >= 0: at or under the target

    def margin_jacobian(x: Vector) -> Vector:
        p = at(x)
        return np.asarray(-((p[1:] - p[0]) / h)[None, :], dtype=np.float64)

    bounds: list[tuple[float, float]] = list(zip(low.tolist(), high.tolist(), strict=True))
    start: Vector = np.asarray(best, dtype=np.float64)
    refined = minimize(
        objective,
        start,
        jac=gradient,
        method="SLSQP",
        bounds=bounds,
        constraints=NonlinearConstraint(margin, 0.0, np.inf, jac=margin_jacobian),
        tol=1e-9,
        options={"maxiter": REFINE_ITERATIONS},
    )
    x: Vector = np.clip(refined.x, low, high)
    if float(risk(x[None, :])[0]) <= target and objective(x) < objective(best):
        return x
    return best
