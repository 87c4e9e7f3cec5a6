"""Live failure risk: the active models score the machines whose state changed.

Scoring is micro-batched: machines are marked as they change and scored together, at most every
`interval_s`, in one vectorised call per model (a call costs ~10 ms whatever its size, so one per
reading would cost more than ingest itself). A machine's risk therefore trails its newest reading
by at most `interval_s`. A site's model scores that site's machines; the default model the rest.
A machine no model can score gets `risk: null` and the reason.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable

import numpy as np

from twin.model import DEFAULT_SCOPE, Predictor, feature_row, missing_signals
from twin.model.fleet import FleetSpec, features, series
from twin.state import FleetState, MachineTwin

log = logging.getLogger(__name__)


def site_scope(site: str) -> str:
    return f"site:{site}"


class RiskScorer:
    """Keeps every machine's `risk` current with the active models."""

    def __init__(self, state: FleetState, interval_s: float = 0.2) -> None:
        self.state = state
        self.interval_s = interval_s
        self.models: dict[str, Predictor] = {}
        self._dirty: set[MachineTwin] = set()
        self._last = 0.0
        self.scored = 0
        self.seconds = 0.0  # time spent scoring, for the metrics
        # Each sink's queue of fresh scores: (site, machine, version, probability, threshold, ts).
        self.outboxes: list[deque[tuple[str, str, str, float, float, int]]] = []

    def observe(self, changed: Iterable[MachineTwin]) -> set[MachineTwin]:
        """Mark changed machines; score the marked ones when the interval has passed.

        Returns the machines scored now (empty when it was not yet time).
        """
        self._dirty.update(changed)
        if self._dirty and time.monotonic() - self._last >= self.interval_s:
            return self.flush()
        return set()

    def flush(self) -> set[MachineTwin]:
        """Score every marked machine now; return them."""
        dirty, self._dirty = self._dirty, set()
        self._last = time.monotonic()
        if dirty:
            self._score(dirty)
        return dirty

    def score_all(self) -> None:
        with self.state.lock:
            twins = list(self.state.twins())
        self._score(twins)

    def _model_for(self, twin: MachineTwin) -> Predictor | None:
        return self.models.get(site_scope(twin.site)) or self.models.get(DEFAULT_SCOPE)

    def machine_type(self, machine: str) -> str | None:
        with self.state.lock:
            twin = self.state.twin(machine)
            return None if twin is None else twin.type

    def _row(self, model: Predictor, twin: MachineTwin) -> tuple[list[float] | None, str | None]:
        """The twin's feature row for `model`, or None and why not (hold the state lock)."""
        live = {k: v for k, (v, _) in twin.values.items()}
        if model.kind != "fleet":
            missing = missing_signals(twin.values)
            if missing:
                return None, f"missing signals: {', '.join(missing)}"
            return feature_row(live, twin.type), None
        spec = FleetSpec.from_json(model.manifest["fleet"])
        missing = [s for s in spec.signals if s not in live]
        if missing:
            return None, f"missing signals: {', '.join(missing)}"
        events = [(ts, "error", code) for ts, code in twin.errors]
        events += [(ts, "maintenance", code) for code, ts in twin.maintenance.items()]
        data = series(list(twin.buckets), sorted(events))
        return list(features(spec, data, np.asarray([twin.latest_ts]), live)[0]), None

    def _score(self, twins: Iterable[MachineTwin]) -> None:
        started = time.perf_counter()
        batches: dict[str, tuple[Predictor, list[MachineTwin], list[list[float]]]] = {}
        with self.state.lock:
            for twin in twins:
                model = self._model_for(twin)
                if model is None:
                    twin.risk, twin.risk_reason = None, "no active model"
                    continue
                row, reason = self._row(model, twin)
                if row is None:
                    twin.risk, twin.risk_reason = None, reason
                    continue
                batch = batches.setdefault(model.version, (model, [], []))
                batch[1].append(twin)
                batch[2].append(row)
        now = int(time.time() * 1000)
        for model, scored, rows in batches.values():
            probabilities, contributions = model.score(np.asarray(rows))
            with self.state.lock:
                for twin, p, c in zip(scored, probabilities, contributions, strict=True):
                    twin.risk = {
                        "probability": float(p),
                        "model_version": model.version,
                        "threshold": model.threshold,
                        "updated_at": now,
                        "contributions": model.explain(c),
                    }
                    twin.risk_reason = None
                    for outbox in self.outboxes:
                        outbox.append(
                            (twin.site, twin.machine, model.version, float(p), model.threshold, now)
                        )
            self.scored += len(scored)
        self.seconds += time.perf_counter() - started
