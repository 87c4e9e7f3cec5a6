"""Background training of fleet models from the twin's own history (`POST /model/train`).

One job at a time, off the ingest path: it reads a history store through its own SQLite
connection, and reaches the models and machines through a `ModelHome`: `twin serve`'s registry,
scorer and live state (`LocalModels`), or the cluster's shared models and fleet view
(`twin.cluster.training`). The candidate is measured on the latest slice of time, held out,
next to the model that scores that scope now, and promoted only if it is not worse there
(unless forced).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

import numpy as np
import sklearn
from sklearn.metrics import average_precision_score
from sklearn.pipeline import Pipeline

from twin.errors import Conflict
from twin.history import HistoryStore
from twin.model import DEFAULT_SCOPE, Predictor, Registry, feature_row, fit_threshold
from twin.model.fleet import (
    FAMILIES,
    Attributes,
    FleetSpec,
    FleetTrainingError,
    Samples,
    Series,
    blank_signals,
    build_pipeline,
    features,
    machine_split,
    machine_type,
    samples,
    series,
    spec_from,
    time_split,
    window_label,
)
from twin.model.registry import new_version
from twin.model.training import best_threshold, quality
from twin.risk import RiskScorer, site_scope
from twin.state import FleetState

log = logging.getLogger(__name__)

MIN_TRAIN_POSITIVES = 10
MIN_HELD_OUT_POSITIVES = 3
MIN_GROUPED_MACHINES = 10  # fewer, and the gate judges on the time split alone
MIN_GAIN = 0.005  # average precision a feature family or the splines must add to be kept


class TrainerBusy(Conflict):
    """A training job is already running."""


class ModelHome(Protocol):
    """Where a training job finds the active models and the machines, and keeps its model.
    Called from the job's thread."""

    def model(self, scope: str) -> Predictor | None:
        """The model that scores `scope` now."""

    def keep(self, predictor: Predictor, activate: bool) -> None:
        """Store the candidate; with `activate`, score its scope with it from now on."""

    def attributes(self, machine: str) -> Attributes:
        """The machine's type and numeric status properties (`fleet.attributes_of`)."""


class LocalModels:
    """`twin serve`'s: its registry, its scorer and its live state."""

    def __init__(self, registry: Registry, scorer: RiskScorer, state: FleetState) -> None:
        self.registry = registry
        self.scorer = scorer
        self.state = state

    def model(self, scope: str) -> Predictor | None:
        return self.scorer.model(scope)

    def keep(self, predictor: Predictor, activate: bool) -> None:
        self.registry.store(predictor, activate=activate)
        if activate and not self.scorer.activate(predictor):
            log.warning(
                "model %s is active; the fleet was not rescored with it yet", predictor.version
            )

    def attributes(self, machine: str) -> Attributes:
        return self.state.attributes(machine)


def job_for(
    site: str | None, horizon_ms: int, force: bool, windows_ms: tuple[int, ...]
) -> dict[str, Any]:
    """A new job's record, as `GET /model` shows it."""
    now = int(time.time() * 1000)
    return {
        "id": now,
        "state": "running",
        "progress": "starting",
        "scope": site_scope(site) if site else DEFAULT_SCOPE,
        "site": site,
        "label_horizon_ms": horizon_ms,
        "windows_ms": list(windows_ms),
        "force": force,
        "started_at": now,
    }


