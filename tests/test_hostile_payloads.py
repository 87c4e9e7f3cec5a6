"""Property tests: the decoder takes anything and answers valid or rejected-with-a-reason; a
running twin takes the same over MQTT and keeps ingesting."""

from __future__ import annotations

import json

import msgspec
import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.services import Mosquitto, TwinProcess, wait_until
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


reading_values = st.dictionaries(
    st.text(min_size=1, max_size=80),
    st.integers(-(10**400), 10**400) | st.floats(allow_nan=True, allow_infinity=True),
    min_size=1,
    max_size=5,
)
timestamps = st.none() | st.integers(-(10**20), 10**20) | st.text(max_size=40)
sequences = st.none() | st.integers(-(10**20), 10**20)


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
@given(values=reading_values, ts=timestamps, seq=sequences)
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


# What a broker lets through to the twin: topic levels of any text except the wildcards, the
# separator, NUL and what MQTT forbids in UTF-8 (controls, surrogates, non-characters).
topic_levels = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Cn"), blacklist_characters="/+#"),
    max_size=70,
)
hostile_payloads = (
    st.binary(max_size=600)
    | json_values.map(lambda v: json.dumps(v, allow_nan=True).encode())
    | st.builds(
        lambda values, ts, seq: json.dumps({"values": values, "ts": ts, "seq": seq}).encode(),
        reading_values,
        timestamps,
        sequences,
    )
)


@pytest.mark.integration
def test_a_running_twin_takes_hostile_messages_over_mqtt_and_keeps_ingesting(
    serve: TwinProcess, mosquitto: Mosquitto
) -> None:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="hostile", protocol=MQTTProtocolVersion.MQTTv5
    )
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    committed_before = serve.get("/health")["journal"]["committed"]
    sent = 0

    @settings(max_examples=300, deadline=None)
    @given(
        site=st.just("s1") | topic_levels,
        machine=st.sampled_from(["m1", "m2"]) | topic_levels,
        kind=st.sampled_from(["telemetry", "status", "event"]),
        payload=hostile_payloads,
    )
    def publish(site: str, machine: str, kind: str, payload: bytes) -> None:
        nonlocal sent
        client.publish(f"factory/{site}/{machine}/{kind}", payload, qos=1).wait_for_publish(10)
        sent += 1

    try:
        publish()
        sentinel = msgspec.json.encode({"seq": 1, "values": {"torque_nm": 40.0}})
        client.publish("factory/s1/sentinel/telemetry", sentinel, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()

    def sentinel_applied() -> bool:
        try:
            return serve.get("/machines/sentinel")["counters"]["received"] == 1
        except OSError:  # 404 until it arrives
            return False

    wait_until(sentinel_applied, 30, "the reading sent after the hostile ones")
    health = serve.get("/health")
    assert health["status"] == "ok", health["problems"]
    assert health["journal"]["committed"] - committed_before == sent + 1  # every message kept
    assert health["readings"]["rejected"] > 0
