"""Prometheus metrics: read from the twin's status at scrape time, so ingest pays nothing.

Only API latency is observed as it happens (a histogram, by route).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from twin.status import TwinStatus

Family = CounterMetricFamily | GaugeMetricFamily


def single(kind: type[Family], name: str, doc: str, value: float) -> Family:
    family = kind(name, doc)
    family.add_metric([], value)
    return family


class TwinCollector(Collector):
    """The twin's counters and gauges, as Prometheus families."""

    def __init__(self, status: Callable[[], TwinStatus]) -> None:
        self.status = status

    def collect(self) -> Iterator[Family]:
        s = self.status()
        counter, gauge = CounterMetricFamily, GaugeMetricFamily
        yield single(
            counter, "twin_readings_applied", "Distinct readings applied", s.readings.received
        )
        yield single(
            counter, "twin_readings_duplicate", "Readings seen before", s.readings.duplicates
        )
        rejected = counter("twin_rejections", "Rejected messages or readings", labels=["reason"])
        for reason, count in sorted(s.rejections.items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield single(gauge, "twin_machines", "Machines with a twin", s.machines)
        yield single(gauge, "twin_journal_rows", "Rows in the journal", s.journal.rows)
        yield single(
            gauge, "twin_journal_lag", "Messages received, not yet committed", s.journal.lag
        )
        yield single(
            counter, "twin_journal_dropped", "Rows dropped by the size bound", s.journal.dropped
        )
        yield single(
            gauge, "twin_mqtt_connected", "1 when connected to the broker", s.broker_connected
        )
        if s.sparkplug is not None:
            yield single(
                gauge,
                "twin_sparkplug_connected",
                "1 when the Sparkplug host is connected",
                s.sparkplug.connected,
            )
            yield single(
                gauge, "twin_sparkplug_nodes", "Edge nodes with a live session", s.sparkplug.nodes
            )
            events = counter(
                "twin_sparkplug_events",
                "Sparkplug messages by type, rebirth requests, seq gaps, bad births",
                labels=["event"],
            )
            for event, count in sorted(s.sparkplug.counts.items()):
                events.add_metric([event], count)
            yield events
        lag = gauge("twin_sink_lag", "Journal messages not yet sent", labels=["sink"])
        retries = counter("twin_sink_retries", "Failed writes retried", labels=["sink"])
        drops = counter("twin_sink_dropped", "Rows lost to the bound", labels=["sink"])
        points = counter("twin_sink_points", "Points written", labels=["sink"])
        for sink in s.sinks:
            lag.add_metric([sink.name], sink.lag)
            retries.add_metric([sink.name], sink.retries)
            drops.add_metric([sink.name], sink.dropped)
            points.add_metric([sink.name], sink.written)
        yield from (lag, retries, drops, points)
        yield single(counter, "twin_scoring_seconds", "Time spent scoring risk", s.scoring.seconds)
        yield single(gauge, "twin_stream_clients", "Connected /stream clients", s.stream.clients)
        dropped = counter("twin_stream_dropped", "/stream clients dropped", labels=["reason"])
        for reason, count in s.stream.dropped.items():
            dropped.add_metric([reason], count)
        yield dropped
        yield single(counter, "twin_scored_machines", "Machine scorings", s.scoring.scored)
        yield single(
            gauge, "twin_outbound_queued", "MQTT messages waiting for the broker", s.outbound.queued
        )
        yield single(counter, "twin_outbound_dropped", "MQTT messages dropped", s.outbound.dropped)


def registry_for(status: Callable[[], TwinStatus]) -> tuple[CollectorRegistry, Histogram]:
    """A registry of the twin's own (not the process-global default one) and its API histogram."""
    registry = CollectorRegistry()
    registry.register(TwinCollector(status))
    latency = Histogram(
        "twin_api_request_seconds",
        "API request latency",
        ["route", "method", "status"],
        registry=registry,
    )
    return registry, latency
