"""History: readings aggregated into buckets of event time, and the store fleet models train on.

Each machine's `LiveHistory` (owned by its twin, fed by the journal thread) aggregates in-order
readings into buckets of `bucket_ms` of event time, sampling at most about `samples` readings a
bucket; closed buckets within the longest feature window stay in memory for live fleet features,
and go to the `HistoryOutbox` with every device event. The pipeline drains the outbox into the
`HistoryStore` on its writer thread.

Store writes are idempotent (a bucket replaces its earlier copy, an event is stored once), so a
journal replay that re-derives them changes nothing. Readings that arrive after their bucket
closed count in the live state but not in the history buckets.
"""

from __future__ import annotations

import bisect
import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from twin import database
from twin.errors import StorageError
from twin.messages import DeviceEvent
from twin.model.fleet import EVENT_TYPES

Signals = dict[str, tuple[float, float, float, float]]


@dataclass(frozen=True, slots=True)
class Bucket:
    """One machine's readings aggregated over `bucket_ms` of event time.

    `signals` maps a signal to (n, sum, sum of squares, last value) of the readings sampled.
    """

    start: int
    signals: Signals


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """How twins aggregate history."""

    bucket_ms: int = 300_000
    window_ms: int = 24 * 3_600_000  # the longest feature window
    samples: int = 50  # readings sampled per bucket, at most about


MAX_EVENT_KINDS = 256  # (type, code) pairs a twin remembers the last event of, at most
MAX_RECENT_EVENTS = 10_000  # events a twin keeps within the window, at most: the newest
ClosedBucket = tuple[str, str, Bucket]  # machine, site, bucket
StoredEvent = tuple[str, str, DeviceEvent]  # machine, site, event


class HistoryOutbox:
    """Closed buckets and device events waiting for the store (journal thread in, writer out)."""

    def __init__(self) -> None:
        self._closed: list[ClosedBucket] = []
        self._events: list[StoredEvent] = []

    @property
    def pending(self) -> bool:
        return bool(self._closed or self._events)

    def bucket(self, item: ClosedBucket) -> None:
        self._closed.append(item)

    def event(self, item: StoredEvent) -> None:
        self._events.append(item)

    def drain(self) -> tuple[list[ClosedBucket], list[StoredEvent]]:
        closed, events = self._closed, self._events
        self._closed, self._events = [], []
        return closed, events


class Records(msgspec.Struct, frozen=True):
    """Closed buckets and device events of one site in one message: how cluster mode's
    workers send history to the stream that training reads (`twin.cluster.training`)."""

    site: str
    buckets: list[tuple[str, int, Signals]] = []  # (machine, start, signals)
    events: list[tuple[str, int, str, str]] = []  # (machine, ts, type, code)

    def unpack(self) -> tuple[list[ClosedBucket], list[StoredEvent]]:
        """As the outbox held them, for `HistoryStore.write`."""
        buckets = [(m, self.site, Bucket(start, signals)) for m, start, signals in self.buckets]
        events = [
            (m, self.site, DeviceEvent.model_construct(ts=ts, type=kind, code=code))
            for m, ts, kind, code in self.events
        ]
        return buckets, events


def pack(buckets: list[ClosedBucket], events: list[StoredEvent], rows: int) -> list[Records]:
    """Drained history as messages of at most `rows` buckets and events, by site."""
    by_site: dict[str, tuple[list[Any], list[Any]]] = defaultdict(lambda: ([], []))
    for machine, site, bucket in buckets:
        by_site[site][0].append((machine, bucket.start, bucket.signals))
    for machine, site, event in events:
        by_site[site][1].append((machine, event.ts, event.type, event.code))
    out = []
    for site, (closed, happened) in by_site.items():
        for i in range(0, max(len(closed), len(happened)), rows):
            out.append(Records(site, closed[i : i + rows], happened[i : i + rows]))
    return out


