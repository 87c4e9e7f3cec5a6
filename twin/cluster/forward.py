"""`twin forward`: cluster mode's history in InfluxDB, each point written once.

For each sink the settings configure (`TWIN_INFLUX_*`, as `twin serve`), three durable pull
consumers of its own: `forward-<sink>-in` on TWIN_IN (`telemetry` points, decoded by the same
code as `twin serve`'s forwarder), `-risk` on TWIN_RISK (the workers' fresh scores) and
`-alerts` on TWIN_ALERTS (alert changes). A batch of all three is written with the same retry
and backoff as `twin serve`'s, and only once it has landed is each consumer acknowledged (ack
all): an InfluxDB outage leaves the messages in the streams, which keep them for days, and the
forwarder resumes where it stopped, whatever happened to it or to the workers meanwhile. One
forwarder process per cluster; the workers' number does not change what is written. A point
written twice (a restart between a write and its acknowledgement) is the same point, which
InfluxDB stores once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from twin import sinks
from twin.alerts import Alert
from twin.cluster.layout import (
    ACK_WAIT_S,
    FORWARD_PREFIX,
    IN_PREFIX,
    RISK_SUBJECT,
    STREAM_ALERTS,
    STREAM_IN,
    STREAM_RISK,
    ClusterError,
    check,
    connect,
    input_message,
    layout_of,
)
from twin.config import Settings
from twin.core import limits_of
from twin.forwarder import Delivery, telemetry_of
from twin.sinks import Sink
from twin.sinks.lineprotocol import alert_point, risk_line
from twin.topics import Topics

log = logging.getLogger(__name__)

_REPORT_EVERY_S = 10.0


class StreamForwarder:
    """One sink, fed from its three consumers."""

    def __init__(self, settings: Settings, sink: Sink, stop: threading.Event) -> None:
        self.settings = settings
        self.sink = sink
        self.delivery = Delivery(sink, stop)
        self.topics = Topics(settings.topic_root)
        self.limits = limits_of(settings)
        self.batch = settings.sink_batch
        self.wait_s = settings.sink_max_delay_ms / 1000
        self._subs: dict[str, JetStreamContext.PullSubscription] = {}
        self._reported = time.monotonic()
        self._since_report = 0

    def durable(self, kind: str) -> str:
        return f"{FORWARD_PREFIX}{self.sink.name}-{kind}"

    async def start(self, js: JetStreamContext) -> None:
        await asyncio.to_thread(self.sink.start)
        r = self.settings.topic_root
        for kind, stream, subject in (
            ("in", STREAM_IN, f"{IN_PREFIX}.>"),
            ("risk", STREAM_RISK, RISK_SUBJECT),
            ("alerts", STREAM_ALERTS, f"{r}.*.*.alert"),
        ):
            config = ConsumerConfig(
                durable_name=self.durable(kind),
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.ALL,
                ack_wait=ACK_WAIT_S,
                max_ack_pending=1_000_000,
                filter_subject=subject,
            )
            self._subs[kind] = await js.pull_subscribe(
                subject, durable=self.durable(kind), stream=stream, config=config
            )
        log.info("sink %s: forwarding from %s", self.sink.name, ", ".join(self._subs))

    async def run(self) -> None:
        """Until the stop event: fetch, write, acknowledge."""
        while not self.delivery.stop.is_set():
            try:
                fetched = await asyncio.gather(*(self._fetch(s) for s in self._subs.values()))
            except Exception as exc:  # the connection, mostly: nats-py reconnects
                log.warning(
                    "sink %s: reading the streams failed (%s); again in 1 s", self.sink.name, exc
                )
                await asyncio.sleep(1)
                continue
            lines: list[str] = []
            for kind, msgs in zip(self._subs, fetched, strict=True):
                lines += self._points(kind, msgs)
            if not any(fetched):
                continue
            if not await asyncio.to_thread(self.delivery.deliver, lines):
                # Stopping while the sink is down: handed back for the next start at once
                # (unacknowledged, they would wait out the ack wait).
                for msg in (m for msgs in fetched for m in msgs):
                    await msg.nak()
                return
            for msgs in fetched:
                if msgs:
                    await msgs[-1].ack()  # ack all: everything up to it has landed
            self._report(len(lines))

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        try:
            msgs: list[Msg] = await sub.fetch(self.batch, timeout=self.wait_s)
        except NatsTimeout:
            return []
        return msgs

    def _points(self, kind: str, msgs: list[Msg]) -> list[str]:
        lines: list[str] = []
        root = self.settings.topic_root
        for msg in msgs:
            if kind == "in":
                lines += telemetry_of(self.topics, self.limits, input_message(root, msg))
            elif kind == "risk":
                for site, machine, version, probability, threshold, ts in json.loads(msg.data):
                    lines.append(risk_line(site, machine, version, probability, threshold, ts))
            else:
                lines.append(alert_point(msgspec.json.decode(msg.data, type=Alert)))
        return lines

    def _report(self, points: int) -> None:
        self._since_report += points
        if time.monotonic() - self._reported >= _REPORT_EVERY_S:
            log.info(
                "sink %s: %d points in the last %.0f s, %d in all, %d retries",
                self.sink.name,
                self._since_report,
                time.monotonic() - self._reported,
                self.delivery.written,
                self.delivery.retries,
            )
            self._reported, self._since_report = time.monotonic(), 0

    def close(self) -> None:
        self.sink.close()


def run(settings: Settings) -> None:
    """`twin forward`: until SIGTERM or SIGINT."""
    built = sinks.build(settings)
    if not built:
        raise ClusterError(
            "twin forward writes to InfluxDB: set TWIN_INFLUX_URL and TWIN_INFLUX_DB (1.x) "
            "or TWIN_INFLUX_BUCKET, TWIN_INFLUX_ORG and TWIN_INFLUX_TOKEN (2.x)"
        )

    async def main() -> None:
        stop = threading.Event()  # also ends a write's retries
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        nc: NATS = await connect(settings, "twin-forward")
        forwarders = [StreamForwarder(settings, sink, stop) for sink in built]
        try:
            await check(nc, layout_of(settings))
            for forwarder in forwarders:
                await forwarder.start(nc.jetstream())
            await asyncio.gather(*(f.run() for f in forwarders))
        finally:
            for forwarder in forwarders:
                forwarder.close()
            await nc.drain()
        log.info(
            "stopped: %s",
            ", ".join(f"{f.sink.name} wrote {f.delivery.written} points" for f in forwarders),
        )

    asyncio.run(main())
