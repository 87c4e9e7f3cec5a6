"""The columnar recent window: its stats equal a plain pass over the readings it keeps."""

from __future__ import annotations

import math
import random

import msgspec
import pytest

from twin.window import RecentWindow


def _plain(rows: list[tuple[int, dict[str, float]]], since: int) -> dict[str, dict[str, float]]:
    out = {}
    for name in sorted({n for _, values in rows for n in values}):
        column = [v[name] for ts, v in rows if ts >= since and name in v]
        if column:
            n = len(column)
            out[name] = {
                "count": n,
                "mean": sum(column) / n,
                "min": min(column),
                "max": max(column),
            }
    return out


def _close(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> bool:
    return a.keys() == b.keys() and all(
        a[k]["count"] == b[k]["count"]
        and all(
            math.isclose(a[k][f], b[k][f], rel_tol=1e-12, abs_tol=1e-9)
            for f in ("mean", "min", "max")
        )
        for k in a
    )


@pytest.mark.parametrize("size", [40, 200])  # summed by the builtins, and by numpy
def test_stats_match_a_plain_pass_with_gaps_late_readings_and_new_signals(size: int) -> None:
    rng = random.Random(7)
    window = RecentWindow(size)
    kept: list[tuple[int, dict[str, float]]] = []
    ts = 1_000_000
    for i in range(600):
        # Now and then a late reading in the first part; in order after (the window a suffix).
        ts += -5000 if i < 150 and rng.random() < 0.25 else 1000
        names = ["a", "b"] + (["c"] if i > 100 else [])  # a signal that starts later
        values = {n: round(rng.uniform(-50, 50), 1) for n in names if rng.random() > 0.1}
        window.append(ts, values)
        kept = [*kept, (ts, values)][-size:]
        since = max(t for t, _ in kept) - rng.choice([5_000, 20_000, 100_000])
        assert _close(window.stats(since), _plain(kept, since)), i
    assert window.rows() == kept
    assert len(window.rows()) == size


def test_a_dump_survives_json_and_the_old_row_format_loads() -> None:
    window = RecentWindow(size=10)
    for i in range(25):
        window.append(1000 * i, {"a": float(i)} if i % 3 else {"a": float(i), "b": -1.0})
    restored = RecentWindow(size=10)
    restored.load(msgspec.json.decode(msgspec.json.encode(window.dump())))  # bytes as base64
    assert restored.rows() == window.rows()
    assert restored.stats(0) == window.stats(0)

    old = RecentWindow(size=10)  # a snapshot written while the window kept (ts, values) rows
    old.load([[ts, values] for ts, values in window.rows()])
    assert old.rows() == window.rows()


def test_a_batch_extends_the_window_as_its_readings_one_by_one_would() -> None:
    rng = random.Random(3)
    batched, single = RecentWindow(60), RecentWindow(60)
    ts = 1_000_000
    for i in range(80):
        rows = []
        for _ in range(rng.choice([1, 5, 20])):
            ts += -3000 if rng.random() < 0.05 else 1000  # now and then a late one
            names = ["a", "b"] if rng.random() < 0.9 else ["b", "a", "c"]  # order, new signal
            rows.append((ts, {n: round(rng.uniform(0, 9), 1) for n in names}))
        batched.extend(rows)
        for row in rows:
            single.append(*row)
        assert batched.rows() == single.rows(), i
        assert batched.stats(ts - 30_000) == single.stats(ts - 30_000), i
