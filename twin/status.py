"""One typed snapshot of the running twin: `/health` renders it as JSON, `/metrics` as Prometheus.

Every part reports its own piece (`Pipeline.status`, `Forwarder.status`, ...); `Twin.status`
puts them together and says what is wrong, if anything.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReadingTotals:
    received: int  # distinct readings applied, whole fleet
    duplicates: int
    rejected: int  # rejections attributed to a machine


@dataclass(frozen=True, slots=True)
class JournalStatus:
    lag: int  # messages received and not yet committed
    committed: int  # since start
    replayed: int  # at start
    rows: int
    dropped: int  # rows dropped by the size bound
    last_commit_ms: int | None
    failure: str | None


@dataclass(frozen=True, slots=True)
class SinkStatus:
    name: str
    cursor: int  # the journal id forwarded up to
    lag: int  # journal messages not yet forwarded
    written: int  # points written since start
    retries: int
    dropped: int  # journal rows the size bound dropped before they were sent
    last_error: str | None


@dataclass(frozen=True, slots=True)
class StreamStatus:
    clients: int
    dropped: dict[str, int]  # clients dropped, by reason


@dataclass(frozen=True, slots=True)
class ScoringStatus:
    models: int
    scored: int  # machine scorings since start
    seconds: float  # spent scoring since start


@dataclass(frozen=True, slots=True)
class OutboundStatus:
    queued: int  # twin and alert messages waiting for the broker
    dropped: int  # messages not sent because the queue was full (since start)


@dataclass(frozen=True, slots=True)
class SparkplugStatus:
    connected: bool
    host_id: str
    nodes: int  # edge nodes with a live session
    counts: dict[str, int]  # messages by type, rebirth requests, seq gaps, bad births, ...


@dataclass(frozen=True, slots=True)
class TwinStatus:
    status: str  # ok | degraded
    problems: list[str]
    broker_connected: bool
    uptime_s: float
    machines: int
    readings: ReadingTotals
    rejections: dict[str, int]  # every rejection counted since the journal began, by reason
    journal: JournalStatus
    sinks: list[SinkStatus]
    stream: StreamStatus
    scoring: ScoringStatus
    outbound: OutboundStatus
    sparkplug: SparkplugStatus | None = None  # with TWIN_SPARKPLUG=true
