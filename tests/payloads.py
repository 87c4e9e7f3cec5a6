"""Device messages the tests send to `twin serve` and to cluster mode alike: malformed ones and
what they are rejected for (tests/test_ingest.py, tests/test_cluster.py: they share the
decoder), and a fleet's history to train on (tests/test_trainer.py, tests/test_cluster.py)."""

from __future__ import annotations

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

    Wear grows by a random amount each step; vibration follows it, pressure is noise. Past a
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
