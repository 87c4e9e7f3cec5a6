"""Device messages the tests send to `twin serve` and to cluster mode alike: malformed ones and
what they are rejected for (tests/test_ingest.py, tests/test_cluster.py: they share the
decoder), and fleets' histories to train on (tests/test_trainer.py, tests/test_cluster.py,
bench/site_model.py)."""

from __future__ import annotations

import math
import random
import time

import msgspec

BAD_PAYLOADS = [
    b"\xff\xfe not utf-8",
    b"{",
    b"[]",
    b'"string"',
    b'{"values": {"x": "1"}}',
    b'{"values": {"BAD": 1}}',
    b'{"seq": -1, "values": {"x": 1}}',
    b'{"ts": "soon", "values": {"x": 1}}',
    b"[" + b'{"values":{"x":1}},' * 1000 + b'{"values":{"x":1}}]',
    b" " * 300_000,
]
# Rejections one round of BAD_PAYLOADS makes, by reason (`[]` is an empty batch: none).
BAD_REASONS = {
    "not_json": 2,
    "not_object": 1,
    "bad_value": 1,
    "bad_signal_name": 1,
    "bad_seq": 1,
    "bad_timestamp": 1,
    "batch_too_large": 1,
    "too_large": 1,
}


STEP_MS = 300_000  # one reading per history bucket


def wear_history(machines: int, steps: int, seed: int) -> list[tuple[str, bytes]]:
    """Machines with vibration and pressure sensors (no AI4I signals) that wear out and fail.

    Wear grows by a random amount each step; vibration follows it closely, temperature loosely,
    pressure is noise. Past a
    random wear level the machine fails, is repaired, and its wear starts again.
    """
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    start = now - steps * STEP_MS
    out: list[tuple[str, bytes]] = []
    for m in range(machines):
        name, wear, limit = f"p{m}", rng.random(), rng.uniform(0.9, 1.2)
        topic = f"factory/plant2/{name}/"
        for step in range(steps):
            ts = start + step * STEP_MS
            wear += rng.uniform(0.0, 0.02)
            values = {
                "vibration_mm_s": 2 + 6 * wear + rng.gauss(0, 0.4),
                "pressure_bar": rng.gauss(5, 1),
                "temperature_c": 40 + 8 * wear + rng.gauss(0, 2),
            }
            out.append(
                (
                    topic + "telemetry",
                    msgspec.json.encode({"ts": ts, "seq": step, "values": values}),
                )
            )
            if wear > 0.8 and rng.random() < 0.05:
                out.append(
                    (
                        topic + "event",
                        msgspec.json.encode({"type": "error", "code": "E_VIB", "ts": ts}),
                    )
                )
            if wear > limit:
                failure = {"type": "failure", "code": "bearing", "ts": ts}
                repair = {"type": "maintenance", "code": "bearing_change", "ts": ts + 1}
                out.append((topic + "event", msgspec.json.encode(failure)))
                out.append((topic + "event", msgspec.json.encode(repair)))
                wear, limit = 0.0, rng.uniform(0.9, 1.2)
    return out


HOUR_MS = 3_600_000


def event_history(machines: int, hours: int, seed: int) -> list[tuple[str, bytes]]:
    """Machines whose failures come from their error events and their age, not their sensors.

    Each machine has an age (`age_years` in its status's properties) and reads two noise sensors
    every hour. It is calm or troubled (a Markov chain: about ten hours troubled in every three
    days); while troubled it raises `E1` errors at a high rate. Its hourly failure chance is
    logistic in the `E1` errors of its last 24 hours and its age; a failure is repaired at once
    and calms it. `E2` and `E3` errors come at random. So a model sees the failures coming only
    through the `E1` count and the age: `bench/site_model.py` gives a logistic regression exactly
    those two as the reference.
    """
    rng = random.Random(seed)
    start = (int(time.time() * 1000) // HOUR_MS - hours - 1) * HOUR_MS
    out: list[tuple[str, bytes]] = []
    for m in range(machines):
        name, age = f"e{m}", round(rng.uniform(0, 20), 1)
        topic = f"factory/plant3/{name}/"
        status = {"state": "online", "ts": start, "type": "M", "properties": {"age_years": age}}
        out.append((topic + "status", msgspec.json.encode(status)))
        troubled, recent = False, []  # recent: the ts of E1 errors within 24 h
        for step in range(hours):
            ts = start + step * HOUR_MS
            troubled = rng.random() < (0.9 if troubled else 0.015)
            values = {"vibration_mm_s": rng.gauss(3, 0.5), "temperature_c": rng.gauss(40, 2)}
            reading = {"ts": ts, "seq": step, "values": values}
            out.append((topic + "telemetry", msgspec.json.encode(reading)))
            for code, rate in (("E1", 0.6 if troubled else 0.02), ("E2", 0.05), ("E3", 0.05)):
                if rng.random() < rate:
                    error = {"type": "error", "code": code, "ts": ts + 1}
                    out.append((topic + "event", msgspec.json.encode(error)))
                    if code == "E1":
                        recent.append(ts + 1)
            recent = [t for t in recent if t > ts - 24 * HOUR_MS]
            if rng.random() < 1 / (1 + math.exp(8 - 0.5 * len(recent) - 0.2 * age)):
                failure = {"type": "failure", "code": "F", "ts": ts + 2}
                repair = {"type": "maintenance", "code": "repair", "ts": ts + 3}
                out.append((topic + "event", msgspec.json.encode(failure)))
                out.append((topic + "event", msgspec.json.encode(repair)))
                troubled = False
    return out
