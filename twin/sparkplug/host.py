"""The Sparkplug B 3.0 host application: its own MQTT connection, its STATE, and the edge
nodes' messages handed to the twin's pipeline as the contract's messages.

The specification requires a host's session to be clean (MQTT 3.1.1 clean session; MQTT 5 clean
start with session expiry 0), so this is a second connection beside the JSON contract's
persistent one, with the same broker settings. Its last will is `spBv1.0/STATE/<host id>`
`{"online": false, "timestamp": T}` (QoS 1, retained); once its subscription to `spBv1.0/#`
is granted it publishes `{"online": true, "timestamp": T}` with the same T, and it publishes
that again whenever the broker hands it its own STATE saying `online: false` (a stale retained
will, or another process with the same host id). Other hosts' STATE is ignored; pre-3.0 STATE
topics (`STATE/<id>`, outside the namespace) are not subscribed to.

What `Nodes` makes of each message goes to `submit` as `RawMessage`s of the contract: journaled,
then applied, like a device's own. Rebirth requests go out as NCMD at QoS 0.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from twin.config import Settings
from twin.ingest import Token, configure_tls
from twin.messages import RawMessage
from twin.sparkplug.mapping import SparkplugMap
from twin.sparkplug.nodes import NAMESPACE, Nodes, Result, rebirth_payload
from twin.status import SparkplugStatus
from twin.topics import Topics

log = logging.getLogger(__name__)

_TICK_S = 0.25  # seq gaps past the reorder timeout and silent nodes are looked for this often
_NOT_ACKED: Token = (-1, 0, 0)  # QoS 0 for the pipeline: nothing to acknowledge on commit


class SparkplugHost:
    """Connects, keeps its STATE, and turns edge nodes' messages into the twin's."""

    def __init__(
        self, settings: Settings, topics: Topics, submit: Callable[[RawMessage, Token], None]
    ) -> None:
        self.settings = settings
        self.submit = submit
        self.host_id = settings.sparkplug_host_id
        self.state_topic = f"{NAMESPACE}/STATE/{self.host_id}"
        self.nodes = Nodes(
            SparkplugMap.load(settings.sparkplug_map),  # a bad file stops start-up
            topics,
            reorder_ms=int(settings.sparkplug_reorder_s * 1000),
            rebirth_ms=int(settings.sparkplug_rebirth_s * 1000),
            inactivity_ms=int(settings.sparkplug_inactivity_s * 1000),
        )
        self.connected = False
        self.state_births = 0  # STATE online published
        self._timestamp = 0  # T of the will and birth of the current connection
        self._lock = threading.Lock()  # the nodes: paho's thread and the ticker
        self._client: mqtt.Client | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def status(self) -> SparkplugStatus:
        with self._lock:
            born = sum(node.born for node in self.nodes.nodes.values())
            counts = dict(self.nodes.counts)
        counts["state_births"] = self.state_births
        return SparkplugStatus(self.connected, self.host_id, born, counts)

    def _state(self, online: bool) -> bytes:
        return json.dumps({"online": online, "timestamp": self._timestamp}).encode()

    def _will(self, client: mqtt.Client) -> None:
        """A new T, for the next CONNECT's will and the birth after it."""
        self._timestamp = int(time.time() * 1000)
        client.will_set(self.state_topic, self._state(False), qos=1, retain=True)

    def start(self) -> None:
        s = self.settings
        v5 = s.mqtt_protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{s.mqtt_client_id}-sparkplug",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,
        )
        broker = s.broker
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
        configure_tls(client, broker)
        self._will(client)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        # MQTT 5: clean start, and no session expiry property (0: the session ends with the
        # connection), as the specification requires of a host.
        kwargs: dict[str, Any] = {"clean_start": True} if v5 else {}
        log.info("sparkplug host %r connecting to %s:%d", self.host_id, broker.host, broker.port)
        client.connect_async(broker.host, broker.port, keepalive=30, **kwargs)
        client.loop_start()
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick, name="twin-sparkplug", daemon=True)
        self._ticker.start()

    def stop(self) -> None:
        client = self._client
        if client is None:
            return
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self.connected:
            self.connected = False
            offline = client.publish(self.state_topic, self._state(False), qos=1, retain=True)
            if offline.rc == mqtt.MQTT_ERR_SUCCESS:
                offline.wait_for_publish(2)
        client.disconnect()
        client.loop_stop()
        self._client = None

    # -- paho callbacks (its network thread) --------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("sparkplug: the broker refused the connection: %s", reason_code)
            return
        self.connected = True
        client.subscribe(f"{NAMESPACE}/#", qos=1)  # its own STATE topic included

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, *args: Any) -> None:
        """Subscribed: now the STATE birth, with the will's T."""
        self._birth(client)
        log.info("sparkplug host %r online: subscribed to %s/#", self.host_id, NAMESPACE)

    def _birth(self, client: mqtt.Client) -> None:
        client.publish(self.state_topic, self._state(True), qos=1, retain=True)
        self.state_births += 1

    def _on_disconnect(self, client: mqtt.Client, *args: Any) -> None:
        if self.connected:
            log.warning("sparkplug: disconnected from the broker; reconnecting")
        self.connected = False
        self._will(client)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        now = int(time.time() * 1000)
        if topic.startswith(f"{NAMESPACE}/STATE/"):
            own = topic == self.state_topic and not self._stop.is_set()  # not our own stop
            if own and not _online(message.payload):
                log.warning("sparkplug: handed our own STATE offline; publishing it online again")
                self._birth(client)
            return  # other hosts' STATE is theirs
        with self._lock:
            result = self.nodes.handle(topic, bytes(message.payload), now)
        self._emit(result, now)

    def _tick(self) -> None:
        while not self._stop.wait(_TICK_S):
            now = int(time.time() * 1000)
            with self._lock:
                result = self.nodes.tick(now)
            self._emit(result, now)

    def _emit(self, result: Result, now: int) -> None:
        for topic, payload in result.messages:
            self.submit(RawMessage(topic, payload, now), _NOT_ACKED)
        client = self._client
        for group, edge, why in result.rebirths:
            log.warning("sparkplug: asking %s/%s for a rebirth: %s", group, edge, why)
            if client is not None:
                client.publish(f"{NAMESPACE}/{group}/NCMD/{edge}", rebirth_payload(now), qos=0)


def _online(payload: bytes | bytearray) -> bool:
    try:
        return bool(json.loads(payload).get("online"))
    except (ValueError, AttributeError):
        return False