class Trainer:
    """Runs fleet-model training jobs and keeps the last one's status."""

    def __init__(
        self, history: HistoryStore, home: ModelHome, bucket_ms: int, max_window_ms: int
    ) -> None:
        self.history = history
        self.home = home
        self.bucket_ms = bucket_ms
        self.max_window_ms = max_window_ms  # the history twins keep in memory
        self.job: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def start(
        self, site: str | None, horizon_ms: int, force: bool, windows_ms: tuple[int, ...]
    ) -> dict[str, Any]:
        """Check the request can train, then start the job; raise `FleetTrainingError` if not."""
        self.check(site, windows_ms)
        return self.run(job_for(site, horizon_ms, force, windows_ms))

    def check(self, site: str | None, windows_ms: tuple[int, ...]) -> None:
        """Raise `FleetTrainingError` unless the history holds enough failures to train on and
        the twins keep enough history in memory to compute the windows live."""
        longest = max(windows_ms)
        if longest > self.max_window_ms:
            raise FleetTrainingError(
                f"window {window_label(longest)} is longer than the history the twins keep "
                f"({window_label(self.max_window_ms)}, TWIN_FEATURE_WINDOW_S)"
            )
        failures = self.history.failures(site)
        if failures < MIN_TRAIN_POSITIVES:
            where = f"site {site!r}" if site else "the fleet"
            raise FleetTrainingError(
                f"{where} has {failures} failure events in its history; at least "
                f"{MIN_TRAIN_POSITIVES} are needed to train and measure a model"
            )

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run `job` (from `job_for`) on a thread of its own; raise `TrainerBusy` if one runs."""
        with self._lock:
            if self.job is not None and self.job["state"] == "running":
                raise TrainerBusy("a training job is already running")
            self.job = job
        threading.Thread(target=self._run, args=(job,), name="twin-train", daemon=True).start()
        return dict(job)

    def _run(self, job: dict[str, Any]) -> None:
        started = time.monotonic()
        try:
            job.update(self._train(job))
            job["state"] = "done"
            log.info(
                "training for %s done in %.0f s: %s",
                job["scope"],
                time.monotonic() - started,
                job["reason"],
            )
        except FleetTrainingError as exc:
            job.update(state="failed", error=str(exc))
            log.warning("training for %s refused: %s", job["scope"], exc)
        except Exception as exc:  # a job must end with a state, whatever went wrong
            log.exception("training for %s failed", job["scope"])
            job.update(state="failed", error=f"{type(exc).__name__}: {exc}")
        job["finished_at"] = int(time.time() * 1000)

    def _train(self, job: dict[str, Any]) -> dict[str, Any]:
        site, horizon = job["site"], job["label_horizon_ms"]
        job["progress"] = "loading history"
        stored = self.history.load(site)
        histories = {
            m: series(h.buckets, h.events, self.home.attributes(m)) for m, h in stored.items()
        }
        full = spec_from(histories, self.bucket_ms, tuple(job["windows_ms"]))
        job["progress"] = f"building samples from {len(histories)} machines"
        data = samples(full, histories, horizon)
        train, test = time_split(data.times, horizon)
        positives = int(data.y[train].sum()), int(data.y[test].sum())
        if positives[0] < MIN_TRAIN_POSITIVES or positives[1] < MIN_HELD_OUT_POSITIVES:
            raise FleetTrainingError(
                f"labelled samples with a failure within the horizon: {positives[0]} before the "
                f"held-out slice and {positives[1]} in it; at least {MIN_TRAIN_POSITIVES} and "
                f"{MIN_HELD_OUT_POSITIVES} are needed"
            )
        spec, threshold, gate = self._gate(job, full, data, train, horizon)
        columns = spec.mask(full)
        job["progress"] = f"fitting on {int(train.sum())} samples, {positives[0]} positive"
        measured = _fit(spec, data.X[train][:, columns], data.y[train])
        held_out = measured.predict_proba(spec.interact(data.X[test][:, columns]))[:, 1]
        candidate = quality(data.y[test], held_out, threshold)
        grouped = self._grouped(job, spec, data, columns, threshold)
        # Measured on rows its fit never saw; kept fitted on every row: the latest slice holds
        # the failures of the longest-lived machines, which the model must not go without.
        job["progress"] = f"fitting the model kept on all {len(data.y)} samples"
        pipeline = _fit(spec, data.X[:, columns], data.y)
        job["progress"] = "comparing with the active model"
        active = self.home.model(job["scope"]) or self.home.model(DEFAULT_SCOPE)
        split = "grouped" if grouped is not None else "time"
        rows = grouped[1] if grouped is not None else test
        mine = grouped[0] if grouped is not None else candidate
        active_metrics = self._measure(active, data, rows, stored, histories) if active else None
        better = active_metrics is None or (
            mine["average_precision"] >= active_metrics["average_precision"]
        )
        promote = job["force"] or better
        version, created = new_version(job["scope"].replace(":", "-"))
        metrics = {
            "held_out": candidate,
            "grouped": None if grouped is None else grouped[0],
            "gate": {"split": split, "candidates": gate},
            "train_positives": positives[0],
        }
        manifest = {
            "version": version,
            "scope": job["scope"],
            "kind": "fleet",
            "features": spec.names,
            "fleet": spec.to_json(),
            "sklearn_version": _sklearn_version(),
            "training_data": {
                "source": f"twin history ({site or 'all sites'})",
                "machines": len(histories),
                "samples": len(data.y),
                "label_horizon_ms": horizon,
                "held_out_from_ms": int(data.times[test].min()),
                "fitted_on": "every sample; the metrics are of fits without the rows held out",
            },
            "metrics": metrics,
            "threshold": threshold,
            "created_at": created,
        }
        job["progress"] = "storing the candidate"
        self.home.keep(Predictor(pipeline, manifest), activate=promote)
        where = "machines it never saw" if split == "grouped" else "the held-out slice"
        return {
            "progress": "done",
            "candidate": {
                "version": version,
                "metrics": candidate,
                "grouped": metrics["grouped"],
                "families": list(spec.families),
                "shape": spec.shape,
            },
            "active": None
            if active is None
            else {"version": active.version, "metrics": active_metrics, "split": split},
            "promoted": promote,
            "reason": "forced"
            if job["force"] and not better
            else (f"not worse on {where}" if better else f"worse on {where}"),
        }

    def _gate(
        self,
        job: dict[str, Any],
        full: FleetSpec,
        data: Samples,
        train: np.ndarray,
        horizon: int,
    ) -> tuple[FleetSpec, float, list[dict[str, Any]]]:
        """The feature families, shape and interactions that do best on the latest slice of
        the training time (a forward selection of families, linear; then the chosen ones with
        splines; then with the strongest columns' products), each step kept only if it adds
        `MIN_GAIN`; the alert threshold from that slice's predictions; every candidate tried."""
        X, y, times = data.X[train], data.y[train], data.times[train]
        fit_rows, check_rows = time_split(times, horizon)
        if y[fit_rows].sum() < MIN_TRAIN_POSITIVES or y[check_rows].sum() < MIN_HELD_OUT_POSITIVES:
            log.info("too few failures to choose features by a split: every family, splines")
            everything = full.narrowed(FAMILIES, "spline")
            return everything, fit_threshold(lambda: build_pipeline("spline"), X, y), []
        tried: list[dict[str, Any]] = []
        fitted: dict[FleetSpec, tuple[Pipeline, np.ndarray]] = {}

        def score(spec: FleetSpec) -> float:
            columns = spec.mask(full)
            named = "+".join(spec.families) + "".join(f", {a}*{b}" for a, b in spec.interactions)
            job["progress"] = f"choosing features: {named}, {spec.shape}"
            model = build_pipeline(spec.shape).fit(
                spec.interact(X[fit_rows][:, columns]), y[fit_rows]
            )
            p = model.predict_proba(spec.interact(X[check_rows][:, columns]))[:, 1]
            fitted[spec] = model, p
            ap = float(average_precision_score(y[check_rows], p))
            tried.append(
                {
                    "families": list(spec.families),
                    "shape": spec.shape,
                    "interactions": [f"{a}*{b}" for a, b in spec.interactions],
                    "average_precision": round(ap, 4),
                }
            )
            return ap

        spec = full.narrowed(("latest",), "linear")
        best = score(spec)
        # a family with no columns here (no events, no attributes) is not tried
        remaining = [f for f in FAMILIES[1:] if len(full.narrowed((f,), "linear").names)]
        while remaining:
            options = {f: full.narrowed((*spec.families, f), "linear") for f in remaining}
            results = {f: score(option) for f, option in options.items()}
            family = max(results, key=lambda f: results[f])
            if results[family] < best + MIN_GAIN:
                break
            spec, best = options[family], results[family]
            remaining.remove(family)
        splines = full.narrowed(spec.families, "spline")
        if (ap := score(splines)) >= best + MIN_GAIN:
            spec, best = splines, ap
        pairs = _strongest_pairs(spec, fitted[spec][0])
        if pairs:
            crossed = full.narrowed(spec.families, spec.shape, pairs)
            if (ap := score(crossed)) >= best + MIN_GAIN:
                spec, best = crossed, ap
        threshold = best_threshold(y[check_rows], fitted[spec][1])
        log.info(
            "features chosen by the gate: %s, %s, %d interactions",
            "+".join(spec.families),
            spec.shape,
            len(spec.interactions),
        )
        return spec, threshold, tried

    def _grouped(
        self,
        job: dict[str, Any],
        spec: FleetSpec,
        data: Samples,
        columns: np.ndarray,
        threshold: float,
    ) -> tuple[dict[str, float], np.ndarray] | None:
        """Quality on machines the model never saw (fitted on the others), and those rows;
        None when the site has too few machines or failures for it."""
        if len(set(data.machines.tolist())) < MIN_GROUPED_MACHINES:
            return None
        train, test = machine_split(data.machines)
        if data.y[train].sum() < MIN_TRAIN_POSITIVES or data.y[test].sum() < MIN_HELD_OUT_POSITIVES:
            return None
        job["progress"] = "measuring on machines held out"
        model = _fit(spec, data.X[train][:, columns], data.y[train])
        p = model.predict_proba(spec.interact(data.X[test][:, columns]))[:, 1]
        return quality(data.y[test], p, threshold), test

    def _measure(
        self,
        model: Predictor,
        data: Samples,
        test: np.ndarray,
        stored: dict[str, Any],
        histories: dict[str, Series],
    ) -> dict[str, float] | None:
        """The active model's quality on the held-out samples it can score; None if none.
        `histories` are `stored` as `series` with each machine's attributes."""
        y = data.y[test]
        spec = model.fleet
        if spec is not None:
            X = np.empty((int(test.sum()), len(spec.names)))
            machines, times = data.machines[test], data.times[test]
            for machine in set(machines.tolist()):
                mine = machines == machine
                X[mine] = features(spec, histories[machine], times[mine])
        else:
            names = model.manifest["features"]
            rows, keep = [], []
            for i, (machine, t) in enumerate(
                zip(data.machines[test], data.times[test], strict=True)
            ):
                values = _latest_values(stored[machine], t, names[:5], self.bucket_ms)
                if values is not None:
                    kind = machine_type(histories[machine].attributes)
                    rows.append(feature_row(values, kind))
                    keep.append(i)
            if not rows or len(set(y[keep])) < 2:
                return None
            X, y = np.asarray(rows), y[keep]
        if len(set(y)) < 2:
            return None
        scores, _ = model.score(X)
        return quality(y, scores, model.threshold)


def _fit(spec: FleetSpec, X: np.ndarray, y: np.ndarray) -> Pipeline:
    """The model on `X` (the families' columns), and on `X` again with a signal blanked in each
    row (`blank_signals`), each with the interactions."""
    blanked = blank_signals(spec, X)
    return build_pipeline(spec.shape).fit(
        spec.interact(np.vstack([X, blanked])), np.concatenate([y, y[: len(blanked)]])
    )


INTERACTING = 4  # the columns of largest weight whose pairwise products the gate tries


def _strongest_pairs(spec: FleetSpec, model: Pipeline) -> tuple[tuple[str, str], ...]:
    """The pairs, across explanation groups, of the `INTERACTING` columns that weigh most in
    `model` (summed over a column's spline bases; the inputs are scaled, so weights compare)."""
    columns = spec.base_columns()
    weights = np.abs(model.named_steps["classify"].coef_[0]).reshape(len(columns), -1).sum(axis=1)
    top = sorted(i for i in np.argsort(weights)[::-1][:INTERACTING].tolist() if weights[i] > 0)
    return tuple(
        (columns[i][0], columns[j][0])
        for k, i in enumerate(top)
        for j in top[k + 1 :]
        if columns[i][1] != columns[j][1]
    )


def _latest_values(
    history: Any, t: int, names: list[str], bucket_ms: int
) -> dict[str, float] | None:
    """The latest value of each signal in closed buckets up to `t`, or None if one is missing."""
    values: dict[str, float] = {}
    for bucket in reversed(history.buckets):
        if bucket.start + bucket_ms > t:
            continue
        for name in names:
            if name not in values and name in bucket.signals:
                values[name] = bucket.signals[name][3]
        if len(values) == len(names):
            return values
    return None


def _sklearn_version() -> str:
    return str(sklearn.__version__)
