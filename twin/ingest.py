"""MQTT ingest: the only twin module that imports paho.

A persistent session (stable client id, clean start off, session expiry > 0, a large Receive
Maximum) with QoS 1 subscriptions and manual acknowledgement: a message is acknowledged only when
the pipeline says it is durable. paho reconnects by itself; every (re)connect resubscribes.
Acknowledgements carry the connection generation: a PUBACK meant for a connection that has since
dropped is not sent on the new one (its message is redelivered and recognised as a duplicate).
"""

from __future__ import annotations

import logging
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBACK
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from twin.config import BrokerAddress, Settings
from twin.errors import BrokerError
from twin.messages import RawMessage
from twin.status import OutboundStatus
from twin.topics import Topics

log = logging.getLogger(__name__)

_RECEIVE_MAXIMUM = 65535  # the most unacknowledged QoS 1 messages MQTT 5 lets a broker send

Token = tuple[int, int, int]  # (connection generation, message id, qos)
_READ_BYTES = 256 * 1024  # what one recv() may take from the socket
_PUBACK = struct.Struct("!BBH")  # fixed header, remaining length 2, packet id
# Twin and alert messages that may wait for the broker (in flight or queued, e.g. while it is
# away); past that new ones are dropped and counted. Twin states are retained and superseded by
# the next, alerts are also in the API and on /stream; unbounded, a long outage would grow the
# process without limit, and paho runs out of message ids at 65,535.
_MAX_QUEUED = 10_000


class _BufferedSocket:
    """The broker connection, read in large chunks.

    paho reads each packet's fixed header a byte at a time, one `recv()` each, and every
    `recv()` gives up the GIL and waits to take it back from the journal thread: under load that
    was a fifth of the twin's busy time. This takes what the socket has in one call and serves
    paho from it; `pending()` (which paho asks of TLS sockets too) keeps paho's loop from
    waiting in `select()` while bytes are still buffered. Everything else is the socket's.
    """

    __slots__ = ("_buffer", "_offset", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = b""
        self._offset = 0

    def recv(self, size: int) -> bytes:
        start = self._offset
        if start >= len(self._buffer):
            data: bytes = self._sock.recv(_READ_BYTES)  # raises as the socket does
            if len(data) <= size:
                self._buffer, self._offset = b"", 0
                return data  # also b"": the connection closed
            self._buffer, start = data, 0
        end = self._offset = min(start + size, len(self._buffer))
        return self._buffer[start:end]

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buffer) - self._offset + inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Client(mqtt.Client):
    """paho's client with the broker connection buffered, and messages handed straight to
    `on_message`: the twin registers no per-topic callbacks, and paho's walk of its (empty)
    topic-filter tree for each message was 6% of the busy time at 1,000 machines."""

    def _create_socket(self) -> Any:
        return _BufferedSocket(super()._create_socket())

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                on_message(self, self._userdata, message)


