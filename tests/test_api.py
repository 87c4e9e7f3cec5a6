import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import feed_pipeline
from twin.app import create_app
from twin.config import Settings
from twin.service import Twin

NOW = int(time.time() * 1000)


@pytest.fixture
def twin(settings: Settings) -> Twin:
    return Twin(settings)


@pytest.fixture
def client(twin: Twin) -> Iterator[TestClient]:
    with TestClient(create_app(twin.settings, twin)) as client:
        yield client


def feed(twin: Twin, *messages: tuple[str, object]) -> None:
    feed_pipeline(twin, *messages, received_ms=NOW)


def test_machines_list_and_detail(twin: Twin, client: TestClient) -> None:
    feed(
        twin,
        ("factory/a/m1/telemetry", {"ts": NOW, "seq": 0, "values": {"torque_nm": 40}}),
        (
            "factory/b/m2/telemetry",
            [{"seq": 0, "values": {"x": 1}}, {"seq": 1, "values": {"x": 2}}],
        ),
        ("factory/b/m2/status", {"state": "online", "type": "M"}),
    )
    page = client.get("/machines").json()
    assert page["total"] == 2
    assert [m["machine"] for m in page["items"]] == ["m1", "m2"]
    assert page["items"][1]["counters"]["received"] == 2
    assert client.get("/machines", params={"site": "b", "online": True}).json()["total"] == 1
    detail = client.get("/machines/m1").json()
    assert detail == page["items"][0]
    assert detail["values"]["torque_nm"] == {"value": 40, "ts": NOW}


def test_unknown_machine_is_404_with_detail(client: TestClient) -> None:
    response = client.get("/machines/nope")
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 5000}, {"offset": -1}, {"sort": "risk!"}, {"online": "maybe"}],
)
def test_bad_query_parameters_are_422(client: TestClient, params: dict[str, object]) -> None:
    response = client.get("/machines", params=params)
    assert response.status_code == 422
    assert response.json()["detail"]


def test_health_reports_broker_and_journal(twin: Twin, client: TestClient) -> None:
    feed(twin, ("factory/a/m1/telemetry", {"values": {"x": 1}}))
    health = client.get("/health").json()
    assert health["status"] == "degraded"
    assert health["broker_connected"] is False
    assert "not connected to the MQTT broker" in health["problems"]
    assert health["journal"]["committed"] == 1
    assert health["machines"] == 1
    assert health["readings"] == {"received": 1, "duplicates": 0, "rejected": 0}


def test_deadletters_list_rejections_newest_first(twin: Twin, client: TestClient) -> None:
    feed(
        twin,
        ("factory/a/m1/telemetry", b"not json"),
        ("factory/a/m1/telemetry", [{"values": {"x": 1}}, {"values": {"Bad": 1}}]),
        ("factory/a/m 1/telemetry", b"{}"),
    )
    body = client.get("/deadletters").json()
    assert body["total"] == 3
    assert body["by_reason"] == {"not_json": 1, "bad_signal_name": 1, "bad_topic": 1}
    assert [d["reason"] for d in body["items"]] == ["bad_topic", "bad_signal_name", "not_json"]
    assert body["items"][1]["index"] == 1
    filtered = client.get("/deadletters", params={"reason": "not_json"}).json()
    assert [d["payload"] for d in filtered["items"]] == ["not json"]
    assert client.get("/deadletters", params={"reason": "nope"}).status_code == 422


def test_openapi_is_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/health", "/machines", "/machines/{machine}", "/deadletters"} <= set(paths)


def test_writes_are_open_without_configured_tokens(client: TestClient) -> None:
    assert client.delete("/deadletters").status_code == 200


def test_writes_need_a_valid_bearer_token_when_tokens_are_set(settings: Settings) -> None:
    secured = settings.model_copy(update={"api_tokens": "s3cret, other"})
    with TestClient(create_app(secured)) as client:
        missing = client.delete("/deadletters")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert "Bearer" in missing.json()["detail"]
        wrong = client.delete("/deadletters", headers={"Authorization": "Bearer guess"})
        assert wrong.status_code == 403
        ok = client.delete("/deadletters", headers={"Authorization": "Bearer other"})
        assert ok.status_code == 200
        assert client.get("/machines").status_code == 200  # reads stay open