class LiveHistory:
    """One machine's open bucket, its closed buckets and events within the feature window."""

    __slots__ = (
        "_acc",
        "_bucket",
        "_bucket_end",
        "_next_sample",
        "_outbox",
        "_policy",
        "_seen",
        "_stride",
        "buckets",
        "last",
        "machine",
        "recent",
        "site",
    )

    def __init__(
        self, machine: str, site: str, policy: HistoryPolicy, outbox: HistoryOutbox
    ) -> None:
        self.machine = machine
        self.site = site
        self._policy = policy
        self._outbox = outbox
        self._bucket = 0  # start of the open bucket, epoch ms (0: none yet)
        self._acc: dict[str, list[float]] = {}  # signal -> [n, sum, sum of squares]
        self._bucket_end = 0
        self._seen = 0  # readings in the open bucket
        self._stride = 1  # accumulate every stride-th reading (bounded work at high rates)
        self._next_sample = 1  # the reading count at which to accumulate next
        # Lists, not deques: an empty deque takes 760 bytes, and most machines have few of these
        # (at most a window of buckets, 288 at the defaults), so dropping the oldest is cheap.
        self.buckets: list[Bucket] = []
        self.recent: list[tuple[int, str, str]] = []  # (ts, type, code) within the window
        self.last: dict[tuple[str, str], int] = {}  # (type, code) -> ts of the last one

    def add(self, ts: int, values: dict[str, float], live: dict[str, tuple[float, int]]) -> None:
        """An in-order reading at event time `ts`; `live` is the twin's values, already updated."""
        if ts >= self._bucket_end:
            self._close(ts, live)
        self._seen += 1
        if self._seen < self._next_sample:
            return
        if self._seen >= 2 * self._policy.samples * self._stride:
            self._stride *= 2  # a faster stream than the last bucket's: thin out
        self._next_sample = self._seen + self._stride
        acc = self._acc
        for name, value in values.items():
            slot = acc.get(name)
            if slot is None:
                acc[name] = [1, value, value * value]
            else:
                slot[0] += 1
                slot[1] += value
                slot[2] += value * value

    def _close(self, ts: int, live: dict[str, tuple[float, int]]) -> None:
        """Close the open bucket (if any) and open the one `ts` falls in."""
        policy = self._policy
        if self._bucket and self._acc:
            signals = {
                name: (n, total, squares, live[name][0])
                for name, (n, total, squares) in self._acc.items()
            }
            bucket = Bucket(self._bucket, signals)
            self.buckets.append(bucket)
            self._outbox.bucket((self.machine, self.site, bucket))
            horizon = ts - policy.window_ms
            old = next((i for i, b in enumerate(self.buckets) if b.start >= horizon), None)
            del self.buckets[: len(self.buckets) if old is None else old]
        # Sample at most ~policy.samples readings per bucket, judged by the last bucket's rate.
        self._stride = max(1, self._seen // policy.samples)
        self._bucket = ts - ts % policy.bucket_ms
        self._bucket_end = self._bucket + policy.bucket_ms
        self._acc = {}
        self._seen = 0
        self._next_sample = 1

    def event(self, event: DeviceEvent) -> None:
        assert event.ts is not None
        if event.type in EVENT_TYPES:  # what site models' event features count
            bisect.insort(self.recent, (event.ts, event.type, event.code))
            horizon = self.recent[-1][0] - self._policy.window_ms
            old = bisect.bisect_left(self.recent, (horizon, "", ""))
            del self.recent[: max(old, len(self.recent) - MAX_RECENT_EVENTS)]
            kind = (event.type, event.code)
            if kind in self.last or len(self.last) < MAX_EVENT_KINDS:
                self.last[kind] = max(event.ts, self.last.get(kind, 0))
        self._outbox.event((self.machine, self.site, event))

    def fork(self) -> LiveHistory:
        """A copy that can be fed without touching this one (what-if and forecasts): what it
        closes goes to an outbox of its own, which nothing drains."""
        copy = LiveHistory(self.machine, self.site, self._policy, HistoryOutbox())
        copy._bucket, copy._bucket_end = self._bucket, self._bucket_end
        copy._acc = {name: list(slot) for name, slot in self._acc.items()}
        copy._seen, copy._stride, copy._next_sample = self._seen, self._stride, self._next_sample
        copy.buckets = list(self.buckets)  # buckets are immutable
        copy.recent = list(self.recent)
        copy.last = dict(self.last)
        return copy

    def events(self) -> list[tuple[int, str, str]]:
        """(ts, type, code) of the events in the window and the last of each kind, by time."""
        events = set(self.recent)
        events.update((ts, kind, code) for (kind, code), ts in self.last.items())
        return sorted(events)

    def seen_since(self, since: int) -> set[str]:
        """The signals sent at or after event time `since` (closed buckets and the open one)."""
        seen = set(self._acc) if self._bucket_end > since else set()
        for bucket in reversed(self.buckets):
            if bucket.start + self._policy.bucket_ms <= since:
                break
            seen.update(bucket.signals)
        return seen

    def dump(self) -> dict[str, Any]:
        return {
            "bucket": [self._bucket, self._acc, self._seen, self._stride],
            "buckets": [[b.start, b.signals] for b in self.buckets],
            "events": list(self.recent),
            "last": [[kind, code, ts] for (kind, code), ts in self.last.items()],
        }

    def load(self, data: dict[str, Any]) -> None:
        self._bucket, self._acc, self._seen, self._stride = data["bucket"]
        self._bucket_end = self._bucket + self._policy.bucket_ms if self._bucket else 0
        self._next_sample = self._seen + 1
        self.buckets.extend(
            Bucket(start, {k: (v[0], v[1], v[2], v[3]) for k, v in signals.items()})
            for start, signals in data["buckets"]
        )
        if "events" in data:
            self.recent.extend((ts, kind, code) for ts, kind, code in data["events"])
            self.last = {(kind, code): ts for kind, code, ts in data["last"]}
        else:  # a snapshot of an earlier version: errors in the window, last maintenance
            self.recent.extend((ts, "error", code) for ts, code in data["errors"])
            self.last = {("maintenance", code): ts for code, ts in data["maintenance"].items()}
            self.last.update((("error", code), ts) for ts, code in data["errors"])


_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    machine TEXT NOT NULL,
    site TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    signals BLOB NOT NULL,
    PRIMARY KEY (machine, start_ms)
);
CREATE INDEX IF NOT EXISTS buckets_site ON buckets (site, start_ms);
CREATE TABLE IF NOT EXISTS events (
    machine TEXT NOT NULL,
    site TEXT NOT NULL,
    ts INTEGER NOT NULL,
    type TEXT NOT NULL,
    code TEXT NOT NULL,
    UNIQUE (machine, ts, type, code)
);
CREATE INDEX IF NOT EXISTS events_site ON events (site, type);
"""


@dataclass
class MachineHistory:
    """One machine's stored history, oldest first."""

    site: str
    buckets: list[Bucket] = field(default_factory=list)
    events: list[tuple[int, str, str]] = field(default_factory=list)  # (ts, type, code)


