"""The Sparkplug B 3.0 host application in `twin serve`, against a real Mosquitto and edge nodes
that publish there: our own, written from the specification (tests/sparkplug_edge.py), and
pysparkplug's in a virtual environment of its own. Tests are named after the specification's
`tck-id-*` statements they cover; the README keeps the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.conftest import _missing
from tests.services import Mosquitto, ServiceMissing, wait_until
from tests.sparkplug_edge import DOUBLE, MILL_BIRTH, EdgeSim
from twin.config import Settings
from twin.errors import ConfigError
from twin.metrics import TwinCollector
from twin.service import Twin

pytestmark = pytest.mark.integration

HOST_ID = "twin-test"
PYSPARKPLUG = Path(sys.prefix) / "pysparkplug"  # its own venv (paho < 2); `make test` makes it


def host_settings(mosquitto: Mosquitto, data_dir: Path) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        mqtt_url=mosquitto.url,
        mqtt_client_id="twin-sparkplug-test",
        data_dir=data_dir,
        journal_commit_ms=5,
        score_interval_ms=1,
        sparkplug=True,
        sparkplug_host_id=HOST_ID,
        sparkplug_reorder_s=0.5,
        sparkplug_rebirth_s=3.0,
    )


def started(settings: Settings) -> Twin:
    twin = Twin(settings)
    twin.start()
    assert twin.sparkplug is not None
    host = twin.sparkplug
    wait_until(lambda: host.state_births >= 1, 15, "the host's STATE birth")
    return twin


@pytest.fixture
def host(mosquitto: Mosquitto, data_dir: Path) -> Iterator[Twin]:
    twin = started(host_settings(mosquitto, data_dir))
    try:
        yield twin
    finally:
        twin.stop()


def machine(twin: Twin, name: str) -> dict[str, Any] | None:
    return twin.state.get(name)


def value(twin: Twin, name: str, signal: str) -> float | None:
    found = machine(twin, name)
    if found is None or signal not in found["values"]:
        return None
    return float(found["values"][signal]["value"])


class StateWatcher:
    """The retained STATE of the host, as a fresh subscriber sees it."""

    def __init__(self, port: int) -> None:
        self.seen: list[tuple[dict[str, Any], bool, int]] = []  # payload, retained, qos
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv311
        )
        self.client.on_message = self._on
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"spBv1.0/STATE/{HOST_ID}", qos=1)
        self.client.loop_start()

    def _on(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.seen.append((json.loads(message.payload), message.retain, message.qos))

    def last(self) -> dict[str, Any] | None:
        with self._lock:
            return self.seen[-1][0] if self.seen else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_tck_host_topic_phid_birth_and_death_and_state_message_delivered(
    mosquitto: Mosquitto, data_dir: Path, protocol: str
) -> None:
    """tck-id-host-topic-phid-birth-{sub-required,required,topic,qos,retain,payload},
    tck-id-host-topic-phid-death-{required,qos,retain}, tck-id-message-flow-phid-sparkplug-
    clean-session-{50,311}, tck-id-message-flow-hid-sparkplug-state-message-delivered: the
    STATE birth is retained online, stays retained across a restart (offline while stopped,
    online again with a new timestamp), the session is clean (what was published while the
    host was away is not delivered to it later), and a STATE offline handed to the host is
    answered online."""
    settings = host_settings(mosquitto, data_dir).model_copy(update={"mqtt_protocol": protocol})
    twin = started(settings)
    watcher = StateWatcher(mosquitto.port)
    try:
        wait_until(lambda: watcher.last() is not None, 10, "the retained STATE")
        birth, retained, qos = watcher.seen[-1]
        assert birth["online"] is True
        assert set(birth) == {"online", "timestamp"}
        assert retained
        assert qos == 1
        first = birth["timestamp"]
        twin.stop()
        wait_until(lambda: (watcher.last() or {}).get("online") is False, 10, "STATE offline")
        assert watcher.last() == {"online": False, "timestamp": first}  # the will's T
        edge = EdgeSim(mosquitto.port, "plant1", "away")  # births while the host is away
        edge.nbirth(qos=1)
        edge.dbirth("ghost", qos=1)
        edge.close()
        twin = started(settings)
        wait_until(lambda: (watcher.last() or {}).get("online") is True, 10, "STATE online")
        assert watcher.last()["timestamp"] > first  # type: ignore[index]
        again = watcher.last()
        # Somebody's stale will (or a second process with this host id) says offline:
        # answered at once with the host's birth again.
        assert twin.sparkplug is not None
        before = twin.sparkplug.state_births
        stale = json.dumps({"online": False, "timestamp": 1}).encode()
        watcher.client.publish(f"spBv1.0/STATE/{HOST_ID}", stale, qos=1, retain=True)
        host = twin.sparkplug
        wait_until(lambda: host.state_births > before, 10, "the STATE republished")
        wait_until(lambda: watcher.last() == again, 10, "STATE online, retained, again")
        assert machine(twin, "ghost") is None  # a clean session: nothing kept for the host
    finally:
        twin.stop()
        watcher.close()


def test_tck_births_define_metrics_and_alias_only_data_lands(
    host: Twin, mosquitto: Mosquitto
) -> None:
    """tck-id-payloads-alias-birth-requirement, tck-id-payloads-alias-data-cmd-requirement,
    tck-id-payloads-sequence-num-incrementing: NBIRTH and DBIRTH define the metrics; DDATA with
    aliases only (names empty) lands on the signals; strings are properties; Int16 is signed."""
    edge = EdgeSim(mosquitto.port, "Plant 1", "edge1")
    try:
        edge.nbirth()
        edge.dbirth("mill1")
        wait_until(lambda: value(host, "mill1", "spindle_speed") == 1500.0, 10, "the birth")
        twin = machine(host, "mill1")
        assert twin is not None
        assert twin["site"] == "Plant_1"
        assert twin["online"] is True
        assert value(host, "mill1", "spindle_temperature") == 310.5
        assert value(host, "mill1", "running") == 1.0
        assert value(host, "mill1", "offset") == -1.0  # Int16 65535: two's complement
        assert twin["properties"] == {"Program": "O1234"}
        assert twin["counters"]["events"] == {"birth": 1}
        assert twin["last_events"]["birth"]["code"] == "dbirth"
        assert machine(host, "edge1") is None  # the node has no metrics of its own
        time.sleep(0.01)
        ts = int(time.time() * 1000)  # after the birth's: event time decides what is live
        edge.send(
            "DDATA",
            [
                {"alias": 1, "datatype": DOUBLE, "double_value": 1600.0, "timestamp": ts},
                {"alias": 4, "string_value": "O5678"},  # no datatype: the birth's
            ],
            "mill1",
        )
        wait_until(lambda: value(host, "mill1", "spindle_speed") == 1600.0, 10, "alias-only data")
        twin = machine(host, "mill1")
        assert twin is not None
        assert twin["values"]["spindle_speed"]["ts"] == ts  # the metric's timestamp
        assert twin["properties"] == {"Program": "O5678"}
        # A historical value: in the stats (and history), never the live value.
        edge.send("DDATA", [{"alias": 1, "double_value": 9999.0, "is_historical": True}], "mill1")
        wait_until(
            lambda: (machine(host, "mill1") or {})["stats"]["spindle_speed"]["max"] == 9999.0,
            10,
            "the historical value in the stats",
        )
        assert value(host, "mill1", "spindle_speed") == 1600.0
        # A null is not a value.
        edge.send("DDATA", [{"alias": 2, "is_null": True}], "mill1")
        edge.send("DDATA", [{"alias": 1, "double_value": 1700.0}], "mill1")
        wait_until(lambda: value(host, "mill1", "spindle_speed") == 1700.0, 10, "the next")
        assert value(host, "mill1", "spindle_temperature") == 310.5
        assert edge.rebirths() == 0
    finally:
        edge.close()


def test_tck_operational_behavior_host_reordering_and_seq_wrap(
    host: Twin, mosquitto: Mosquitto
) -> None:
    """tck-id-operational-behavior-host-reordering-{param,start,success,rebirth},
    tck-id-payloads-sequence-num-incrementing: seq wraps at 255 without complaint; two
    messages swapped within the reorder timeout are applied in order; a lost one is a rebirth
    request, exactly one, and the new birth recovers the node."""
    edge = EdgeSim(mosquitto.port, "plant1", "edge2")
    try:
        edge.nbirth()
        edge.dbirth("lathe1")
        for i in range(300):  # seq runs past 255 and wraps
            speed = {"alias": 1, "datatype": DOUBLE, "double_value": float(i)}
            edge.send("DDATA", [speed], "lathe1")
        wait_until(lambda: value(host, "lathe1", "spindle_speed") == 299.0, 15, "300 readings")
        assert edge.rebirths() == 0
        # Swapped: the later one waits for the earlier.
        a, b = edge.next_seq(), edge.next_seq()
        sent = int(time.time() * 1000)  # a before b in event time too, as an edge node sends
        edge.send("DDATA", [{"alias": 1, "double_value": 1002.0}], "lathe1", seq=b, ts=sent + 1)
        edge.send("DDATA", [{"alias": 1, "double_value": 1001.0}], "lathe1", seq=a, ts=sent)
        wait_until(lambda: value(host, "lathe1", "spindle_speed") == 1002.0, 10, "in order")
        assert edge.rebirths() == 0
        # Lost: one seq never comes.
        edge.next_seq()
        edge.send("DDATA", [{"alias": 1, "double_value": 2000.0}], "lathe1")
        wait_until(lambda: edge.rebirths() == 1, 10, "one rebirth request")
        # Applied after the timeout: through the journal, so a moment after the NCMD went out.
        wait_until(lambda: value(host, "lathe1", "spindle_speed") == 2000.0, 10, "applied")
        time.sleep(1.0)
        assert edge.rebirths() == 1  # exactly one
        edge.nbirth()
        edge.dbirth("lathe1", [{**MILL_BIRTH[0], "double_value": 3000.0}])
        wait_until(lambda: value(host, "lathe1", "spindle_speed") == 3000.0, 10, "reborn")
        twin = machine(host, "lathe1")
        assert twin is not None
        assert twin["counters"]["events"]["rebirth_request"] == 1
        assert host.sparkplug is not None
        assert host.sparkplug.status().counts["seq_gaps"] == 1
        families = {f.name: f for f in TwinCollector(host.status).collect()}
        assert families["twin_sparkplug_connected"].samples[0].value == 1
        events = {s.labels["event"]: s.value for s in families["twin_sparkplug_events"].samples}
        assert events["rebirth_requests"] == 1
        assert events["DDATA"] >= 300
    finally:
        edge.close()


def test_tck_payloads_alias_uniqueness_and_unknown_metrics_and_data_before_birth(
    host: Twin, mosquitto: Mosquitto
) -> None:
    """tck-id-payloads-alias-uniqueness, tck-id-payloads-name-requirement: a birth with an
    alias used twice, data with an unknown alias, and data before any birth each get exactly
    one rebirth request (rate-limited), and the node recovers after its next birth."""
    edge = EdgeSim(mosquitto.port, "plant1", "edge3")
    try:
        edge.send("NDATA", [{"name": "x", "datatype": DOUBLE, "double_value": 1.0}], seq=5)
        wait_until(lambda: edge.rebirths() == 1, 10, "a rebirth for data before birth")
        time.sleep(3.1)  # past the rate limit
        edge.nbirth()
        twice = [MILL_BIRTH[0], {**MILL_BIRTH[1], "alias": 1}]
        edge.dbirth("drill1", twice)
        wait_until(lambda: edge.rebirths() == 2, 10, "a rebirth for the bad birth")
        assert machine(host, "drill1") is None
        time.sleep(3.1)
        edge.nbirth()
        edge.dbirth("drill1")
        wait_until(lambda: value(host, "drill1", "spindle_speed") == 1500.0, 10, "a good birth")
        edge.send("DDATA", [{"alias": 99, "double_value": 1.0}], "drill1")
        edge.send("DDATA", [{"alias": 98, "double_value": 1.0}], "drill1")  # rate-limited
        wait_until(lambda: edge.rebirths() == 3, 10, "a rebirth for the unknown alias")
        time.sleep(1.0)
        assert edge.rebirths() == 3
        edge.nbirth()  # the answer to it: a new birth, and the node goes on
        edge.dbirth("drill1", [*MILL_BIRTH, {**MILL_BIRTH[0], "name": "Feed", "alias": 99}])
        edge.send("DDATA", [{"alias": 99, "double_value": 7.0}], "drill1")
        wait_until(lambda: value(host, "drill1", "feed") == 7.0, 10, "alias 99 after the rebirth")
        assert host.sparkplug is not None
        counts = host.sparkplug.status().counts
        assert counts["bad_births"] == 1
        assert counts["unknown_metrics"] == 2
        assert counts["rebirths_suppressed"] >= 1
        # Not a Sparkplug payload at all: counted and dropped, the node goes on.
        edge.client.publish(edge.topic("DDATA", "drill1"), b"\xff not protobuf").wait_for_publish(5)
        wait_until(
            lambda: (
                host.sparkplug is not None
                and host.sparkplug.status().counts.get("bad_payloads") == 1
            ),
            10,
            "the bad payload counted",
        )
    finally:
        edge.close()


def test_tck_edge_node_termination_host_actions_ndeath_and_ddeath(
    host: Twin, mosquitto: Mosquitto
) -> None:
    """tck-id-operational-behavior-edge-node-termination-host-action-ndeath-node-offline,
    -ddeath-devices-offline: DDEATH takes one device offline; an NDEATH of an earlier session
    (another bdSeq) is ignored; the node's will (a crash) takes all its devices offline."""
    edge = EdgeSim(mosquitto.port, "plant1", "edge4", bdseq=7)
    try:
        edge.nbirth()
        edge.dbirth("press1")
        edge.dbirth("press2", [{**m, "alias": m["alias"] + 10} for m in MILL_BIRTH])
        wait_until(lambda: value(host, "press2", "spindle_speed") == 1500.0, 10, "two devices")
        edge.send("DDEATH", [], "press1")
        wait_until(lambda: (machine(host, "press1") or {})["online"] is False, 10, "DDEATH")
        assert (machine(host, "press2") or {})["online"] is True
        stale = EdgeSim(mosquitto.port, "plant1", "edge4-old")
        stale.client.publish(edge.topic("NDEATH"), edge._death(6), qos=1).wait_for_publish(5)
        stale.close()
        time.sleep(0.5)
        assert (machine(host, "press2") or {})["online"] is True  # not this session's death
        edge.crash()
        wait_until(lambda: (machine(host, "press2") or {})["online"] is False, 60, "the will")
        twin = machine(host, "press2")
        assert twin is not None
        assert twin["last_events"]["death"]["code"] == "ndeath"
    finally:
        edge.client.loop_stop()


