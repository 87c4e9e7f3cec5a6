"""The twin as a simulator: what-if, forecasts and setpoint advice, through the API."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import numpy as np
import pytest
from fastapi.testclient import TestClient

from devices.simulator import make_fleet
from tests.conftest import TOKEN, feed_pipeline
from tests.payloads import wear_history
from tests.services import wait_until
from twin.config import Settings
from twin.foresight.forecast import NODE_WEIGHTS, _points, _process_paths, torque_nodes
from twin.model import FEATURES, feature_matrix
from twin.service import Twin

MINUTE_MS = 60_000


@pytest.fixture
def twin(settings: Settings) -> Twin:
    # Readings rolled forward carry event times up to hours ahead of the wall clock.
    return Twin(settings.model_copy(update={"max_future_s": 30 * 86_400, "api_tokens": "t0k"}))


BASE = int(time.time() * 1000) - 86_400_000


def ai4i(machine: str, seq: int, ts: int, **values: float) -> tuple[str, dict[str, Any]]:
    body = {
        "air_temp_k": 300.0,
        "process_temp_k": 310.0,
        "rotational_speed_rpm": 1500.0,
        "torque_nm": 40.0,
        "tool_wear_min": 50.0,
        **values,
    }
    return (f"factory/s1/{machine}/telemetry", {"seq": seq, "ts": ts, "values": body})


def online(machine: str, machine_type: str | None, site: str = "s1") -> tuple[str, Any]:
    body: dict[str, Any] = {"state": "online", "ts": BASE - 1}
    if machine_type:
        body["type"] = machine_type
    return (f"factory/{site}/{machine}/status", body)


def risk(twin: Twin, machine: str, ts: int) -> float:
    """The live risk once the machine's reading at `ts` is scored."""

    def scored() -> bool:
        found = twin.state.get(machine)
        return bool(found and found["risk"] and found["values"]["air_temp_k"]["ts"] >= ts)

    wait_until(scored, 10, f"{machine} scored")
    found = twin.state.get(machine)
    assert found is not None
    return float(found["risk"]["probability"])


def test_whatif_equals_scoring_a_machine_whose_readings_carried_those_values(
    twin: Twin, client: TestClient
) -> None:
    """Default model: same model, same features. A sent what A's what-if assumed, as B."""
    history = [
        ai4i(m, i, BASE + i * MINUTE_MS, tool_wear_min=100 + i) for m in "AB" for i in range(5)
    ]
    feed_pipeline(twin, online("A", "L"), online("B", "L"), *history)
    last = BASE + 4 * MINUTE_MS
    risk(twin, "A", last)
    body = {
        "values": {"rotational_speed_rpm": 1320, "process_temp_k": 308.5},
        "events": ["tool_change"],
        "operate_min": 45,
    }
    answer = client.post("/machines/A/whatif", json=body)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["now"]["probability"] == pytest.approx(risk(twin, "A", last), abs=1e-12)

    # B's next reading carries the values, a fresh tool worn 45 minutes, 45 minutes later.
    ts = last + 45 * MINUTE_MS
    feed_pipeline(
        twin, ai4i("B", 5, ts, rotational_speed_rpm=1320, process_temp_k=308.5, tool_wear_min=45)
    )
    assert got["whatif"]["probability"] == pytest.approx(risk(twin, "B", ts), abs=1e-9)
    assert got["whatif"]["threshold"] == got["now"]["threshold"]
    assert set(got["whatif"]["contributions"]) == set(got["now"]["contributions"])


def _site_model(twin: Twin, client: TestClient) -> None:
    feed_pipeline(twin, *wear_history(machines=8, steps=900, seed=4), wait=60)
    started = client.post(
        "/model/train", json={"site": "plant2", "label_horizon": "6h"}, headers=TOKEN
    )
    assert started.status_code == 202, started.text
    wait_until(
        lambda: client.get("/model").json()["training"]["state"] != "running", 120, "training"
    )
    assert client.get("/model").json()["training"]["state"] == "done"


