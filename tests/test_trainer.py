"""Fleet models from the twin's own history, through the API (`POST /model/train`)."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
from fastapi.testclient import TestClient

from tests.conftest import TOKEN, feed_pipeline
from tests.payloads import event_history, wear_history
from twin.model.fleet import FleetSpec
from twin.service import Twin


def feed(twin: Twin, messages: list[tuple[str, bytes]]) -> None:
    feed_pipeline(twin, *messages, wait=60)


def job(client: TestClient) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        training = client.get("/model").json()["training"]
        if training["state"] != "running":
            return training  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError("training did not finish")


def test_site_model_scores_its_site_while_the_default_scores_the_rest(
    twin: Twin, client: TestClient
) -> None:
    feed(twin, wear_history(machines=8, steps=900, seed=4))
    canonical = {
        "air_temp_k": 300.0,
        "process_temp_k": 310.0,
        "rotational_speed_rpm": 1500,
        "torque_nm": 40.0,
        "tool_wear_min": 20,
    }
    feed(twin, [("factory/site1/mill/telemetry", msgspec.json.encode({"values": canonical}))])
    assert client.get("/machines/p0").json()["risk"] is None  # no model knows vibration yet

    response = client.post(
        "/model/train", json={"site": "plant2", "label_horizon": "6h"}, headers=TOKEN
    )
    assert response.status_code == 202, response.text
    assert response.json()["scope"] == "site:plant2"
    result = job(client)
    assert result["state"] == "done", result
    assert result["promoted"] is True
    assert result["active"] is None or result["active"]["metrics"] is None  # AI4I cannot score it
    assert result["candidate"]["metrics"]["average_precision"] > 0.3
    site_version = result["candidate"]["version"]

    models = client.get("/model").json()
    assert models["active"]["site:plant2"]["version"] == site_version
    assert models["active"]["site:plant2"]["kind"] == "fleet"
    manifest = models["active"]["site:plant2"]
    assert manifest["features"] == FleetSpec.from_json(manifest["fleet"]).names
    assert "vibration_mm_s" in manifest["features"]
    gate = manifest["metrics"]["gate"]
    assert gate["split"] == "time"  # 8 machines: too few to hold some out
    assert manifest["metrics"]["grouped"] is None
    assert gate["candidates"][0]["families"] == ["latest"]
    tried = {(tuple(c["families"]), c["shape"]) for c in gate["candidates"]}
    assert (("latest", "windows"), "linear") in tried  # every family was tried
    assert (("latest", "events"), "linear") in tried
    assert tuple(manifest["fleet"]["families"]) in {f for f, _ in tried}
    assert models["active"]["default"]["kind"] == "ai4i"

    p0 = client.get("/machines/p0").json()
    assert p0["risk"]["model_version"] == site_version
    assert any(name.startswith("vibration_mm_s") for name in p0["risk"]["contributions"])
    mill = client.get("/machines/mill").json()
    assert mill["risk"]["model_version"] == models["active"]["default"]["version"]

    # Trained again, the candidate is measured next to the site model now active.
    again = client.post(
        "/model/train", json={"site": "plant2", "label_horizon": "6h"}, headers=TOKEN
    )
    assert again.status_code == 202
    second = job(client)
    assert second["active"]["version"] == site_version
    assert second["active"]["metrics"]["average_precision"] > 0.3
    assert second["promoted"] is (
        second["candidate"]["metrics"]["average_precision"]
        >= second["active"]["metrics"]["average_precision"]
    )


def test_training_with_too_few_failures_is_refused_and_keeps_the_active_model(
    twin: Twin, client: TestClient
) -> None:
    feed(twin, wear_history(machines=1, steps=100, seed=1))
    before = client.get("/model").json()["active"]
    response = client.post("/model/train", json={"label_horizon": "24h"}, headers=TOKEN)
    assert response.status_code == 422
    assert "at least 10" in response.json()["detail"]
    assert client.get("/model").json()["active"] == before


@pytest.mark.parametrize(
    "body",
    [
        {"label_horizon": "soon"},
        {"label_horizon": "0h"},
        {"site": "a b"},
        {"horizon": "24h"},
        {"windows": []},
        {"windows": ["3h", "180m"]},
        {"windows": ["3h", "often"]},
        {"windows": ["1h", "2h", "3h", "4h", "5h"]},
    ],
)
def test_bad_training_requests_are_422(client: TestClient, body: dict[str, Any]) -> None:
    assert client.post("/model/train", json=body, headers=TOKEN).status_code == 422


def test_training_needs_a_token(client: TestClient) -> None:
    assert client.post("/model/train", json={}).status_code == 401


def _train(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/model/train", json=body, headers=TOKEN)
    assert response.status_code == 202, response.text
    result = job(client)
    assert result["state"] == "done", result
    return result


def _machine_once(client: TestClient, machine: str, check: Any) -> dict[str, Any]:
    """The machine as `GET /machines/{machine}` shows it, once `check` holds of it."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = client.get(f"/machines/{machine}").json()
        if check(found):
            return found  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"{machine} never got there: {found}")


