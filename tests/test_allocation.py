"""Allocation and planning: known optima, the rules of eligibility, the API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.conftest import feed_pipeline
from tests.services import wait_until
from twin.app import create_app
from twin.config import Settings
from twin.planning import Demand, Machine, Site, Task, allocate, plan
from twin.service import Twin


def test_plan_finds_the_known_optimum_with_shadow_prices() -> None:
    result = plan(
        [Site("A", 10, 5), Site("B", 15, 3), Site("C", 20, 2)],
        [Demand("d1", 20, 20), Demand("d2", 30, 30)],
        {},
    )
    assert result["total_cost"] == pytest.approx(235)
    assert result["shortfalls"] == [{"demand": "d1", "quantity": 5.0}]
    capacity = {c["site"]: c for c in result["capacities"]}
    assert all(c["binding"] for c in capacity.values())
    # One more unit at A saves a shortfall of d1 (20) for A's unit cost (5).
    assert capacity["A"]["shadow_price"] == pytest.approx(15)


def test_plan_with_transport_costs_and_spare_capacity() -> None:
    # Two sites, one demand of 10: A costs 1 + 9 to ship, B costs 4 + 1. B is cheaper: 50.
    result = plan(
        [Site("A", 100, 1), Site("B", 100, 4)],
        [Demand("d", 10, 1000)],
        {("A", "d"): 9, ("B", "d"): 1},
    )
    assert result["total_cost"] == pytest.approx(50)
    assert result["quantities"] == [{"site": "B", "demand": "d", "quantity": 10.0}]
    assert not any(c["binding"] for c in result["capacities"])
    assert all(c["shadow_price"] == 0 for c in result["capacities"])


def test_allocation_balances_load_and_avoids_risk() -> None:
    machines = [Machine("a", "s", "L", True, 0.01), Machine("b", "s", "L", True, 0.3)]
    tasks = [Task(f"t{i}", 60) for i in range(4)]
    result = allocate(tasks, machines, horizon_min=480, max_risk=0.5)
    loads: dict[str, float] = {}
    for a in result.assignments:
        loads[a["machine"]] = loads.get(a["machine"], 0) + 60
    assert result.solver["optimal"] is True
    assert loads == {"a": 120, "b": 120}  # makespan dominates a little risk
    assert result.objective["makespan_min"] == 120


def test_tasks_that_cannot_fit_come_back_with_reasons() -> None:
    machines = [Machine("a", "s", "L", True, 0.01), Machine("h", "s", "H", False, 0.01)]
    tasks = [
        Task("big", 500),
        Task("typed", 10, machine_type="H"),
        Task("t1", 300),
        Task("t2", 300),
    ]
    result = allocate(tasks, machines, horizon_min=480, max_risk=0.5)
    reasons = {u["task"]: u["reason"] for u in result.unassigned}
    assert reasons["big"] == "longer (500 min) than the horizon (480 min)"
    assert reasons["typed"] == "no usable machine of type H"
    assert len([t for t in ("t1", "t2") if t in reasons]) == 1
    assert "no capacity left" in next(r for t, r in reasons.items() if t in ("t1", "t2"))
    assert result.excluded == [{"machine": "h", "site": "s", "reason": "offline"}]


def test_large_instances_use_the_greedy_heuristic_and_say_so() -> None:
    machines = [Machine(f"m{i}", "s", "L", True, 0.01 * (i % 5)) for i in range(50)]
    tasks = [Task(f"t{i}", 10 + i % 30, due_min=100 + i) for i in range(500)]
    result = allocate(tasks, machines, horizon_min=480, max_risk=0.5)
    assert result.solver["name"] == "greedy"
    assert result.solver["pairs"] > 2_000
    assert result.objective["assigned"] == 500


machine_strategy = st.builds(
    Machine,
    machine=st.sampled_from([f"m{i}" for i in range(8)]),
    site=st.sampled_from(["s1", "s2"]),
    type=st.sampled_from(["L", "M", "H", None]),
    online=st.sampled_from([True, False, None]),
    risk=st.one_of(st.none(), st.floats(0, 1)),
)
task_strategy = st.builds(
    Task,
    id=st.uuids().map(str),
    duration_min=st.floats(1, 300),
    machine_type=st.sampled_from(["L", "M", "H", None]),
    site=st.sampled_from(["s1", "s2", None]),
    due_min=st.one_of(st.none(), st.floats(0, 500)),
    priority=st.floats(0.1, 5),
)


@hsettings(max_examples=60, deadline=None)
@given(
    machines=st.lists(machine_strategy, max_size=8, unique_by=lambda m: m.machine),
    tasks=st.lists(task_strategy, min_size=1, max_size=12, unique_by=lambda t: t.id),
    max_risk=st.floats(0, 1),
)
def test_allocation_never_uses_offline_risky_or_wrong_machines(
    machines: list[Machine], tasks: list[Task], max_risk: float
) -> None:
    result = allocate(tasks, machines, horizon_min=480, max_risk=max_risk)
    by_name = {m.machine: m for m in machines}
    by_task = {t.id: t for t in tasks}
    loads: dict[str, float] = {}
    for a in result.assignments:
        m, t = by_name[a["machine"]], by_task[a["task"]]
        assert m.online is True
        assert m.risk is not None
        assert m.risk <= max_risk
        assert t.machine_type is None or m.type == t.machine_type
        assert t.site is None or m.site == t.site
        assert a["end_min"] <= 480 + 1e-6
        loads[m.machine] = loads.get(m.machine, 0) + t.duration_min
    assert all(load <= 480 + 1e-6 for load in loads.values())
    assert {a["task"] for a in result.assignments} | {u["task"] for u in result.unassigned} == set(
        by_task
    )
    assert (
        allocate(tasks, machines, horizon_min=480, max_risk=max_risk).assignments
        == result.assignments
    )


TOKEN = {"Authorization": "Bearer op"}
SIGNALS = {
    "air_temp_k": 300.0,
    "process_temp_k": 310.0,
    "rotational_speed_rpm": 1500,
    "torque_nm": 40.0,
    "tool_wear_min": 20,
}


@pytest.fixture
def client(settings: Settings) -> Iterator[tuple[Twin, TestClient]]:
    config = settings.model_copy(update={"api_tokens": "op"})
    twin = Twin(config)
    with TestClient(create_app(config, twin)) as client:
        yield twin, client


def machine(twin: Twin, name: str, kind: str, site: str = "s1", **values: float) -> None:
    feed_pipeline(
        twin,
        (f"factory/{site}/{name}/status", {"state": "online", "type": kind}),
        (f"factory/{site}/{name}/telemetry", {"seq": 1, "values": {**SIGNALS, **values}}),
    )


def test_allocation_api_respects_health_and_types_and_replans_on_alerts(
    client: tuple[Twin, TestClient],
) -> None:
    twin, api = client
    machine(twin, "calm-h", "H")
    machine(twin, "calm-l", "L")
    machine(twin, "failing", "L", torque_nm=75, rotational_speed_rpm=1300, tool_wear_min=230)
    wait_until(lambda: all(t.risk for t in twin.state.twins()), 10, "scoring")
    body = {
        "tasks": [
            {"id": "order-1", "duration_min": 60, "machine_type": "H"},
            {"id": "j2", "duration_min": 30},
        ]
    }
    assert api.post("/allocations", json=body).status_code == 401
    response = api.post("/allocations", json=body, headers=TOKEN)
    assert response.status_code == 200, response.text
    allocation = response.json()
    placed = {a["task"]: a["machine"] for a in allocation["assignments"]}
    assert placed["order-1"] == "calm-h"
    assert "failing" not in placed.values()
    failing = next(x for x in allocation["excluded"] if x["machine"] == "failing")
    assert "above the limit" in failing["reason"]
    assert failing["contributions"]
    assert allocation["solver"]["optimal"] is True

    # The machine holding j2 goes offline: the allocation is affected, and replanning moves j2.
    holder = placed["j2"]
    feed_pipeline(twin, (f"factory/s1/{holder}/status", {"state": "offline", "type": "?"}))
    wait_until(
        lambda: api.get(f"/allocations/{allocation['id']}").json()["affected"], 10, "affected"
    )
    replanned = api.post(f"/allocations/{allocation['id']}/replan", headers=TOKEN).json()
    moved = {m["task"]: (m["from"], m["to"]) for m in replanned["moves"]}
    assert moved["j2"][0] == holder
    assert moved["j2"][1] not in (holder, "failing")
    assert replanned["affected"] == []
    assert api.get("/allocations/99").status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"tasks": []},
        {"tasks": [{"id": "a", "duration_min": -5}]},
        {"tasks": [{"id": "a", "duration_min": 5, "machine_type": "Z"}]},
        {"tasks": [{"id": "a", "duration_min": 5}, {"id": "a", "duration_min": 6}]},
        {"tasks": [{"id": "a", "duration_min": 5}], "max_risk": 2},
        {"tasks": [{"id": "a", "duration_min": 5}], "max_risk": False},  # not a number
    ],
)
def test_bad_allocation_requests_are_422(
    client: tuple[Twin, TestClient], body: dict[str, Any]
) -> None:
    twin, api = client
    machine(twin, "m1", "L")
    response = api.post("/allocations", json=body, headers=TOKEN)
    assert response.status_code == 422
    assert response.json()["detail"]


def test_plans_api_returns_the_optimum_and_derives_capacity_from_healthy_machines(
    client: tuple[Twin, TestClient],
) -> None:
    twin, api = client
    body = {
        "sites": [
            {"name": "A", "capacity": 10, "unit_cost": 5},
            {"name": "B", "capacity": 15, "unit_cost": 3},
            {"name": "C", "capacity": 20, "unit_cost": 2},
        ],
        "demands": [
            {"id": "d1", "quantity": 20, "shortfall_cost": 20},
            {"id": "d2", "quantity": 30, "shortfall_cost": 30},
        ],
    }
    assert api.post("/plans", json=body).status_code == 401
    result = api.post("/plans", json=body, headers=TOKEN).json()
    assert result["total_cost"] == pytest.approx(235)
    machine(twin, "m1", "L", site="s9")
    wait_until(lambda: all(t.risk for t in twin.state.twins()), 10, "scoring")
    derived = api.post(
        "/plans",
        json={
            "sites": [{"name": "s9", "unit_cost": 1}],
            "demands": [{"id": "d", "quantity": 5, "shortfall_cost": 10}],
            "capacity_per_machine": 2,
        },
        headers=TOKEN,
    ).json()
    assert derived["capacities"][0]["capacity"] == 2
    assert derived["total_cost"] == pytest.approx(2 * 1 + 3 * 10)
    bad = api.post(
        "/plans",
        json={**body, "transport": [{"site": "X", "demand": "d1", "cost": 1}]},
        headers=TOKEN,
    )
    assert bad.status_code == 422


SITE = {"name": "A", "capacity": 10, "unit_cost": 5}
DEMAND = {"id": "d1", "quantity": 20, "shortfall_cost": 20}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"sites": [SITE, SITE], "demands": [DEMAND]}, "site names must be unique"),
        ({"sites": [SITE], "demands": [DEMAND, DEMAND]}, "demand ids must be unique"),
        (
            {
                "sites": [{**SITE, "name": f"s{i}"} for i in range(11)],
                "demands": [{**DEMAND, "id": f"d{i}"} for i in range(10_000)],
            },
            "11 sites x 10000 demands = 110000 pairs; a plan takes at most 100000",
        ),
        ({"sites": [SITE], "demands": [DEMAND], "capacity_per_machine": False}, "number"),
    ],
)
def test_bad_plan_requests_are_422_with_the_reason(
    client: tuple[Twin, TestClient], body: dict[str, Any], reason: str
) -> None:
    _, api = client
    response = api.post("/plans", json=body, headers=TOKEN)
    assert response.status_code == 422
    assert reason in str(response.json()["detail"])


def test_a_risk_alert_on_a_machine_with_work_marks_its_allocation_and_replan_moves_it(
    client: tuple[Twin, TestClient],
) -> None:
    twin, api = client
    machine(twin, "a", "L")
    machine(twin, "b", "L")
    wait_until(lambda: all(t.risk for t in twin.state.twins()), 10, "scoring")
    body = {"tasks": [{"id": "j1", "duration_min": 60}]}
    allocation = api.post("/allocations", json=body, headers=TOKEN).json()
    holder = allocation["assignments"][0]["machine"]
    # The holder drifts into failure conditions: its risk alert marks the allocation.
    feed_pipeline(
        twin,
        (
            f"factory/s1/{holder}/telemetry",
            {
                "seq": 2,
                "values": {
                    **SIGNALS,
                    "torque_nm": 75,
                    "rotational_speed_rpm": 1300,
                    "tool_wear_min": 230,
                },
            },
        ),
    )
    wait_until(
        lambda: api.get(f"/allocations/{allocation['id']}").json()["affected"], 10, "affected"
    )
    affected = api.get(f"/allocations/{allocation['id']}").json()["affected"]
    assert affected[0]["machine"] == holder
    assert affected[0]["rule"] == "failure_risk"
    moved = api.post(f"/allocations/{allocation['id']}/replan", headers=TOKEN).json()["moves"]
    assert moved == [{"task": "j1", "from": holder, "to": "b" if holder == "a" else "a"}]