class HistoryStore:
    """Writes from the journal's writer thread; reads open their own connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        try:
            self._db = database.connect(self.path, wal=True)  # reads do not block writes
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the history in {self.path}: {exc}") from exc

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def write(
        self,
        buckets: Iterable[ClosedBucket],
        events: Iterable[StoredEvent],
    ) -> None:
        assert self._db is not None
        bucket_rows = [(m, s, b.start, msgspec.json.encode(b.signals)) for m, s, b in buckets]
        event_rows = [(m, s, e.ts, e.type, e.code) for m, s, e in events]
        if not bucket_rows and not event_rows:
            return
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR REPLACE INTO buckets VALUES (?, ?, ?, ?)", bucket_rows
                )
                self._db.executemany(
                    "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)", event_rows
                )
        except sqlite3.Error as exc:
            raise StorageError(f"history write failed: {exc}") from exc

    def failures(self, site: str | None = None) -> int:
        """How many failure events are stored (for one site, or all)."""
        with closing(database.connect(self.path)) as db:
            query = "SELECT count(*) FROM events WHERE type = 'failure'"
            args: tuple[Any, ...] = ()
            if site is not None:
                query += " AND site = ?"
                args = (site,)
            return int(db.execute(query, args).fetchone()[0])

    def load(self, site: str | None = None) -> dict[str, MachineHistory]:
        """Every machine's history (of one site, or all)."""
        where, args = ("WHERE site = ?", (site,)) if site is not None else ("", ())
        out: dict[str, MachineHistory] = {}
        with closing(database.connect(self.path)) as db:
            for machine, msite, start, blob in db.execute(
                f"SELECT machine, site, start_ms, signals FROM buckets {where} "
                "ORDER BY machine, start_ms",
                args,
            ):
                signals = {
                    k: (v[0], v[1], v[2], v[3]) for k, v in msgspec.json.decode(blob).items()
                }
                out.setdefault(machine, MachineHistory(msite)).buckets.append(
                    Bucket(start, signals)
                )
            events: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
            for machine, ts, etype, code in db.execute(
                f"SELECT machine, ts, type, code FROM events {where} ORDER BY machine, ts", args
            ):
                events[machine].append((ts, etype, code))
        for machine, items in events.items():
            if machine in out:
                out[machine].events = items
        return out
