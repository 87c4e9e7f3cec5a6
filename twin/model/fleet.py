"""Fleet models: trained on the twin's own history, on whatever numeric signals machines send.

A sample is one machine at the end of one history bucket. Its label: a `failure` event of that
machine within the horizon after the sample. Its features come in four families, and training
keeps the ones its time-split gate shows help (`twin.trainer`):

- `latest`: each signal's latest value, and `<signal>_missing`, 1 when the machine has not sent
  the signal within the shortest window (the value is then imputed, and the model has learned
  from training rows with that signal blanked what its absence means);
- `windows`: per signal and window (default 3 h and 24 h of event time), the mean and standard
  deviation of its readings, the min and max of its bucket means, the slope of those means per
  hour, and `n`, how many buckets held the signal (how much the window saw);
- `events`: per event type and code seen (failure, maintenance, error), the count in each
  window and the hours since the last one;
- `attributes`: what the machine's status says of it: its `type` (one column per type seen)
  and its numeric properties (those most machines send, e.g. `age_years`).

Beside them, `interactions`: products of two of the chosen columns, kept only where the gate
shows they help. The same function computes features for training and for live scoring.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, SplineTransformer, StandardScaler

from twin.errors import InvalidRequest

HOUR_MS = 3_600_000
DEFAULT_WINDOWS_MS = (3 * HOUR_MS, 24 * HOUR_MS)
EVENT_TYPES = ("failure", "maintenance", "error")  # the device events features count
FAMILIES = ("latest", "windows", "events", "attributes")
WINDOW_STATS = ("mean", "std", "min", "max", "slope", "n")
_NEVER_H = 30 * 24.0  # "hours since" an event never seen: a month, the cap

Attributes = dict[str, float | str]  # a machine's `type` and numeric status properties


class FleetTrainingError(InvalidRequest):
    """History that cannot train a model (too short, too few failures)."""


def window_label(ms: int) -> str:
    """`3h`, `30m`, `7d`: how feature names spell a window."""
    if ms % (24 * HOUR_MS) == 0 and ms >= 24 * HOUR_MS * 2:
        return f"{ms // (24 * HOUR_MS)}d"
    if ms % HOUR_MS == 0:
        return f"{ms // HOUR_MS}h"
    return f"{ms // 60_000}m" if ms % 60_000 == 0 else f"{ms // 1000}s"


@dataclass(frozen=True)
class FleetSpec:
    """What a fleet model's features are made of (stored in its manifest)."""

    signals: tuple[str, ...]
    events: tuple[tuple[str, str], ...]  # (type, code)
    types: tuple[str, ...]  # machine types, one column each
    numeric: tuple[str, ...]  # numeric status properties
    bucket_ms: int
    windows_ms: tuple[int, ...] = DEFAULT_WINDOWS_MS
    families: tuple[str, ...] = FAMILIES
    shape: str = "spline"
    interactions: tuple[tuple[str, str], ...] = ()  # products of two base columns, by name

    @property
    def stale_ms(self) -> int:
        """A signal not sent for this long (the shortest window) counts as missing."""
        return min(self.windows_ms)

    def columns(self) -> list[tuple[str, str]]:
        """(feature name, explanation group) of each column, in order: the families' columns,
        then the interactions."""
        base = self.base_columns()
        groups = dict(base)
        return base + [(f"{a}*{b}", f"{groups[a]}*{groups[b]}") for a, b in self.interactions]

    def base_columns(self) -> list[tuple[str, str]]:
        """(feature name, explanation group) of the families' columns."""
        out: list[tuple[str, str]] = []
        labels = [window_label(w) for w in self.windows_ms]
        for s in self.signals:
            if "latest" in self.families:
                out += [(s, s), (f"{s}_missing", s)]
            if "windows" in self.families:
                out += [(f"{s}_{stat}_{w}", s) for w in labels for stat in WINDOW_STATS]
        if "events" in self.families:
            for kind, code in self.events:
                group = f"{kind}_{code}"
                out += [(f"{group}_count_{w}", group) for w in labels]
                out.append((f"hours_since_{group}", group))
        if "attributes" in self.families:
            out += [(f"type_{t}", "type") for t in self.types]
            out += [(name, name) for name in self.numeric]
        return out

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.columns()]

    @property
    def groups(self) -> list[str]:
        return [group for _, group in self.columns()]

    def narrowed(
        self,
        families: tuple[str, ...],
        shape: str,
        interactions: tuple[tuple[str, str], ...] = (),
    ) -> FleetSpec:
        return dataclasses.replace(
            self,
            families=tuple(f for f in FAMILIES if f in families),
            shape=shape,
            interactions=interactions,
        )

    def mask(self, of: FleetSpec) -> np.ndarray:
        """Which of `of`'s columns (a wider spec's, with no interactions) are this spec's
        families' columns."""
        mine = {name for name, _ in self.base_columns()}
        return np.asarray([name in mine for name in of.names])

    def interact(self, base: np.ndarray) -> np.ndarray:
        """`base` (rows of the families' columns) with the interactions' products appended."""
        if not self.interactions:
            return base
        index = {name: i for i, (name, _) in enumerate(self.base_columns())}
        products = [base[:, index[a]] * base[:, index[b]] for a, b in self.interactions]
        return np.column_stack([base, *products])

    def to_json(self) -> dict[str, Any]:
        return {
            "signals": list(self.signals),
            "events": [list(e) for e in self.events],
            "types": list(self.types),
            "numeric": list(self.numeric),
            "bucket_ms": self.bucket_ms,
            "windows_ms": list(self.windows_ms),
            "families": list(self.families),
            "shape": self.shape,
            "interactions": [list(pair) for pair in self.interactions],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FleetSpec:
        return cls(
            tuple(data["signals"]),
            tuple((kind, code) for kind, code in data["events"]),
            tuple(data["types"]),
            tuple(data["numeric"]),
            data["bucket_ms"],
            tuple(data["windows_ms"]),
            tuple(data["families"]),
            data["shape"],
            tuple((a, b) for a, b in data["interactions"]),
        )


@dataclass
class Series:
    """One machine's history as arrays: bucket starts, per-signal aggregates, event times."""

    starts: np.ndarray  # (B,) epoch ms
    signals: dict[str, np.ndarray]  # signal -> (B, 4): n, sum, sum of squares, last
    events: dict[tuple[str, str], np.ndarray]  # (type, code) -> sorted epoch ms
    attributes: Attributes = field(default_factory=dict)


def series(
    buckets: list[Any], events: list[tuple[int, str, str]], attributes: Attributes | None = None
) -> Series:
    """Arrays from `Bucket`s (oldest first), (ts, type, code) events and the attributes."""
    starts = np.asarray([b.start for b in buckets], dtype=np.int64)
    names = sorted({name for b in buckets for name in b.signals})
    signals = {
        name: np.asarray([b.signals.get(name, _UNSENT) for b in buckets], dtype=float).reshape(
            len(buckets), 4
        )
        for name in names
    }
    by_kind: dict[tuple[str, str], list[int]] = {}
    for ts, etype, code in events:
        if etype in EVENT_TYPES:
            by_kind.setdefault((etype, code), []).append(ts)
    return Series(
        starts,
        signals,
        {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in by_kind.items()},
        dict(attributes or {}),
    )


_UNSENT = (0.0, 0.0, 0.0, np.nan)  # a bucket's aggregate of a signal it did not hold


def attributes_of(machine_type: str | None, properties: Mapping[str, object]) -> Attributes:
    """A machine's attributes as features see them: its type and its numeric properties."""
    out: Attributes = {}
    for key, value in properties.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
            out[key] = float(value)
    if machine_type:
        out["type"] = machine_type
    return out


def machine_type(attributes: Attributes) -> str | None:
    """The type among a machine's attributes, if it has one."""
    kind = attributes.get("type")
    return kind if isinstance(kind, str) else None


class _RangeExtreme:
    """`fn` (np.minimum or np.maximum) of `values[:, first:upto]` along the buckets, for every
    signal at once, by a sparse table: O(S B log B) to build, one lookup per level used."""

    def __init__(self, values: np.ndarray, fn: Any) -> None:
        self.fn = fn
        self.table = [values]
        span = 1
        while 2 * span <= values.shape[1]:
            prev = self.table[-1]
            self.table.append(fn(prev[:, :-span], prev[:, span:]))
            span *= 2

    def __call__(self, first: np.ndarray, upto: np.ndarray) -> np.ndarray:
        """(S, T): the extreme over each [first, upto), NaN where the range is empty."""
        width = upto - first
        out = np.full((self.table[0].shape[0], len(first)), np.nan)
        ok = width > 0
        level = np.floor(np.log2(np.maximum(width, 1))).astype(int)
        for k in np.unique(level[ok]):
            rows = ok & (level == k)
            row = self.table[k]
            out[:, rows] = self.fn(row[:, first[rows]], row[:, upto[rows] - (1 << k)])
        return out


def _signal_columns(
    spec: FleetSpec, data: Series, times: np.ndarray, last: Mapping[str, float] | None
) -> np.ndarray:
    """(T, S, per-signal columns): each signal's latest-value and window columns, in
    `FleetSpec.columns` order. A signal the series lacks reads as never sent."""
    n_times, n_buckets = len(times), len(data.starts)
    blocks = np.empty((len(spec.signals), n_buckets, 4))
    for i, name in enumerate(spec.signals):
        blocks[i] = data.signals.get(name, _UNSENT)
    ends = data.starts + spec.bucket_ms
    upto = np.searchsorted(ends, times, side="right")  # buckets closed by each time
    out: list[np.ndarray] = []  # each (S, T)
    if "latest" in spec.families:
        latest = np.full((len(spec.signals), n_times), np.nan)
        if n_buckets:
            has = ~np.isnan(blocks[:, :, 3])
            index = np.maximum.accumulate(np.where(has, np.arange(n_buckets), -1), axis=1)
            pick = np.where(upto > 0, index[:, np.maximum(upto - 1, 0)], -1)
            picked = np.maximum(pick, 0)
            fresh = (pick >= 0) & (times - ends[picked] <= spec.stale_ms)
            values = np.take_along_axis(blocks[:, :, 3], picked, axis=1)
            latest = np.where(fresh, values, np.nan)
        for i, name in enumerate(spec.signals):
            if last is not None and name in last:
                latest[i] = float(last[name])
        out += [latest, np.isnan(latest).astype(float)]
    if "windows" in spec.families:
        has = blocks[:, :, 0] > 0
        hours = (data.starts - (data.starts[0] if n_buckets else 0)) / HOUR_MS
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(has, blocks[:, :, 1] / blocks[:, :, 0], 0.0)
        t = np.where(has, hours, 0.0)
        stacked = np.stack(
            [blocks[:, :, 0], blocks[:, :, 1], blocks[:, :, 2], has, t, t * t, means, t * means],
            axis=2,
        )
        sums = np.concatenate(
            [np.zeros((len(spec.signals), 1, 8)), np.cumsum(stacked, axis=1)], axis=1
        )
        low = _RangeExtreme(np.where(has, means, np.inf), np.minimum)
        high = _RangeExtreme(np.where(has, means, -np.inf), np.maximum)
        for w in spec.windows_ms:
            first = np.minimum(np.searchsorted(data.starts, times - w, side="left"), upto)
            n, total, squares, k, st, stt, sm, stm = np.moveaxis(
                sums[:, upto] - sums[:, first], 2, 0
            )
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = total / n
                std = np.sqrt(np.maximum(squares / n - mean * mean, 0.0))
                slope = (k * stm - st * sm) / (k * stt - st * st)
            seen = n > 0
            lo, hi = low(first, upto), high(first, upto)
            out += [
                np.where(seen, mean, np.nan),
                np.where(seen, std, np.nan),
                np.where(np.isfinite(lo), lo, np.nan),
                np.where(np.isfinite(hi), hi, np.nan),
                np.where((k >= 2) & np.isfinite(slope), slope, np.nan),
                k,
            ]
    return np.stack(out, axis=2).transpose(1, 0, 2) if out else np.empty((n_times, 0, 0))


def features(
    spec: FleetSpec, data: Series, times: np.ndarray, last: Mapping[str, float] | None = None
) -> np.ndarray:
    """Feature rows (len(times), len(spec.names)) from closed buckets ending by each time.

    `last` overrides the latest values (live scoring knows fresher ones than the last bucket).
    """
    n_times = len(times)
    columns: list[np.ndarray] = []
    if spec.signals and ({"latest", "windows"} & set(spec.families)):
        columns.append(_signal_columns(spec, data, times, last).reshape(n_times, -1))
    if "events" in spec.families:
        for kind in spec.events:
            ts = data.events.get(kind, np.empty(0, dtype=np.int64))
            through = np.searchsorted(ts, times, side="right")
            for w in spec.windows_ms:
                before = np.searchsorted(ts, times - w, side="right")
                columns.append((through - before).astype(float)[:, None])
            since = np.full(n_times, _NEVER_H)
            if len(ts):
                seen = through > 0
                since[seen] = (times[seen] - ts[through[seen] - 1]) / HOUR_MS
            columns.append(np.minimum(since, _NEVER_H)[:, None])
    if "attributes" in spec.families:
        kind_of = machine_type(data.attributes)
        columns += [np.full((n_times, 1), float(kind_of == t)) for t in spec.types]
        for name in spec.numeric:
            value = data.attributes.get(name)
            columns.append(np.full((n_times, 1), value if isinstance(value, float) else np.nan))
    return spec.interact(np.hstack(columns) if columns else np.empty((n_times, 0)))


def labels(data: Series, times: np.ndarray, horizon_ms: int) -> np.ndarray:
    """1 where a failure of the machine follows within `horizon_ms` after each time."""
    failures = np.sort(
        np.concatenate([v for (t, _), v in data.events.items() if t == "failure"] or [np.empty(0)])
    )
    after = np.searchsorted(failures, times, side="right")
    until = np.searchsorted(failures, times + horizon_ms, side="right")
    return (until > after).astype(int)


def spec_from(
    histories: dict[str, Series], bucket_ms: int, windows_ms: tuple[int, ...] = DEFAULT_WINDOWS_MS
) -> FleetSpec:
    """Every family, over what the histories hold: a numeric attribute counts when at least
    half the machines send it."""
    signals = sorted({name for s in histories.values() for name in s.signals})
    events = sorted({kind for s in histories.values() for kind in s.events})
    types = sorted(
        {str(s.attributes["type"]) for s in histories.values() if "type" in s.attributes}
    )
    counts: dict[str, int] = {}
    for s in histories.values():
        for name, value in s.attributes.items():
            if name != "type" and isinstance(value, float):
                counts[name] = counts.get(name, 0) + 1
    numeric = sorted(name for name, n in counts.items() if 2 * n >= len(histories))
    return FleetSpec(
        tuple(signals), tuple(events), tuple(types), tuple(numeric), bucket_ms, windows_ms
    )


def build_pipeline(shape: str = "spline", C: float = 0.3) -> Pipeline:
    """Median-impute, a spline shape per feature (or the value itself), scale, logistic
    regression."""
    shaped: Any = (
        SplineTransformer(n_knots=5, degree=3, extrapolation="constant")
        if shape == "spline"
        else FunctionTransformer(feature_names_out="one-to-one")
    )
    steps = Pipeline(
        [("impute", SimpleImputer(strategy="median", keep_empty_features=True)), ("shape", shaped)]
    )
    return Pipeline(
        [
            ("features", steps),
            ("scale", StandardScaler()),
            ("classify", LogisticRegression(C=C, max_iter=10_000)),
        ]
    )


def blank_signals(spec: FleetSpec, X: np.ndarray, seed: int = 0) -> np.ndarray:
    """`X` (rows of the families' columns) with, in each row, one signal gone as a dead sensor
    leaves it (no latest value, no readings in any window): training sees these beside the
    full rows, so the model learns what a missing signal means."""
    if not spec.signals:
        return X[:0]
    counts = {f"{s}_n_{window_label(w)}" for s in spec.signals for w in spec.windows_ms}
    out = X.copy()
    dropped = np.random.default_rng(seed).integers(0, len(spec.signals), len(X))
    for i, (name, group) in enumerate(spec.base_columns()):
        if group in spec.signals:
            rows = np.flatnonzero(dropped == spec.signals.index(group))
            out[rows, i] = 1.0 if name == f"{group}_missing" else 0.0 if name in counts else np.nan
    return out


@dataclass
class Samples:
    """Feature rows, labels, sample times and machines, sorted by time."""

    X: np.ndarray
    y: np.ndarray
    times: np.ndarray
    machines: np.ndarray


def samples(spec: FleetSpec, histories: dict[str, Series], horizon_ms: int) -> Samples:
    """One sample per machine per closed bucket, labelled by failures within the horizon."""
    parts = []
    for machine, data in histories.items():
        if len(data.starts) == 0:
            continue
        times = data.starts + spec.bucket_ms
        parts.append(
            (
                features(spec, data, times),
                labels(data, times, horizon_ms),
                times,
                [machine] * len(times),
            )
        )
    if not parts:
        raise FleetTrainingError("no history stored yet for this scope")
    X = np.vstack([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    times = np.concatenate([p[2] for p in parts])
    machines = np.concatenate([np.asarray(p[3]) for p in parts])
    order = np.argsort(times, kind="stable")
    return Samples(X[order], y[order], times[order], machines[order])


def time_split(
    times: np.ndarray, horizon_ms: int, holdout: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """Masks: train (before the cut, less a horizon-wide gap so labels cannot leak) and held out."""
    cut = np.quantile(times, 1 - holdout)
    test = times >= cut
    train = times < cut - horizon_ms
    return train, test


def machine_split(machines: np.ndarray, holdout: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Masks: the samples of most machines, and those of the others (about `holdout` of them,
    every fifth in a seeded shuffle): how a model does on machines it never saw."""
    names = np.unique(machines)
    rng = np.random.default_rng(0)
    held = set(rng.permutation(names)[: max(1, round(len(names) * holdout))].tolist())
    test = np.isin(machines, list(held))
    return ~test, test
