"""The live event stream behind `GET /stream` (Server-Sent Events).

Events (`twin` changes, at the MQTT twin cadence, and every `alert` change) get increasing ids
and are kept in a bounded ring, so a client that reconnects with `Last-Event-ID` gets what it
missed (while the ring still holds it). Each client has a bounded buffer filled from the journal
thread without waiting: a client that falls that far behind is dropped (counted), never slowing
ingest.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    kind: str  # twin | alert
    site: str
    machine: str
    data: bytes  # JSON

    def encode(self) -> bytes:
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (self.id, self.kind.encode(), self.data)


@dataclass(eq=False)
class _Client:
    site: str | None
    machine: str | None
    loop: asyncio.AbstractEventLoop
    capacity: int
    buffer: deque[Event] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: bool = False

    def wants(self, event: Event) -> bool:
        return (self.site is None or event.site == self.site) and (
            self.machine is None or event.machine == self.machine
        )


class EventHub:
    """Fans events out to SSE clients; thread-safe on the publishing side."""

    def __init__(
        self, history: int = 10_000, client_buffer: int = 1000, heartbeat_s: float = 15.0
    ) -> None:
        self.client_buffer = client_buffer
        self.heartbeat_s = heartbeat_s
        self._ring: deque[Event] = deque(maxlen=history)
        self._clients: set[_Client] = set()
        self._lock = threading.Lock()
        self._next_id = 1
        self.dropped: Counter[str] = Counter()  # reason -> clients dropped

    @property
    def clients(self) -> int:
        return len(self._clients)

    def publish(self, kind: str, site: str, machine: str, payload: Any) -> None:
        self.publish_json(kind, site, machine, msgspec.json.encode(payload))

    def publish_json(self, kind: str, site: str, machine: str, data: bytes) -> None:
        """`publish` for a payload that is JSON already (encoded once for MQTT and the stream)."""
        with self._lock:
            event = Event(self._next_id, kind, site, machine, data)
            self._next_id += 1
            self._ring.append(event)
            for client in list(self._clients):
                if client.dropped or not client.wants(event):
                    continue
                if len(client.buffer) >= client.capacity:
                    client.dropped = True
                    self.dropped["slow_client"] += 1
                else:
                    client.buffer.append(event)
                client.loop.call_soon_threadsafe(client.wake.set)

    async def subscribe(
        self, site: str | None, machine: str | None, last_event_id: int | None
    ) -> AsyncIterator[bytes]:
        """The SSE byte stream for one client, until it disconnects or is dropped."""
        client = _Client(site, machine, asyncio.get_running_loop(), self.client_buffer)
        with self._lock:
            if last_event_id is not None:
                client.buffer.extend(
                    e for e in self._ring if e.id > last_event_id and client.wants(e)
                )
            self._clients.add(client)
        try:
            yield b"retry: 2000\n\n"
            while True:
                while client.buffer:
                    yield client.buffer.popleft().encode()
                if client.dropped:
                    yield b'event: dropped\ndata: {"reason": "slow_client"}\n\n'
                    return
                client.wake.clear()
                if client.buffer:
                    continue
                try:
                    async with asyncio.timeout(self.heartbeat_s):  # cancellable, unlike wait_for
                        await client.wake.wait()
                except TimeoutError:
                    yield b": heartbeat\n\n"
        finally:
            with self._lock:
                self._clients.discard(client)
