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

from twin.errors import Conflict
from twin.history import HistoryStore
from twin.model import DEFAULT_SCOPE, Predictor, Registry, feature_row, fit_threshold
from twin.model.fleet import (
    FleetSpec,
    FleetTrainingError,
    Samples,
    build_pipeline,
    features,
    samples,
    series,
    spec_from,
    time_split,
)
from twin.model.registry import new_version
from twin.model.training import quality
from twin.risk import RiskScorer, site_scope
from twin.state import FleetState

log = logging.getLogger(__name__)

MIN_TRAIN_POSITIVES = 10
MIN_HELD_OUT_POSITIVES = 3


class TrainerBusy(Conflict):
    """A training job is already running."""


class ModelHome(Protocol):
    """Where a training job finds the active models and the machines, and keeps its model.
    Called from the job's thread."""

    def model(self, scope: str) -> Predictor | None:
        """The model that scores `scope` now."""

    def keep(self, predictor: Predictor, activate: bool) -> None:
        """Store the candidate; with `activate`, score its scope with it from now on."""

    def machine_type(self, machine: str) -> str | None: ...


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

    def machine_type(self, machine: str) -> str | None:
        return self.state.machine_type(machine)


def job_for(site: str | None, horizon_ms: int, force: bool) -> dict[str, Any]:
    """A new job's record, as `GET /model` shows it."""
    now = int(time.time() * 1000)
    return {
        "id": now,
        "state": "running",
        "progress": "starting",
        "scope": site_scope(site) if site else DEFAULT_SCOPE,
        "site": site,
        "label_horizon_ms": horizon_ms,
        "force": force,
        "started_at": now,
    }


class Trainer:
    """Runs fleet-model training jobs and keeps the last one's status."""

    def __init__(self, history: HistoryStore, home: ModelHome, bucket_ms: int) -> None:
        self.history = history
        self.home = home
        self.bucket_ms = bucket_ms
        self.job: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def start(self, site: str | None, horizon_ms: int, force: bool) -> dict[str, Any]:
        """Check the request can train, then start the job; raise `FleetTrainingError` if not."""
        self.check(site)
        return self.run(job_for(site, horizon_ms, force))

    def check(self, site: str | None) -> None:
        """Raise `FleetTrainingError` unless the history holds enough failures to train on."""
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
        try:
            job.update(self._train(job))
            job["state"] = "done"
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
        histories = {m: series(h.buckets, h.events) for m, h in stored.items()}
        spec = spec_from(histories, self.bucket_ms)
        job["progress"] = f"building samples from {len(histories)} machines"
        data = samples(spec, histories, horizon)
        train, test = time_split(data, horizon)
        positives = int(data.y[train].sum()), int(data.y[test].sum())
        if positives[0] < MIN_TRAIN_POSITIVES or positives[1] < MIN_HELD_OUT_POSITIVES:
            raise FleetTrainingError(
                f"labelled samples with a failure within the horizon: {positives[0]} before the "
                f"held-out slice and {positives[1]} in it; at least {MIN_TRAIN_POSITIVES} and "
                f"{MIN_HELD_OUT_POSITIVES} are needed"
            )
        job["progress"] = f"fitting on {int(train.sum())} samples, {positives[0]} positive"
        threshold = fit_threshold(build_pipeline, data.X[train], data.y[train])
        pipeline = build_pipeline().fit(data.X[train], data.y[train])
        candidate_scores = pipeline.predict_proba(data.X[test])[:, 1]
        candidate = quality(data.y[test], candidate_scores, threshold)
        job["progress"] = "comparing with the active model"
        active = self.home.model(job["scope"]) or self.home.model(DEFAULT_SCOPE)
        active_metrics = self._measure(active, data, test, stored) if active else None
        better = active_metrics is None or (
            candidate["average_precision"] >= active_metrics["average_precision"]
        )
        promote = job["force"] or better
        version, created = new_version(job["scope"].replace(":", "-"))
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
            },
            "metrics": {"held_out": candidate, "train_positives": positives[0]},
            "threshold": threshold,
            "created_at": created,
        }
        job["progress"] = "storing the candidate"
        self.home.keep(Predictor(pipeline, manifest), activate=promote)
        return {
            "progress": "done",
            "candidate": {"version": version, "metrics": candidate},
            "active": None
            if active is None
            else {"version": active.version, "metrics": active_metrics},
            "promoted": promote,
            "reason": "forced"
            if job["force"] and not better
            else ("not worse on the held-out slice" if better else "worse on the held-out slice"),
        }

    def _measure(
        self, model: Predictor, data: Samples, test: np.ndarray, stored: dict[str, Any]
    ) -> dict[str, float] | None:
        """The active model's quality on the held-out samples it can score; None if none."""
        y = data.y[test]
        if model.kind == "fleet":
            spec = FleetSpec.from_json(model.manifest["fleet"])
            rows = []
            for machine, t in zip(data.machines[test], data.times[test], strict=True):
                h = stored[machine]
                rows.append(features(spec, series(h.buckets, h.events), np.asarray([t]))[0])
            X = np.asarray(rows)
        else:
            names = model.manifest["features"]
            rows, keep = [], []
            for i, (machine, t) in enumerate(
                zip(data.machines[test], data.times[test], strict=True)
            ):
                values = _latest_values(stored[machine], t, names[:5], self.bucket_ms)
                if values is not None:
                    rows.append(feature_row(values, self.home.machine_type(machine)))
                    keep.append(i)
            if not rows or len(set(y[keep])) < 2:
                return None
            X, y = np.asarray(rows), y[keep]
        if len(set(y)) < 2:
            return None
        scores, _ = model.score(X)
        return quality(y, scores, model.threshold)


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
