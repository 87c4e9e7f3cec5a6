"""In-memory stand-ins for the parts a unit test should not need a server for. Injected, never
patched in: each has the interface of the real part."""

from __future__ import annotations

import threading
from typing import Any

from twin.sinks import SinkError


class MemorySink:
    """A sink that keeps what it was given; `fail(n)` makes the next `n` writes fail."""

    name = "memory"

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.attempts = 0
        self.started = False
        self.closed = False
        self._failures = 0
        self._lock = threading.Lock()

    def fail(self, times: int) -> None:
        with self._lock:
            self._failures = times

    def start(self) -> None:
        self.started = True

    def write(self, lines: list[str]) -> None:
        with self._lock:
            self.attempts += 1
            if self._failures:
                self._failures -= 1
                raise SinkError("memory sink told to fail")
            self.lines.extend(lines)

    def close(self) -> None:
        self.closed = True

    def measurement(self, name: str) -> list[str]:
        return [line for line in self.lines if line.startswith(f"{name},")]


class Published:
    """Records MQTT publications as `Outbound` makes them: (topic, payload, retain)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []

    def __call__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.messages.append((topic, payload, retain))

    def topics(self) -> list[str]:
        return [topic for topic, _, _ in self.messages]


class InfluxQL:
    """An InfluxDB 1.x query client that answers from canned series and records the queries."""

    def __init__(self, series: dict[str, list[dict[str, Any]]] | None = None) -> None:
        self.series = series or {}  # a signal name -> the series a query for it returns
        self.queries: list[str] = []

    def query(self, influxql: str) -> list[dict[str, Any]]:
        self.queries.append(influxql)
        for name, found in self.series.items():
            if f'"{name}"' in influxql:
                return found
        return []
