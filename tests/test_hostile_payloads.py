"""Property tests: the decoder takes anything and answers valid or rejected-with-a-reason."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from twin.messages import REASONS, Limits, decode
from twin.topics import Topics

NOW = 1_800_000_000_000
LIMITS = Limits(max_payload_bytes=4096, max_batch=50, max_future_ms=300_000)
TOPICS = ["factory/s1/m1/telemetry", "factory/s1/m1/status", "factory/s1/m1/event"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=70), children, max_size=6)
    ),
    max_leaves=40,
)


def check(topic: str, payload: bytes) -> None:
    decoded = decode(Topics(), topic, payload, NOW, LIMITS)  # must not raise
    for rejection in decoded.rejections:
        assert rejection.reason in REASONS
        assert rejection.detail
    for reading in decoded.readings:
        assert reading.values
        assert all(type(v) is float for v in reading.values.values())
    if decoded.address is not None and not decoded.rejections:
        kind = decoded.address.kind
        has = bool(decoded.readings) or decoded.status is not None or decoded.event is not None
        assert has or payload.strip() == b"[]" or kind == "telemetry"


@settings(max_examples=400, deadline=None)
@given(topic=st.sampled_from(TOPICS), payload=st.binary(max_size=600))
def test_arbitrary_bytes(topic: str, payload: bytes) -> None:
    check(topic, payload)


@settings(max_examples=400, deadline=None)
@given(topic=st.sampled_from(TOPICS), value=json_values)
def test_arbitrary_json_including_nan_infinity_and_huge_numbers(topic: str, value: object) -> None:
    check(topic, json.dumps(value, allow_nan=True).encode())


@settings(max_examples=200, deadline=None)
@given(
    values=st.dictionaries(
        st.text(min_size=1, max_size=80),
        st.integers(-(10**400), 10**400) | st.floats(allow_nan=True, allow_infinity=True),
        min_size=1,
        max_size=5,
    ),
    ts=st.none() | st.integers(-(10**20), 10**20) | st.text(max_size=40),
    seq=st.none() | st.integers(-(10**20), 10**20),
)
def test_reading_shaped_payloads(values: dict[str, object], ts: object, seq: object) -> None:
    body = {"values": values, "ts": ts, "seq": seq}
    check("factory/s1/m1/telemetry", json.dumps(body, allow_nan=True).encode())
    check("factory/s1/m1/telemetry", json.dumps([body, body]).encode())


def test_deep_nesting_and_duplicate_keys() -> None:
    deep = decode(Topics(), "factory/s1/m1/telemetry", b"[" * 2000 + b"]" * 2000, NOW, LIMITS)
    assert [(r.reason, r.detail) for r in deep.rejections] == [
        ("not_json", "JSON nested too deeply")
    ]
    check("factory/s1/m1/telemetry", b'{"values": {"x": 1, "x": "two"}}')
    check("factory/s1/m1/telemetry", b'{"values": {"x": 1}, "values": {"y": 2}}')


@settings(max_examples=300, deadline=None)
@given(site=st.text(max_size=70), machine=st.text(max_size=70), kind=st.text(max_size=12))
def test_unicode_and_junk_in_topics(site: str, machine: str, kind: str) -> None:
    check(f"factory/{site}/{machine}/{kind}", b'{"values": {"x": 1}}')
