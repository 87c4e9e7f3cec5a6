"""Personalised orders: the catalogue, schemes and quotes against the live fleet."""

from __future__ import annotations

import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TOKEN, feed_pipeline
from tests.services import wait_until
from twin.app import create_app
from twin.config import Settings
from twin.errors import ConfigError, InvalidRequest
from twin.orders import load_catalogue
from twin.orders.quote import configure, promise_of, schedule
from twin.planning import Machine
from twin.service import Twin

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
