"""Maintenance planned from predicted risk: the MILP, its baselines, and accepted windows that
raise their alert, close on the machine's maintenance event, block allocations and persist."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import TOKEN, feed_pipeline
from tests.services import wait_until
from twin.app import create_app
from twin.config import Settings
from twin.planning.maintenance import Action, Costs, MachinePath, plan
from twin.service import Twin

HOUR = 60.0


def test_two_machines_one_crew_the_optimum_by_hand() -> None:
    """Six one-hour slots of work, a one-hour service, failure 1000, service 100, no downtime
    cost. A service delays the work: the six slots of work still run, after it.

    A fails with 0.1, 0.1, then 0.3 an hour (1.4 in all: 1400); serviced, 0.01 an hour: its
    renewal rate is min over T of (10 T + 100) / T = 160 / 6 (T = 6) a slot of work.
    B fails with 0.2 an hour (1.2: 1200); serviced, never: 100 / 6 a slot.
    Decided with the renewal tail:  A at 0: 100 + 6 x 160/6 = 260;  A at 1: 333.33;
                                    B at 0: 100 + 6 x 100/6 = 200;  B at 1: 383.33.
    One crew: A@0 + B@1 = 643.33, B@0 + A@1 = 533.33 (the optimum); two crews: A@0 + B@0.
    Costed over the work: B@0 = 100 and A@1 = 100 + 100 + 5 x 10 = 250, so 350.
    """
    paths = [
        MachinePath(
            "A",
            "s1",
            np.array([0.1, 0.1, 0.3, 0.3, 0.3, 0.3]),
            {"tool_change": np.full(6, 0.01)},
            0,
        ),
        MachinePath("B", "s1", np.full(6, 0.2), {"tool_change": np.zeros(6)}, 0),
    ]
    actions = [Action("tool_change", 60)]
    costs = Costs(failure=1000, maintenance=100, downtime_per_h=0)
    one = plan(paths, actions, costs, crews=1, step_min=HOUR, interval_min=180)
    assert [(w["machine"], w["start_min"], w["end_min"]) for w in one["windows"]] == [
        ("B", 0, 60),
        ("A", 60, 120),
    ]
    assert one["objective"]["total"] == pytest.approx(350)
    assert one["objective"]["expected_failures"] == pytest.approx(0.15)
    assert one["solver"]["optimal"] is True
    a = next(w for w in one["windows"] if w["machine"] == "A")
    assert a["reason"]["risk_before"] == pytest.approx(0.1)
    assert a["reason"]["risk_after"] == pytest.approx(0.01)
    assert a["reason"]["expected_cost_avoided"] == pytest.approx(1400 - 250)
    # Baselines in the same call: nothing (2600), and a service every 3 h of operation (both
    # due at 3 h, one crew: A at 3 = 500 + 100 + 3 x 10 = 630, B at 4 = 800 + 100 = 900).
    assert one["baselines"]["run_to_failure"]["total"] == pytest.approx(2600)
    assert one["baselines"]["fixed_interval"]["total"] == pytest.approx(1530)
    assert one["objective"]["saving_vs_best_baseline"] == pytest.approx(1180)

    two = plan(paths, actions, costs, crews=2, step_min=HOUR, interval_min=180)
    assert {(w["machine"], w["start_min"]) for w in two["windows"]} == {("A", 0), ("B", 0)}
    assert two["objective"]["total"] == pytest.approx(260)


def test_a_fixed_interval_services_again_within_the_horizon() -> None:
    path = MachinePath("A", "s1", np.full(12, 0.01), {"tool_change": np.zeros(12)}, 50)
    result = plan([path], [Action("tool_change", 60)], Costs(1000, 0, 0), 1, HOUR, 180)
    # Due after 130 more minutes (slot 3), then every 3 h after each service ends.
    assert result["baselines"]["fixed_interval"]["actions"] == 3  # at 3, 7 and 11


def test_downtime_can_make_a_service_not_worth_it() -> None:
    path = MachinePath("A", "s1", np.full(4, 0.01), {"tool_change": np.zeros(4)}, 0)
    costs = Costs(failure=1000, maintenance=10, downtime_per_h=100)  # 40 avoided, 110 spent
    result = plan([path], [Action("tool_change", 60)], costs, 1, HOUR, 60)
    assert result["windows"] == []
    assert result["objective"]["total"] == pytest.approx(40)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 3),
    st.integers(2, 12),
    st.lists(st.integers(1, 4), min_size=1, max_size=2),
    st.randoms(use_true_random=False),
)
def test_crew_capacity_is_never_exceeded(
    machines: int, crews: int, slots: int, durations: list[int], rng: Any
) -> None:
    paths = []
    for m in range(machines):
        # Non-decreasing, as the process model makes its paths: then a fresh start (a scaled
        # copy of the path from its beginning) is never worse than the rest of the old one.
        base = np.sort([rng.uniform(0, 0.5) for _ in range(slots)])
        after = {f"a{i}": base * rng.uniform(0, 0.5) for i in range(len(durations))}
        paths.append(MachinePath(f"m{m}", "s1", base, after, rng.uniform(0, 300)))
    actions = [Action(f"a{i}", d * 10.0) for i, d in enumerate(durations)]
    costs = Costs(
        failure=rng.uniform(100, 10_000),
        maintenance=rng.uniform(0, 500),
        downtime_per_h=rng.uniform(0, 500),
    )
    result = plan(paths, actions, costs, crews, 10.0, rng.uniform(10, 200))
    busy = np.zeros(slots, dtype=int)
    for w in result["windows"]:
        assert 0 <= w["start_min"] < w["end_min"] <= slots * 10
        busy[int(w["start_min"] // 10) : int(w["end_min"] // 10)] += 1
    assert (busy <= crews).all()
    assert len({w["machine"] for w in result["windows"]}) == len(result["windows"])
    for w in result["windows"]:
        assert w["reason"]["expected_failures_avoided"] >= -1e-9  # never a service that adds


# -- through the API, against a live twin ----------------------------------------------------


def machine(twin: Twin, name: str, wear: float) -> None:
    now = int(time.time() * 1000)
    values = {
        "air_temp_k": 300.0,
        "process_temp_k": 310.0,
        "rotational_speed_rpm": 1500.0,
        "torque_nm": 40.0,
        "tool_wear_min": wear,
    }
    feed_pipeline(
        twin,
        (f"factory/s1/{name}/status", {"state": "online", "type": "L", "ts": now - 1000}),
        (f"factory/s1/{name}/telemetry", {"seq": 1, "ts": now - 500, "values": values}),
    )
    wait_until(lambda: (twin.state.get(name) or {}).get("risk") is not None, 10, f"{name} scored")


PLAN = {
    "horizon": "4h",
    "step": "10m",
    "crews": 1,
    "actions": [{"name": "tool_change", "duration_min": 30}],
    "costs": {"failure": 10_000, "maintenance": 200, "downtime_per_h": 300},
}


def test_a_plan_accepted_blocks_allocations_raises_and_closes_its_alert_and_persists(
    twin: Twin, client: TestClient, settings: Settings
) -> None:
    machine(twin, "worn", 215)
    machine(twin, "fresh", 5)
    planned = client.post("/maintenance/plans", json={**PLAN, "horizon": "2h"}, headers=TOKEN)
    assert planned.status_code == 200, planned.text
    body = planned.json()
    (window,) = body["windows"]  # the worn tool now; the fresh one lasts the two hours
    assert (window["machine"], window["action"], window["start_min"]) == ("worn", "tool_change", 0)
    assert window["end_min"] == 30
    assert window["reason"]["expected_cost_avoided"] > 0
    assert body["objective"]["total"] < body["baselines"]["run_to_failure"]["total"]
    assert body["machines"] == ["fresh", "worn"]
    assert client.get(f"/maintenance/plans/{body['id']}").json()["windows"] == body["windows"]
    assert client.get("/maintenance").json()["items"] == []  # proposed, not scheduled

    accepted = client.post(f"/maintenance/plans/{body['id']}/accept", headers=TOKEN)
    assert accepted.status_code == 200, accepted.text
    assert client.post(f"/maintenance/plans/{body['id']}/accept", headers=TOKEN).status_code == 409

    # The window has started: its alert is raised, and allocations keep the machine free.
    def alert() -> dict[str, Any] | None:
        found = client.get("/alerts", params={"machine": "worn", "state": "active"}).json()
        return next((a for a in found["items"] if a["rule"] == "maintenance_due"), None)

    wait_until(lambda: alert() is not None, 10, "the maintenance_due alert")
    assert "tool_change due" in alert()["message"]  # type: ignore[index]
    (item,) = client.get("/maintenance", params={"machine": "worn"}).json()["items"]
    assert item["state"] == "due"
    tasks = {"tasks": [{"id": f"t{i}", "duration_min": 20} for i in range(4)], "max_risk": 1}
    allocation = client.post("/allocations", json=tasks, headers=TOKEN).json()
    for a in allocation["assignments"]:
        if a["machine"] == "worn":
            assert a["start_min"] >= 29  # after the window's end (less the seconds gone by)

    # The machine reports the service: the window is done and the alert clears.
    done = {"type": "maintenance", "code": "tool_change", "ts": int(time.time() * 1000)}
    feed_pipeline(twin, ("factory/s1/worn/event", done))
    wait_until(lambda: alert() is None, 10, "the alert cleared")
    (item,) = client.get("/maintenance", params={"machine": "worn"}).json()["items"]
    assert item["state"] == "done"
    assert item["done_at"] == done["ts"]

    # Kept across a restart.
    twin.stop()
    again = Twin(twin.settings)
    with TestClient(create_app(again.settings, again)) as restarted:
        (kept,) = restarted.get("/maintenance").json()["items"]
        assert kept == item
        assert restarted.get(f"/maintenance/plans/{body['id']}").json()["accepted_at"]


def test_a_window_blocks_allocations_until_it_ends(twin: Twin, client: TestClient) -> None:
    machine(twin, "only", 215)
    body = client.post(
        "/maintenance/plans", json={**PLAN, "machines": ["only"]}, headers=TOKEN
    ).json()
    client.post(f"/maintenance/plans/{body['id']}/accept", headers=TOKEN)
    one = {"tasks": [{"id": "t", "duration_min": 20}], "max_risk": 1, "horizon_min": 20}
    allocation = client.post("/allocations", json=one, headers=TOKEN).json()
    assert allocation["assignments"] == []
    (excluded,) = allocation["excluded"]
    assert excluded["reason"].startswith("maintenance window")
    later = {**one, "horizon_min": 120}
    (assignment,) = client.post("/allocations", json=later, headers=TOKEN).json()["assignments"]
    assert assignment["start_min"] >= 29


def test_a_later_plan_supersedes_windows_that_have_not_started(
    twin: Twin, client: TestClient
) -> None:
    machine(twin, "m", 120)
    base = {**PLAN, "horizon": "8h", "machines": ["m"]}
    first = client.post("/maintenance/plans", json=base, headers=TOKEN).json()
    assert first["windows"]
    assert first["windows"][0]["start_min"] > 0
    client.post(f"/maintenance/plans/{first['id']}/accept", headers=TOKEN)
    second = client.post("/maintenance/plans", json=base, headers=TOKEN).json()
    client.post(f"/maintenance/plans/{second['id']}/accept", headers=TOKEN)
    states = [w["state"] for w in client.get("/maintenance").json()["items"]]
    assert sorted(states) == ["scheduled", "superseded"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"horizon": "soon"}, 422),
        ({"crews": 0}, 422),
        ({"actions": []}, 422),
        ({"actions": [{"name": "polish", "duration_min": 30}], "machines": ["m"]}, 422),
        ({"costs": {"failure": -1, "maintenance": 0, "downtime_per_h": 0}}, 422),
        ({"machines": ["nobody"]}, 422),
        ({"horizon": "1h", "step": "2h"}, 422),
    ],
)
def test_bad_plan_requests(
    twin: Twin, client: TestClient, body: dict[str, Any], status: int
) -> None:
    machine(twin, "m", 10)
    response = client.post("/maintenance/plans", json={**PLAN, **body}, headers=TOKEN)
    assert response.status_code == status, response.text


def test_plans_need_a_token_and_unknown_plans_are_404(client: TestClient) -> None:
    assert client.post("/maintenance/plans", json=PLAN).status_code == 401
    assert client.get("/maintenance/plans/99").status_code == 404
    assert client.post("/maintenance/plans/99/accept", headers=TOKEN).status_code == 404