def test_site_model_whatif_recomputes_its_window_features(twin: Twin, client: TestClient) -> None:
    """A site model's what-if rolls the history forward: q0, sent p0's history and then the
    what-if's readings (and its maintenance), scores as p0's what-if said."""
    _site_model(twin, client)
    p0 = [m for m in wear_history(machines=8, steps=900, seed=4) if "/p0/" in m[0]]
    feed_pipeline(twin, *[(t.replace("/p0/", "/q0/"), b) for t, b in p0], wait=60)
    snap = twin.state.snapshot("p0")
    assert snap is not None
    body = {"values": {"vibration_mm_s": 9.5}, "events": ["bearing_change"], "operate_min": 40}
    answer = client.post("/machines/p0/whatif", json=body)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["model_version"].endswith(got["whatif"]["model_version"][-8:])
    assert got["whatif"]["probability"] != pytest.approx(got["now"]["probability"])

    ts = snap.latest_ts
    event = {"type": "maintenance", "code": "bearing_change", "ts": ts}
    readings = [
        (
            "factory/plant2/q0/telemetry",
            {
                "ts": ts + k * MINUTE_MS,
                "seq": 10_000 + k,
                "values": {
                    "vibration_mm_s": 9.5,
                    "pressure_bar": snap.values["pressure_bar"],
                    "temperature_c": snap.values["temperature_c"],
                },
            },
        )
        for k in range(1, 41)
    ]
    feed_pipeline(twin, ("factory/plant2/q0/event", event), *readings)
    end = ts + 40 * MINUTE_MS

    def q0_scored() -> bool:
        found = twin.state.get("q0")
        return bool(found and found["risk"] and found["values"]["vibration_mm_s"]["ts"] == end)

    wait_until(q0_scored, 10, "q0 scored")
    q0 = twin.state.get("q0")
    assert q0 is not None
    assert got["whatif"]["probability"] == pytest.approx(q0["risk"]["probability"], abs=1e-9)


def test_the_forecast_of_a_simulated_machine_crosses_before_its_tool_wear_failure(
    twin: Twin, client: TestClient
) -> None:
    """24 simulated machines, each fed until a worn tool, then run on (no scheduled tool
    change) to its first wear-driven failure (TWF or OSF): the forecast, taken before, crosses
    the threshold no later than that failure for most of them."""
    warned = 0
    fleet = make_fleet(24, 11)
    for m in fleet:
        m.auto_tool_change = False
        ts, messages = BASE, [online(m.name, m.type)]
        for seq in range(1, 10_000):
            values, _ = m.step()
            ts += m.process_minutes * MINUTE_MS
            messages.append(
                (f"factory/s1/{m.name}/telemetry", {"seq": seq, "ts": ts, "values": values})
            )
            if m.tool_wear_min >= 120 and seq > 60:
                break
        feed_pipeline(twin, *messages)
        answer = client.get(f"/machines/{m.name}/forecast", params={"horizon": "8h", "step": "10m"})
        assert answer.status_code == 200, answer.text
        forecast = answer.json()
        assert forecast["method"] == "process_model"
        assert forecast["probability_window_min"] == 30
        assert len(forecast["points"]) == 49
        for point in forecast["points"]:
            assert 0 <= point["low"] <= point["probability"] <= point["high"] <= 1
        crossing = forecast["crosses_threshold_at_min"]
        assert crossing is not None  # a tool run to failure crosses within 8 h
        minutes = 0
        while True:
            _, events = m.step()
            minutes += m.process_minutes
            if any(e.type == "failure" and e.code in ("TWF", "OSF") for e in events):
                break
        warned += crossing <= minutes
        fit = forecast["p_t_fit"]
        assert fit["theta"] > 0
        assert fit["rmse"] < 0.1
    assert warned >= 0.75 * len(fleet), f"warned before the failure for {warned}/{len(fleet)}"


def test_the_process_model_paths_equal_scoring_every_step_point_and_torque(
    twin: Twin, client: TestClient
) -> None:
    """The fast path (each point scored once, the wear's groups moved along a grid, the load's
    torque integrated over the points' spread) gives the model's own probability for every
    (step, recent point) row, averaged over the quadrature's torques in the load, from a fresh
    tool's end of the step grid on."""
    rows = [
        ai4i(
            m,
            i,
            BASE + i * MINUTE_MS,
            tool_wear_min=120 + i,
            torque_nm=30 + 2 * i,
            rotational_speed_rpm=1350 + 20 * i,
        )
        for m in ("A", "B")
        for i in range(20)
    ]
    feed_pipeline(twin, online("A", "L"), online("B", "H"), *rows)
    risk(twin, "A", BASE + 19 * MINUTE_MS)
    risk(twin, "B", BASE + 19 * MINUTE_MS)
    times = np.arange(0.0, 481.0, 10.0)
    found = [twin.foresight.machine(m) for m in ("A", "B")]
    model = found[0][0]
    fast = _process_paths(model, [snap for _, snap in found], times, 10.0)
    load = FEATURES.index("wear_torque_min_nm")
    for (_, snap), (got, lead) in zip(found, fast, strict=True):
        points = _points(snap)
        n = len(points["tool_wear_min"])
        wear = snap.values["tool_wear_min"]
        assert lead == wear // 10  # the tool's past, back to a fresh tool's end of the grid
        steps = np.arange(-lead * 10.0, 481.0, 10.0)
        assert (wear + steps >= 0).all()
        assert wear + steps[0] < 10
        nodes = torque_nodes(points["torque_nm"])
        assert nodes.mean() == pytest.approx(49.0)  # the points: 30..68 Nm
        k = len(nodes)
        columns = {key: np.tile(np.repeat(v, k), len(steps)) for key, v in points.items()}
        columns["tool_wear_min"] = np.repeat(wear + steps, n * k)
        matrix = feature_matrix(columns, snap.type)
        matrix[:, load] = columns["tool_wear_min"] * np.tile(nodes, n * len(steps))
        each = model.score(matrix)[0].reshape(len(steps), n, k)
        want = (each * NODE_WEIGHTS).sum(axis=2)
        assert got.shape == (len(steps), 20)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-9)


