from twin.messages import Decoded, DeviceEvent, Reading, Rejection, Status
from twin.state import FleetState
from twin.topics import Address

T0 = 1_800_000_000_000


def telemetry(machine: str = "m1", site: str = "s1", *readings: Reading) -> Decoded:
    return Decoded(Address(site, machine, "telemetry"), readings=list(readings))


def counters(state: FleetState, machine: str = "m1") -> dict[str, int]:
    twin = state.get(machine)
    assert twin is not None
    return twin["counters"]


def test_reading_sets_live_values_and_counts() -> None:
    state = FleetState()
    state.apply(telemetry("m1", "s1", Reading(T0, 1, {"torque_nm": 40.0, "x": 1})), T0)
    twin = state.get("m1")
    assert twin is not None
    assert twin["values"]["torque_nm"] == {"value": 40.0, "ts": T0}
    assert twin["counters"]["received"] == 1
    assert twin["revision"] == 1


def test_out_of_order_reading_does_not_regress_live_state() -> None:
    state = FleetState()
    state.apply(telemetry("m1", "s1", Reading(T0 + 10, 2, {"x": 2.0})), T0)
    state.apply(telemetry("m1", "s1", Reading(T0, 1, {"x": 1.0, "y": 5.0})), T0)
    twin = state.get("m1")
    assert twin is not None
    assert twin["values"]["x"] == {"value": 2.0, "ts": T0 + 10}
    assert twin["values"]["y"] == {"value": 5.0, "ts": T0}  # first value of y is still news
    assert twin["counters"]["out_of_order"] == 1
    assert twin["counters"]["received"] == 2
    assert twin["stats"]["x"]["count"] == 2  # history keeps it


def test_duplicate_seq_is_counted_not_applied() -> None:
    state = FleetState()
    state.apply(telemetry("m1", "s1", Reading(T0, 1, {"x": 1.0})), T0)
    changed = state.apply(telemetry("m1", "s1", Reading(T0, 1, {"x": 1.0})), T0)
    assert changed is None
    c = counters(state)
    assert (c["received"], c["duplicates"]) == (1, 1)


def test_gap_is_counted_and_closed_when_the_reading_arrives_late() -> None:
    state = FleetState()
    state.apply(telemetry("m1", "s1", Reading(T0, 1, {"x": 1.0})), T0)
    state.apply(telemetry("m1", "s1", Reading(T0 + 3, 4, {"x": 4.0})), T0)
    assert counters(state)["gaps"] == 2
    state.apply(telemetry("m1", "s1", Reading(T0 + 2, 3, {"x": 3.0})), T0)
    c = counters(state)
    assert (c["gaps"], c["received"], c["duplicates"]) == (1, 3, 0)
    state.apply(telemetry("m1", "s1", Reading(T0 + 2, 3, {"x": 3.0})), T0)
    assert counters(state)["duplicates"] == 1


def test_readings_without_seq_are_deduplicated_by_device_time_and_values() -> None:
    state = FleetState()
    for _ in range(3):
        state.apply(telemetry("m1", "s1", Reading(T0, None, {"x": 1.0})), T0)
    state.apply(telemetry("m1", "s1", Reading(T0, None, {"x": 2.0})), T0)
    c = counters(state)
    assert (c["received"], c["duplicates"]) == (2, 2)


def test_a_device_that_restarts_its_sequence_is_not_treated_as_duplicates() -> None:
    state = FleetState()
    state.apply(telemetry("m1", "s1", Reading(T0, 500, {"x": 1.0})), T0)
    state.apply(telemetry("m1", "s1", Reading(T0 + 60_000, 0, {"x": 2.0})), T0)
    state.apply(telemetry("m1", "s1", Reading(T0 + 61_000, 1, {"x": 3.0})), T0)
    c = counters(state)
    assert (c["received"], c["duplicates"], c["gaps"]) == (3, 0, 0)


def test_status_sets_online_and_type_and_older_status_is_ignored() -> None:
    state = FleetState()
    address = Address("s1", "m1", "status")
    state.apply(Decoded(address, status=Status(state="online", ts=T0 + 5, type="H")), T0)
    state.apply(Decoded(address, status=Status(state="offline", ts=T0)), T0)
    twin = state.get("m1")
    assert twin is not None
    assert (twin["online"], twin["type"]) == (True, "H")


def test_events_are_kept_per_type() -> None:
    state = FleetState()
    address = Address("s1", "m1", "event")
    state.apply(Decoded(address, event=DeviceEvent(type="failure", ts=T0, code="HDF")), T0)
    twin = state.get("m1")
    assert twin is not None
    assert twin["last_events"] == {"failure": {"code": "HDF", "ts": T0}}


