"""Fleet models: trained on the twin's own history, on whatever numeric signals machines send.

A sample is one machine at the end of one history bucket. Its features: each signal's latest
value, its mean and standard deviation over each window (default 3 h and 24 h of event time),
the count of `error` events by code over the longest window, and the hours since the last
`maintenance` event by code. Its label: a `failure` event of that machine within the horizon
after the sample. The same function computes features for training and for live scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import SplineTransformer, StandardScaler

from twin.errors import InvalidRequest

HOUR_MS = 3_600_000
WINDOWS_H = (3, 24)
FEATURE_WINDOW_MS = max(WINDOWS_H) * HOUR_MS
_NEVER_H = 30 * 24.0  # "hours since" for a maintenance never seen: a month, the cap


class FleetTrainingError(InvalidRequest):
    """History that cannot train a model (too short, too few failures)."""


@dataclass(frozen=True)
class FleetSpec:
    """What a fleet model's features are made of (stored in its manifest)."""

    signals: tuple[str, ...]
    error_codes: tuple[str, ...]
    maintenance_codes: tuple[str, ...]
    bucket_ms: int

    @property
    def names(self) -> list[str]:
        names = []
        for s in self.signals:
            names.append(s)
            for w in WINDOWS_H:
                names += [f"{s}_mean_{w}h", f"{s}_std_{w}h"]
        names += [f"errors_{c}_{max(WINDOWS_H)}h" for c in self.error_codes]
        names += [f"hours_since_{c}" for c in self.maintenance_codes]
        return names

    def to_json(self) -> dict[str, Any]:
        return {
            "signals": list(self.signals),
            "error_codes": list(self.error_codes),
            "maintenance_codes": list(self.maintenance_codes),
            "bucket_ms": self.bucket_ms,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FleetSpec:
        return cls(
            tuple(data["signals"]),
            tuple(data["error_codes"]),
            tuple(data["maintenance_codes"]),
            data["bucket_ms"],
        )


@dataclass
class Series:
    """One machine's history as arrays: bucket starts, per-signal aggregates, event times."""

    starts: np.ndarray  # (B,) epoch ms
    signals: dict[str, np.ndarray]  # signal -> (B, 4): n, sum, sum of squares, last
    events: dict[tuple[str, str], np.ndarray]  # (type, code) -> sorted epoch ms


def series(buckets: list[Any], events: list[tuple[int, str, str]]) -> Series:
    """Arrays from `Bucket`s (oldest first) and (ts, type, code) events."""
    starts = np.asarray([b.start for b in buckets], dtype=np.int64)
    names = sorted({name for b in buckets for name in b.signals})
    signals = {}
    for name in names:
        block = np.full((len(buckets), 4), np.nan)
        block[:, :3] = 0.0
        for i, b in enumerate(buckets):
            agg = b.signals.get(name)
            if agg is not None:
                block[i] = agg
        signals[name] = block
    by_kind: dict[tuple[str, str], list[int]] = {}
    for ts, etype, code in events:
        by_kind.setdefault((etype, code), []).append(ts)
    return Series(starts, signals, {k: np.sort(np.asarray(v)) for k, v in by_kind.items()})


def features(
    spec: FleetSpec, data: Series, times: np.ndarray, last: dict[str, float] | None = None
) -> np.ndarray:
    """Feature rows (len(times), len(spec.names)) from closed buckets starting before each time.

    `last` overrides the latest values (live scoring knows fresher ones than the last bucket).
    """
    n_times = len(times)
    columns: list[np.ndarray] = []
    ends = data.starts + spec.bucket_ms
    upto = np.searchsorted(ends, times, side="right")  # buckets closed by each time
    for name in spec.signals:
        block = data.signals.get(name)
        if block is None:
            columns += [np.full(n_times, np.nan)] * (1 + 2 * len(WINDOWS_H))
            continue
        # Latest value: the last bucket up to each time that had the signal.
        has = ~np.isnan(block[:, 3])
        index = np.where(has, np.arange(len(has)), -1)
        latest_index = np.maximum.accumulate(index) if len(index) else index
        pick = np.where(upto > 0, latest_index[np.maximum(upto - 1, 0)] if len(index) else -1, -1)
        latest = np.where(
            pick >= 0, block[np.maximum(pick, 0), 3] if len(index) else np.nan, np.nan
        )
        if last is not None and name in last:
            latest = np.full(n_times, last[name])
        columns.append(latest)
        sums = np.vstack([np.zeros(3), np.cumsum(block[:, :3], axis=0)])
        for hours in WINDOWS_H:
            first = np.searchsorted(data.starts, times - hours * HOUR_MS, side="left")
            first = np.minimum(first, upto)
            n = sums[upto, 0] - sums[first, 0]
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = (sums[upto, 1] - sums[first, 1]) / n
                var = (sums[upto, 2] - sums[first, 2]) / n - mean * mean
            columns.append(np.where(n > 0, mean, np.nan))
            columns.append(np.where(n > 0, np.sqrt(np.maximum(var, 0.0)), np.nan))
    window = max(WINDOWS_H) * HOUR_MS
    for code in spec.error_codes:
        ts = data.events.get(("error", code), np.empty(0))
        count = np.searchsorted(ts, times, side="right") - np.searchsorted(
            ts, times - window, side="right"
        )
        columns.append(count.astype(float))
    for code in spec.maintenance_codes:
        ts = data.events.get(("maintenance", code), np.empty(0))
        before = np.searchsorted(ts, times, side="right") - 1
        since = np.where(
            before >= 0, (times - ts[np.maximum(before, 0)] if len(ts) else 0) / HOUR_MS, _NEVER_H
        )
        columns.append(np.minimum(since, _NEVER_H))
    return np.column_stack(columns) if columns else np.empty((n_times, 0))


def labels(data: Series, times: np.ndarray, horizon_ms: int) -> np.ndarray:
    """1 where a failure of the machine follows within `horizon_ms` after each time."""
    failures = np.sort(
        np.concatenate([v for (t, _), v in data.events.items() if t == "failure"] or [np.empty(0)])
    )
    after = np.searchsorted(failures, times, side="right")
    until = np.searchsorted(failures, times + horizon_ms, side="right")
    return (until > after).astype(int)


def spec_from(histories: dict[str, Series], bucket_ms: int) -> FleetSpec:
    signals = sorted({name for s in histories.values() for name in s.signals})
    errors = sorted({code for s in histories.values() for (t, code) in s.events if t == "error"})
    maint = sorted(
        {code for s in histories.values() for (t, code) in s.events if t == "maintenance"}
    )
    return FleetSpec(tuple(signals), tuple(errors), tuple(maint), bucket_ms)


def build_pipeline(C: float = 0.3) -> Pipeline:
    """Median-impute, a spline shape per feature, scale, logistic regression."""
    shape = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("shape", SplineTransformer(n_knots=5, degree=3, extrapolation="constant")),
        ]
    )
    return Pipeline(
        [
            ("features", shape),
            ("scale", StandardScaler()),
            ("classify", LogisticRegression(C=C, max_iter=10_000)),
        ]
    )


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
    data: Samples, horizon_ms: int, holdout: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """Masks: train (before the cut, less a horizon-wide gap so labels cannot leak) and held out."""
    cut = np.quantile(data.times, 1 - holdout)
    test = data.times >= cut
    train = data.times < cut - horizon_ms
    return train, test
