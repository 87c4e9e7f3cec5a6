"""Live failure risk: the active models score the machines whose state changed.

Scoring is micro-batched: machines are marked as they change and scored together, at most every
`interval_s`, in one vectorised call per model (a call costs ~10 ms whatever its size, so one per
reading would cost more than ingest itself). A machine's risk therefore trails its newest reading
by at most `interval_s`. A site's model scores that site's machines; the default model the rest.
A machine no model can score gets `risk: null` and the reason.

Scoring runs on the journal thread, the state's only writer. A model promoted from another thread
(`activate`) is swapped in at once and the whole fleet is rescored on the journal thread's next
turn.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from twin.history import LiveHistory
from twin.model import (
    BUNDLED_CSV,
    DEFAULT_SCOPE,
    Predictor,
    Registry,
    feature_row,
    fit,
    missing_signals,
    read_ai4i_csv,
)
from twin.model.fleet import (
    Attributes,
    attributes_of,
    features,
    machine_type,
    series,
    window_label,
)
from twin.model.predictor import ranked
from twin.state import FleetState, MachineTwin

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Risk:
    """One scoring of one machine: immutable, replaced as a whole by the next."""

    probability: float
    model_version: str
    threshold: float  # the model's alert threshold
    updated_at: int  # epoch ms of the scoring
    groups: tuple[str, ...] = ()  # the model's feature groups
    shares: tuple[float, ...] = ()  # each group's share of the logit, in `groups` order
    imputed: tuple[str, ...] = ()  # the model's signals the machine did not send: imputed

    @property
    def contributions(self) -> dict[str, float]:
        """Feature group -> share of the logit, largest magnitude first. Ranked when asked:
        most scores are replaced by the next before anyone reads them."""
        return ranked(self.groups, self.shares)

    def public(self) -> dict[str, object]:
        return {
            "probability": self.probability,
            "model_version": self.model_version,
            "threshold": self.threshold,
            "updated_at": self.updated_at,
            "contributions": self.contributions,
            "imputed": list(self.imputed),
        }


# Told of each batch of fresh scores: (site, machine, risk).
RiskListener = Callable[[list[tuple[str, str, Risk]]], None]


def site_scope(site: str) -> str:
    return f"site:{site}"


def model_for(models: Mapping[str, Predictor], site: str) -> Predictor | None:
    """The model that scores a machine of `site`: its site's, else the default one."""
    return models.get(site_scope(site)) or models.get(DEFAULT_SCOPE)


class Row(NamedTuple):
    """A machine's feature row for a model, or None and why not; and what was imputed."""

    values: list[float] | None
    reason: str | None = None
    imputed: tuple[str, ...] = ()


def model_row(
    model: Predictor,
    live: Mapping[str, float],
    attributes: Attributes,
    history: LiveHistory,
    ts: int,
) -> Row:
    """A machine's feature row for `model` at event time `ts`. The one place live scoring,
    what-if and forecasts build rows.

    The default model needs all five canonical signals. A site model scores a machine that
    sent more than half of its signals within the shortest window; the others are imputed
    (`Row.imputed`)."""
    spec = model.fleet
    if spec is None:
        missing = missing_signals(live)
        if missing:
            return Row(None, f"missing signals: {', '.join(missing)}")
        return Row(feature_row(live, machine_type(attributes)))
    seen = history.seen_since(ts - spec.stale_ms)
    fresh = {s: live[s] for s in spec.signals if s in live and s in seen}
    absent = tuple(s for s in spec.signals if s not in fresh)
    if 2 * len(fresh) <= len(spec.signals):
        return Row(
            None,
            f"missing signals: {', '.join(absent)} (sent {len(fresh)} of the model's "
            f"{len(spec.signals)} within {window_label(spec.stale_ms)}; more than half needed)",
        )
    data = series(list(history.buckets), history.events(), attributes)
    return Row(list(features(spec, data, np.asarray([ts]), fresh)[0]), None, absent)