def reading(seq: int, wear: float = 50, torque: float = 40, speed: float = 1500) -> dict[str, Any]:
    return {
        "seq": seq,
        "values": {
            "air_temp_k": 300.0,
            "process_temp_k": 310.0,
            "rotational_speed_rpm": speed,
            "torque_nm": torque,
            "tool_wear_min": wear,
        },
    }


def scored(client: TestClient, machine: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        twin = client.get(f"/machines/{machine}").json()
        if twin["risk"] is not None or twin["risk_reason"] != "not scored yet":
            return twin
        time.sleep(0.01)
    raise AssertionError(f"{machine} was not scored")


def test_every_machine_with_the_canonical_signals_carries_risk(
    twin: Twin, client: TestClient
) -> None:
    feed(
        twin,
        ("factory/a/ok/status", {"state": "online", "type": "L"}),
        ("factory/a/ok/telemetry", reading(1)),
        ("factory/a/partial/telemetry", {"values": {"torque_nm": 40}}),
    )
    ok = scored(client, "ok")
    risk = ok["risk"]
    assert 0 <= risk["probability"] <= 1
    assert risk["model_version"] == twin.scorer.models()["default"].version
    assert risk["threshold"] == twin.scorer.models()["default"].threshold
    contributions = list(risk["contributions"].values())
    assert contributions == sorted(contributions, key=abs, reverse=True)
    partial = scored(client, "partial")
    assert partial["risk"] is None
    assert partial["risk_reason"].startswith("missing signals: air_temp_k")


def test_min_risk_and_sort_by_risk_list_the_machines_most_likely_to_fail(
    twin: Twin, client: TestClient
) -> None:
    feed(
        twin,
        ("factory/a/calm/telemetry", reading(1)),
        # Power far beyond the fleet's usual band: the model has seen those fail.
        ("factory/a/strained/telemetry", reading(1, wear=230, torque=75, speed=1300)),
    )
    scored(client, "calm")
    scored(client, "strained")
    ranked = client.get("/machines", params={"sort": "-risk"}).json()["items"]
    assert [m["machine"] for m in ranked] == ["strained", "calm"]
    risky = client.get("/machines", params={"min_risk": 0.5}).json()
    assert [m["machine"] for m in risky["items"]] == ["strained"]
    assert client.get("/machines", params={"min_risk": 2}).status_code == 422


def test_model_endpoint_lists_the_active_model_with_metrics(twin: Twin, client: TestClient) -> None:
    body = client.get("/model").json()
    active = body["active"]["default"]
    assert active["metrics"]["cv5"]["average_precision"] > 0.5
    assert active["training_data"]["rows"] == 10_000
    assert body["stored"][0]["version"] == active["version"]


def test_history_from_the_recent_window(twin: Twin, client: TestClient) -> None:
    feed(
        twin,
        (
            "factory/a/m1/telemetry",
            [
                {"ts": NOW - 3000 + i * 1000, "seq": i, "values": {"x": i, "y": 10 + i}}
                for i in range(3)
            ],
        ),
    )
    raw = client.get("/machines/m1/history", params={"signal": "x"}).json()
    assert raw["source"] == "recent"
    assert raw["series"] == {
        "x": [{"ts": NOW - 3000 + i * 1000, "value": float(i)} for i in range(3)]
    }
    both = client.get("/machines/m1/history", params={"signal": ["x", "y"], "start": "-1m"}).json()
    assert set(both["series"]) == {"x", "y"}
    windows = client.get("/machines/m1/history", params={"every": "1h"}).json()["series"]["y"]
    assert sum(1 for _ in windows) in (1, 2)
    assert min(w["min"] for w in windows) == 10.0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"signal": "nope"}, "never sent nope"),
        ({"start": "now", "end": "-1h"}, "start must be before end"),
        ({"start": "yesterday"}, "is not 'now'"),
        ({"start": "2026-01-01T00:00:00"}, "UTC offset"),
        ({"every": "0s"}, "positive"),
        ({"every": "500ms"}, "not a duration"),
        ({"limit": 0}, ""),
    ],
)
def test_bad_history_queries_are_422(
    twin: Twin, client: TestClient, params: dict[str, object], message: str
) -> None:
    feed(twin, ("factory/a/m1/telemetry", {"values": {"x": 1}}))
    response = client.get("/machines/m1/history", params=params)
    assert response.status_code == 422
    assert message in str(response.json()["detail"])


