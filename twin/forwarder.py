"""Forward journalled readings (and fresh risk scores) to one sink, with a durable cursor.

The forwarder reads the journal through its own SQLite connection, so it never blocks or slows
ingest. It writes batches bounded in size (`sink_batch` points) and time (`sink_max_delay_ms`),
retries a failed write with exponential backoff and jitter until it lands, and only then moves its
cursor, which the journal respects when it prunes: an outage delays history but loses none of it,
up to the journal's size bound (rows dropped past it are counted here as `dropped`). Redelivered
readings are written again as the same points, which InfluxDB stores once.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from twin import database
from twin.alerts import Alert
from twin.journal import read_after
from twin.messages import Limits, RawMessage, decode
from twin.sinks import Sink, SinkError
from twin.sinks.lineprotocol import alert_point, pipeline_line, risk_line, telemetry_lines
from twin.status import SinkStatus
from twin.topics import Topics

if TYPE_CHECKING:
    from twin.risk import Risk

log = logging.getLogger(__name__)

_MAX_BACKOFF_S = 30.0

_PIPELINE_EVERY_S = 10.0  # how often the twin's own health goes to the sink


class Delivery:
    """Writes batches of lines to one sink, retrying a failed write with exponential backoff and
    jitter until it lands or `stop` is set. Shared by the journal's forwarder and cluster mode's
    (`twin forward`)."""

    def __init__(self, sink: Sink, stop: threading.Event, retry_base_s: float = 0.25) -> None:
        self.sink = sink
        self.stop = stop
        self.retry_base_s = retry_base_s  # the first retry waits about twice this, then doubles
        self.written = 0
        self.retries = 0
        self.last_error: str | None = None

    def deliver(self, lines: list[str]) -> bool:
        """Write until it lands (True) or stopping (False)."""
        if not lines:
            return True
        attempt = 0
        while True:
            try:
                self.sink.write(lines)
            except SinkError as exc:
                attempt += 1
                self.retries += 1
                if self.last_error is None:
                    log.warning("sink %s failing, retrying with backoff: %s", self.sink.name, exc)
                self.last_error = str(exc)
                delay = min(_MAX_BACKOFF_S, self.retry_base_s * 2**attempt) * (
                    0.5 + random.random()
                )
                if self.stop.wait(delay):
                    return False
                continue
            if self.last_error is not None:
                log.info("sink %s recovered after %d retries", self.sink.name, attempt)
                self.last_error = None
            self.written += len(lines)
            return True


def telemetry_of(topics: Topics, limits: Limits, raw: RawMessage) -> list[str]:
    """The `telemetry` points of a received message (none for what is not telemetry)."""
    decoded = decode(topics, raw.topic, raw.payload, raw.received_ms, limits)
    if not decoded.readings or decoded.address is None:
        return []
    return telemetry_lines(decoded.address.site, decoded.address.machine, decoded.readings)


class Forwarder:
    """One sink's reader of the journal."""

    def __init__(
        self,
        sink: Sink,
        journal_path: Path,
        head: Callable[[], int],
        counts: Callable[[], tuple[int, int, int]],
        topics: Topics,
        limits: Limits,
        *,
        batch: int = 5000,
        max_delay_s: float = 1.0,
        retry_base_s: float = 0.25,
    ) -> None:
        self.sink = sink
        self.name = sink.name
        self.journal_path = journal_path
        self.head = head  # the journal's newest id
        self.counts = counts  # readings received, duplicates, rejections, for `pipeline` points
        self._last_pipeline = 0.0
        self.topics = topics
        self.limits = limits
        self.batch = batch
        self.max_delay_s = max_delay_s
        # Not journalled, so not durable: fresh risk scores and alert changes wait here.
        self._risks: deque[tuple[str, str, Risk]] = deque(maxlen=100_000)
        self._alerts: deque[str] = deque(maxlen=100_000)
        self.cursor = 0
        self.dropped = 0
        self._db: sqlite3.Connection | None = None
        self._stop = threading.Event()
        self.delivery = Delivery(sink, self._stop, retry_base_s)
        self._thread: threading.Thread | None = None
        self._writer = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"sink-{self.name}-write"
        )
        self._inflight: tuple[Future[bool], int] | None = None
        self._read_at = 0  # journal id read up to (ahead of the cursor by the write in flight)

    @property
    def lag(self) -> int:
        """Journal messages not yet forwarded."""
        return max(self.head() - self.cursor, 0)

    def start(self) -> None:
        db = self._db = database.connect(self.journal_path)
        db.execute("INSERT OR IGNORE INTO sink_cursors VALUES (?, 0)", (self.name,))
        (self.cursor,) = db.execute(
            "SELECT journal_id FROM sink_cursors WHERE name = ?", (self.name,)
        ).fetchone()
        self._read_at = self.cursor
        self.sink.start()
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
        self._thread.start()
        log.info("sink %s: forwarding from journal id %d", self.name, self.cursor)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        self._settle()
        self._writer.shutdown()
        self.sink.close()
        if self._db is not None:
            self._db.close()
            self._db = None

    def risks(self, scored: list[tuple[str, str, Risk]]) -> None:
        """Fresh scores, as points of the `risk` measurement (called on the journal thread)."""
        self._risks.extend(scored)

    def alert(self, alert: Alert) -> None:
        """An alert change, as a point of the `alert` measurement."""
        self._alerts.append(alert_point(alert))

    @property
    def last_error(self) -> str | None:
        return self.delivery.last_error

    @property
    def retries(self) -> int:
        return self.delivery.retries

    @property
    def written(self) -> int:
        return self.delivery.written

    def status(self) -> SinkStatus:
        d = self.delivery
        return SinkStatus(
            self.name, self.cursor, self.lag, d.written, d.retries, self.dropped, d.last_error
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:  # keep forwarding: a bug here must not silently end history
                log.exception("sink %s: unexpected error; retrying", self.name)
                self.delivery.last_error = f"{type(exc).__name__}: {exc}"
                self._stop.wait(_MAX_BACKOFF_S)

    def _step(self) -> None:
        # Serialising the next batch overlaps writing the previous one (the write waits on the
        # network with the GIL released); the cursor moves only past batches that landed.
        lines, upto = self._next_batch()
        landed = self._settle()
        if not landed:
            return  # stopping while the sink was down: the cursor stays, nothing is lost
        self._inflight = (self._writer.submit(self.delivery.deliver, lines), upto)
        if len(lines) < self.batch:
            self._settle()
            self._stop.wait(self.max_delay_s)  # a partial batch: let more arrive

    def _settle(self) -> bool:
        """Wait for the write in flight; move the cursor past it if it landed."""
        if self._inflight is None:
            return True
        write, upto = self._inflight
        self._inflight = None
        if not write.result():
            self._read_at = self.cursor  # read it again next time
            return False
        if upto > self.cursor:
            self._advance(upto)
        return True

    def _next_batch(self) -> tuple[list[str], int]:
        assert self._db is not None
        rows = read_after(self._db, self._read_at, max(self.batch // 10, 100))
        if rows and rows[0][0] > self._read_at + 1 and self._read_at:
            gap = rows[0][0] - self._read_at - 1
            self.dropped += gap
            log.warning("sink %s: %d journal rows were dropped before it read them", self.name, gap)
        lines: list[str] = []
        upto = self._read_at
        for row_id, raw in rows:
            lines += telemetry_of(self.topics, self.limits, raw)
            upto = row_id
            if len(lines) >= self.batch:
                break
        while self._risks and len(lines) < self.batch:
            site, machine, risk = self._risks.popleft()
            lines.append(
                risk_line(
                    site,
                    machine,
                    risk.model_version,
                    risk.probability,
                    risk.threshold,
                    risk.updated_at,
                )
            )
        while self._alerts and len(lines) < self.batch:
            lines.append(self._alerts.popleft())
        if time.monotonic() - self._last_pipeline >= _PIPELINE_EVERY_S:
            self._last_pipeline = time.monotonic()
            received, duplicates, rejected = self.counts()
            now = int(time.time() * 1000)
            lines.append(pipeline_line(self.name, received, duplicates, rejected, self.lag, now))
        self._read_at = upto
        return lines, upto

    def _advance(self, upto: int) -> None:
        assert self._db is not None
        self._db.execute("UPDATE sink_cursors SET journal_id = ? WHERE name = ?", (upto, self.name))
        self.cursor = upto
