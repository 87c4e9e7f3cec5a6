"""Integration: simulator -> real Mosquitto -> twin -> API."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import msgspec
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from devices.fleet import Fleet, FleetOptions
from devices.publisher import DevicePublisher, NetworkLoop
from tests.payloads import BAD_PAYLOADS, BAD_REASONS
from tests.services import Mosquitto, wait_until
from twin.app import create_app
from twin.config import Settings
from twin.ingest import Ingest, _BufferedSocket
from twin.service import Twin
from twin.status import OutboundStatus
from twin.topics import Topics

pytestmark = pytest.mark.integration


@pytest.fixture
def twin(settings: Settings, mosquitto: Mosquitto) -> Iterator[tuple[Twin, TestClient]]:
    twin = Twin(settings.model_copy(update={"mqtt_url": mosquitto.url}))
    with TestClient(create_app(twin.settings, twin)) as client:
        wait_until(lambda: twin.ingest.connected, 10, "the twin to connect")
        yield twin, client


def received(client: TestClient) -> int:
    page = client.get("/machines", params={"limit": 1000}).json()
    return sum(m["counters"]["received"] for m in page["items"])


def test_simulated_fleet_reaches_the_api(twin: tuple[Twin, TestClient]) -> None:
    service, client = twin
    options = FleetOptions(machines=5, rate_hz=100, count=40, batch=4, seed=3)
    fleet = Fleet(service.settings.broker, service.topics, options)
    fleet.start()
    assert fleet.wait(30)
    fleet.stop()
    wait_until(lambda: received(client) == 200, 20, "200 readings")
    wait_until(
        lambda: all(m["online"] is False for m in client.get("/machines").json()["items"]),
        10,
        "the devices' offline status",
    )
    page = client.get("/machines").json()
    assert page["total"] == 5
    for item in page["items"]:
        assert item["type"] in {"L", "M", "H"}
        events = item["counters"].pop("events")  # the simulator's failures, by chance
        assert set(events) == set(item["last_events"])
        assert item["counters"] == {
            "received": 40,
            "duplicates": 0,
            "out_of_order": 0,
            "gaps": 0,
            "rejected": 0,
            "rejected_by_reason": {},
        }
        assert set(item["values"]) >= {"air_temp_k", "torque_nm", "tool_wear_min"}
        assert item["stats"]["torque_nm"]["count"] == 40
    assert client.get("/health").json()["status"] == "ok"


def test_broker_restart_mid_stream_loses_nothing(
    twin: tuple[Twin, TestClient], mosquitto: Mosquitto
) -> None:
    service, client = twin
    options = FleetOptions(machines=4, rate_hz=100, count=400, seed=5)
    fleet = Fleet(service.settings.broker, service.topics, options)
    fleet.start()
    wait_until(lambda: received(client) > 200, 20, "the stream to start")
    mosquitto.restart(down_s=0.5)
    assert fleet.wait(60)
    fleet.stop()
    wait_until(lambda: received(client) == 1600, 60, "all 1600 readings after the restart")
    assert service.ingest.connects >= 2
    wait_until(lambda: client.get("/health").json()["broker_connected"], 10, "reconnection")


def test_malformed_burst_is_counted_and_ingest_keeps_going(
    twin: tuple[Twin, TestClient],
) -> None:
    service, client = twin
    loop = NetworkLoop()
    device = DevicePublisher(service.settings.broker, service.topics, "s1", "m1", "L", loop=loop)
    device.start()
    assert device.wait_connected(10)
    for round_ in range(20):
        for payload in BAD_PAYLOADS:
            device.publish_raw(payload)
        device.publish_raw(msgspec.json.encode({"seq": round_, "values": {"x": round_}}))
    assert device.wait_delivered(20)
    device.stop()
    loop.close()

    def counters() -> dict[str, object]:
        body = client.get("/machines/m1")
        return body.json()["counters"] if body.status_code == 200 else {}

    wait_until(lambda: counters().get("received") == 20, 20, "the 20 good readings")
    c = counters()
    assert c["rejected"] == 20 * sum(BAD_REASONS.values())
    assert c["rejected_by_reason"] == {reason: 20 * n for reason, n in BAD_REASONS.items()}
    deadletters = client.get("/deadletters", params={"machine": "m1", "limit": 1000}).json()
    assert deadletters["total"] == 20 * sum(BAD_REASONS.values())
    assert client.get("/health").json()["status"] == "ok"
    assert time.time()  # the twin is still serving


def test_the_buffered_socket_serves_small_reads_from_one_recv() -> None:
    left, right = socket.socketpair()
    with left, right:
        buffered = _BufferedSocket(left)
        right.sendall(b"\x30\x05hello\x40")
        assert buffered.recv(1) == b"\x30"  # one recv took all eight bytes
        assert buffered.pending() == 7  # so paho's loop does not wait in select()
        assert buffered.recv(1) == b"\x05"
        assert buffered.recv(10) == b"hello\x40"  # no more than is there
        assert buffered.pending() == 0
        left.setblocking(False)
        with pytest.raises(BlockingIOError):
            buffered.recv(1)  # nothing buffered, nothing on the socket: as the socket says
        right.close()
        assert buffered.recv(1) == b""  # closed
        assert buffered.fileno() == left.fileno()  # the rest is the socket's


def test_acknowledged_readings_are_not_redelivered_to_the_next_run(
    settings: Settings, mosquitto: Mosquitto
) -> None:
    s = settings.model_copy(update={"mqtt_url": mosquitto.url})  # one persistent session
    first = Twin(s)
    with TestClient(create_app(s, first)) as client:
        wait_until(lambda: first.ingest.connected, 10, "the twin to connect")
        fleet = Fleet(s.broker, first.topics, FleetOptions(machines=3, rate_hz=200, count=300))
        fleet.start()
        assert fleet.wait(60)
        fleet.stop()
        wait_until(lambda: received(client) == 900, 30, "every reading")
    second = Twin(s)  # anything not acknowledged comes again now, before newer messages
    with TestClient(create_app(s, second)) as client:
        wait_until(lambda: second.ingest.connected, 10, "the twin to reconnect")
        marker = mqtt.Client(CallbackAPIVersion.VERSION2)
        marker.connect("127.0.0.1", mosquitto.port)
        marker.loop_start()
        body = msgspec.json.encode({"seq": 0, "values": {"t": 1.0}})
        marker.publish(second.topics.telemetry("site1", "marker"), body, qos=1).wait_for_publish(5)
        marker.disconnect()
        marker.loop_stop()
        wait_until(lambda: client.get("/machines/marker").status_code == 200, 20, "the marker")
        assert client.get("/health").json()["readings"]["duplicates"] == 0


def test_while_the_broker_is_away_outgoing_messages_wait_up_to_a_bound(
    settings: Settings,
) -> None:
    ingest = Ingest(settings, Topics(), lambda raw, token: None)  # its broker port is closed
    ingest.start()
    try:
        for i in range(10_001):
            ingest.publish(f"factory/s1/m{i}/twin", b"{}", True)
        assert ingest.outbound() == OutboundStatus(queued=10_000, dropped=1)
    finally:
        ingest.stop()  # and stopping with a full queue is clean
