"""What the twin tells the outside: alert changes at once, twins at most once an interval."""

from __future__ import annotations

import time

import msgspec

from tests.fakes import Published
from twin.alerts import Alert
from twin.messages import Decoded, Reading
from twin.outbound import Outbound
from twin.state import FleetState, MachineTwin
from twin.stream import EventHub
from twin.topics import Address, Topics

T0 = 1_800_000_000_000


def reading(state: FleetState, machine: str, seq: int, value: float) -> MachineTwin:
    decoded = Decoded(Address("s1", machine, "telemetry"), [Reading(T0 + seq, seq, {"t": value})])
    twin = state.apply(decoded, T0)
    assert twin is not None
    return twin


def make(interval_s: float) -> tuple[FleetState, Outbound, Published, EventHub]:
    state, published, hub = FleetState(), Published(), EventHub()
    return state, Outbound(state, Topics(), published, hub, interval_s), published, hub


def test_an_alert_change_goes_out_at_once_on_its_topic_and_the_stream() -> None:
    _, outbound, published, hub = make(60)
    alert = Alert(1, "m1", "s1", "hot", "threshold", "major", "active", "m1: hot", T0, T0)
    outbound.alert(alert)
    ((topic, payload, retain),) = published.messages
    assert (topic, retain) == ("factory/s1/m1/alert", False)
    assert msgspec.json.decode(payload)["rule"] == "hot"
    assert [e.kind for e in hub._ring] == ["alert"]


def test_a_changed_twin_is_published_retained_then_held_until_its_interval_is_up() -> None:
    state, outbound, published, hub = make(0.2)
    twin = reading(state, "m1", 1, 1.0)
    outbound.twins({twin})
    assert published.topics() == ["factory/s1/m1/twin"]
    assert published.messages[0][2] is True  # retained: a new subscriber gets the latest
    reading(state, "m1", 2, 2.0)
    outbound.twins({twin})
    outbound.twins({twin})  # changes within the interval wait, coalesced
    assert len(published.messages) == 1
    time.sleep(0.25)
    outbound.twins(set())  # an idle call sends what is due
    assert len(published.messages) == 2
    sent = msgspec.json.decode(published.messages[1][1])
    assert (sent["values"]["t"]["value"], sent["revision"]) == (2.0, 2)
    assert [e.kind for e in hub._ring] == ["twin", "twin"]


def test_machines_keep_their_own_intervals() -> None:
    state, outbound, published, _ = make(60)
    a, b = reading(state, "a", 1, 1.0), reading(state, "b", 1, 1.0)
    outbound.twins({a})
    outbound.twins({b})  # b has never been sent: not held back by a's interval
    assert sorted(published.topics()) == ["factory/s1/a/twin", "factory/s1/b/twin"]


def test_past_the_fleet_budget_the_longest_waiting_twins_go_first() -> None:
    state, published, hub = FleetState(), Published(), EventHub()
    outbound = Outbound(state, Topics(), published, hub, interval_s=0, max_per_s=2)
    twins = [reading(state, m, 1, 1.0) for m in ("a", "b", "c")]
    outbound.twins(twins)
    assert published.topics() == ["factory/s1/a/twin", "factory/s1/b/twin"]  # a second's worth
    reading(state, "a", 2, 2.0)
    outbound.twins({twins[0]})  # a changed again, but c has waited longer
    time.sleep(0.6)  # about one more twin's worth of budget
    outbound.twins(set())
    assert published.topics()[2] == "factory/s1/c/twin"
    time.sleep(0.6)
    outbound.twins(set())
    assert published.topics()[3:] == ["factory/s1/a/twin"]
    assert msgspec.json.decode(published.messages[3][1])["revision"] == 2  # the latest state
