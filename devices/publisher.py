"""One device's MQTT connection: birth and last will on `.../status`, readings and events at QoS 1.

The only device module that imports paho. paho reconnects by itself and resends QoS 1 messages
the broker had not acknowledged, so a broker restart delays readings but does not lose them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from twin.config import BrokerAddress
from twin.ingest import configure_tls
from twin.messages import DeviceEvent, Reading, Status, encode
from twin.topics import Topics

log = logging.getLogger(__name__)


class DevicePublisher:
    """Publishes for one machine."""

    def __init__(
        self,
        broker: BrokerAddress,
        topics: Topics,
        site: str,
        machine: str,
        machine_type: str,
        *,
        protocol: str = "5",
        max_inflight: int = 100,
    ) -> None:
        self.broker = broker
        self.topics = topics
        self.site = site
        self.machine = machine
        self.machine_type = machine_type
        self.protocol = protocol
        self.max_inflight = max_inflight
        self.connected = False
        self.published = 0  # QoS 1 messages handed to paho
        self.delivered = 0  # ... and acknowledged by the broker
        self._client: mqtt.Client | None = None
        self._telemetry = topics.telemetry(site, machine)

    def _status(self, state: str) -> bytes:
        return encode(Status(state=state, ts=int(time.time() * 1000), type=self.machine_type))  # type: ignore[arg-type]

    def start(self) -> None:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"device-{self.site}-{self.machine}",
            protocol=MQTTProtocolVersion.MQTTv5
            if self.protocol == "5"
            else MQTTProtocolVersion.MQTTv311,
        )
        if self.broker.username is not None:
            client.username_pw_set(self.broker.username, self.broker.password)
        configure_tls(client, self.broker)
        client.max_inflight_messages_set(self.max_inflight)
        client.will_set(
            self.topics.status(self.site, self.machine), self._status("offline"), qos=1, retain=True
        )
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client  # before the loop starts: on_connect publishes through it
        client.connect_async(self.broker.host, self.broker.port, keepalive=30)
        client.loop_start()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode, props: Any
    ) -> None:
        if reason_code.is_failure:
            log.error("%s: broker refused the connection: %s", self.machine, reason_code)
            return
        self.connected = True
        self._publish(self.topics.status(self.site, self.machine), self._status("online"), True)

    def _on_disconnect(self, client: mqtt.Client, *args: Any) -> None:
        self.connected = False

    def _on_publish(self, client: mqtt.Client, *args: Any) -> None:
        self.delivered += 1

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
        while time.monotonic() < deadline:
            if self.delivered >= self.published:
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        """Say `offline` (retained) and disconnect."""
        client = self._client
        if client is None:
            return
        if self.connected:
            status = self.topics.status(self.site, self.machine)
            self._publish(status, self._status("offline"), True).wait_for_publish(2)
            client.disconnect()
        client.loop_stop()
        self._client = None
        self.connected = False
