"""A Sparkplug B 3.0 edge node for the tests, written from the specification: it does what a
test asks, including what a well-behaved library will not (seq gaps, unknown aliases, bad
births, data before a birth). paho, on a real broker."""

from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from twin.sparkplug.sparkplug_b_pb2 import Payload

DOUBLE, BOOLEAN, STRING, INT64, INT16 = 10, 11, 12, 4, 2


class EdgeSim:
    """Edge node `group/edge` with one device per `devices` entry. Its NDEATH will carries
    `bdseq`; it records every NCMD it is sent."""

    def __init__(self, port: int, group: str, edge: str, bdseq: int = 0) -> None:
        self.group, self.edge, self.bdseq = group, edge, bdseq
        self.seq = -1
        self.commands: list[Payload] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edge-{edge}",
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=True,
        )
        self.client.will_set(self.topic("NDEATH"), self._death(bdseq), qos=1)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(self.topic("NCMD"), qos=1)
        self.client.loop_start()
        assert subscribed.wait(10)

    def topic(self, kind: str, device: str | None = None) -> str:
        base = f"spBv1.0/{self.group}/{kind}/{self.edge}"
        return base if device is None else f"{base}/{device}"

    def _death(self, bdseq: int) -> bytes:
        payload = Payload(timestamp=int(time.time() * 1000))
        payload.metrics.add(name="bdSeq", datatype=INT64, long_value=bdseq)
        return bytes(payload.SerializeToString())

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.commands.append(Payload.FromString(message.payload))

    def rebirths(self) -> int:
        with self._lock:
            return sum(
                1
                for c in self.commands
                for m in c.metrics
                if m.name == "Node Control/Rebirth" and m.boolean_value
            )

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) % 256
        return self.seq

    def send(
        self,
        kind: str,
        metrics: list[dict[str, Any]],
        device: str | None = None,
        seq: int | None = None,
        ts: int | None = None,
        qos: int = 0,
    ) -> None:
        """One message; `seq` None takes the next one (NDEATH carries none)."""
        payload = Payload(timestamp=ts or int(time.time() * 1000))
        if kind != "NDEATH":
            payload.seq = self.next_seq() if seq is None else seq
        for metric in metrics:
            payload.metrics.add(**metric)
        info = self.client.publish(self.topic(kind, device), payload.SerializeToString(), qos=qos)
        info.wait_for_publish(5)

    def nbirth(self, extra: list[dict[str, Any]] | None = None, qos: int = 0) -> None:
        self.seq = -1
        self.send(
            "NBIRTH",
            [
                {"name": "bdSeq", "datatype": INT64, "long_value": self.bdseq},
                {"name": "Node Control/Rebirth", "datatype": BOOLEAN, "boolean_value": False},
                *(extra or []),
            ],
            qos=qos,
        )

    def dbirth(
        self, device: str, metrics: list[dict[str, Any]] | None = None, qos: int = 0
    ) -> None:
        self.send("DBIRTH", metrics if metrics is not None else MILL_BIRTH, device, qos=qos)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def crash(self) -> None:
        """Drop the connection without a DISCONNECT: the broker sends the will (NDEATH)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


MILL_BIRTH = [
    {"name": "Spindle/Speed", "alias": 1, "datatype": DOUBLE, "double_value": 1500.0},
    {"name": "Spindle/Temperature", "alias": 2, "datatype": DOUBLE, "double_value": 310.5},
    {"name": "Running", "alias": 3, "datatype": BOOLEAN, "boolean_value": True},
    {"name": "Program", "alias": 4, "datatype": STRING, "string_value": "O1234"},
    {"name": "Offset", "alias": 5, "datatype": INT16, "int_value": 65535},  # -1 in Int16
]