class Ingest:
    """Receives device messages and hands them to `submit` as `RawMessage`s."""

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        submit: Callable[[RawMessage, Token], None],
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.submit = submit
        self.connected = False
        self.connects = 0
        self._generation = 0
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self.dropped = 0  # outgoing messages dropped because the queue was full
        self._drop_logged = float("-inf")

    def _build_client(self) -> mqtt.Client:
        s = self.settings
        v5 = s.mqtt_protocol == "5"
        client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.mqtt_client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        broker = s.broker
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
        configure_tls(client, broker)
        client.will_set(self.topics.twin_status, b"offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.max_queued_messages_set(_MAX_QUEUED)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        """Connect in the background; paho keeps reconnecting until `stop`."""
        client = self._client = self._build_client()
        broker = self.settings.broker
        kwargs: dict[str, Any] = {}
        if self.settings.mqtt_protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: no hint
            props.SessionExpiryInterval = self.settings.mqtt_session_expiry_s
            props.ReceiveMaximum = _RECEIVE_MAXIMUM
            kwargs = {"clean_start": False, "properties": props}
        log.info(
            "connecting to mqtt%s://%s:%d as %r",
            "s" if broker.tls else "",
            broker.host,
            broker.port,
            self.settings.mqtt_client_id,
        )
        if broker.tls:
            # A TLS or login problem is a configuration error: fail start-up with it, rather
            # than retry forever. An unreachable broker is retried like any other.
            try:
                client.connect(broker.host, broker.port, keepalive=30, **kwargs)
            except ssl.SSLError as exc:
                sock = client.socket()
                if sock is not None:
                    sock.close()
                self._client = None
                raise BrokerError(f"TLS with {broker.host}:{broker.port} failed: {exc}") from exc
            except OSError:
                client.connect_async(broker.host, broker.port, keepalive=30, **kwargs)
        else:
            client.connect_async(broker.host, broker.port, keepalive=30, **kwargs)
        client.loop_start()

    def stop(self) -> None:
        client = self._client
        if client is None:
            return
        if self.connected:
            self.connected = False  # so the disconnect below is not logged as a drop
            offline = client.publish(self.topics.twin_status, b"offline", qos=1, retain=True)
            if offline.rc == mqtt.MQTT_ERR_SUCCESS:
                offline.wait_for_publish(2)  # else the will says it
        client.disconnect()
        client.loop_stop()
        self._client = None
        self.connected = False

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish at QoS 1 (paho queues it while the connection is down, up to a bound)."""
        client = self._client
        if client is None:
            return
        if client.publish(topic, payload, qos=1, retain=retain).rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
            now = time.monotonic()
            if now - self._drop_logged >= 60:
                self._drop_logged = now
                log.warning(
                    "%d messages are waiting for the broker: dropping new twin and alert "
                    "messages (%d so far)",
                    _MAX_QUEUED,
                    self.dropped,
                )

    def outbound(self) -> OutboundStatus:
        client = self._client
        queued = 0 if client is None else len(client._out_messages)
        return OutboundStatus(queued, self.dropped)

    def ack(self, tokens: Sequence[Token]) -> None:
        """Acknowledge messages the pipeline made durable (called from its thread)."""
        client = self._client
        if client is None:
            return
        generation = self._generation
        pubacks = b"".join(
            _PUBACK.pack(PUBACK, 2, mid) for gen, mid, qos in tokens if gen == generation and qos
        )
        if pubacks:
            # One write for the batch: paho's `ack()` queues each PUBACK on its own, each with
            # a wake-up byte to paho's thread and then its own send() (both syscalls that give
            # up the GIL; 15% of the busy samples at 1,000 machines). A PUBACK without a reason
            # code is success in MQTT 5 and is the only form in 3.1.1; the subscription is QoS 1.
            client._packet_queue(PUBACK, pubacks, 0, 0)

    # -- paho callbacks (network thread) ------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        with self._lock:
            self._generation += 1
        self.connected = True
        self.connects += 1
        log.info("connected to the broker (session present: %s)", flags.session_present)
        client.publish(self.topics.twin_status, b"online", qos=1, retain=True)
        subs = [(topic, 1) for topic in self.topics.subscriptions()]
        client.subscribe(subs)
        log.info("subscribed to %s", ", ".join(t for t, _ in subs))

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            self._generation += 1  # acknowledgements still due belong to the dropped connection
        if self.connected:
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)
        self.connected = False

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = message._topic.decode("utf-8", errors="replace")
        raw = RawMessage(topic, bytes(message.payload), int(time.time() * 1000))
        self.submit(raw, (self._generation, message.mid, message.qos))


def configure_tls(client: mqtt.Client, broker: BrokerAddress) -> None:
    """TLS with the broker's CA (or the system's), verified hostnames, optional client cert."""
    if not broker.tls:
        return
    client.tls_set(
        ca_certs=str(broker.ca_file) if broker.ca_file else None,
        certfile=str(broker.cert_file) if broker.cert_file else None,
        keyfile=str(broker.key_file) if broker.key_file else None,
        cert_reqs=ssl.CERT_REQUIRED,
    )
