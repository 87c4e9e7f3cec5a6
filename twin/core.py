"""The core every front end feeds: decode and apply, then react (score, alerts, what goes out).

`twin serve` feeds it from MQTT through the SQLite journal (`twin.service`); `twin worker` feeds
it from NATS JetStream, one partition of the fleet at a time (`twin.cluster.worker`). Both call
the same `apply` and `react`, on one thread: the state's only writer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from twin.alerts import AlertManager, AlertStore
from twin.alerts.manager import Episodes
from twin.alerts.manager import Listener as AlertListener
from twin.config import Settings
from twin.deadletters import DeadLetters
from twin.history import HistoryOutbox, HistoryPolicy
from twin.messages import Decoded, DeviceEvent, Limits, RawMessage, Rejection, decode
from twin.model import Registry
from twin.orders.book import OrderBook
from twin.outbound import Outbound, Publish
from twin.planning import AllocationLedger
from twin.planning.schedule import MaintenanceSchedule
from twin.risk import RiskListener, RiskScorer
from twin.state import FleetState, MachineTwin
from twin.stream import EventHub
from twin.topics import Topics

log = logging.getLogger(__name__)

EventListener = Callable[[str, str, DeviceEvent, int], None]  # site, machine, event, ts


def limits_of(settings: Settings) -> Limits:
    """What the decoder accepts, from the settings."""
    s = settings
    return Limits(s.max_payload_bytes, s.max_batch, int(s.max_future_s * 1000))


def fleet_state(settings: Settings, outbox: HistoryOutbox) -> FleetState:
    """The live state as the settings size it; closed history buckets go to `outbox`."""
    s = settings
    return FleetState(
        s.recent_readings,
        s.stats_window_s,
        HistoryPolicy(s.history_bucket_s * 1000, s.feature_window_s * 1000),
        outbox,
    )


class Core:
    """Decode/apply/score/alert, and the outputs of each reaction: built, never wired later."""

    def __init__(
        self,
        settings: Settings,
        state: FleetState,
        deadletters: DeadLetters,
        topics: Topics,
        limits: Limits,
        publish: Publish,
        alert_store: Path,
        *,
        risk_listeners: Sequence[RiskListener] = (),
        alert_listeners: Sequence[AlertListener] = (),
        episodes: Episodes | None = None,
        schedule: MaintenanceSchedule | None = None,
        orders: bool = False,
    ) -> None:
        s = settings
        self.state = state
        self.deadletters = deadletters
        self.topics = topics
        self.limits = limits
        self.hub = EventHub(client_buffer=s.stream_buffer, heartbeat_s=s.stream_heartbeat_s)
        self.outbound = Outbound(
            state,
            topics,
            publish,
            self.hub,
            s.twin_publish_interval_s,
            s.twin_publish_max_per_s,
        )
        self.registry = Registry(s.models_dir)
        self.scorer = RiskScorer(
            state, self.registry, s.score_interval_ms / 1000, listeners=risk_listeners
        )
        self.planner = AllocationLedger(state, self.scorer, self.hub, schedule)
        # Orders (`twin serve`): kept beside the alerts, told of job events and of trouble.
        self.orders = (
            OrderBook(alert_store, self.planner, self.hub, publish, topics, s.order_transfer_min)
            if orders
            else None
        )
        listeners = [self.outbound.alert, *alert_listeners, self.planner.on_alert]
        if self.orders is not None:
            listeners.append(self.orders.on_alert)
        self.alerts = AlertManager(
            state,
            AlertStore(alert_store),
            s.alert_retention_s,
            listeners=listeners,
            episodes=episodes,
            schedule=schedule,
            orders=self.orders,
        )

    def apply(self, raws: Sequence[RawMessage]) -> set[MachineTwin]:
        """Decode and apply; dead-letter what is rejected; return the twins that changed."""
        on_event = None if self.orders is None else self.orders.on_event
        return apply_messages(
            raws, self.topics, self.limits, self.state, self.deadletters, on_event
        )

    def react(self, changed: set[MachineTwin]) -> None:
        """After each durable batch (and when idle): model, then alerts, then what goes out."""
        scored = self.scorer.observe(changed)
        touched = changed | scored
        self.alerts.evaluate(touched)
        self.alerts.sweep()
        self.outbound.twins(touched)


def apply_messages(
    raws: Sequence[RawMessage],
    topics: Topics,
    limits: Limits,
    state: FleetState,
    deadletters: DeadLetters,
    on_event: EventListener | None = None,
) -> set[MachineTwin]:
    """Decode and apply `raws` in order; dead-letter what is rejected; return what changed.
    `on_event` hears every applied device event (job progress and failures, for orders)."""
    changed = set()
    for raw in raws:
        try:
            decoded = decode(topics, raw.topic, raw.payload, raw.received_ms, limits)
            twin = state.apply(decoded, raw.received_ms)
        except Exception as exc:
            # A bug must cost one message, not ingest: and since replay applies the journal (or
            # the stream) again, a message that raised would otherwise stop every restart too.
            log.exception("a message on %s could not be applied; dead-lettered", raw.topic)
            detail = f"{type(exc).__name__}: {exc}"
            decoded = Decoded(None, rejections=[Rejection("internal_error", detail)])
            twin = None
        if twin is not None:
            changed.add(twin)
            if on_event is not None and decoded.event is not None:
                event = decoded.event
                try:
                    on_event(twin.site, twin.machine, event, event.ts or raw.received_ms)
                except Exception:  # the event is applied; what listens must not stop ingest
                    log.exception("the event on %s could not be handled", raw.topic)
        if decoded.rejections:
            deadletters.add(raw, decoded)
    return changed