def test_a_machine_whose_sensor_dies_is_still_scored_and_says_what_was_imputed(
    twin: Twin, client: TestClient
) -> None:
    """p0 loses its pressure sensor mid-stream: it stays scored, with pressure imputed and said
    so; once it sends only one of the model's three signals, it is not scored, and says why."""
    feed(twin, wear_history(machines=8, steps=900, seed=4))
    _train(client, {"site": "plant2", "label_horizon": "6h"})
    before = _machine_once(client, "p0", lambda m: m["risk"] is not None)
    assert before["risk"]["imputed"] == []
    assert before["risk_reason"] is None

    last = twin.state.get("p0")["values"]["vibration_mm_s"]["ts"]  # type: ignore[index]
    step = 300_000

    def readings(first: int, count: int, names: tuple[str, ...]) -> list[tuple[str, Any]]:
        values = {"vibration_mm_s": 3.0, "pressure_bar": 5.0, "temperature_c": 41.0}
        return [
            (
                "factory/plant2/p0/telemetry",
                {"ts": last + (first + k) * step, "values": {n: values[n] for n in names}},
            )
            for k in range(1, count + 1)
        ]

    # 3 h and more without pressure: past the shortest window, the sensor counts as gone.
    now = last + 100 * step
    feed_pipeline(twin, *readings(0, 40, ("vibration_mm_s", "temperature_c")), received_ms=now)
    lost = _machine_once(client, "p0", lambda m: m["risk"] and m["risk"]["imputed"])
    assert lost["risk"]["imputed"] == ["pressure_bar"]
    assert 0.0 <= lost["risk"]["probability"] <= 1.0
    assert lost["risk_reason"] == "imputed: pressure_bar (not sent)"

    feed_pipeline(twin, *readings(40, 40, ("vibration_mm_s",)), received_ms=now)
    gone = _machine_once(client, "p0", lambda m: m["risk"] is None)
    assert gone["risk_reason"] == (
        "missing signals: pressure_bar, temperature_c (sent 1 of the model's 3 within 3h; "
        "more than half needed)"
    )

    # The sensors come back: scored on all three again, nothing imputed.
    feed_pipeline(
        twin,
        *readings(80, 3, ("vibration_mm_s", "pressure_bar", "temperature_c")),
        received_ms=now,
    )
    back = _machine_once(client, "p0", lambda m: m["risk"] is not None)
    assert back["risk"]["imputed"] == []
    assert back["risk_reason"] is None


def test_failures_driven_by_errors_and_age_are_found_and_judged_on_new_machines(
    twin: Twin, client: TestClient
) -> None:
    """A fleet whose sensors say nothing: the gate keeps the event and attribute families, and
    with 12 machines the model is judged on machines it never saw."""
    feed(twin, event_history(machines=12, hours=24 * 40, seed=1))
    result = _train(client, {"site": "plant3", "label_horizon": "24h"})
    print(result)
    candidate = result["candidate"]
    assert {"events", "attributes"} <= set(candidate["families"])
    assert candidate["grouped"]["average_precision"] > 0.3
    assert result["active"]["split"] == "grouped"
    assert result["reason"].endswith("on machines it never saw")

    manifest = client.get("/model").json()["active"]["site:plant3"]
    assert manifest["metrics"]["gate"]["split"] == "grouped"
    assert manifest["metrics"]["grouped"] == candidate["grouped"]
    assert manifest["metrics"]["held_out"] == candidate["metrics"]
    assert "age_years" in manifest["features"]
    assert "error_E1_count_24h" in manifest["features"]
    e0 = _machine_once(client, "e0", lambda m: m["risk"] is not None)
    assert set(e0["risk"]["contributions"]) >= {"error_E1", "age_years"}


def test_a_window_longer_than_the_history_twins_keep_is_refused(
    twin: Twin, client: TestClient
) -> None:
    feed(twin, wear_history(machines=8, steps=900, seed=4))
    body = {"site": "plant2", "label_horizon": "6h", "windows": ["3h", "7d"]}
    response = client.post("/model/train", json=body, headers=TOKEN)
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "window 7d is longer than the history the twins keep (24h, TWIN_FEATURE_WINDOW_S)"
    )
