"""Personalised orders: the catalogue, schemes and quotes against the live fleet."""

from __future__ import annotations

import json
import math
import time
import urllib.request
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from devices.fleet import Fleet, FleetOptions
from tests.conftest import TOKEN, feed_pipeline
from tests.services import Mosquitto, TwinProcess, wait_until
from twin.app import create_app
from twin.config import BrokerAddress, Settings
from twin.errors import ConfigError, InvalidRequest
from twin.orders import load_catalogue
from twin.orders.quote import configure, promise_of
from twin.planning import Machine
from twin.planning.routing import Step, schedule
from twin.service import Twin
from twin.topics import Topics

CATALOGUE = """\
[[products]]
id = "plate"
name = "Plate"
price_per_unit = 10.0

[[products.operations]]
name = "cut"
machine_type = "L"
minutes_per_unit = 2.0
setup_min = 10

[[products.operations]]
name = "drill"
machine_type = "M"
minutes_per_unit = 1.0
setup_min = 5

[products.options.holes]
values = ["4", "8"]
default = "4"

[products.options.holes.effects.8]
price_per_unit = 1.0
scale = { drill = 2.0 }

[products.options.finish]
values = ["raw", "polished"]
default = "raw"

[products.options.finish.effects.polished]
price = 25.0
operations = [{ name = "polish", machine_type = "L", minutes_per_unit = 0.5, after = "cut" }]

[products.options.label]
pattern = "[A-Z]+"
max_length = 6
default = ""

[products.options.label.effect]
price_per_unit = 0.5

[[products.rules]]
forbid = { holes = "8", finish = "polished" }
reason = "polishing tears eight holes"
"""


def machine(name: str, type_: str, site: str = "s1", **kw: Any) -> Machine:
    return Machine(name, site, type_, kw.pop("online", True), kw.pop("risk", 0.01), **kw)


@pytest.fixture
def catalogue_file(tmp_path: Path) -> Path:
    path = tmp_path / "catalogue.toml"
    path.write_text(CATALOGUE)
    return path


def test_the_bundled_catalogue_loads_with_two_configurable_products() -> None:
    products = load_catalogue(None).products
    assert [p.id for p in products] == ["bracket", "shaft"]
    for product in products:
        assert len(product.options) >= 2
        assert any(o.values for o in product.options.values())
        assert any(o.pattern for o in product.options.values())
        assert product.rules


