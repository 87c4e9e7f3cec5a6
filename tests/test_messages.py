import msgspec
import pytest

from twin.messages import Decoded, Limits, Reading, _decode_telemetry, decode, encode
from twin.topics import Topics

NOW = 1_800_000_000_000
TOPIC = "factory/s1/m1/telemetry"
LIMITS = Limits(max_payload_bytes=4096, max_batch=3, max_future_ms=60_000)


def run(payload: object, topic: str = TOPIC) -> tuple[list[Reading], list[tuple[str, int | None]]]:
    raw = payload if isinstance(payload, bytes) else msgspec.json.encode(payload)
    decoded = decode(Topics(), topic, raw, NOW, LIMITS)
    return decoded.readings, [(r.reason, r.index) for r in decoded.rejections]


def test_single_reading_with_epoch_ms_and_seq() -> None:
    readings, rejections = run({"ts": NOW - 5, "seq": 7, "values": {"torque_nm": 40.5}})
    assert rejections == []
    assert readings == [Reading(NOW - 5, 7, {"torque_nm": 40.5})]


def test_rfc3339_timestamp_is_converted_to_epoch_ms() -> None:
    readings, _ = run({"ts": "2027-01-15T08:00:00.250Z", "values": {"x": 1}})
    assert readings[0].ts == NOW + 250


def test_missing_ts_uses_receive_time_and_says_so() -> None:
    readings, _ = run({"values": {"x": 1}})
    assert readings[0].ts == NOW
    assert readings[0].device_ts is False


def test_batch_applies_valid_readings_and_rejects_bad_ones_one_by_one() -> None:
    readings, rejections = run(
        [{"seq": 1, "values": {"x": 1}}, {"seq": 2, "values": {"x": "hot"}}, {"values": {"x": 3}}]
    )
    assert [r.seq for r in readings] == [1, None]
    assert rejections == [("bad_value", 1)]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not_json"),
        (b"NaN", "not_json"),
        (b'{"values": {"x": Infinity}}', "not_json"),
        (b'{"values": {"x": 1e999}}', "not_json"),
        (b'"text"', "not_object"),
        (b"42", "not_object"),
        ([1, 2], "not_object"),
        ({"ts": NOW}, "missing_values"),
        ({"values": {}}, "missing_values"),
        ({"values": [1, 2]}, "missing_values"),
        ({"values": {"Torque": 1}}, "bad_signal_name"),
        ({"values": {"1x": 1}}, "bad_signal_name"),
        ({"values": {"x" * 65: 1}}, "bad_signal_name"),
        ({"values": {"x": "1"}}, "bad_value"),
        (b'{"values": {"x": 1' + b"0" * 400 + b"}}", "bad_value"),
        ({"values": {"x": True}}, "bad_value"),
        ({"values": {"x": None}}, "bad_value"),
        ({"values": {"x": [1]}}, "bad_value"),
        ({"ts": "yesterday", "values": {"x": 1}}, "bad_timestamp"),
        ({"ts": "2027-01-15T08:00:00", "values": {"x": 1}}, "bad_timestamp"),
        ({"ts": 1_700_000_000, "values": {"x": 1}}, "bad_timestamp"),
        ({"ts": [1], "values": {"x": 1}}, "bad_timestamp"),
        ({"ts": NOW + 61_000, "values": {"x": 1}}, "future_timestamp"),
        ({"seq": -1, "values": {"x": 1}}, "bad_seq"),
        ({"seq": 1.5, "values": {"x": 1}}, "bad_seq"),
        ([{"values": {"x": 1}}] * 4, "batch_too_large"),
        (b"[" + b"1," * 3000 + b"1]", "too_large"),
    ],
)
def test_every_rejection_reason(payload: object, reason: str) -> None:
    readings, rejections = run(payload)
    assert readings == []
    assert rejections[0][0] == reason


def test_bad_topic_is_rejected_before_the_payload_is_read() -> None:
    decoded = decode(Topics(), "factory/s1/m 1/telemetry", b"{}", NOW, LIMITS)
    assert decoded.address is None
    assert [r.reason for r in decoded.rejections] == ["bad_topic"]


def test_status_birth_message() -> None:
    decoded = decode(
        Topics(),
        "factory/s1/m1/status",
        b'{"state":"online","ts":%d,"type":"H"}' % NOW,
        NOW,
        LIMITS,
    )
    assert decoded.status is not None
    assert (decoded.status.state, decoded.status.ts, decoded.status.type) == ("online", NOW, "H")


@pytest.mark.parametrize(
    ("kind", "payload", "reason"),
    [
        ("status", {"state": "sleeping"}, "bad_status"),
        ("status", [], "not_object"),
        ("event", {"type": "failure"}, "bad_event"),
        ("event", {"type": "explosion", "code": "X"}, "bad_event"),
        ("event", {"type": "failure", "code": "TWF", "ts": "noon"}, "bad_timestamp"),
    ],
)
def test_bad_status_and_events_are_rejected_with_a_reason(
    kind: str, payload: object, reason: str
) -> None:
    decoded = decode(Topics(), f"factory/s1/m1/{kind}", msgspec.json.encode(payload), NOW, LIMITS)
    assert [r.reason for r in decoded.rejections] == [reason]
    assert decoded.rejections[0].detail


def test_event_without_ts_takes_receive_time() -> None:
    decoded = decode(
        Topics(), "factory/s1/m1/event", b'{"type":"failure","code":"HDF"}', NOW, LIMITS
    )
    assert decoded.event is not None
    assert decoded.event.ts == NOW


def test_encode_round_trips_a_reading() -> None:
    reading = Reading(NOW, 3, {"x": 1.5})
    readings, _ = run(encode(reading.to_wire()))
    assert readings == [reading]


def test_fast_and_precise_paths_decode_valid_telemetry_alike() -> None:
    body = [
        {"ts": NOW, "seq": 1, "values": {"x": 1, "y": 2.5}},
        {"ts": "2027-01-15T08:00:00Z", "values": {"x": -3}},
        {"values": {"z": 0}},
    ]
    fast = decode(Topics(), TOPIC, msgspec.json.encode(body), NOW, LIMITS)
    precise = Decoded(fast.address)
    _decode_telemetry(msgspec.json.decode(msgspec.json.encode(body)), precise, NOW, LIMITS)
    assert fast.readings == precise.readings
    assert all(type(v) is float for r in fast.readings for v in r.values.values())
