"""Integration: history into real InfluxDB servers (1.6 `/write`, and InfluxDB 2's API)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from devices.fleet import Fleet, FleetOptions
from tests.conftest import feed_pipeline
from tests.services import InfluxDB1, Mosquitto, VictoriaMetrics, wait_until
from twin.app import create_app
from twin.config import Settings
from twin.service import Twin
from twin.sinks.lineprotocol import tag, telemetry_lines

pytestmark = pytest.mark.integration


@pytest.fixture
def t0() -> int:
    """A minute ago, taken when the test starts (the history queries look back 5 minutes, and
    the suite can take longer than that to reach a test)."""
    return int(time.time() * 1000) - 60_000


def submit(twin: Twin, machine: str, *readings: dict[str, object], site: str = "s1") -> None:
    topic = f"factory/{site}/{machine}/telemetry"
    feed_pipeline(twin, (topic, list(readings)), wait=None)


@pytest.fixture
def influx_twin(settings: Settings, influxdb: InfluxDB1) -> Iterator[tuple[Twin, TestClient]]:
    config = settings.model_copy(
        update={"influx_url": influxdb.url, "influx_db": "twin", "sink_max_delay_ms": 50}
    )
    twin = Twin(config)
    with TestClient(create_app(config, twin)) as client:
        yield twin, client


def test_line_protocol_escapes_tags_and_keeps_event_time(t0: int) -> None:
    from twin.messages import Reading

    lines = telemetry_lines("site a", "m=1,x", [Reading(t0, 1, {"torque_nm": 40, "x": 1.5})])
    assert lines == [f"telemetry,machine=m\\=1\\,x,site=site\\ a torque_nm=40.0,x=1.5 {t0}"]
    assert tag("plain") == "plain"


def test_readings_land_as_points_with_tags_fields_and_event_time(
    influx_twin: tuple[Twin, TestClient], influxdb: InfluxDB1, t0: int
) -> None:
    twin, client = influx_twin
    submit(twin, "m1", {"ts": t0, "seq": 1, "values": {"torque_nm": 40.5, "tool_wear_min": 230}})
    submit(twin, "m1", {"ts": t0 + 1000, "seq": 2, "values": {"torque_nm": 41.0}})
    submit(twin, "m2", {"ts": t0 + 5, "seq": 1, "values": {"vibration_mm_s": 2.5}}, site="s2")
    forwarder = twin.forwarders[0]
    wait_until(lambda: forwarder.lag == 0 and forwarder.written >= 3, 20, "the sink to catch up")
    series = influxdb.query("SELECT * FROM telemetry GROUP BY machine, site", db="twin")["results"][
        0
    ]["series"]
    by_machine = {s["tags"]["machine"]: s for s in series}
    assert by_machine["m1"]["tags"] == {"machine": "m1", "site": "s1"}
    rows = [
        dict(zip(by_machine["m1"]["columns"], v, strict=True)) for v in by_machine["m1"]["values"]
    ]
    assert [(r["time"], r["torque_nm"], r["tool_wear_min"]) for r in rows] == [
        (t0, 40.5, 230.0),
        (t0 + 1000, 41.0, None),
    ]
    assert by_machine["m2"]["tags"]["site"] == "s2"
    history = client.get(
        "/machines/m1/history", params={"signal": "torque_nm", "start": "-5m"}
    ).json()
    assert history["source"] == "influxdb"
    assert history["series"]["torque_nm"] == [
        {"ts": t0, "value": 40.5},
        {"ts": t0 + 1000, "value": 41.0},
    ]
    windows = client.get(
        "/machines/m1/history", params={"signal": "torque_nm", "start": "-5m", "every": "1m"}
    ).json()["series"]["torque_nm"]
    assert sum(w["mean"] for w in windows) > 0
    assert min(w["min"] for w in windows) == 40.5
    # The worn tool raised the default tool_wear_high alert: its change is a point too.
    wait_until(
        lambda: influxdb.query("SELECT * FROM alert", db="twin")["results"][0].get("series"),
        10,
        "the alert point",
    )
    (alert_series,) = influxdb.query("SELECT * FROM alert", db="twin")["results"][0]["series"]
    alert = dict(zip(alert_series["columns"], alert_series["values"][0], strict=True))
    assert (alert["rule"], alert["state"], alert["machine"], alert["acknowledged"]) == (
        "tool_wear_high",
        "active",
        "m1",
        False,
    )
    health = client.get("/health").json()
    assert health["sinks"][0]["name"] == "influxdb1"
    assert health["sinks"][0]["lag"] == 0


def test_influxdb_outage_delays_history_and_loses_nothing(
    settings: Settings, influxdb: InfluxDB1, mosquitto: Mosquitto
) -> None:
    config = settings.model_copy(
        update={
            "mqtt_url": mosquitto.url,
            "influx_url": influxdb.url,
            "influx_db": "twin",
            "sink_max_delay_ms": 50,
        }
    )
    twin = Twin(config)
    with TestClient(create_app(config, twin)) as client:
        wait_until(lambda: twin.ingest.connected, 10, "the twin to connect")
        fleet = Fleet(
            config.broker, twin.topics, FleetOptions(machines=4, rate_hz=100, count=600, seed=2)
        )
        fleet.start()
        wait_until(lambda: twin.state.totals.received > 300, 30, "the stream to start")
        influxdb.stop()
        during = twin.state.totals.received
        wait_until(
            lambda: twin.state.totals.received > during + 600, 30, "ingest during the outage"
        )
        wait_until(lambda: twin.forwarders[0].last_error is not None, 30, "the sink to notice")
        health = client.get("/health").json()
        assert health["status"] == "degraded"
        assert any("sink influxdb1 failing" in p for p in health["problems"])
        influxdb.start()
        assert fleet.wait(60)
        fleet.stop()
        wait_until(lambda: twin.state.totals.received == 2400, 60, "all 2400 readings applied")
        wait_until(lambda: twin.forwarders[0].lag == 0, 60, "the sink to catch up")
        result = influxdb.query("SELECT count(torque_nm) FROM telemetry", db="twin")
        assert result["results"][0]["series"][0]["values"][0][1] == 2400
        assert twin.forwarders[0].retries > 0
        assert twin.forwarders[0].dropped == 0
        assert client.get("/health").json()["status"] == "ok"


def test_influxdb2_write_path_lands_in_a_v2_compatible_server(
    settings: Settings, victoria: VictoriaMetrics, t0: int
) -> None:
    config = settings.model_copy(
        update={
            "influx_url": victoria.url,
            "influx_bucket": "twin",
            "influx_org": "factory",
            "influx_token": "secret",
            "sink_max_delay_ms": 50,
        }
    )
    twin = Twin(config)
    with TestClient(create_app(config, twin)):
        submit(twin, "m1", {"ts": t0, "seq": 1, "values": {"torque_nm": 40.5}})
        submit(twin, "m1", {"ts": t0 + 1000, "seq": 2, "values": {"torque_nm": 42.0}})
        forwarder = twin.forwarders[0]
        assert forwarder.name == "influxdb2"
        wait_until(
            lambda: forwarder.lag == 0 and forwarder.written >= 2, 20, "the sink to catch up"
        )
        exported = victoria.export('{__name__="telemetry_torque_nm"}')
        assert len(exported) == 1
        assert exported[0]["metric"]["machine"] == "m1"
        assert exported[0]["metric"]["site"] == "s1"
        assert exported[0]["values"] == [40.5, 42.0]
        assert exported[0]["timestamps"] == [t0, t0 + 1000]
