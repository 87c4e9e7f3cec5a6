"""Fleet models from the twin's own history, through the API (`POST /model/train`)."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
from fastapi.testclient import TestClient

from tests.conftest import TOKEN, feed_pipeline
from tests.payloads import wear_history
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
    assert "vibration_mm_s_mean_3h" in models["active"]["site:plant2"]["features"]
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
    [{"label_horizon": "soon"}, {"label_horizon": "0h"}, {"site": "a b"}, {"horizon": "24h"}],
)
def test_bad_training_requests_are_422(client: TestClient, body: dict[str, Any]) -> None:
    assert client.post("/model/train", json=body, headers=TOKEN).status_code == 422


def test_training_needs_a_token(client: TestClient) -> None:
    assert client.post("/model/train", json={}).status_code == 401