@pytest.mark.parametrize(
    ("change", "line", "error"),
    [
        (
            ('default = "4"', 'default = "6"'),
            20,
            "products[0].options.holes.default: '6': not one of 4, 8",
        ),
        (
            ("scale = { drill = 2.0 }", "scale = { grind = 2.0 }"),
            24,
            "products[0].options.holes.effects.8.scale.grind: no operation grind "
            "(the routing has cut, drill)",
        ),
        (
            ('after = "cut"', 'after = "weld"'),
            32,
            "products[0].options.finish.effects.polished.operations[0].after: no operation weld",
        ),
        (('name = "polish"', 'name = "drill"'), 32, "operations[0].name: drill is taken"),
        (("max_length = 6\n", ""), 34, "a free-text option needs `max_length`"),
        (('pattern = "[A-Z]+"', 'pattern = "[A-Z"'), 34, "not a regular expression"),
        (
            ('finish = "polished" }', 'finish = "matt" }'),
            43,
            "products[0].rules[0].forbid.finish: 'matt': not one of raw, polished",
        ),
        (
            ("minutes_per_unit = 1.0", "minutes_per_unit = -1.0"),
            15,
            "products[0].operations[1].minutes_per_unit: Input should be greater than or equal",
        ),
        (('id = "plate"', 'id = "a plate"'), 2, "products[0].id: String should match"),
        (("setup_min = 5", "setup_mins = 5"), 16, "setup_mins: Extra inputs"),
    ],
)
def test_a_bad_catalogue_names_the_file_the_line_and_the_reason(
    tmp_path: Path, change: tuple[str, str], line: int, error: str
) -> None:
    assert change[0] in CATALOGUE
    path = tmp_path / "catalogue.toml"
    path.write_text(CATALOGUE.replace(*change, 1))
    with pytest.raises(ConfigError) as refused:
        load_catalogue(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: line {line}: "), message
    assert error in message, message


def test_a_bad_catalogue_stops_start_up(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "catalogue.toml"
    path.write_text("[[products]]\nid = 'x'\n")
    with pytest.raises(ConfigError, match=r"catalogue.toml: line 1: products\[0\].name: Field"):
        Twin(settings.model_copy(update={"catalogue": path}))


def test_a_scheme_takes_defaults_and_applies_every_choice(catalogue_file: Path) -> None:
    catalogue = load_catalogue(catalogue_file)
    plain = configure(catalogue, "plate", {}, 10)
    assert plain.options == {"holes": "4", "finish": "raw", "label": ""}
    assert [(s.name, s.duration_min) for s in plain.steps] == [("cut", 30.0), ("drill", 15.0)]
    assert plain.public()["price"] == {
        "per_unit": 10.0,
        "once": 0.0,
        "total": 100.0,
        "currency": "EUR",
    }
    eight = configure(catalogue, "plate", {"holes": "8", "label": "AB"}, 10)
    assert [(s.name, s.duration_min) for s in eight.steps] == [("cut", 30.0), ("drill", 25.0)]
    assert eight.public()["price"]["total"] == 10 * (10 + 1 + 0.5)
    polished = configure(catalogue, "plate", {"finish": "polished"}, 4)
    assert [(s.name, s.duration_min) for s in polished.steps] == [
        ("cut", 18.0),
        ("polish", 2.0),
        ("drill", 9.0),
    ]
    assert polished.public()["price"]["total"] == 4 * 10 + 25


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"colour": "red"}, "plate has no option colour (it has holes, finish, label)"),
        ({"holes": "6"}, "option holes = '6': not one of 4, 8"),
        ({"label": "abc"}, "option label = 'abc': does not match [A-Z]+"),
        ({"label": "ABCDEFG"}, "option label = 'ABCDEFG': longer than 6 characters"),
        (
            {"holes": "8", "finish": "polished"},
            "holes = 8, finish = polished cannot be combined: polishing tears eight holes",
        ),
    ],
)
def test_an_invalid_option_or_combination_is_named(
    catalogue_file: Path, options: dict[str, str], error: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        configure(load_catalogue(catalogue_file), "plate", options, 1)
    assert str(refused.value) == error


def test_operations_follow_the_routing_across_sites_work_and_windows(
    catalogue_file: Path,
) -> None:
    """Computed by hand: cut 30 min, drill 15 min (10 units)."""
    steps = configure(load_catalogue(catalogue_file), "plate", {}, 10).steps
    # One site, free machines: cut 0-30, drill 30-45.
    got = schedule(steps, [machine("L1", "L"), machine("M1", "M")], 60)
    assert not isinstance(got, str)
    assert [(b.machine.machine, b.start_min, b.end_min) for b in got] == [
        ("L1", 0, 30),
        ("M1", 30, 45),
    ]
    # The driller elsewhere: 60 min of transfer before it starts.
    got = schedule(steps, [machine("L1", "L"), machine("M1", "M", site="s2")], 60)
    assert not isinstance(got, str)
    assert [(b.start_min, b.end_min, b.transfer_min) for b in got] == [(0, 30, 0), (90, 105, 60)]
    # The cutter busy for 20 min, the driller's window 35-50: cut 20-50, drill after the window.
    fleet = [machine("L1", "L", load_min=20), machine("M1", "M", maintenance=(35, 50))]
    got = schedule(steps, fleet, 60)
    assert not isinstance(got, str)
    assert [(b.start_min, b.end_min) for b in got] == [(20, 50), (50, 65)]
    # A window that ends before the work could start is no obstacle; one it would cross is.
    fleet = [machine("L1", "L"), machine("M1", "M", maintenance=(0, 10))]
    got = schedule(steps, fleet, 60)
    assert not isinstance(got, str)
    assert got[1].start_min == 30
    # Two cutters: the one that ends first (the free one), whatever its name.
    fleet = [machine("L1", "L", load_min=40), machine("L2", "L"), machine("M1", "M")]
    got = schedule(steps, fleet, 60)
    assert not isinstance(got, str)
    assert got[0].machine.machine == "L2"
    assert schedule(steps, [machine("L1", "L")], 60) == (
        "no usable machine (type M) for operation drill"
    )


def test_the_chance_of_finishing_on_time_is_a_poisson_count_of_failures_within_the_slack(
    catalogue_file: Path,
) -> None:
    steps = configure(load_catalogue(catalogue_file), "plate", {}, 10).steps
    bookings = schedule(steps, [machine("L1", "L"), machine("M1", "M")], 60)
    assert not isinstance(bookings, str)

    def hazard(m: str, start: float, end: float) -> float:  # 0.01 expected failures a minute
        return 0.01 * (end - start)

    now = 1_700_000_000_000
    # 45 min of work, 0.45 expected failures; due at 120 min: 75 min of slack, one repair of 60.
    got = promise_of(bookings, hazard, now, 120.0, 60.0)
    assert got["completion_min"] == 45
    assert got["expected_failures"] == pytest.approx(0.45)
    assert got["p_on_time"] == pytest.approx(math.exp(-0.45) * 1.45, abs=1e-4)
    assert got["p_no_failure"] == pytest.approx(math.exp(-0.45), abs=1e-4)
    assert got["on_time"] is True
    assert datetime.fromisoformat(got["completion"]).timestamp() * 1000 == now + 45 * 60_000
    late = promise_of(bookings, hazard, now, 40.0, 60.0)
    assert late["on_time"] is False
    assert late["p_on_time"] == 0.0
    assert promise_of(bookings, hazard, now, None, 60.0)["p_on_time"] is None


# Through the API, on a twin with a live fleet.

NOW = int(time.time() * 1000)


def reading(name: str, seq: int, **values: float) -> tuple[str, dict[str, Any]]:
    body = {
        "air_temp_k": 300.0,
        "process_temp_k": 310.0,
        "rotational_speed_rpm": 1500.0,
        "torque_nm": 40.0,
        "tool_wear_min": 20.0,
        **values,
    }
    return (f"factory/s1/{name}/telemetry", {"seq": seq, "ts": NOW - 60_000 + seq, "values": body})


def status(name: str, type_: str, state: str = "online") -> tuple[str, dict[str, Any]]:
    return (f"factory/s1/{name}/status", {"state": state, "type": type_, "ts": NOW - 120_000})


@pytest.fixture
def fleet_client(settings: Settings, catalogue_file: Path) -> Any:
    twin = Twin(settings.model_copy(update={"api_tokens": "t0k", "catalogue": catalogue_file}))
    with TestClient(create_app(twin.settings, twin)) as client:
        feed_pipeline(
            twin,
            status("L1", "L"),
            status("L2", "L"),
            status("M1", "M"),
            status("M2", "M", "offline"),
            reading("L1", 1),
            reading("L2", 1, tool_wear_min=240, torque_nm=70),  # overstrained: over the limit
            reading("M1", 1),
            reading("M2", 1),
        )

        def scored() -> bool:
            return all((twin.state.get(m) or {}).get("risk") for m in ("L1", "L2", "M1", "M2"))

        wait_until(scored, 10, "the fleet scored")
        yield client


def test_a_quote_promises_a_date_on_the_healthy_online_machines(fleet_client: TestClient) -> None:
    due = datetime.fromtimestamp(time.time() + 3 * 3600).astimezone().isoformat()
    body = {
        "product": "plate",
        "options": {"holes": "8"},
        "quantity": 10,
        "due": due,
        "customer": "ACME",
    }
    answer = fleet_client.post("/orders/quote", json=body)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["options"] == {"holes": "8", "finish": "raw", "label": ""}
    assert got["scheme"]["price"]["total"] == 110.0
    assert got["scheme"]["work_min"] == 55.0
    promise = got["promise"]
    assert [
        (o["operation"], o["machine"], o["start_min"], o["end_min"]) for o in promise["operations"]
    ] == [("cut", "L1", 0, 30), ("drill", "M1", 30, 55)]
    assert promise["completion_min"] == 55
    assert promise["on_time"] is True
    assert 0 < promise["p_on_time"] <= 1
    assert promise["expected_failures"] > 0
    reasons = {x["machine"]: x["reason"] for x in got["excluded"]}
    assert reasons["M2"] == "offline"
    assert reasons["L2"].startswith("risk ")
    assert [a["kind"] for a in got["alternatives"]] == ["split"]
    # Deterministic: the same request on the same fleet.
    again = fleet_client.post("/orders/quote", json=body).json()
    assert again["promise"]["operations"] == promise["operations"]
    assert again["promise"]["expected_failures"] == promise["expected_failures"]


def test_quote_errors_name_the_problem(fleet_client: TestClient) -> None:
    bad = fleet_client.post("/orders/quote", json={"product": "plate", "options": {"holes": "6"}})
    assert bad.status_code == 422
    assert bad.json()["detail"] == "option holes = '6': not one of 4, 8"
    bad = fleet_client.post("/orders/quote", json={"product": "cup"})
    assert bad.status_code == 422
    assert "no product 'cup'" in bad.json()["detail"]
    bad = fleet_client.post("/orders/quote", json={"product": "plate", "quantity": 0})
    assert bad.status_code == 422
    bad = fleet_client.post("/orders/quote", json={"product": "plate", "due": "tomorrow"})
    assert bad.status_code == 422
    assert "RFC 3339" in bad.json()["detail"]
    answer = fleet_client.post("/orders/quote", json={"product": "plate", "max_risk": 0.0})
    assert answer.status_code == 200
    assert answer.json()["promise"] is None
    assert answer.json()["unavailable"] == "no usable machine (type L) for operation cut"


def test_the_catalogue_is_served_and_reads_follow_the_access_rules(
    settings: Settings, catalogue_file: Path
) -> None:
    closed = settings.model_copy(
        update={"api_tokens": "t0k:operate", "api_read_open": False, "catalogue": catalogue_file}
    )
    twin = Twin(closed)
    with TestClient(create_app(twin.settings, twin)) as client:
        assert client.get("/catalogue").status_code == 401
        quote = {"product": "plate"}
        assert client.post("/orders/quote", json=quote).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.post("/orders/quote", json=quote, headers=wrong).status_code == 403
        got = client.get("/catalogue", headers=TOKEN)
        assert got.status_code == 200
        product = got.json()["products"][0]
        assert product["id"] == "plate"
        assert product["options"]["holes"] == {
            "values": ["4", "8"],
            "default": "4",
            "effects": {
                "8": {
                    "price_per_unit": 1.0,
                    "price": 0.0,
                    "scale": {"drill": 2.0},
                    "operations": [],
                }
            },
        }
        assert product["options"]["label"]["pattern"] == "[A-Z]+"


# Orders: placed, scheduled after the work the fleet holds, followed by job events.


@pytest.fixture
def shop(settings: Settings, catalogue_file: Path) -> Any:
    """A twin with two cutters (L) and two drills (M), all healthy and online."""
    twin = Twin(settings.model_copy(update={"api_tokens": "t0k", "catalogue": catalogue_file}))
    with TestClient(create_app(twin.settings, twin)) as client:
        names = {"L1": "L", "L2": "L", "M1": "M", "M3": "M"}
        feed_pipeline(
            twin,
            *(status(n, t) for n, t in names.items()),
            *(reading(n, 1) for n in names),
        )
        wait_until(lambda: all((twin.state.get(m) or {}).get("risk") for m in names), 10, "scored")
        yield twin, client


def job(machine: str, code: str, name: str, ts: int) -> tuple[str, dict[str, Any]]:
    body = {"type": "job", "code": code, "job": name, "ts": ts}
    return (f"factory/s1/{machine}/event", body)


def place(client: TestClient, **body: Any) -> dict[str, Any]:
    answer = client.post("/orders", json={"product": "plate", **body}, headers=TOKEN)
    assert answer.status_code == 201, answer.text
    order: dict[str, Any] = answer.json()
    return order


def spans(order: dict[str, Any]) -> list[tuple[str, str, float, float]]:
    t0 = order["created_at"]
    return [
        (
            op["name"],
            op["machine"],
            (op["planned_start_ms"] - t0) / 60_000,
            (op["planned_end_ms"] - t0) / 60_000,
        )
        for op in order["operations"]
    ]


def test_orders_follow_their_routing_after_the_work_already_booked(shop: Any) -> None:
    twin, client = shop
    first = place(client, quantity=10)
    assert first["status"] == "accepted"
    assert spans(first) == [("cut", "L1", 0, 30), ("drill", "M1", 30, 45)]
    # The next order takes the other cutter and the other drill: they end first.
    second = place(client, quantity=10)
    assert spans(second) == [("cut", "L2", 0, 30), ("drill", "M3", 30, 45)]
    # A third queues behind the first (the tie goes by id), never beside it.
    third = place(client, quantity=5)
    got = spans(third)
    assert got[0][1] == "L1"
    assert got[0][2] == pytest.approx(30, abs=0.01)
    assert got[1][2] == pytest.approx(max(got[0][3], 45), abs=0.01)
    assert twin.orders.jobs("L1")[0]["job"] == f"{first['id']}/cut"
    assert [j["order"] for j in twin.orders.jobs("L1")] == [first["id"], third["id"]]
    page = client.get("/orders", params={"limit": 2}).json()
    assert page["total"] == 3
    assert [o["id"] for o in page["items"]] == [third["id"], second["id"]]
    assert client.get("/orders", params={"status": "done"}).json()["total"] == 0
    # A quote sees the booked work too.
    quote = client.post("/orders/quote", json={"product": "plate", "quantity": 10}).json()
    assert quote["promise"]["operations"][0]["start_min"] >= 29.9


def test_job_events_move_an_order_to_done_and_its_eta_follows(shop: Any) -> None:
    twin, client = shop
    order = place(client, quantity=10, due="2100-01-01T00:00:00Z")
    oid, now = order["id"], int(time.time() * 1000)
    feed_pipeline(twin, job("L1", "started", f"{oid}/cut", now + 4 * 60_000))
    got = client.get(f"/orders/{oid}").json()
    assert got["status"] == "in_production"
    assert got["operations"][0]["state"] == "started"
    # The cut started 4 minutes late: the drill waits for it, the ETA moves 4 minutes on.
    assert got["eta_ms"] == pytest.approx(order["eta_ms"] + 4 * 60_000, abs=1000)
    feed_pipeline(twin, job("L1", "done", f"{oid}/cut", now + 4 * 60_000 + 1000))
    got = client.get(f"/orders/{oid}").json()
    # Done early: the drill keeps its planned start (the machine expects it then).
    assert got["eta_ms"] == order["eta_ms"]
    assert [j["job"] for j in twin.orders.jobs("L1")] == []
    assert twin.orders.jobs("M1")[0]["job"] == f"{oid}/drill"
    # A replayed or repeated event changes nothing; an unknown job is only logged.
    feed_pipeline(
        twin, job("L1", "started", f"{oid}/cut", now + 2000), job("M1", "done", "99/x", now)
    )
    assert client.get(f"/orders/{oid}").json()["operations"][0]["state"] == "done"
    feed_pipeline(twin, job("M1", "done", f"{oid}/drill", now + 4 * 60_000 + 3000))
    got = client.get(f"/orders/{oid}").json()
    assert got["status"] == "done"
    assert got["on_time"] is True
    assert got["done_at"] == now + 4 * 60_000 + 3000
    assert client.post(f"/orders/{oid}/cancel", headers=TOKEN).status_code == 409
    # A job event without its job is a bad event, dead-lettered.
    feed_pipeline(twin, ("factory/s1/M1/event", {"type": "job", "code": "started"}))
    letters = client.get("/deadletters").json()["items"]
    assert letters[0]["reason"] == "bad_event"
    assert "names its job" in letters[0]["detail"]


def test_resequencing_puts_the_earliest_due_order_first(shop: Any) -> None:
    twin, client = shop
    feed_pipeline(twin, status("L2", "L", "offline"), status("M3", "M", "offline"))
    wait_until(lambda: len(twin.orders.fleet(0, None)[0]) == 2, 10, "two usable machines")
    late = place(client, quantity=10, due="2100-01-01T00:00:00Z")
    soon = datetime.fromtimestamp(time.time() + 3600).astimezone().isoformat()
    urgent = place(client, quantity=10, due=soon)  # queued behind the first: late
    assert urgent["status"] == "late"
    done = client.post("/orders/resequence", headers=TOKEN)
    assert done.status_code == 200, done.text
    assert done.json()["orders"] == 2
    assert done.json()["operations_moved"] == 4
    first = client.get(f"/orders/{urgent['id']}").json()
    second = client.get(f"/orders/{late['id']}").json()
    assert [(n, m, round(a), round(b)) for n, m, a, b in spans(first)] == [
        ("cut", "L1", 0, 30),
        ("drill", "M1", 30, 45),
    ]
    assert first["status"] == "accepted"
    t0 = (second["created_at"] - first["created_at"]) / 60_000
    assert [(n, m, round(a + t0), round(b + t0)) for n, m, a, b in spans(second)] == [
        ("cut", "L1", 30, 60),
        ("drill", "M1", 60, 75),
    ]
    assert [j["order"] for j in twin.orders.jobs("L1")] == [urgent["id"], late["id"]]
    assert client.post("/orders/resequence").status_code == 401


def test_a_machine_going_offline_mid_order_moves_its_unstarted_operations(shop: Any) -> None:
    twin, client = shop
    place(client, quantity=10)  # L1 and M1
    order = place(client, quantity=10)  # L2 and M3
    oid, now = order["id"], int(time.time() * 1000)
    feed_pipeline(twin, job("L2", "started", f"{oid}/cut", now))
    feed_pipeline(twin, status("M3", "M", "offline"))

    def moved() -> bool:
        return bool(client.get(f"/orders/{oid}").json()["replans"])

    wait_until(moved, 10, "the order re-planned")
    got = client.get(f"/orders/{oid}").json()
    assert got["operations"][0]["machine"] == "L2"  # started: it stays
    assert got["operations"][0]["state"] == "started"
    drill = got["operations"][1]
    assert drill["machine"] == "M1"
    assert drill["state"] == "planned"
    assert got["moves"][0]["from"] == "M3"
    assert got["moves"][0]["to"] == "M1"
    assert got["moves"][0]["why"] == "alert offline"
    # M1 holds the first order's drill until 45 min: the moved drill queues behind it.
    assert drill["planned_start_ms"] >= order["created_at"] + 45 * 60_000 - 1000
    assert got["eta_ms"] > order["eta_ms"]
    assert twin.orders.jobs("M3") == []


def test_an_order_past_its_due_time_is_late_and_raises_order_late(shop: Any) -> None:
    twin, client = shop
    due = datetime.fromtimestamp(time.time() + 20 * 60).astimezone().isoformat()
    order = place(client, quantity=10, due=due)  # 45 min of work, due in 20
    assert order["status"] == "late"
    assert order["on_time"] is False

    def raised() -> bool:
        alerts = client.get("/alerts", params={"machine": "L1"}).json()["items"]
        return any(a["rule"] == "order_late" and a["state"] == "active" for a in alerts)

    twin.alerts.sweep()
    wait_until(raised, 10, "order_late raised")
    client.post(f"/orders/{order['id']}/cancel", headers=TOKEN)
    got = client.get(f"/orders/{order['id']}").json()
    assert got["status"] == "cancelled"
    assert all(op["state"] == "cancelled" for op in got["operations"])


def test_orders_survive_a_restart(settings: Settings, catalogue_file: Path) -> None:
    update = {"api_tokens": "t0k", "catalogue": catalogue_file}
    twin = Twin(settings.model_copy(update=update))
    with TestClient(create_app(twin.settings, twin)) as client:
        feed_pipeline(
            twin, status("L1", "L"), status("M1", "M"), reading("L1", 1), reading("M1", 1)
        )
        wait_until(
            lambda: all((twin.state.get(m) or {}).get("risk") for m in ("L1", "M1")), 10, "scored"
        )
        placed = place(client, quantity=3, customer="ACME")
    again = Twin(settings.model_copy(update=update))
    with TestClient(create_app(again.settings, again)) as client:
        got = client.get(f"/orders/{placed['id']}").json()
        assert got == placed
        assert again.orders.jobs("L1")[0]["job"] == f"{placed['id']}/cut"
        assert client.get("/orders", params={"customer": "ACME"}).json()["total"] == 1


def test_order_writes_need_the_operate_role(shop: Any) -> None:
    _twin, client = shop
    assert client.post("/orders", json={"product": "plate"}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.post("/orders", json={"product": "plate"}, headers=wrong).status_code == 403
    assert client.post("/orders/1/cancel").status_code == 401
    bad = client.post("/orders", json={"product": "plate", "options": {"x": "1"}}, headers=TOKEN)
    assert bad.status_code == 422
    assert "no option x" in bad.json()["detail"]
    assert client.get("/orders/12345").status_code == 404
    assert client.post("/orders/12345/cancel", headers=TOKEN).status_code == 404
    unplaceable = client.post("/orders", json={"product": "plate", "max_risk": 0.0}, headers=TOKEN)
    assert unplaceable.status_code == 409
    assert "no usable machine (type L) for operation cut" in unplaceable.json()["detail"]


steps_st = st.lists(
    st.builds(
        Step,
        name=st.sampled_from(["a", "b", "c", "d", "e"]),
        machine_type=st.sampled_from(["A", "B"]),
        site=st.sampled_from([None, None, "s1", "s2"]),
        setup_min=st.floats(0, 30),
        minutes_per_unit=st.floats(0, 5),
        quantity=st.integers(1, 20),
    ),
    min_size=1,
    max_size=5,
)
machines_st = st.lists(
    st.builds(
        lambda i, t, s, load, w: Machine(f"m{i}", s, t, True, 0.0, load_min=load, maintenance=w),
        st.integers(0, 9),
        st.sampled_from(["A", "B"]),
        st.sampled_from(["s1", "s2"]),
        st.floats(0, 60),
        st.one_of(
            st.none(),
            st.tuples(st.floats(0, 100), st.floats(1, 60)).map(lambda x: (x[0], x[0] + x[1])),
        ),
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda m: m.machine,
)


@given(chains=st.lists(steps_st, min_size=1, max_size=6), fleet=machines_st)
@examples(max_examples=200, deadline=None)
def test_precedence_holds_and_no_machine_is_double_booked(
    chains: list[list[Step]], fleet: list[Machine]
) -> None:
    """Chains scheduled one after another, each after what the machines hold, as orders are."""
    booked: dict[str, list[tuple[float, float]]] = {m.machine: [] for m in fleet}
    windows = {m.machine: m.maintenance for m in fleet}
    for chain in chains:
        machines = [
            replace(m, load_min=max([m.load_min] + [end for _, end in booked[m.machine]]))
            for m in fleet
        ]
        got = schedule(chain, machines, 30.0)
        if isinstance(got, str):
            continue
        previous = None
        for step, b in zip(chain, got, strict=True):
            assert b.machine.type == step.machine_type
            assert step.site is None or b.machine.site == step.site
            assert b.end_min - b.start_min == pytest.approx(step.duration_min)
            if previous is not None:
                moved = 30.0 if previous.machine.site != b.machine.site else 0.0
                assert b.start_min >= previous.end_min + moved - 1e-9
                assert b.transfer_min == moved
            window = windows[b.machine.machine]
            if window is not None and b.end_min > b.start_min:
                assert b.end_min <= window[0] + 1e-9 or b.start_min >= window[1] - 1e-9
            previous = b
        for b in got:
            for start, end in booked[b.machine.machine]:
                assert b.start_min >= end - 1e-9 or b.end_min <= start + 1e-9
            booked[b.machine.machine].append((b.start_min, b.end_min))
        assert got[0].start_min >= 0


@pytest.mark.integration
def test_the_simulator_runs_an_order_end_to_end_over_mosquitto(
    mosquitto: Mosquitto, data_dir: Path, catalogue_file: Path, tmp_path: Path
) -> None:
    """`twin serve` sends the jobs over a real broker; simulated machines take them from their
    jobs topic, work them at 30 simulated minutes a second and report them; the order is done."""
    env = {
        "TWIN_MQTT_URL": mosquitto.url,
        "TWIN_DATA_DIR": str(data_dir),
        "TWIN_CATALOGUE": str(catalogue_file),
    }
    received: dict[str, list[Any]] = {}
    listener = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="listener")
    listener.on_connect = lambda c, *_: c.subscribe(
        [("factory/+/+/jobs", 1), ("factory/$twin/orders", 1)]
    )
    listener.on_message = lambda c, u, m: received.setdefault(m.topic, []).append(
        (msgspec.json.decode(m.payload), m.retain)
    )
    listener.connect("127.0.0.1", mosquitto.port)
    listener.loop_start()
    twin = TwinProcess(env, tmp_path / "twin.log")
    twin.start()
    options = FleetOptions(4, rate_hz=5, site="s1", seed=3, time_scale=30)  # L, M, L, M
    fleet = Fleet(
        BrokerAddress(host="127.0.0.1", port=mosquitto.port, tls=False), Topics(), options
    )
    try:
        fleet.start()

        def seen() -> bool:
            items = twin.get("/machines?limit=10")["items"]
            return len(items) == 4 and all(m["online"] and m["risk"] for m in items)

        wait_until(seen, 20, "the fleet online and scored")
        body = json.dumps({"product": "plate", "quantity": 10, "max_risk": 1.0}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{twin.port}/orders",
            data=body,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            order = json.load(answer)
        cutter, driller = (op["machine"] for op in order["operations"])
        assert cutter in ("m0000", "m0002")  # type L; the lower risk of the two
        assert driller in ("m0001", "m0003")  # type M

        def done() -> bool:
            return bool(twin.get(f"/orders/{order['id']}")["status"] == "done")

        wait_until(done, 30, "the order done")
        got = twin.get(f"/orders/{order['id']}")
        cut, drill = got["operations"]
        assert cut["started_ms"] <= cut["done_ms"] <= drill["started_ms"] <= drill["done_ms"]
        # Retained jobs went to each machine, and order changes to the order topic.
        wait_until(lambda: len(received.get("factory/$twin/orders", [])) >= 5, 10, "changes")
        first, _ = received[f"factory/s1/{cutter}/jobs"][0]
        assert first["jobs"][0]["job"] == f"{order['id']}/cut"
        assert first["jobs"][0]["ready"] is True
        waiting, _ = received[f"factory/s1/{driller}/jobs"][0]
        assert waiting["jobs"][0]["ready"] is False  # until the cut is done
        last, _ = received[f"factory/s1/{driller}/jobs"][-1]
        assert last["jobs"] == []
        statuses = [o["status"] for o, _ in received["factory/$twin/orders"]]
        assert statuses[0] == "accepted"
        assert "in_production" in statuses
        assert statuses[-1] == "done"
    finally:
        fleet.stop()
        twin.close()
        listener.loop_stop()
        listener.disconnect()
