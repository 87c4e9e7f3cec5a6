"""Device connections: birth and last will on `.../status`, readings and events at QoS 1.

The only device module that imports paho. All of a fleet's connections run on one
`NetworkLoop`: one thread and one selector driving paho's external-loop API
(`loop_read`/`loop_write`/`loop_misc`), so 10,000 simulated machines need one thread, not
10,000. The loop reconnects dropped connections with jittered backoff and paho resends the
QoS 1 messages the broker had not acknowledged, so a broker restart delays readings but does
not lose them.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from twin.config import BrokerAddress
from twin.ingest import configure_tls
from twin.messages import DeviceEvent, Reading, Status, encode
from twin.topics import Topics

log = logging.getLogger(__name__)

_RW = selectors.EVENT_READ | selectors.EVENT_WRITE


class NetworkLoop:
    """One thread serving many paho clients: connects, reads, writes, keepalives, reconnects.

    paho calls `publish()` thread-safe in its own threaded mode; the same holds here: a publish
    from another thread queues the packet inside paho and asks this loop (through
    `on_socket_register_write`) to write it.
    """

    # paho connects blocking; a broker's accept backlog (Mosquitto: 100) that overflows drops
    # SYNs, and each dropped one stalls this thread for a 1 s retransmit. So at most this many
    # connections wait for their CONNACK at a time.
    MAX_CONNECTING = 64
    SWEEP_S = 1.0  # keepalive checks, backoff resets and stray writes, per client

    def __init__(self, reconnect_min_s: float = 1.0, reconnect_max_s: float = 5.0) -> None:
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._writes: set[mqtt.Client] = set()  # asked for from other threads
        self._due: list[tuple[float, int, mqtt.Client]] = []  # (when, tiebreak, client) heap
        self._backoff: dict[mqtt.Client, float] = {}  # attached clients; reconnected when lost
        self._connecting: set[mqtt.Client] = set()  # socket open, no CONNACK yet
        self._order = 0
        self._random = random.Random()
        self._failures = 0
        self._last_failure = ""
        self._failures_logged_at = 0.0
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name="device-network", daemon=True)
        self._thread.start()

    def attach(self, client: mqtt.Client) -> None:
        """Connect `client` (after its `connect_async`) and keep it connected until detached."""
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        with self._lock:
            self._backoff[client] = self.reconnect_min_s
            self._schedule(client, 0.0)
        self._wake()

    def detach(self, client: mqtt.Client) -> None:
        """Stop reconnecting `client`; its connection stays served until paho closes it."""
        with self._lock:
            self._backoff.pop(client, None)

    def close(self, timeout: float = 5.0) -> None:
        """Stop once every connection is closed (DISCONNECTs written), or after `timeout`."""
        self._deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake()
        self._thread.join()
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]  # only sockets are registered
        self._selector.close()
        self._wake_w.close()

    # paho's socket callbacks: open and close run on this loop's thread, register-write anywhere.

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._selector.register(sock, selectors.EVENT_READ, client)
        self._connecting.add(client)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        self._connecting.discard(client)
        with self._lock:
            delay = self._backoff.get(client)
            if delay is not None and not self._stopping.is_set():
                self._schedule(client, delay)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() == self._thread.ident:
            self._set_interest(client)
            return
        with self._lock:
            first = not self._writes
            self._writes.add(client)
        if first:
            self._wake()

    # internals

    def _wake(self) -> None:
        # BlockingIOError: a wake-up is already pending; OSError: the loop is closed.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _schedule(self, client: mqtt.Client, delay: float) -> None:
        """Connect `client` after about `delay` seconds (jittered so a fleet spreads out)."""
        if delay:
            delay *= self._random.uniform(0.5, 1.5)
        self._order += 1
        heapq.heappush(self._due, (time.monotonic() + delay, self._order, client))

    def _set_interest(self, client: mqtt.Client) -> None:
        sock = client.socket()
        if sock is None:
            return
        with contextlib.suppress(KeyError, ValueError):  # closed meanwhile
            self._selector.modify(
                sock, _RW if client.want_write() else selectors.EVENT_READ, client
            )

    def _connect_due(self, now: float) -> None:
        while len(self._connecting) < self.MAX_CONNECTING:
            with self._lock:
                if not self._due or self._due[0][0] > now:
                    return
                _, _, client = heapq.heappop(self._due)
                delay = self._backoff.get(client)
                if delay is None:
                    continue  # detached meanwhile
                self._backoff[client] = min(delay * 2, self.reconnect_max_s)
            try:
                client.reconnect()
            except OSError as exc:  # refused, unreachable, TLS failure
                self._failures += 1
                self._last_failure = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    if client in self._backoff:
                        self._schedule(client, self._backoff[client])

    def _sweep(self) -> None:
        """Keepalive pings and timeouts; writes a cross-thread wake-up may have missed."""
        for key in list(self._selector.get_map().values()):
            client = key.data
            if client is None:
                continue
            client.loop_misc()
            if client.is_connected():
                self._connecting.discard(client)
                with self._lock:
                    if client in self._backoff:
                        self._backoff[client] = self.reconnect_min_s
            self._set_interest(client)
        now = time.monotonic()
        if self._failures and now - self._failures_logged_at >= 5:
            log.warning(
                "%d device connection attempts failed (last: %s); retrying",
                self._failures,
                self._last_failure,
            )
            self._failures = 0
            self._failures_logged_at = now

    def _serve(self, client: mqtt.Client, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            client.loop_read()
            sock = client.socket()
            # TLS may hold decrypted bytes the selector cannot see.
            while sock is not None and getattr(sock, "pending", lambda: 0)():
                client.loop_read()
                sock = client.socket()
        if mask & selectors.EVENT_WRITE:
            client.loop_write()
        if client in self._connecting and client.is_connected():
            self._connecting.discard(client)
        self._set_interest(client)

    def _run(self) -> None:
        next_sweep = time.monotonic() + self.SWEEP_S
        while True:
            now = time.monotonic()
            if self._stopping.is_set():
                if len(self._selector.get_map()) <= 1 or now >= self._deadline:
                    return
            else:
                self._connect_due(now)
            with self._lock:
                next_due = self._due[0][0] if self._due else now + self.SWEEP_S
            if len(self._connecting) >= self.MAX_CONNECTING:
                next_due = next_sweep  # full: CONNACKs (I/O) free a slot, not the clock
            timeout = max(0.0, min(next_due, next_sweep) - now)
            for key, mask in self._selector.select(min(timeout, 0.5)):
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                else:
                    self._serve(key.data, mask)
            with self._lock:
                writes, self._writes = self._writes, set()
            for client in writes:
                client.loop_write()
                self._set_interest(client)
            if time.monotonic() >= next_sweep:
                self._sweep()
                next_sweep = time.monotonic() + self.SWEEP_S


class DevicePublisher:
    """Publishes for one machine, over a connection served by `loop`."""

    def __init__(
        self,
        broker: BrokerAddress,
        topics: Topics,
        site: str,
        machine: str,
        machine_type: str,
        *,
        loop: NetworkLoop,
        protocol: str = "5",
        max_inflight: int = 100,
        session_expiry_s: int = 0,
        on_delivered: Callable[[int], None] | None = None,
        on_jobs: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        """`session_expiry_s` > 0 keeps a persistent session (MQTT 5 session expiry, or
        3.1.1's clean session off); `on_delivered(mid)` is called, on the loop's thread, when
        the broker has acknowledged a message; `on_jobs(jobs)`, on the loop's thread, with the
        machine's jobs each time the twin publishes them (its jobs topic, subscribed)."""
        self.loop = loop
        self.broker = broker
        self.topics = topics
        self.site = site
        self.machine = machine
        self.machine_type = machine_type
        self.protocol = protocol
        self.max_inflight = max_inflight
        self.session_expiry_s = session_expiry_s
        self.on_delivered = on_delivered
        self.on_jobs = on_jobs
        self.available = True  # what the birth says: False while the machine's source is away
        self.connected = False
        self.published = 0  # QoS 1 messages handed to paho
        self.delivered = 0  # ... and acknowledged by the broker
        self._client: mqtt.Client | None = None
        self._telemetry = topics.telemetry(site, machine)

    def _say(self, state: Literal["online", "offline"]) -> mqtt.MQTTMessageInfo:
        """Publish the machine's status, retained, stamped now."""
        status = Status(state=state, ts=int(time.time() * 1000), type=self.machine_type or None)
        return self._publish(self.topics.status(self.site, self.machine), encode(status), True)

    def start(self) -> None:
        v5 = self.protocol == "5"
        persistent = self.session_expiry_s > 0
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"device-{self.site}-{self.machine}",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else not persistent,
        )
        if self.broker.username is not None:
            client.username_pw_set(self.broker.username, self.broker.password)
        configure_tls(client, self.broker)
        client.max_inflight_messages_set(self.max_inflight)
        # No ts in the will: set at connect, it would predate the birth and the twin would keep
        # the birth (the newer status); without one, the broker's delivery time stands in.
        will = encode(Status(state="offline", type=self.machine_type or None))
        client.will_set(self.topics.status(self.site, self.machine), will, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client  # before the loop starts: on_connect publishes through it
        kwargs: dict[str, Any] = {}
        if v5 and persistent:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: no hint
            props.SessionExpiryInterval = self.session_expiry_s
            kwargs = {"clean_start": False, "properties": props}
        client.connect_async(self.broker.host, self.broker.port, keepalive=30, **kwargs)
        self.loop.attach(client)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode, props: Any
    ) -> None:
        if reason_code.is_failure:
            log.error("%s: broker refused the connection: %s", self.machine, reason_code)
            return
        self.connected = True
        self._say("online" if self.available else "offline")
        if self.on_jobs is not None:
            client.subscribe(self.topics.jobs(self.site, self.machine), qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """The twin's jobs for this machine (the only subscription)."""
        assert self.on_jobs is not None
        try:
            jobs = json.loads(message.payload)["jobs"]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable jobs message: %s", self.machine, exc)
            return
        self.on_jobs(jobs)

    def _on_disconnect(self, client: mqtt.Client, *args: Any) -> None:
        self.connected = False

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, *args: Any) -> None:
        self.delivered += 1
        if self.on_delivered is not None:
            self.on_delivered(mid)

    def set_available(self, available: bool) -> None:
        """Say `online` or `offline` (retained) for the machine's source (an OPC UA server
        reached or lost) while the connection to the broker stays up; the birth after a
        reconnect says the same."""
        self.available = available
        if self.connected:
            self._say("online" if available else "offline")

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> mqtt.MQTTMessageInfo:
        self.published += 1
        return self.client.publish(topic, payload, qos=1, retain=retain)

    @property
    def client(self) -> mqtt.Client:
        if self._client is None:
            raise RuntimeError("publisher not started")
        return self._client

    def publish_readings(self, readings: list[Reading]) -> mqtt.MQTTMessageInfo:
        """One reading as an object, several as a JSON array (one MQTT message)."""
        body = readings[0].to_wire() if len(readings) == 1 else [r.to_wire() for r in readings]
        return self._publish(self._telemetry, encode(body))

    def publish_raw(self, payload: bytes) -> mqtt.MQTTMessageInfo:
        """Publish a ready telemetry payload (benchmarks and tests)."""
        return self._publish(self._telemetry, payload)

    def publish_event(self, event: DeviceEvent) -> mqtt.MQTTMessageInfo:
        return self._publish(self.topics.event(self.site, self.machine), encode(event))

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.connected

    def wait_delivered(self, timeout: float) -> bool:
        """Wait until the broker acknowledged every QoS 1 message published so far."""
        deadline = time.monotonic() + timeout
        while self.delivered < self.published and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.delivered >= self.published

    def say_offline(self) -> mqtt.MQTTMessageInfo | None:
        """Publish `offline` (retained) before a clean disconnect; None when not connected."""
        if not self.connected:
            return None
        return self._say("offline")

    def disconnect(self) -> None:
        """Stop reconnecting and close the connection (the loop writes the DISCONNECT)."""
        client = self._client
        if client is None:
            return
        self.loop.detach(client)
        client.disconnect()
        self._client = None
        self.connected = False

    def stop(self) -> None:
        """Say `offline` and disconnect."""
        info = self.say_offline()
        if info is not None:
            info.wait_for_publish(2)
        self.disconnect()
