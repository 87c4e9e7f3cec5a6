"""InfluxDB sink throughput against a real InfluxDB 1.6, with the raw `/write` ceiling.

1. Ceiling: ready line-protocol strings POSTed to `/write` in 5,000-point batches, one writer.
2. The sink: a journal holding the same readings (batches of 50 a message), drained by the
   forwarder (decode, serialise, write, move the cursor) until it has caught up.

Run: `python -m bench.sink [--points 200000]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from bench.ingest import payloads
from tests.services import InfluxDB1
from twin.forwarder import Forwarder
from twin.journal import Journal
from twin.messages import Limits, RawMessage, decode
from twin.sinks import InfluxDB1Sink
from twin.sinks.lineprotocol import telemetry_lines
from twin.topics import Topics

TOPICS = Topics()


def journal_messages(points: int) -> list[RawMessage]:
    now = int(time.time() * 1000)
    return [
        RawMessage(TOPICS.telemetry("bench", machine), payload, now)
        for machine, messages in payloads(10, points, 50).items()
        for payload in messages
    ]


def ceiling(sink: InfluxDB1Sink, messages: list[RawMessage]) -> float:
    lines = []
    for raw in messages:
        decoded = decode(TOPICS, raw.topic, raw.payload, raw.received_ms, Limits())
        assert decoded.address is not None
        lines += telemetry_lines(decoded.address.site, decoded.address.machine, decoded.readings)
    started = time.perf_counter()
    for i in range(0, len(lines), 5000):
        sink.write(lines[i : i + 5000])
    return len(lines) / (time.perf_counter() - started)


def forwarded(sink: InfluxDB1Sink, messages: list[RawMessage], workdir: Path) -> tuple[float, int]:
    journal = Journal(workdir / "twin.sqlite3")
    journal.open()
    journal.append(messages)
    forwarder = Forwarder(
        sink,
        journal.path,
        lambda: journal.last_id,
        lambda: (0, 0, 0),
        TOPICS,
        Limits(),
        batch=5000,
        max_delay_s=0.05,
    )
    started = time.perf_counter()
    forwarder.start()
    while forwarder.cursor < journal.last_id:
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    forwarder.stop()
    journal.close()
    return forwarder.written / elapsed, forwarder.written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=200_000)
    args = parser.parse_args()
    messages = journal_messages(args.points)
    with tempfile.TemporaryDirectory() as tmp:
        server = InfluxDB1(Path(tmp) / "influxdb")
        server.start()
        try:
            raw_rate = ceiling(InfluxDB1Sink(server.url, "ceiling"), messages)
            sink_rate, written = forwarded(InfluxDB1Sink(server.url, "sink"), messages, Path(tmp))
            count = server.query("SELECT count(torque_nm) FROM telemetry", db="sink")
            stored = count["results"][0]["series"][0]["values"][0][1]
        finally:
            server.stop()
    print(f"{'path':28} {'points/s':>10}")
    print(f"{'raw /write (ceiling)':28} {raw_rate:>10.0f}")
    print(f"{'twin sink (from journal)':28} {sink_rate:>10.0f}   ratio {sink_rate / raw_rate:.2f}")
    print(f"points written {written}, stored in InfluxDB {stored}")
    print(msgspec.json.encode({"ceiling": raw_rate, "sink": sink_rate, "stored": stored}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