class RiskScorer:
    """Keeps every machine's risk current with the active models."""

    def __init__(
        self,
        state: FleetState,
        registry: Registry,
        interval_s: float = 0.2,
        listeners: Sequence[RiskListener] = (),
    ) -> None:
        self.state = state
        self.registry = registry
        self.interval_s = interval_s
        self.listeners = tuple(listeners)
        self._models: dict[str, Predictor] = {}
        self._models_lock = threading.Lock()
        self._dirty: set[MachineTwin] = set()
        self._rescore = threading.Condition()
        self._rescore_asked = 0  # activations so far; the journal thread rescores up to it
        self._rescore_done = 0
        self._last = float("-inf")  # the first changes are scored at once
        self.scored = 0
        self.seconds = 0.0  # time spent scoring, for the metrics

    # -- models ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load the active models; fit a default one on the bundled data if there is none."""
        models = self.registry.load_active()
        if DEFAULT_SCOPE not in models:
            log.info("no usable default model: fitting one on the bundled AI4I 2020 data")
            started = time.monotonic()
            data = read_ai4i_csv(BUNDLED_CSV)
            models[DEFAULT_SCOPE] = self.registry.add(fit(data, full_report=False), data)
            log.info("fitted in %.1f s", time.monotonic() - started)
        with self._models_lock:
            self._models = models

    def models(self) -> dict[str, Predictor]:
        """The active model of each scope (a copy)."""
        with self._models_lock:
            return dict(self._models)

    def model(self, scope: str) -> Predictor | None:
        with self._models_lock:
            return self._models.get(scope)

    def activate(self, predictor: Predictor, wait_s: float = 30.0) -> bool:
        """Score its scope with `predictor` from now on, and wait (up to `wait_s`) until the
        journal thread has rescored the fleet with it; False if it did not in time."""
        with self._models_lock:
            self._models = {**self._models, predictor.scope: predictor}
        with self._rescore:
            self._rescore_asked += 1
            asked = self._rescore_asked
            return self._rescore.wait_for(lambda: self._rescore_done >= asked, wait_s)

    # -- scoring (journal thread) ---------------------------------------------------------

    def observe(self, changed: Iterable[MachineTwin]) -> set[MachineTwin]:
        """Mark changed machines; score the marked ones when the interval has passed.

        Returns the machines scored now (empty when it was not yet time).
        """
        self._dirty.update(changed)
        asked = self._rescore_asked
        if asked > self._rescore_done:
            self._dirty.update(self.state.twins())
            scored = self.flush()
            with self._rescore:
                self._rescore_done = asked
                self._rescore.notify_all()
            return scored
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

    @staticmethod
    def _row(model: Predictor, twin: MachineTwin) -> Row:
        live = {k: v for k, (v, _) in twin.values.items()}
        attributes = attributes_of(twin.type, twin.properties)
        return model_row(model, live, attributes, twin.history, twin.latest_ts)

    def _score(self, twins: Iterable[MachineTwin]) -> None:
        started = time.perf_counter()
        models = self.models()
        batches: dict[str, tuple[Predictor, list[MachineTwin], list[Row]]] = {}
        unscored: list[tuple[MachineTwin, Risk | None, str | None]] = []
        for twin in twins:
            model = model_for(models, twin.site)
            if model is None:
                unscored.append((twin, None, "no active model"))
                continue
            row = self._row(model, twin)
            if row.values is None:
                unscored.append((twin, None, row.reason))
                continue
            batch = batches.setdefault(model.version, (model, [], []))
            batch[1].append(twin)
            batch[2].append(row)
        self.state.set_risks(unscored)
        now = int(time.time() * 1000)
        for model, scored, rows in batches.values():
            probabilities, contributions = model.score(np.asarray([r.values for r in rows]))
            groups = model.groups
            risks = [
                Risk(p, model.version, model.threshold, now, groups, tuple(shares), row.imputed)
                for p, shares, row in zip(
                    probabilities.tolist(), contributions.tolist(), rows, strict=True
                )
            ]
            self.state.set_risks(
                (t, r, f"imputed: {', '.join(r.imputed)} (not sent)" if r.imputed else None)
                for t, r in zip(scored, risks, strict=True)
            )
            fresh = [(t.site, t.machine, r) for t, r in zip(scored, risks, strict=True)]
            for listener in self.listeners:
                listener(fresh)
            self.scored += len(scored)
        self.seconds += time.perf_counter() - started