def test_history_of_an_unknown_machine_is_404(client: TestClient) -> None:
    assert client.get("/machines/ghost/history").status_code == 404


def test_metrics_in_prometheus_format(twin: Twin, client: TestClient) -> None:
    feed(
        twin,
        ("factory/a/m1/telemetry", {"seq": 1, "values": {"x": 1}}),
        ("factory/a/m1/telemetry", {"seq": 1, "values": {"x": 1}}),
        ("factory/a/m1/telemetry", b"nope"),
    )
    client.get("/machines")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "twin_readings_applied_total 1.0" in text
    assert "twin_readings_duplicate_total 1.0" in text
    assert 'twin_rejections_total{reason="not_json"} 1.0' in text
    assert "twin_mqtt_connected 0.0" in text
    assert "twin_journal_lag" in text
    assert "twin_scoring_seconds_total" in text
    assert 'twin_api_request_seconds_count{method="GET",route="/machines",status="200"} 1.0' in text


def test_history_with_two_readings_at_the_same_time(twin: Twin, client: TestClient) -> None:
    feed(
        twin,
        (
            "factory/a/m1/telemetry",
            [{"ts": NOW, "seq": 1, "values": {"x": 1}}, {"ts": NOW, "seq": 2, "values": {"x": 2}}],
        ),
    )
    response = client.get("/machines/m1/history", params={"signal": "x"})
    assert response.status_code == 200
    assert [p["value"] for p in response.json()["series"]["x"]] == [1.0, 2.0]


def test_token_roles_and_closed_reads(settings: Settings) -> None:
    secured = settings.model_copy(
        update={"api_tokens": "r:read, o:operate, a:admin, all", "api_read_open": False}
    )
    bearer = lambda token: {"Authorization": f"Bearer {token}"}  # noqa: E731
    with TestClient(create_app(secured)) as client:
        assert client.get("/machines").status_code == 401
        assert client.get("/health").status_code == 200  # liveness stays open
        assert client.get("/machines", headers=bearer("r")).status_code == 200
        assert client.get("/alerts", headers=bearer("o")).status_code == 200
        denied = client.delete("/deadletters", headers=bearer("r"))
        assert denied.status_code == 403
        assert "lacks the 'operate' role" in denied.json()["detail"]
        assert client.delete("/deadletters", headers=bearer("o")).status_code == 200
        assert client.post("/model/train", json={}, headers=bearer("o")).status_code == 403
        # admin passes the door; this fresh twin has no history, so training itself says no
        assert client.post("/model/train", json={}, headers=bearer("a")).status_code == 422
        assert client.delete("/deadletters", headers=bearer("all")).status_code == 200
        assert client.get("/machines", headers=bearer("nope")).status_code == 403


def test_an_unknown_role_is_a_settings_error(settings: Settings) -> None:
    with pytest.raises(ValueError, match="unknown role 'root'"):
        Settings(api_tokens="x:root", data_dir=settings.data_dir)


def test_oversized_request_bodies_are_413(settings: Settings) -> None:
    small = settings.model_copy(update={"max_body_bytes": 2048})
    with TestClient(create_app(small)) as client:
        body = {"tasks": [{"id": f"t{i}", "duration_min": 5} for i in range(200)]}
        response = client.post("/allocations", json=body)
        assert response.status_code == 413
        assert "over 2048 bytes" in response.json()["detail"]


def test_cors_is_off_by_default_and_configurable(settings: Settings) -> None:
    preflight = {
        "Origin": "https://grafana.example",
        "Access-Control-Request-Method": "GET",
    }
    with TestClient(create_app(settings)) as client:
        response = client.options("/machines", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    allowed = settings.model_copy(update={"cors_origins": "https://grafana.example"})
    with TestClient(create_app(allowed)) as client:
        response = client.options("/machines", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://grafana.example"