def test_rejections_are_counted_per_machine_and_reason() -> None:
    state = FleetState()
    address = Address("s1", "m1", "telemetry")
    bad = [Rejection("bad_value", "x"), Rejection("bad_value", "y"), Rejection("bad_seq", "z")]
    state.apply(Decoded(address, rejections=bad), T0)
    c = counters(state)
    assert c["rejected"] == 3
    assert c["rejected_by_reason"] == {"bad_value": 2, "bad_seq": 1}


def test_stats_cover_only_the_recent_window() -> None:
    state = FleetState(stats_window_s=10)
    for i, value in enumerate([100.0, 1.0, 3.0]):
        state.apply(telemetry("m1", "s1", Reading(T0 + i * 8_000, i, {"x": value})), T0)
    twin = state.get("m1")
    assert twin is not None
    assert twin["stats"]["x"] == {"count": 2, "mean": 2.0, "min": 1.0, "max": 3.0}


def test_query_filters_sorts_and_pages() -> None:
    state = FleetState()
    for i, site in enumerate(["b", "a", "b", "a", "b"]):
        machine = f"m{i}"
        state.apply(telemetry(machine, site, Reading(T0 + i, 0, {"x": 1.0})), T0 + i)
        online = i % 2 == 0
        status = Status(state="online" if online else "offline", ts=T0)
        state.apply(Decoded(Address(site, machine, "status"), status=status), T0 + i)
    total, page = state.query(limit=2, offset=1)
    assert (total, [m["machine"] for m in page]) == (5, ["m1", "m2"])
    total, page = state.query(sort="-machine", limit=2, offset=1)
    assert [m["machine"] for m in page] == ["m3", "m2"]
    total, page = state.query(site="b", online=True)
    assert (total, [m["machine"] for m in page]) == (3, ["m0", "m2", "m4"])
    total, page = state.query(sort="-last_seen", limit=2)
    assert [m["machine"] for m in page] == ["m4", "m3"]
    assert state.query(site="nowhere") == (0, [])


def test_dump_and_load_restore_state_and_dedup_memory() -> None:
    state = FleetState()
    state.apply(
        telemetry("m1", "s1", Reading(T0, 1, {"x": 1.0}), Reading(T0 + 2, 3, {"x": 3.0})), T0
    )
    state.apply(telemetry("m1", "s1", Reading(T0 + 5, None, {"x": 9.0})), T0)
    restored = FleetState()
    restored.load(state.dump())
    assert restored.get("m1") == state.get("m1")
    # The restored twin still knows what it has seen and what is missing.
    restored.apply(telemetry("m1", "s1", Reading(T0, 1, {"x": 1.0})), T0)
    restored.apply(telemetry("m1", "s1", Reading(T0 + 5, None, {"x": 9.0})), T0)
    restored.apply(telemetry("m1", "s1", Reading(T0 + 1, 2, {"x": 2.0})), T0)
    c = counters(restored)
    assert (c["received"], c["duplicates"], c["gaps"]) == (4, 2, 0)


def test_stats_are_kept_until_a_reading_is_applied() -> None:
    state = FleetState()
    first = Reading(T0, 1, {"t": 1.0})
    twin = state.apply(Decoded(Address("s1", "m1", "telemetry"), [first]), T0)
    assert twin is not None
    stats = twin.public(state.window_ms)["stats"]
    assert twin.public(state.window_ms)["stats"] is stats  # summed once, served many times
    state.apply(Decoded(Address("s1", "m1", "telemetry"), [first]), T0 + 5)  # a duplicate
    again = twin.public(state.window_ms)
    assert again["counters"]["duplicates"] == 1  # the rest of the view is current
    assert again["stats"] is stats  # no reading applied: the same sums
    state.apply(Decoded(Address("s1", "m1", "telemetry"), [Reading(T0 + 1, 2, {"t": 3.0})]), T0)
    assert twin.public(state.window_ms)["stats"]["t"] == {
        "count": 2,
        "mean": 2.0,
        "min": 1.0,
        "max": 3.0,
    }


def test_a_reader_copies_under_the_lock_and_sums_after() -> None:
    state = FleetState(stats_window_s=10)
    address = Address("s1", "m1", "telemetry")
    for i in range(60):  # the copy takes only the 11 within the window
        state.apply(Decoded(address, [Reading(T0 + i * 1000, i, {"t": float(i)})]), T0)
    twin = state.twin("m1")
    assert twin is not None
    detached = twin.detach(state.window_ms)
    state.apply(Decoded(address, [Reading(T0 + 60_000, 60, {"t": 100.0})]), T0)  # the writer
    view = detached.public()
    assert view["revision"] == 60
    assert view["values"]["t"]["value"] == 59.0
    assert view["stats"]["t"] == {"count": 11, "mean": 54.0, "min": 49.0, "max": 59.0}
    assert list(view) == list(twin.public(state.window_ms))  # the same document, in order
    assert state.get("m1") == twin.public(state.window_ms)
