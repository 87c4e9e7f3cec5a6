"""The ingest pipeline: received message -> journal (group commit) -> decode -> state -> ack.

One thread owns the journal. It takes what the MQTT thread received, commits it in one
transaction every `commit_ms` at most, then decodes and applies it, and only then acknowledges
the MQTT messages. A crash between receipt and commit loses nothing (the broker redelivers what
was not acknowledged); a crash after the commit loses nothing either (replay on start), and the
redelivered copies are recognised as duplicates.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec

from twin.deadletters import DeadLetters
from twin.errors import JournalError
from twin.history import HistoryStore
from twin.journal import Journal
from twin.messages import Decoded, Limits, RawMessage, Rejection, decode
from twin.state import FleetState, MachineTwin
from twin.topics import Topics

log = logging.getLogger(__name__)

AckToken = Any  # what the MQTT side needs to acknowledge one message
_MAX_BATCH = 20_000  # messages in one commit at most
_BACKLOG = 1_000  # messages waiting: with this many, commit at once rather than waiting


class Pipeline:
    """Owns the journal and feeds the state."""

    def __init__(
        self,
        journal: Journal,
        history: HistoryStore,
        state: FleetState,
        deadletters: DeadLetters,
        topics: Topics,
        limits: Limits,
        *,
        commit_ms: int = 20,
        snapshot_interval_s: float = 30.0,
        summary_s: float = 60.0,
    ) -> None:
        self.journal = journal
        self.history = history
        self.state = state
        self.deadletters = deadletters
        self.topics = topics
        self.limits = limits
        self.commit_s = commit_ms / 1000
        self.snapshot_interval_s = snapshot_interval_s
        self.summary_s = summary_s  # how often ingest logs what it did
        self.ack: Callable[[Sequence[AckToken]], None] = lambda tokens: None
        # Told which twins each batch changed (an empty set when idle): risk scoring hangs here.
        self.on_applied: Callable[[set[MachineTwin]], None] = lambda changed: None
        self._inbox: queue.SimpleQueue[tuple[RawMessage, AckToken] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # The journal's writes happen here; every other journal call waits for them first.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twin-journal-write")
        self._stopping = threading.Event()
        self._snapshot_id = 0
        self._last_snapshot = time.monotonic()
        self.committed = 0
        self.replayed = 0
        self.last_commit_ms: int | None = None
        self.failure: str | None = None
        self._last_summary: tuple[float, tuple[int, int, int, int]] = (
            time.monotonic(),
            (0, 0, 0, 0),
        )
        self._last_reasons: dict[str, int] = {}

    def submit(self, raw: RawMessage, token: AckToken) -> None:
        """Called from the MQTT thread for every message; never blocks."""
        self._inbox.put((raw, token))

    @property
    def pending(self) -> int:
        """Messages received and not yet committed (the journal lag)."""
        return self._inbox.qsize()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Restore the snapshot, replay the journal after it, then start committing."""
        self._restore()
        counts, self._last_reasons = self._counts()
        self._last_summary = (time.monotonic(), counts)
        self._thread = threading.Thread(target=self._run, name="twin-journal", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Commit and acknowledge what was received, then write a final snapshot."""
        if self._thread is None:
            return
        self._stopping.set()
        self._inbox.put(None)
        self._thread.join()
        self._thread = None
        self._writer.shutdown()
        if self.failure is None:
            self._snapshot()
        log.info("journal flushed: %d messages committed this run", self.committed)

    # -- the loop -----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if not batch:
                self.on_applied(set())
            else:
                try:
                    self._commit(batch)
                except JournalError as exc:
                    # Nothing more can be made durable: stop acknowledging, so the broker keeps
                    # every message for the next start.
                    self.failure = str(exc)
                    log.error("%s; ingest stopped, unacknowledged messages stay on the broker", exc)
                    return
                except Exception as exc:  # a bug: stop loudly rather than ack what was not applied
                    self.failure = f"unexpected {type(exc).__name__}: {exc}"
                    log.exception("ingest stopped; unacknowledged messages stay on the broker")
                    return
            if self._stopping.is_set() and self._inbox.empty():
                return
            if time.monotonic() - self._last_snapshot >= self.snapshot_interval_s or (
                self.journal.rows > self.journal.max_rows
            ):
                self._snapshot()
            if time.monotonic() - self._last_summary[0] >= self.summary_s:
                self._log_summary()

    def _counts(self) -> tuple[tuple[int, int, int, int], dict[str, int]]:
        totals, rejected = self.state.totals, dict(self.deadletters.by_reason)
        return (
            self.committed,
            totals.received,
            totals.duplicates,
            sum(rejected.values()),
        ), rejected

    def _log_summary(self) -> None:
        """One line a period with what ingest did, when it did anything."""
        now, rejected = self._counts()
        last = self._last_summary[1]
        self._last_summary = (time.monotonic(), now)
        if now == last:
            return
        reasons = ", ".join(
            f"{r} {n - self._last_reasons.get(r, 0)}"
            for r, n in rejected.items()
            if n != self._last_reasons.get(r, 0)
        )
        self._last_reasons = rejected
        log.info(
            "last %.0f s: %d messages, %d readings applied, %d duplicates, %d rejected%s",
            self.summary_s,
            now[0] - last[0],
            now[1] - last[1],
            now[2] - last[2],
            now[3] - last[3],
            f" ({reasons})" if reasons else "",
        )

    def _collect(self) -> list[tuple[RawMessage, AckToken]]:
        """Wait for a message, let the commit window fill, then take what arrived."""
        try:
            first = self._inbox.get(timeout=0.5)
        except queue.Empty:
            return []
        if first is None:
            return []
        if self._inbox.qsize() < _BACKLOG:
            # Sleeping out the window, rather than waking for each message, leaves the GIL to
            # the MQTT thread meanwhile and makes one large commit instead of many small ones.
            time.sleep(self.commit_s)
        batch = [first]
        while len(batch) < _MAX_BATCH:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is None:
                break
            batch.append(item)
        return batch

    def _commit(self, batch: list[tuple[RawMessage, AckToken]]) -> None:
        raws = [raw for raw, _ in batch]
        # SQLite releases the GIL while it writes, so the commit runs beside decoding and
        # applying the same batch. The acknowledgements wait for both.
        written = self._writer.submit(self.journal.append, raws)
        self._apply(raws)
        written.result()
        if self.state.history.pending:  # buckets close rarely: no round trip for most batches
            self._writer.submit(self._write_history).result()
        self.committed += len(batch)
        self.last_commit_ms = int(time.time() * 1000)
        self.ack([token for _, token in batch])

    def _write_history(self) -> None:
        self.history.write(*self.state.history.drain())

    def _apply(self, raws: Sequence[RawMessage]) -> None:
        topics, limits, state, deadletters = self.topics, self.limits, self.state, self.deadletters
        changed = set()
        for raw in raws:
            try:
                decoded = decode(topics, raw.topic, raw.payload, raw.received_ms, limits)
                twin = state.apply(decoded, raw.received_ms)
            except Exception as exc:
                # A bug must cost one message, not ingest: and since replay applies the journal
                # again, a message that raised would otherwise stop every restart too.
                log.exception("a message on %s could not be applied; dead-lettered", raw.topic)
                detail = f"{type(exc).__name__}: {exc}"
                decoded = Decoded(None, rejections=[Rejection("internal_error", detail)])
                twin = None
            if twin is not None:
                changed.add(twin)
            if decoded.rejections:
                deadletters.add(raw, decoded)
        self.on_applied(changed)

    # -- snapshot and replay --------------------------------------------------------------------

    def _snapshot(self) -> None:
        upto = self.journal.last_id
        blob = msgspec.json.encode(
            {"machines": self.state.dump(), "deadletters": self.deadletters.dump()}
        )
        self.journal.save_snapshot(upto, blob)
        self._snapshot_id = upto
        self._last_snapshot = time.monotonic()
        dropped = self.journal.prune(upto)
        if dropped:
            log.warning(
                "journal over %d rows: dropped the %d oldest", self.journal.max_rows, dropped
            )

    def _restore(self) -> None:
        snapshot = self.journal.load_snapshot()
        if snapshot is not None:
            self._snapshot_id, blob = snapshot
            data = msgspec.json.decode(blob)
            self.state.load(data["machines"])
            self.deadletters.load(data["deadletters"])
        after = self._snapshot_id
        while rows := self.journal.read_after(after):
            self._apply([raw for _, raw in rows])
            self._write_history()
            after = rows[-1][0]
            self.replayed += len(rows)
        log.info(
            "restored %d machines from the snapshot at journal id %d, replayed %d messages",
            len(self.state),
            self._snapshot_id,
            self.replayed,
        )