def test_a_fresh_tool_is_never_riskier_than_the_worn_one_it_replaces(
    twin: Twin, client: TestClient
) -> None:
    """The chance per process is non-decreasing in the wear over the tool's whole life, so the
    path after a tool change lies under the path left alone at every step. The bundled model
    finds a fresh tool far safer than a 30-minute-old one and a 100-minute-old one safer
    than that (spline wiggles); fitted along each path alone, the fresh tool's path read as
    the riskier for its first hours. A tool changed at the reading's own time (a failure's
    repair) counts as changed."""
    worn = [
        ai4i(m, i, BASE + i * MINUTE_MS, tool_wear_min=90 + i, torque_nm=30 + i)
        for m in "LH"
        for i in range(20)
    ]
    last = BASE + 19 * MINUTE_MS
    failed = [
        ai4i("R", 0, last, tool_wear_min=230.0, torque_nm=60.0),
        ("factory/s1/R/event", {"type": "failure", "code": "OSF", "ts": last}),
        ("factory/s1/R/event", {"type": "maintenance", "code": "tool_change", "ts": last}),
    ]
    feed_pipeline(twin, online("L", "L"), online("H", "H"), online("R", "L"), *worn, *failed)
    for machine in "LHR":
        risk(twin, machine, last)
    found, skipped = twin.foresight.paths(["L", "H"], 480.0, 10.0, ["tool_change"])
    assert not skipped
    for _, base, after in found.values():
        # Within 1%: the two paths read the curve fitted on grids a fraction of a step apart
        # (wear 0, 10, ... and 9, 19, ...). Fitted along each path alone, the fresh tool's path
        # lay 4% above the worn one's for half an hour here.
        fresh = after["tool_change"]
        assert (fresh.hazard <= base.hazard * 1.01).all()
        assert (fresh.probability <= base.probability * 1.01).all()
    _, repaired = twin.foresight.machine("R")
    assert repaired.values["tool_wear_min"] == 0.0


def test_a_plan_reads_a_tool_younger_than_its_minimum_interval_as_new(
    twin: Twin, client: TestClient
) -> None:
    """Below the minimum interval the paths a plan reads are flat at the risk of a tool that
    age: the fresh tool's path and the worn one's meet there, and nothing below it is a reason
    to change a tool. Above it the paths are the forecast's own."""
    worn = [ai4i("L", i, BASE + i * MINUTE_MS, tool_wear_min=71 + i) for i in range(20)]
    feed_pipeline(twin, online("L", "L"), *worn)
    risk(twin, "L", BASE + 19 * MINUTE_MS)  # worn 90 minutes
    plain, _ = twin.foresight.paths(["L"], 480.0, 10.0, ["tool_change"])
    found, _ = twin.foresight.paths(["L"], 480.0, 10.0, ["tool_change"], 120.0)
    _, base, after = found["L"]
    fresh = after["tool_change"].hazard
    aged = base.hazard[3]  # worn 120 minutes
    np.testing.assert_allclose(base.hazard[:4], aged, rtol=1e-12)
    np.testing.assert_allclose(fresh[:13], aged, rtol=1e-12)  # a fresh tool, to 120 minutes
    _, alone, _ = plain["L"]
    np.testing.assert_allclose(base.hazard[11:], alone.hazard[11:], rtol=1e-9)  # from 200 min
    assert alone.hazard[0] != aged  # the forecast itself is not flattened