def test_an_independent_edge_node_pysparkplug(host: Twin, mosquitto: Mosquitto) -> None:
    """pysparkplug (its own venv: it pins paho-mqtt < 2) publishes NBIRTH/DBIRTH/DDATA, and
    alias-only DDATA; `kill -9` of it: its will (an NDEATH at QoS 0, a deviation accepted)
    makes its machine offline."""
    python = PYSPARKPLUG / "bin" / "python"
    if not python.exists():
        _missing(ServiceMissing(f"no pysparkplug venv in {PYSPARKPLUG}; `make test` makes it"))
    script = Path(__file__).with_name("sparkplug_pysparkplug.py")
    process = subprocess.Popen(
        [str(python), str(script), "--port", str(mosquitto.port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_until(lambda: value(host, "cnc7", "coolant_temperature") is not None, 30, "births")
        twin = machine(host, "cnc7")
        assert twin is not None
        assert twin["site"] == "pysp"
        assert twin["online"] is True
        assert twin["properties"]["Serial"] == "SN-42"
        wait_until(lambda: value(host, "cnc7", "spindle_load") == 99.0, 30, "alias-only data")
        assert value(host, "cnc7", "axis_count") == 5.0
        process.kill()
        process.wait()
        wait_until(lambda: (machine(host, "cnc7") or {})["online"] is False, 60, "its will")
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


MAPPING = """
[sites]
"Plant 1" = "plant1"
[machines]
"Plant 1/edge5/Mill 5" = { machine = "mill5", type = "M" }
[signals]
"Spindle/Temperature" = { signal = "process_temp_k", offset = 273.15 }
"Spindle/Speed" = "rotational_speed_rpm"
"Ambient/Temperature" = "air_temp_k"
"Spindle/Torque" = "torque_nm"
"Tool/Wear" = "tool_wear_min"
"""


def test_a_mapping_file_names_sites_machines_and_signals(
    mosquitto: Mosquitto, data_dir: Path, tmp_path: Path
) -> None:
    mapping = tmp_path / "sparkplug.toml"
    mapping.write_text(MAPPING)
    settings = host_settings(mosquitto, data_dir).model_copy(update={"sparkplug_map": mapping})
    twin = started(settings)
    edge = EdgeSim(mosquitto.port, "Plant 1", "edge5")
    try:
        edge.nbirth()
        more = [
            {"name": "Ambient/Temperature", "alias": 6, "datatype": DOUBLE, "double_value": 300.0},
            {"name": "Spindle/Torque", "alias": 7, "datatype": DOUBLE, "double_value": 40.0},
            {"name": "Tool/Wear", "alias": 8, "datatype": DOUBLE, "double_value": 20.0},
        ]
        edge.dbirth("Mill 5", [{**MILL_BIRTH[1], "double_value": 37.0}, MILL_BIRTH[0], *more])
        wait_until(lambda: value(twin, "mill5", "rotational_speed_rpm") == 1500.0, 10, "mapped")
        mill = machine(twin, "mill5")
        assert mill is not None
        assert (mill["site"], mill["type"]) == ("plant1", "M")
        assert value(twin, "mill5", "process_temp_k") == pytest.approx(310.15)
        # The AI4I signals, so the default model scores it like any machine.
        wait_until(lambda: (machine(twin, "mill5") or {}).get("risk") is not None, 10, "a risk")
    finally:
        edge.close()
        twin.stop()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[machines]\n"g/e/d" = { machine = "a b" }\n', "machines.g/e/d.machine: String should"),
        ('[signals]\n"X" = "Bad Name"\n', "signals.X: 'Bad Name' is not a signal name"),
        ("[sitez]\n", "sitez: Extra inputs are not permitted"),
    ],
)
def test_a_bad_mapping_file_stops_start_up_naming_the_key(
    settings: Settings, tmp_path: Path, text: str, error: str
) -> None:
    mapping = tmp_path / "sparkplug.toml"
    mapping.write_text(text)
    bad = settings.model_copy(update={"sparkplug": True, "sparkplug_map": mapping})
    with pytest.raises(ConfigError) as refused:
        Twin(bad)
    assert str(refused.value).startswith(f"{mapping}: ")
    assert error in str(refused.value)
