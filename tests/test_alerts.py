"""Alert rules, lifecycle, persistence, the API and MQTT publication."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import feed_pipeline
from tests.services import Mosquitto, wait_until
from twin.alerts import Alert, AlertManager, AlertStore, Rule, load_rules
from twin.app import create_app
from twin.config import Settings
from twin.errors import ConfigError
from twin.messages import Decoded, Reading, Status
from twin.risk import Risk
from twin.service import Twin
from twin.state import FleetState
from twin.topics import Address

T0 = 1_800_000_000_000


def manager(tmp_path: Path, *rules: Rule) -> tuple[FleetState, AlertManager]:
    state = FleetState()
    alerts = AlertManager(state, AlertStore(tmp_path / "alerts.sqlite3"), retention_s=3600)
    alerts.open(rules)
    return state, alerts


def reading(state: FleetState, alerts: AlertManager, ts: int, **values: float) -> None:
    seq = ts - T0
    twin = state.apply(Decoded(Address("s1", "m1", "telemetry"), [Reading(ts, seq, values)]), ts)
    if twin is not None:
        alerts.evaluate([twin], ts)


def states(alerts: AlertManager) -> list[tuple[str, str, str]]:
    return [(a.rule, a.state, a.severity) for a in alerts.query()[1]]


def test_threshold_with_hysteresis_raises_once_and_clears_below_the_clear_level(
    tmp_path: Path,
) -> None:
    state, alerts = manager(
        tmp_path, Rule(id="hot", kind="threshold", signal="t", above=100, clear=90)
    )
    for ts, value in enumerate([95, 101, 120, 95, 91, 89, 101]):
        reading(state, alerts, T0 + ts, t=value)
    assert states(alerts) == [("hot", "active", "major"), ("hot", "cleared", "major")]


def test_below_and_any_and_all_combinations(tmp_path: Path) -> None:
    state, alerts = manager(
        tmp_path,
        Rule(id="cold", kind="threshold", signal="t", below=10),
        Rule(
            id="either",
            kind="any",
            conditions=[{"signal": "t", "below": 10}, {"signal": "p", "above": 5}],
        ),  # type: ignore[list-item]
        Rule(
            id="both",
            kind="all",
            conditions=[{"signal": "t", "below": 10}, {"signal": "p", "above": 5}],
        ),  # type: ignore[list-item]
    )
    reading(state, alerts, T0, t=5, p=1)
    assert sorted(r for r, s, _ in states(alerts) if s == "active") == ["cold", "either"]
    reading(state, alerts, T0 + 1, t=5, p=9)
    assert sorted(r for r, s, _ in states(alerts) if s == "active") == ["both", "cold", "either"]


def test_duration_needs_the_condition_to_hold_that_long(tmp_path: Path) -> None:
    state, alerts = manager(
        tmp_path, Rule(id="long", kind="threshold", signal="t", above=100, for_s=30)
    )
    reading(state, alerts, T0, t=101)
    reading(state, alerts, T0 + 20_000, t=101)
    assert states(alerts) == []
    reading(state, alerts, T0 + 25_000, t=99)  # broken: starts again
    reading(state, alerts, T0 + 40_000, t=101)
    reading(state, alerts, T0 + 69_000, t=101)
    assert states(alerts) == []
    reading(state, alerts, T0 + 70_000, t=101)
    assert states(alerts) == [("long", "active", "major")]


def test_risk_alert_escalates_and_names_the_model(tmp_path: Path) -> None:
    rule = Rule(id="risk", kind="risk", severity="major", escalate={"critical": 0.9})
    state, alerts = manager(tmp_path, rule)
    reading(state, alerts, T0, t=1)
    twin = state.twin("m1")
    assert twin is not None
    for p in (0.2, 0.6, 0.95, 0.6, 0.1):
        state.set_risks([(twin, Risk(p, "v1", 0.5, T0), None)])
        alerts.evaluate([twin], T0)
    (alert,) = alerts.query()[1]
    assert (alert.state, alert.severity, alert.model_version) == ("cleared", "critical", "v1")


def test_offline_by_status_and_by_silence(tmp_path: Path) -> None:
    state, alerts = manager(tmp_path, Rule(id="gone", kind="offline", timeout_s=60))
    reading(state, alerts, T0, t=1)
    assert states(alerts) == []
    twin = state.twin("m1")
    assert twin is not None
    alerts.evaluate([twin], T0 + 61_000)  # a minute of silence
    assert states(alerts) == [("gone", "active", "major")]
    reading(state, alerts, T0 + 62_000, t=1)
    assert states(alerts) == [("gone", "cleared", "major")]
    state.apply(
        Decoded(Address("s1", "m1", "status"), status=Status(state="offline", ts=T0 + 63_000)), T0
    )
    alerts.evaluate([twin], T0 + 63_000)
    assert states(alerts)[0][:2] == ("gone", "active")


def test_stale_signal(tmp_path: Path) -> None:
    state, alerts = manager(tmp_path, Rule(id="stuck", kind="stale", signal="t", stale_s=10))
    reading(state, alerts, T0, t=5)
    reading(state, alerts, T0 + 5_000, t=5)
    assert states(alerts) == []
    reading(state, alerts, T0 + 11_000, t=5)
    assert states(alerts) == [("stuck", "active", "major")]
    reading(state, alerts, T0 + 12_000, t=6)
    assert states(alerts)[0][1] == "cleared"


def test_alerts_survive_a_restart_without_being_raised_again(tmp_path: Path) -> None:
    rule = Rule(id="hot", kind="threshold", signal="t", above=100)
    state, alerts = manager(tmp_path, rule)
    reading(state, alerts, T0, t=101)
    alerts.acknowledge(1, "ana", "on it")
    alerts.close()
    again = AlertManager(state, AlertStore(tmp_path / "alerts.sqlite3"), retention_s=3600)
    again.open([rule])
    reading(state, again, T0 + 1, t=102)
    (alert,) = again.query()[1]
    assert (alert.id, alert.state, alert.acknowledged_by) == (1, "active", "ana")


def test_cleared_alerts_are_kept_for_the_retention_then_dropped(tmp_path: Path) -> None:
    state = FleetState()
    alerts = AlertManager(state, AlertStore(tmp_path / "a.db"), 0.05)
    alerts.open([Rule(id="hot", kind="threshold", signal="t", above=100)])
    now = int(time.time() * 1000)
    reading(state, alerts, now, t=101)
    reading(state, alerts, now + 1, t=99)
    alerts.sweep(interval_s=0)
    assert alerts.query()[0] == 1  # cleared, still within the retention
    wait_until(lambda: (alerts.sweep(interval_s=0), alerts.query()[0])[1] == 0, 5, "expiry")
    alerts.close()
    reopened = AlertManager(state, AlertStore(tmp_path / "a.db"), 0.05)
    reopened.open([])
    assert reopened.query()[0] == 0


def test_rules_file_extends_the_defaults_and_bad_files_name_the_line(tmp_path: Path) -> None:
    good = tmp_path / "rules.toml"
    good.write_text('[[rule]]\nid = "hot"\nkind = "threshold"\nsignal = "t"\nabove = 5\n')
    assert {r.id for r in load_rules(good)} >= {"hot", "failure_risk", "offline"}
    syntax = tmp_path / "syntax.toml"
    syntax.write_text('[[rule]]\nid = "hot"\nkind = \n')
    with pytest.raises(ConfigError, match=r"line 3"):
        load_rules(syntax)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(
        '[[rule]]\nid = "a"\nkind = "offline"\n\n[[rule]]\nid = "b"\nkind = "threshold"\n'
    )
    with pytest.raises(ConfigError, match=r"line 5: rule 'b'.*needs 'signal'"):
        load_rules(wrong)


TOKEN = {"Authorization": "Bearer op"}


@pytest.fixture
def twin(settings: Settings, tmp_path: Path) -> Twin:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nid = "hot"\nkind = "threshold"\nsignal = "t"\nabove = 100\nclear = 90\n'
    )
    return Twin(settings.model_copy(update={"api_tokens": "op", "alert_rules": rules}))


@pytest.fixture
def client(twin: Twin) -> Iterator[TestClient]:
    with TestClient(create_app(twin.settings, twin)) as client:
        yield client


def feed(twin: Twin, *bodies: Any, machine: str = "m1") -> None:
    feed_pipeline(twin, *((f"factory/s1/{machine}/telemetry", body) for body in bodies))


def test_two_readings_a_millisecond_apart_raise_one_alert(twin: Twin, client: TestClient) -> None:
    now = int(time.time() * 1000)
    feed(
        twin,
        {"ts": now, "seq": 1, "values": {"t": 150}},
        {"ts": now + 1, "seq": 2, "values": {"t": 160}},
    )
    page = client.get("/alerts").json()
    hot = [a for a in page["items"] if a["rule"] == "hot"]
    assert len(hot) == 1
    assert hot[0]["state"] == "active"
    assert [a["rule"] for a in client.get("/machines/m1").json()["alerts"]] == ["hot"]


def test_alert_api_filters_gets_and_acknowledges_with_a_token(
    twin: Twin, client: TestClient
) -> None:
    feed(twin, {"seq": 1, "values": {"t": 150}})
    feed(twin, {"seq": 1, "values": {"t": 150}}, machine="m2")
    feed(twin, {"seq": 2, "values": {"t": 50}}, machine="m2")
    active = client.get("/alerts", params={"state": "active"}).json()
    assert [a["machine"] for a in active["items"]] == ["m1"]
    assert client.get("/alerts", params={"machine": "m2", "state": "cleared"}).json()["total"] == 1
    alert_id = active["items"][0]["id"]
    assert client.get(f"/alerts/{alert_id}").json()["rule"] == "hot"
    assert client.get("/alerts/999").status_code == 404
    assert client.post(f"/alerts/{alert_id}/ack").status_code == 401
    acked = client.post(
        f"/alerts/{alert_id}/ack", json={"by": "ana", "comment": "checking"}, headers=TOKEN
    )
    assert acked.status_code == 200
    assert (acked.json()["acknowledged_by"], acked.json()["state"]) == ("ana", "active")
    assert (
        client.get("/alerts", params={"acknowledged": False, "state": "active"}).json()["total"]
        == 0
    )
    assert client.get("/alerts", params={"severity": "urgent"}).status_code == 422
    assert client.post("/alerts/999/ack", headers=TOKEN).status_code == 404


@pytest.mark.integration
def test_alerts_and_twin_states_are_published_over_mqtt(
    settings: Settings, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nid = "hot"\nkind = "threshold"\nsignal = "t"\nabove = 100\n')
    config = settings.model_copy(update={"mqtt_url": mosquitto.url, "alert_rules": rules})
    received: dict[str, list[Any]] = {}
    ready = threading.Event()
    listener = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="listener")
    listener.on_connect = lambda c, *_: c.subscribe(
        [("factory/+/+/alert", 1), ("factory/+/+/twin", 1)]
    )
    listener.on_subscribe = lambda *_: ready.set()
    listener.on_message = lambda c, u, m: received.setdefault(m.topic, []).append(
        (msgspec.json.decode(m.payload), m.retain)
    )
    listener.connect("127.0.0.1", mosquitto.port)
    listener.loop_start()
    try:
        assert ready.wait(10)
        twin = Twin(config)
        with TestClient(create_app(config, twin)):
            wait_until(lambda: twin.ingest.connected, 10, "the twin to connect")
            feed(twin, {"seq": 1, "values": {"t": 150}})
            wait_until(lambda: "factory/s1/m1/alert" in received, 10, "the alert on MQTT")
            wait_until(lambda: "factory/s1/m1/twin" in received, 10, "the twin state on MQTT")
        alert, _ = received["factory/s1/m1/alert"][0]
        assert (alert["rule"], alert["state"], alert["machine"]) == ("hot", "active", "m1")
        state, _ = received["factory/s1/m1/twin"][-1]
        assert state["values"]["t"]["value"] == 150
    finally:
        listener.loop_stop()
        listener.disconnect()


@pytest.mark.integration
def test_simulated_fleet_raises_risk_alerts_one_at_a_time_and_offline_alerts_when_it_goes(
    settings: Settings, mosquitto: Mosquitto
) -> None:
    from devices.fleet import Fleet, FleetOptions

    config = settings.model_copy(update={"mqtt_url": mosquitto.url})
    twin = Twin(config)
    with TestClient(create_app(config, twin)) as client:
        wait_until(lambda: twin.ingest.connected, 10, "the twin to connect")
        options = FleetOptions(machines=3, rate_hz=100, count=300, seed=11)
        fleet = Fleet(config.broker, twin.topics, options)
        fleet.start()
        assert fleet.wait(60)
        wait_until(lambda: twin.state.totals.received == 900, 30, "all readings")
        risk = client.get("/alerts", params={"limit": 1000}).json()["items"]
        risk = [a for a in risk if a["rule"] == "failure_risk"]
        assert risk, "no machine drifted into failure conditions"
        for machine in {a["machine"] for a in risk}:
            mine = sorted((a for a in risk if a["machine"] == machine), key=lambda a: a["id"])
            # One at a time: each alert was cleared before the next was raised.
            for earlier, later in itertools.pairwise(mine):
                assert earlier["state"] == "cleared"
                assert earlier["cleared_at"] <= later["raised_at"]
            assert all(a["model_version"] for a in mine)
        fleet.stop()  # each device says offline
        wait_until(
            lambda: (
                client.get("/alerts", params={"state": "active"}).json()["items"]
                and {
                    a["machine"]
                    for a in client.get("/alerts", params={"state": "active"}).json()["items"]
                    if a["rule"] == "offline"
                }
                == {m.name for m in fleet.machines}
            ),
            15,
            "an offline alert per machine",
        )


def test_changes_in_one_evaluation_are_stored_together_as_they_ended(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "a.db")
    store.open()
    alert = Alert(1, "m1", "s1", "hot", "threshold", "major", "active", "m1: hot", T0, T0)
    with store.transaction():
        store.save(alert)
        alert.state, alert.cleared_at = "cleared", T0 + 1
        store.save(alert)
        assert stored(tmp_path / "a.db") == []  # nothing written before the end
    store.close()
    (kept,) = stored(tmp_path / "a.db")
    assert (kept.state, kept.cleared_at) == ("cleared", T0 + 1)


def stored(path: Path) -> list[Alert]:
    reader = AlertStore(path)
    try:
        return reader.open()
    finally:
        reader.close()


def test_the_sweep_raises_a_condition_once_it_has_held_its_duration(tmp_path: Path) -> None:
    state, alerts = manager(
        tmp_path, Rule(id="hot", kind="threshold", signal="t", above=100, for_s=0.1)
    )
    alerts.sweep(interval_s=0)  # the first sweep evaluates every rule once
    reading(state, alerts, int(time.time() * 1000), t=101)
    assert states(alerts) == []  # held, not yet for 0.1 s
    time.sleep(0.15)
    alerts.sweep(interval_s=0)  # no new reading: time alone completes it
    assert states(alerts) == [("hot", "active", "major")]