def test_a_machine_without_a_process_model_is_forecast_by_its_trend(
    twin: Twin, client: TestClient
) -> None:
    """No type: the default model on each signal's trend, with a band around it."""
    readings = [
        ai4i("T", i, BASE + i * MINUTE_MS, tool_wear_min=150 + i, torque_nm=40 + 0.1 * i)
        for i in range(40)
    ]
    feed_pipeline(twin, online("T", None), *readings)
    risk(twin, "T", BASE + 39 * MINUTE_MS)
    forecast = client.get("/machines/T/forecast?horizon=2h&step=15m").json()
    assert forecast["method"] == "trend"
    assert [p["t_min"] for p in forecast["points"]] == [15.0 * k for k in range(9)]
    first, last = forecast["points"][0], forecast["points"][-1]
    assert last["probability"] > first["probability"]  # wear and torque keep rising
    assert all(p["low"] <= p["high"] for p in forecast["points"])


def hdf_machine(twin: Twin) -> None:
    """Low speed with a small temperature difference: the heat-dissipation failure region."""
    feed_pipeline(
        twin,
        online("H", "L"),
        ai4i(
            "H",
            1,
            BASE,
            air_temp_k=302.0,
            process_temp_k=310.2,
            rotational_speed_rpm=1290,
            torque_nm=50,
        ),
    )
    risk(twin, "H", BASE)


def test_advice_raises_speed_or_lowers_load_out_of_the_hdf_region(
    twin: Twin, client: TestClient
) -> None:
    hdf_machine(twin)
    answer = client.post("/machines/H/advice", json={})
    assert answer.status_code == 200, answer.text
    advice = answer.json()
    assert advice["now"]["probability"] > advice["target"] == advice["now"]["threshold"]
    assert advice["feasible"] is True
    change = advice["change"]
    assert change
    assert set(change) <= {"rotational_speed_rpm", "torque_nm"}
    speed, torque = change.get("rotational_speed_rpm"), change.get("torque_nm")
    assert (speed and speed["delta"] > 0) or (torque and torque["delta"] < 0)
    assert speed is None or 1200 <= speed["to"] <= 2800
    assert torque is None or 10 <= torque["to"] <= 70
    assert advice["result"]["probability"] <= advice["target"]
    # Applied, the advice is what the what-if says.
    values = {name: c["to"] for name, c in change.items()}
    check = client.post("/machines/H/whatif", json={"values": values}).json()
    assert check["whatif"]["probability"] == pytest.approx(advice["result"]["probability"])
    # Deterministic.
    assert client.post("/machines/H/advice", json={}).json()["change"] == change


def test_advice_says_none_when_the_bounds_forbid_it(twin: Twin, client: TestClient) -> None:
    hdf_machine(twin)
    body = {"controllable": {"rotational_speed_rpm": [1250, 1320]}, "target": 0.2}
    advice = client.post("/machines/H/advice", json=body).json()
    assert advice["feasible"] is False
    assert advice["change"] is None
    assert advice["best_within_bounds"]["probability"] > 0.2
    (tool,) = advice["maintenance"]
    assert tool["action"] == "tool_change"
    assert tool["brings_under_target"] is False  # a fresh tool does not cool the spindle
    assert "no setting within the bounds" in advice["advice"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("post", "/machines/nope/whatif", {}, 404),
        ("get", "/machines/nope/forecast", None, 404),
        ("post", "/machines/nope/advice", {}, 404),
        ("post", "/machines/H/whatif", {"values": {"flux": 1}}, 422),
        ("post", "/machines/H/whatif", {"events": ["polish"]}, 422),
        ("post", "/machines/H/whatif", {"operate_min": -1}, 422),
        ("post", "/machines/H/whatif", {"values": {"torque_nm": "high"}}, 422),
        ("get", "/machines/H/forecast?horizon=soon", None, 422),
        ("get", "/machines/H/forecast?horizon=1h&step=2h", None, 422),
        ("get", "/machines/H/forecast?horizon=30d&step=1m", None, 422),
        ("post", "/machines/H/advice", {"controllable": {"flux": [0, 1]}}, 422),
        ("post", "/machines/H/advice", {"controllable": {"torque_nm": [50, 10]}}, 422),
        ("post", "/machines/H/advice", {"target": 1.5}, 422),
    ],
)
def test_bad_foresight_requests(
    twin: Twin,
    client: TestClient,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
) -> None:
    hdf_machine(twin)
    response = getattr(client, method)(path, **({"json": body} if body is not None else {}))
    assert response.status_code == status, response.text
    assert response.json()["detail"]


def test_a_machine_missing_a_signal_is_a_422_that_names_it(twin: Twin, client: TestClient) -> None:
    feed_pipeline(
        twin, ("factory/s1/half/telemetry", msgspec.json.encode({"values": {"torque_nm": 40}}))
    )
    wait_until(lambda: twin.state.get("half") is not None, 10, "half")
    response = client.post("/machines/half/whatif", json={})
    assert response.status_code == 422
    assert "missing signals" in response.json()["detail"]
