"""The sink interface: `start()`, `write(lines)`, `close()`."""

from __future__ import annotations

from typing import Protocol

from twin.errors import Unavailable


class SinkError(Unavailable):
    """A write that did not land; the forwarder retries it."""


class Sink(Protocol):
    name: str

    def start(self) -> None: ...

    def write(self, lines: list[str]) -> None:
        """Write line-protocol lines; raise `SinkError` when they did not land."""

    def close(self) -> None: ...
