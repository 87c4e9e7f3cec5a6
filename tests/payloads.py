"""Malformed device messages and what they are rejected for: one table, run against `twin serve`
(tests/test_ingest.py) and cluster mode (tests/test_cluster.py), which share the decoder."""

from __future__ import annotations

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
