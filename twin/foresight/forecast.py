"""Risk over time: a machine's failure probability at each step if it keeps operating as now.

Two methods, and the answer says which:

- `process_model`, for a machine the default (AI4I) model scores and whose type is L, M or H:
  the AI4I process rolled forward. Tool wear grows one minute per minute of operation; every
  other signal recurs as the machine's recent operating points did (each recent reading's air
  and process temperature, speed and torque, so the temperature and power relations hold as
  observed). At each step the model scores every recent point at that step's wear, the
  overstrain load's torque taken over the points' spread (see `_process_paths`); their mean
  is the chance that one process fails, and `probability` the chance of a failure within the
  next `window` (default 30 min, the time a tool change takes: warning enough to act) of such
  processes (`window / minutes per process` of them). In this process wear never makes a tool
  safer, so the chance per process is made non-decreasing in the wear over the tool's whole
  life, from a fresh tool to the path's end (isotonic least squares), and the path reads its
  part of that curve: the spline's wiggles at low wear are noise, and a plan must not read
  them as a reason to change a tool that is nearly new, nor find a fresh tool riskier than the
  worn one it replaces (fitted along the path alone, a fresh tool's path pooled the wiggle
  into its first hours while the worn tool's path started past it). The band (`low`, `high`)
  is the 10th-90th percentile over bootstrap resamples of the points.
- `trend`, for any other machine: each signal's least-squares trend over the recent window,
  extrapolated from its live value; the band comes from drawing the slopes within their
  standard errors. A site model is fed the extrapolated readings through a fork of the twin's
  history, so its window features move as they would; its `probability` is its own (a failure
  within its label horizon), the default model's the chance that one reading's process fails.

`probability_window_min` says what window each probability covers. `expected_failures` sums
the chance of a failure in each step so far: what maintenance planning weighs. The summary
`p(t) = 1 / (1 + exp(-theta (t - t0)))` is fitted to the points by least squares (scipy).
Deterministic: the draws come from a fixed seed.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
from scipy.optimize import curve_fit
from scipy.special import expit, logit

from twin.foresight.scenario import MINUTE_MS, MINUTES_PER_PROCESS, WEAR
from twin.messages import CANONICAL_SIGNALS
from twin.model import Predictor, feature_matrix, missing_signals
from twin.model.fleet import features, series
from twin.model.training import STRAIN
from twin.risk import model_row
from twin.state import MachineSnapshot

POINTS = 64  # recent operating points the process model recurs, at most
DRAWS = 32  # bootstrap resamples or slope draws for the band
SITE_DRAWS = 8  # fewer for a site model: each draw feeds a history fork for the horizon
BAND = (10, 90)  # percentiles
SEED = 20_201  # fixed: the same machine and state give the same forecast
MAX_STEPS = 2_000
WINDOW_MIN = 30.0  # the process model's probability: of a failure within the next 30 min


def has_process_model(model: Predictor, snap: MachineSnapshot) -> bool:
    return (
        model.kind != "fleet"
        and snap.type in MINUTES_PER_PROCESS
        and not missing_signals(snap.values)
    )


class Trajectory:
    """Per step: the probability with its band and window, and the chance of a failure."""

    def __init__(
        self,
        method: str,
        times: np.ndarray,
        probability: np.ndarray,
        low: np.ndarray,
        high: np.ndarray,
        hazard: np.ndarray,
        window_min: float | None,
    ) -> None:
        self.method = method
        self.times = times
        self.probability = probability
        self.low = low
        self.high = high
        self.hazard = hazard  # chance of a failure within each step
        self.window_min = window_min


def trajectory(
    model: Predictor,
    snap: MachineSnapshot,
    horizon_min: float,
    step_min: float,
    window_min: float = WINDOW_MIN,
) -> Trajectory:
    return trajectories(model, [snap], horizon_min, step_min, window_min)[0]


def trajectories(
    model: Predictor,
    snaps: list[MachineSnapshot],
    horizon_min: float,
    step_min: float,
    window_min: float = WINDOW_MIN,
    new_until_min: float = 0.0,
) -> list[Trajectory]:
    """One path per snapshot. The process model's points of every snapshot are scored together
    (a scoring call has a fixed cost, so a fleet's plan makes one, not hundreds). With
    `new_until_min`, the process model reads a tool younger than that at that age: a plan's
    minimum interval, below which a model's view of wear is not a reason for anything."""
    times = np.arange(0.0, horizon_min + step_min / 2, step_min)
    process = [i for i, snap in enumerate(snaps) if has_process_model(model, snap)]
    scored: dict[int, tuple[np.ndarray, int]] = {}
    if process:
        chosen = [snaps[i] for i in process]
        paths = _process_paths(model, chosen, times, step_min, new_until_min)
        scored = dict(zip(process, paths, strict=True))
    return [
        _process(*scored[i], snap, times, step_min, window_min)
        if i in scored
        else _trend(model, snap, times, step_min)
        for i, snap in enumerate(snaps)
    ]


def _points(snap: MachineSnapshot) -> dict[str, np.ndarray]:
    """The recent operating points, each at the live tool wear."""
    others = [s for s in CANONICAL_SIGNALS if s != WEAR]
    points = [v for _, v in snap.rows if all(s in v for s in others)][-POINTS:] or [snap.values]
    columns = {s: np.asarray([p[s] for p in points], dtype=float) for s in others}
    columns[WEAR] = np.full(len(points), float(snap.values[WEAR]))
    return columns


def _process_paths(
    model: Predictor,
    snaps: list[MachineSnapshot],
    times: np.ndarray,
    step_min: float,
    new_until_min: float = 0.0,
) -> list[tuple[np.ndarray, int]]:
    """Per snapshot, the model's chance that a process fails at every (step, recent point),
    the steps led by as many of the tool's past steps as its wear holds (from the fresh tool's
    end of the step grid), and how many lead.

    Along a path only the tool wear moves, and the default model's logit is a sum of feature
    groups of which three see the wear: the wear's own spline (a function of the wear) and the
    load's spline and the load x type product (functions of wear x torque, per type). So each
    point is scored once, at the live wear, and the three groups are taken out and put back at
    every step's wear from their response on a fine grid (`_wear_response`).

    The load's torque is not the point's own: it is integrated over the spread of the recent
    points' torque, taken as normal (the AI4I process draws each process's torque around its
    set point), by Gauss-Hermite quadrature. A worn tool overstrains in the torque's far tail
    (above ~70 Nm at 160 min on an L machine: 2 processes in 1,000), which 64 points rarely
    hold, so their average alone put the risk's first rise a step or more late, and plans
    with it. The numbers equal scoring every (step, point, node) row with its load set to the
    step's wear x the node's torque, within the grids' interpolation (~3e-5 relative; the test
    holds it to 1e-4)."""
    moving = [model.groups.index(g) for g in WEAR_GROUPS]
    columns = [_points(snap) for snap in snaps]
    rows = np.vstack([feature_matrix(c, s.type) for c, s in zip(columns, snaps, strict=True)])
    logits, contributions = model.logits(rows)
    base = logits - contributions[:, moving].sum(axis=1)
    out, start = [], 0
    for snap, c in zip(snaps, columns, strict=True):
        n = len(c[WEAR])
        wear_grid, load_grid = _wear_response(model, str(snap.type))
        lead = int(snap.values[WEAR] // step_min)  # the tool's past, in steps
        wear = snap.values[WEAR] + np.concatenate([-step_min * np.arange(lead, 0, -1), times])
        wear = np.maximum(wear, new_until_min)  # younger, a tool counts as new
        load = np.interp(wear[:, None] * torque_nodes(c["torque_nm"]), LOAD_GRID, load_grid)
        logit = (
            base[start : start + n][None, :, None]
            + np.interp(wear, WEAR_GRID, wear_grid)[:, None, None]
            + load[:, None, :]  # (steps, points, nodes)
        )
        out.append(((expit(logit) * NODE_WEIGHTS).sum(axis=2), lead))
        start += n
    return out


def torque_nodes(torque: np.ndarray) -> np.ndarray:
    """The quadrature's torques (weights NODE_WEIGHTS) for a normal fitted to the points."""
    spread = float(torque.std(ddof=1)) if len(torque) > 1 else 0.0
    return np.asarray(float(torque.mean()) + spread * NODES)


# Probabilists' Gauss-Hermite: the expectation over a standard normal, exact for polynomials
# of degree < 48; its outer nodes reach 8.5 standard deviations.
NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(24)
NODE_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()
WEAR_GROUPS = (WEAR, "wear_torque_min_nm", STRAIN)  # the default model's groups wear moves
# Past the training data both splines are constant, as np.interp is past a grid's ends.
WEAR_GRID = np.linspace(0.0, 400.0, 4_001)  # minutes of tool wear
LOAD_GRID = np.linspace(0.0, 30_000.0, 15_001)  # wear x torque, min Nm
_RESPONSES: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}


def _wear_response(model: Predictor, machine_type: str) -> tuple[np.ndarray, np.ndarray]:
    """The logit the wear's own group adds at each WEAR_GRID wear, and the logit the two load
    groups add at each LOAD_GRID load, for this type; cached per model version and type."""
    key = (model.version, machine_type)
    if key not in _RESPONSES:
        index = [model.groups.index(g) for g in WEAR_GROUPS]
        # Any other values do: the groups read here see the wear or the load alone.
        fixed = {"air_temp_k": 300.0, "process_temp_k": 310.0, "rotational_speed_rpm": 1500.0}
        by_wear = {k: np.full(len(WEAR_GRID), v) for k, v in fixed.items()}
        by_wear.update({"torque_nm": np.full(len(WEAR_GRID), 40.0), WEAR: WEAR_GRID})
        by_load = {k: np.full(len(LOAD_GRID), v) for k, v in fixed.items()}
        by_load.update({"torque_nm": LOAD_GRID / 100.0, WEAR: np.full(len(LOAD_GRID), 100.0)})
        _, wear = model.logits(feature_matrix(by_wear, machine_type))
        _, load = model.logits(feature_matrix(by_load, machine_type))
        _RESPONSES[key] = (wear[:, index[0]], load[:, index[1:]].sum(axis=1))
    return _RESPONSES[key]


def _process(
    per_point: np.ndarray,
    lead: int,
    snap: MachineSnapshot,
    times: np.ndarray,
    step_min: float,
    window_min: float,
) -> Trajectory:
    """From the model's chance per (step, recent point) that a process fails, its first
    `lead` steps the tool's past (they shape the monotone curve, the path starts after them)."""
    assert snap.type is not None
    minutes = MINUTES_PER_PROCESS[snap.type]

    def within(per_process: np.ndarray, window: float) -> np.ndarray:
        """The chance of a failure in `window` minutes of processes like these."""
        return np.asarray(1.0 - (1.0 - per_process) ** (window / minutes))

    points = per_point.shape[1]
    resamples = np.random.default_rng(SEED).integers(0, points, size=(DRAWS, points))
    means = np.apply_along_axis(nondecreasing, 0, per_point[:, resamples].mean(axis=2))[lead:]
    per_process = nondecreasing(per_point.mean(axis=1))[lead:]
    probability = within(per_process, window_min)
    low, high = (within(np.percentile(means, q, axis=1), window_min) for q in BAND)
    # The chance of a failure within each step [t, t + step): the wear grows through it, so the
    # chance per process is its middle's (the mean of its two ends), not its start's, which
    # read a steep rise a step late (an L tool's risk triples in 10 minutes past 150).
    middle = np.append((per_process[:-1] + per_process[1:]) / 2, per_process[-1])
    hazard = within(middle, step_min)
    return Trajectory("process_model", times, probability, low, high, hazard, window_min)


def nondecreasing(y: np.ndarray) -> np.ndarray:
    """The closest non-decreasing sequence in least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for value in y.tolist():
        blocks.append([value, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, n2), (m1, n1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return np.repeat([b[0] for b in blocks], [int(b[1]) for b in blocks])


def _trends(snap: MachineSnapshot) -> dict[str, tuple[float, float]]:
    """Per signal: its slope per minute and the slope's standard error, over the recent rows."""
    out = {}
    for name in snap.values:
        pts = [(ts, v[name]) for ts, v in snap.rows if name in v]
        if len(pts) < 3:
            out[name] = (0.0, 0.0)
            continue
        x = np.asarray([(ts - snap.latest_ts) / MINUTE_MS for ts, _ in pts])
        y = np.asarray([v for _, v in pts])
        spread = float(((x - x.mean()) ** 2).sum())
        if spread <= 0:
            out[name] = (0.0, 0.0)
            continue
        slope, intercept = np.polyfit(x, y, 1)
        residual = y - (slope * x + intercept)
        sd = math.sqrt(float((residual**2).sum()) / max(1, len(pts) - 2))
        out[name] = (float(slope), sd / math.sqrt(spread))
    return out


def _trend(
    model: Predictor, snap: MachineSnapshot, times: np.ndarray, step_min: float
) -> Trajectory:
    trends = _trends(snap)
    names = list(snap.values)
    slope = np.asarray([trends[n][0] for n in names])
    error = np.asarray([trends[n][1] for n in names])
    level = np.asarray([snap.values[n] for n in names])
    draws = DRAWS if model.kind != "fleet" else SITE_DRAWS
    drawn = np.random.default_rng(SEED).standard_normal((draws, len(names)))
    z = np.vstack([np.zeros(len(names)), drawn])
    slopes = slope + z * error  # (1 + draws, signals): the central path first
    if model.kind == "fleet":
        p = np.vstack([_site_path(model, snap, names, level, s, times) for s in slopes]).T
        horizon_ms = model.manifest.get("training_data", {}).get("label_horizon_ms")
        window = horizon_ms / MINUTE_MS if horizon_ms else None
        hazard = 1.0 - (1.0 - p[:, 0]) ** (step_min / window) if window else p[:, 0]
    else:
        paths = level + slopes[None, :, :] * times[:, None, None]  # (steps, paths, signals)
        flat = paths.reshape(-1, len(names))
        rows = feature_matrix({n: flat[:, i] for i, n in enumerate(names)}, snap.type)
        p = model.score(rows)[0].reshape(len(times), len(slopes))
        window = None
        span = (snap.rows[-1][0] - snap.rows[0][0]) / MINUTE_MS if len(snap.rows) > 1 else 0.0
        per_min = (len(snap.rows) - 1) / span if span > 0 else 1.0
        hazard = 1.0 - (1.0 - p[:, 0]) ** (per_min * step_min)
    low, high = (np.percentile(p[:, 1:], q, axis=1) for q in BAND)
    return Trajectory("trend", times, p[:, 0], low, high, hazard, window)


def _site_path(
    model: Predictor,
    snap: MachineSnapshot,
    names: list[str],
    level: np.ndarray,
    slope: np.ndarray,
    times: np.ndarray,
) -> np.ndarray:
    """A site model's probability at each step along one extrapolated path: readings once a
    minute fed to a fork of the twin's history, then its features at each step's time."""
    assert model.fleet is not None  # a site model's path
    history = snap.history.fork()
    for minute in range(1, int(times[-1]) + 1):
        ts = snap.latest_ts + minute * MINUTE_MS
        values = dict(zip(names, (level + slope * minute).tolist(), strict=True))
        history.add(ts, values, {k: (v, ts) for k, v in values.items()})
    data = series(list(history.buckets), history.events(), snap.attributes)
    at = snap.latest_ts + (times * MINUTE_MS).astype(np.int64)
    rows = features(model.fleet, data, at)
    now = model_row(model, snap.values, snap.attributes, snap.history, snap.latest_ts)
    assert now.values is not None  # scored already
    rows[0] = now.values  # now: the live values
    return np.asarray(model.score(rows)[0])


def fit_sigmoid(times: np.ndarray, p: np.ndarray) -> dict[str, float | None]:
    """theta (per minute) and t0 (minutes) of p(t) = 1/(1+exp(-theta (t - t0))), and the rmse."""
    clipped = np.clip(p, 1e-6, 1 - 1e-6)
    line = np.polyfit(times, logit(clipped), 1) if len(times) > 1 else np.zeros(2)
    theta, intercept = float(line[0]), float(line[1])
    span = max(float(times[-1]), 1.0)
    if abs(theta) < 1e-9:
        rmse = float(np.sqrt(np.mean((p - expit(intercept)) ** 2)))
        return {"theta": 0.0, "t0_min": None, "rmse": round(rmse, 6)}
    t0 = float(np.clip(-intercept / theta, -100 * span, 100 * span))
    with contextlib.suppress(RuntimeError, ValueError):  # else the logit line stands
        fitted, _ = curve_fit(
            lambda t, a, b: expit(a * (t - b)),
            times,
            p,
            p0=(float(np.clip(theta, -5, 5)), t0),
            bounds=((-5.0, -100 * span), (5.0, 100 * span)),
        )
        theta, t0 = float(fitted[0]), float(fitted[1])
    rmse = float(np.sqrt(np.mean((p - expit(theta * (times - t0))) ** 2)))
    return {"theta": round(float(theta), 6), "t0_min": round(float(t0), 3), "rmse": round(rmse, 6)}


def forecast(
    model: Predictor,
    snap: MachineSnapshot,
    horizon_min: float,
    step_min: float,
    window_min: float = WINDOW_MIN,
) -> dict[str, Any]:
    path = trajectory(model, snap, horizon_min, step_min, window_min)
    crossed = np.nonzero(path.probability >= model.threshold)[0]
    expected = np.cumsum(path.hazard)
    return {
        "machine": snap.machine,
        "method": path.method,
        "model_version": model.version,
        "threshold": model.threshold,
        "horizon_min": horizon_min,
        "step_min": step_min,
        "probability_window_min": path.window_min,
        "points": [
            {
                "t_min": round(float(t), 3),
                "probability": round(float(p), 6),
                "low": round(float(lo), 6),
                "high": round(float(hi), 6),
                "expected_failures": round(float(e), 6),
            }
            for t, p, lo, hi, e in zip(
                path.times, path.probability, path.low, path.high, expected, strict=True
            )
        ],
        "crosses_threshold_at_min": float(path.times[crossed[0]]) if len(crossed) else None,
        "p_t_fit": fit_sigmoid(path.times, path.probability),
    }
