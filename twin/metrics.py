"""Prometheus metrics: read from the running twin at scrape time, so ingest pays nothing.

Only API latency is observed as it happens (a histogram, by route).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from twin.app import Twin


class TwinCollector(Collector):
    """The twin's counters and gauges, as Prometheus families."""

    def __init__(self, twin: Twin) -> None:
        self.twin = twin

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        twin = self.twin
        totals = twin.state.totals
        received = CounterMetricFamily("twin_readings_applied", "Distinct readings applied")
        received.add_metric([], totals.received)
        yield received
        duplicates = CounterMetricFamily("twin_readings_duplicate", "Readings seen before")
        duplicates.add_metric([], totals.duplicates)
        yield duplicates
        rejected = CounterMetricFamily(
            "twin_rejections", "Rejected messages or readings", labels=["reason"]
        )
        for reason, count in sorted(twin.deadletters.by_reason.items()):
            rejected.add_metric([reason], count)
        yield rejected
        machines = GaugeMetricFamily("twin_machines", "Machines with a twin")
        machines.add_metric([], len(twin.state))
        yield machines
        journal = twin.journal
        for name, doc, value in (
            ("twin_journal_rows", "Rows in the journal", journal.rows),
            ("twin_journal_lag", "Messages received, not yet committed", twin.pipeline.pending),
        ):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], value)
            yield gauge
        dropped = CounterMetricFamily("twin_journal_dropped", "Rows dropped by the size bound")
        dropped.add_metric([], journal.dropped)
        yield dropped
        connected = GaugeMetricFamily("twin_mqtt_connected", "1 when connected to the broker")
        connected.add_metric([], 1 if twin.ingest.connected else 0)
        yield connected
        lag = GaugeMetricFamily("twin_sink_lag", "Journal messages not yet sent", labels=["sink"])
        retries = CounterMetricFamily("twin_sink_retries", "Failed writes retried", labels=["sink"])
        drops = CounterMetricFamily("twin_sink_dropped", "Rows lost to the bound", labels=["sink"])
        points = CounterMetricFamily("twin_sink_points", "Points written", labels=["sink"])
        for forwarder in twin.forwarders:
            lag.add_metric([forwarder.name], forwarder.lag)
            retries.add_metric([forwarder.name], forwarder.retries)
            drops.add_metric([forwarder.name], forwarder.dropped)
            points.add_metric([forwarder.name], forwarder.written)
        yield from (lag, retries, drops, points)
        scoring = CounterMetricFamily("twin_scoring_seconds", "Time spent scoring risk")
        scoring.add_metric([], twin.scorer.seconds)
        yield scoring
        clients = GaugeMetricFamily("twin_stream_clients", "Connected /stream clients")
        clients.add_metric([], twin.hub.clients)
        yield clients
        dropped_clients = CounterMetricFamily(
            "twin_stream_dropped", "/stream clients dropped", labels=["reason"]
        )
        for reason, count in twin.hub.dropped.items():
            dropped_clients.add_metric([reason], count)
        yield dropped_clients
        scored = CounterMetricFamily("twin_scored_machines", "Machine scorings")
        scored.add_metric([], twin.scorer.scored)
        yield scored


def registry_for(twin: Twin) -> tuple[CollectorRegistry, Histogram]:
    """A registry of the twin's own (not the process-global default one) and its API histogram."""
    registry = CollectorRegistry()
    registry.register(TwinCollector(twin))
    latency = Histogram(
        "twin_api_request_seconds",
        "API request latency",
        ["route", "method", "status"],
        registry=registry,
    )
    return registry, latency
