"""The OPC UA gateway against a real OPC UA server (asyncua's, with the Machinery companion
nodesets) and a real Mosquitto: `python -m devices.opcua` as a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from asyncua import ua
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from devices.opcua.config import load
from devices.opcua.gateway import event_time
from tests.conftest import _missing
from tests.services import Mosquitto, ServiceMissing, free_port, wait_until
from twin.config import Settings
from twin.errors import ConfigError
from twin.service import Twin

NODESETS = Path(sys.prefix) / "opcua-nodesets"  # `make test` fetches them (Makefile)
SOURCE_LAG_MS = 5000  # tests/opcua_server.py's source timestamps lag its clock by this


class OpcUaServer:
    """tests/opcua_server.py as a process on a free loopback port, stopped by PID."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.control = directory / "control"
        self.log = directory / "opcua-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/"

    def start(self, torque_id: int) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.opcua_server",
                    *("--port", str(self.port), "--nodesets", str(NODESETS)),
                    *("--torque-id", str(torque_id), "--control", str(self.control)),
                ],
                stdout=log,
                stderr=log,
            )
        wait_until(lambda: "ready" in self.log.read_text(), 60, "the OPC UA server to start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()  # a server that goes away, as a crash or a power cut
            self.process.wait()
            self.process = None


class Recorder:
    """Everything the broker sends on factory/#, over a persistent session (QoS 1)."""

    def __init__(self, url: str) -> None:
        port = int(url.rsplit(":", 1)[1])
        self.messages: list[tuple[str, Any, bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id="opcua-test-recorder",
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=False,
        )
        self.client.on_connect = lambda c, *a: c.subscribe("factory/#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if not message.topic.endswith(("/telemetry", "/status")) or "$twin" in message.topic:
            return  # what a twin publishes on the same broker
        with self._lock:
            self.messages.append((message.topic, json.loads(message.payload), message.retain))

    def telemetry(self) -> list[dict[str, Any]]:
        with self._lock:
            return [body for topic, body, _ in self.messages if topic.endswith("/telemetry")]

    def statuses(self) -> list[str]:
        with self._lock:
            return [body["state"] for topic, body, _ in self.messages if topic.endswith("/status")]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def opcua_server(tmp_path: Path) -> Iterator[OpcUaServer]:
    if not (NODESETS / "Opc.Ua.Machinery.NodeSet2.xml").exists():
        _missing(ServiceMissing(f"no OPC UA nodesets in {NODESETS}; `make test` fetches them"))
    server = OpcUaServer(tmp_path)
    server.start(torque_id=1000)
    try:
        yield server
    finally:
        server.stop()


CONFIG = """
mqtt_url = "{mqtt_url}"
mqtt_protocol = "3.1.1"
outbox = "outbox.sqlite3"

[[server]]
endpoint = "{endpoint}"
security = "None"
mode = "subscribe"
publishing_interval_ms = 100

[[server.machine]]
site = "plant1"
machine = "mill1"
type = "M"
[server.machine.signals]
spindle_speed_rpm = {{ node = "nsu=urn:example:plant;s=Mill1.SpindleSpeed", interval_ms = 100 }}
torque_nm = {{ path = "Objects/Mill1/Torque", namespace = "urn:example:plant", interval_ms = 100 }}
"""


def gateway(tmp_path: Path, config: str) -> tuple[subprocess.Popen[bytes], Path]:
    path = tmp_path / "gateway.toml"
    path.write_text(config)
    log = tmp_path / "gateway.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "devices.opcua", "--config", str(path)],
            stdout=out,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return process, log


def test_the_gateway_rides_out_a_bad_node_a_broker_outage_and_a_server_restart(
    mosquitto: Mosquitto, opcua_server: OpcUaServer, tmp_path: Path
) -> None:
    recorder = Recorder(mosquitto.url)
    config = CONFIG.format(mqtt_url=mosquitto.url, endpoint=opcua_server.endpoint)
    process, log = gateway(tmp_path, config)
    try:
        # Both signals, the node id by namespace URI and the browse path, with the source's time.
        wait_until(
            lambda: any(len(r["values"]) == 2 for r in recorder.telemetry()), 30, "both signals"
        )
        assert "2 of 2 signals resolved" in log.read_text()
        both = next(r for r in recorder.telemetry() if len(r["values"]) == 2)
        assert both["values"]["spindle_speed_rpm"] > 1000
        assert 40 <= both["values"]["torque_nm"] <= 44
        assert abs(time.time() * 1000 - SOURCE_LAG_MS - both["ts"]) < 2000
        assert recorder.statuses()[-1] == "online"

        # A node turned Bad is not a value; the other signal goes on, the machine stays online.
        opcua_server.control.write_text("bad")
        wait_until(lambda: "BadSensorFailure" in log.read_text(), 10, "the bad node logged")
        seen = len(recorder.telemetry())
        time.sleep(1.5)
        during = recorder.telemetry()[seen + 2 :]
        assert during
        assert all("torque_nm" not in r["values"] for r in during)
        assert recorder.statuses()[-1] == "online"
        opcua_server.control.write_text("good")
        wait_until(lambda: "torque_nm" in recorder.telemetry()[-1]["values"], 10, "torque back")

        # The broker away for 20 s: the readings wait in the outbox, none is lost.
        mosquitto.restart(down_s=20)
        wait_until(lambda: "outbox" in log.read_text(), 5, "the gateway's log")
        time.sleep(3)  # the backlog drains

        # The server restarted, Torque under another node id: resolved again, values resume.
        before = recorder.telemetry()[-1]["values"]["spindle_speed_rpm"]
        opcua_server.stop()
        wait_until(lambda: recorder.statuses()[-1] == "offline", 20, "mill1 offline")
        opcua_server.start(torque_id=2000)
        wait_until(lambda: "reconnect 1" in log.read_text(), 40, "the gateway to reconnect")
        wait_until(lambda: recorder.statuses()[-1] == "online", 20, "mill1 online again")
        restarted = len(recorder.telemetry())
        wait_until(
            lambda: any(
                "torque_nm" in r["values"] and r["values"]["spindle_speed_rpm"] < before
                for r in recorder.telemetry()[restarted:]
            ),
            20,
            "both signals from the restarted server",
        )
        assert process.poll() is None  # the same gateway process throughout
    finally:
        process.terminate()
        process.wait(30)
        recorder.close()
    assert process.returncode == 0
    stopped = log.read_text().splitlines()[-1]
    assert "0 waiting in the outbox" in stopped
    seqs = sorted({r["seq"] for r in recorder.telemetry()})
    assert seqs == list(range(1, seqs[-1] + 1))  # every reading arrived, across the outage
    assert seqs[-1] > 200  # 20 s of the outage were 10 readings a second


def test_polling_reads_in_batches_and_a_killed_gateway_leaves_its_will(
    mosquitto: Mosquitto, opcua_server: OpcUaServer, tmp_path: Path, settings: Settings
) -> None:
    """`mode = "poll"` (for servers whose subscriptions do not work): the same readings, read
    in one request per interval; `kill -9` of the gateway: the broker sends each machine's
    last will, `offline`."""
    recorder = Recorder(mosquitto.url)
    twin = Twin(settings.model_copy(update={"mqtt_url": mosquitto.url}))
    twin.start()
    config = CONFIG.format(mqtt_url=mosquitto.url, endpoint=opcua_server.endpoint)
    process, log = gateway(tmp_path, config.replace('mode = "subscribe"', 'mode = "poll"'))
    try:
        wait_until(lambda: len(recorder.telemetry()) >= 10, 30, "ten polled readings")
        # ... and in the twin, as any device's: its type from the birth, both signals.
        wait_until(
            lambda: len((twin.state.get("mill1") or {}).get("values", {})) == 2, 30, "the twin"
        )
        assert (twin.state.get("mill1") or {})["type"] == "M"
        assert "polling" in log.read_text()
        polled = recorder.telemetry()[-1]
        assert set(polled["values"]) == {"spindle_speed_rpm", "torque_nm"}
        assert abs(time.time() * 1000 - SOURCE_LAG_MS - polled["ts"]) < 2000
        assert recorder.statuses()[-1] == "online"
        process.kill()
        process.wait()
        wait_until(lambda: recorder.statuses()[-1] == "offline", 60, "the gateway's will")
        wait_until(lambda: (twin.state.get("mill1") or {})["online"] is False, 10, "offline")
    finally:
        process.kill()
        process.wait()
        recorder.close()
        twin.stop()


@pytest.mark.parametrize(
    ("source", "server", "setting", "expected"),
    [
        (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC), "source", 2026_01_01),
        (datetime(1601, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC), "source", 2026_01_02),
        (None, datetime(2026, 1, 2), "source", 2026_01_02),  # naive: UTC, as OPC UA's are
        (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC), "server", 2026_01_02),
        (None, datetime(1601, 1, 1, tzinfo=UTC), "source", None),  # the gateway's clock
        (datetime(2026, 1, 1, tzinfo=UTC), None, "gateway", None),
    ],
)
def test_event_time_follows_the_setting_and_treats_the_null_date_as_missing(
    source: datetime | None, server: datetime | None, setting: str, expected: int | None
) -> None:
    value = ua.DataValue(ua.Variant(1.0), SourceTimestamp=source, ServerTimestamp=server)
    got = event_time(value, setting)
    if expected is None:
        assert abs(got - time.time() * 1000) < 1000
    else:
        day = datetime.strptime(str(expected), "%Y%m%d").replace(tzinfo=UTC)
        assert got == int(day.timestamp() * 1000)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (
            ('node = "nsu=urn:example:plant;s=Mill1.SpindleSpeed"', 'node = "ns=2;s=Mill1.Speed"'),
            "server[0].machine[0].signals.spindle_speed_rpm.node: Value error, must be "
            "nsu=<namespace URI>",
        ),
        (
            ('namespace = "urn:example:plant", ', ""),
            "server[0].machine[0].signals.torque_nm: Value error, a path needs the namespace",
        ),
        (('mode = "subscribe"', 'mode = "push"'), "server[0].mode: Input should be 'subscribe'"),
        (('security = "None"', 'security = "Basic256:Fast"'), "server[0].security: Value error"),
        (('site = "plant1"', 'site = "plant 1"'), "server[0].machine[0].site: String should"),
        (('mqtt_url = "', 'mqtt_url = "http'), "mqtt_url: Value error, must look like mqtt://"),
        (("publishing_interval_ms = 100", "publishing_ms = 100"), "publishing_ms: Extra inputs"),
        (("[[server.machine]]", "[[server.machine]"), "not TOML"),
    ],
)
def test_a_bad_config_is_one_clear_error_naming_the_key(
    tmp_path: Path, change: tuple[str, str], error: str
) -> None:
    good = CONFIG.format(mqtt_url="mqtt://127.0.0.1:1883", endpoint="opc.tcp://127.0.0.1:4840/")
    path = tmp_path / "gateway.toml"
    path.write_text(good)
    assert load(path).server[0].machine[0].machine == "mill1"
    assert change[0] in good
    path.write_text(good.replace(*change))
    with pytest.raises(ConfigError) as refused:
        load(path)
    assert str(refused.value).startswith(f"{path}: ")
    assert error in str(refused.value)


def test_the_gateway_exits_2_with_the_config_error(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('mqtt_url = "mqtt://127.0.0.1:1883"\n')
    done = subprocess.run(
        [sys.executable, "-m", "devices.opcua", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {path}: server: Field required"
