"""Site-model features (`twin.model.fleet`) against the same statistics computed plainly."""

from __future__ import annotations

import numpy as np
import pytest

from twin.history import MAX_RECENT_EVENTS, Bucket, HistoryPolicy, LiveHistory
from twin.messages import DeviceEvent
from twin.model.fleet import (
    FleetSpec,
    Samples,
    attributes_of,
    blank_signals,
    features,
    machine_split,
    series,
    spec_from,
)
from twin.trainer import Trainer

H = 3_600_000
BUCKET = 600_000


def _history(seed: int) -> tuple[list[Bucket], list[tuple[int, str, str]]]:
    """Two signals in 10-minute buckets over two days, with gaps, and a few events."""
    rng = np.random.default_rng(seed)
    buckets = []
    for i in range(288):
        if rng.random() < 0.2:
            continue  # a gap: the machine sent nothing then
        signals = {}
        for name in ("a", "b"):
            if name == "b" and i % 7 == 0:
                continue
            values = rng.normal(10 if name == "a" else 0, 2, rng.integers(1, 6))
            signals[name] = (
                float(len(values)),
                float(values.sum()),
                float((values**2).sum()),
                float(values[-1]),
            )
        buckets.append(Bucket(i * BUCKET, signals))
    events = [(int(t), "error", str(rng.choice(["E1", "E2"]))) for t in rng.uniform(0, 48 * H, 30)]
    events.append((5 * H, "maintenance", "oil"))
    return buckets, sorted(events)


def _plain(
    spec: FleetSpec, buckets: list[Bucket], events: list[tuple[int, str, str]], t: int
) -> dict[str, float]:
    """The features at `t`, computed row by row."""
    out: dict[str, float] = {}
    closed = [b for b in buckets if b.start + BUCKET <= t]
    for s in spec.signals:
        sent = [b for b in closed if s in b.signals]
        fresh = sent and t - (sent[-1].start + BUCKET) <= spec.stale_ms
        out[s] = sent[-1].signals[s][3] if fresh else np.nan
        out[f"{s}_missing"] = float(not fresh)
        for w, label in zip(spec.windows_ms, ("3h", "24h"), strict=True):
            inside = [b for b in sent if b.start >= t - w]
            n = sum(b.signals[s][0] for b in inside)
            total = sum(b.signals[s][1] for b in inside)
            squares = sum(b.signals[s][2] for b in inside)
            means = [b.signals[s][1] / b.signals[s][0] for b in inside]
            hours = [(b.start - buckets[0].start) / H for b in inside]
            mean = total / n if n else np.nan
            out[f"{s}_mean_{label}"] = mean
            out[f"{s}_std_{label}"] = np.sqrt(max(squares / n - mean**2, 0)) if n else np.nan
            out[f"{s}_min_{label}"] = min(means) if means else np.nan
            out[f"{s}_max_{label}"] = max(means) if means else np.nan
            out[f"{s}_slope_{label}"] = np.polyfit(hours, means, 1)[0] if len(means) > 1 else np.nan
            out[f"{s}_n_{label}"] = float(len(inside))
    for kind, code in spec.events:
        times = [ts for ts, k, c in events if (k, c) == (kind, code) and ts <= t]
        for w, label in zip(spec.windows_ms, ("3h", "24h"), strict=True):
            out[f"{kind}_{code}_count_{label}"] = float(sum(ts > t - w for ts in times))
        out[f"hours_since_{kind}_{code}"] = (t - times[-1]) / H if times else 720.0
    out["type_L"], out["type_M"] = 0.0, 1.0
    out["age_years"] = 7.5
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_features_equal_the_statistics_computed_plainly(seed: int) -> None:
    buckets, events = _history(seed)
    attributes = attributes_of("M", {"age_years": 7.5, "firmware": "2.1", "ok": True})
    data = series(buckets, events, attributes)
    spec = spec_from({"m": data, "n": series([], [], attributes_of("L", {}))}, BUCKET)
    assert spec.types == ("L", "M")
    assert spec.numeric == ("age_years",)
    times = np.asarray([2 * H + 1, 7 * H, 25 * H + 5, 30 * H, 47 * H])
    rows = features(spec, data, times)
    for row, t in zip(rows, times.tolist(), strict=True):
        expected = _plain(spec, buckets, events, t)
        got = dict(zip(spec.names, row.tolist(), strict=True))
        assert set(got) == set(expected)
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-9, nan_ok=True), name


def test_live_values_override_the_last_bucket_and_families_narrow_the_columns() -> None:
    buckets, events = _history(0)
    data = series(buckets, events)
    spec = spec_from({"m": data}, BUCKET).narrowed(("latest", "events"), "linear")
    assert not any("_mean_" in n for n in spec.names)
    row = features(spec, data, np.asarray([47 * H]), {"a": 99.0})[0]
    assert row[spec.names.index("a")] == 99.0
    assert row[spec.names.index("a_missing")] == 0.0


def test_blanking_a_signal_leaves_it_as_a_dead_sensor_would() -> None:
    buckets, events = _history(1)
    data = series(buckets, events)
    spec = spec_from({"m": data}, BUCKET)
    times = np.arange(4, 48) * H
    full = features(spec, data, times)
    blanked = blank_signals(spec, full)
    for i, t in enumerate(times.tolist()):
        gone = [s for s in spec.signals if blanked[i, spec.names.index(f"{s}_missing")] == 1.0]
        fresh = [s for s in spec.signals if full[i, spec.names.index(f"{s}_missing")] == 0.0]
        dropped = [s for s in fresh if s in gone]
        assert len(dropped) <= 1
        for s in dropped:
            without = series(
                [Bucket(b.start, {k: v for k, v in b.signals.items() if k != s}) for b in buckets],
                events,
            )
            dead = features(spec, without, np.asarray([t]))[0]
            np.testing.assert_array_equal(blanked[i], dead)


def test_machine_split_holds_whole_machines_out() -> None:
    machines = np.asarray([f"m{i % 23}" for i in range(1000)])
    train, test = machine_split(machines)
    assert not set(machines[train]) & set(machines[test])
    assert len(set(machines[test])) == 5  # a fifth of 23, rounded
    assert (train | test).all()


def test_live_history_remembers_events_of_every_kind_and_reads_an_earlier_snapshot() -> None:
    class Outbox:
        def event(self, item: object) -> None:
            pass

    policy = HistoryPolicy(BUCKET, 24 * H)
    history = LiveHistory("m", "s", policy, Outbox())  # type: ignore[arg-type]
    old = {
        "bucket": [0, {}, 0, 1],
        "buckets": [],
        "errors": [[H, "E1"], [2 * H, "E2"]],
        "maintenance": {"oil": 3 * H},
    }
    history.load(old)
    assert history.events() == [
        (H, "error", "E1"),
        (2 * H, "error", "E2"),
        (3 * H, "maintenance", "oil"),
    ]
    again = LiveHistory("m", "s", policy, Outbox())  # type: ignore[arg-type]
    again.load(history.dump())
    assert again.events() == history.events()


def test_interactions_are_products_of_named_columns_and_survive_the_manifest() -> None:
    buckets, events = _history(0)
    data = series(buckets, events)
    plain = spec_from({"m": data}, BUCKET).narrowed(("latest", "windows"), "linear")
    crossed = plain.narrowed(plain.families, "linear", (("a", "b_mean_3h"), ("a", "b")))
    assert FleetSpec.from_json(crossed.to_json()) == crossed
    assert crossed.names[-2:] == ["a*b_mean_3h", "a*b"]
    assert crossed.groups[-2:] == ["a*b", "a*b"]
    full = spec_from({"m": data}, BUCKET)
    assert (crossed.mask(full) == plain.mask(full)).all()
    times = np.arange(4, 48) * H
    base, rows = features(plain, data, times), features(crossed, data, times)
    np.testing.assert_array_equal(rows[:, : len(plain.names)], base)
    a, b, b3 = (plain.names.index(n) for n in ("a", "b", "b_mean_3h"))
    np.testing.assert_array_equal(rows[:, -2], base[:, a] * base[:, b3])
    np.testing.assert_array_equal(rows[:, -1], base[:, a] * base[:, b])


def test_the_gate_keeps_an_interaction_only_where_it_helps() -> None:
    """Failures where two signals matter only together (both high or both low): the product is
    kept; failures driven by one signal alone: no product is."""
    rng = np.random.default_rng(3)
    full = FleetSpec(("a", "b"), (), (), (), BUCKET)
    n = 6000
    X = np.zeros((n, len(full.names)))
    a, b = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    X[:, full.names.index("a")], X[:, full.names.index("b")] = a, b
    times = np.arange(n) * BUCKET
    machines = np.asarray([f"m{i % 12}" for i in range(n)])
    trainer = Trainer(None, None, BUCKET, 24 * H)  # type: ignore[arg-type]
    for logit, kept in ((-3 + 12 * (a - 0.5) * (b - 0.5), True), (-5 + 4 * a, False)):
        y = (rng.uniform(0, 1, n) < 1 / (1 + np.exp(-logit))).astype(int)
        data = Samples(X, y, times, machines)
        spec, _, tried = trainer._gate({}, full, data, np.ones(n, dtype=bool), BUCKET)
        assert any(c["interactions"] for c in tried)
        assert bool(spec.interactions) is kept, tried
        if kept:
            assert ("a", "b") in spec.interactions


def test_a_flood_of_events_keeps_the_newest_within_the_window() -> None:
    class Outbox:
        def event(self, item: object) -> None:
            pass

    history = LiveHistory("m", "s", HistoryPolicy(BUCKET, 24 * H), Outbox())  # type: ignore[arg-type]
    for i in range(MAX_RECENT_EVENTS + 500):
        history.event(DeviceEvent(type="error", code="E9", ts=H + i))
    assert len(history.recent) == MAX_RECENT_EVENTS
    assert history.recent[0][0] == H + 500
    history.event(DeviceEvent(type="maintenance", code="oil", ts=26 * H))  # a day later
    assert [e[1:] for e in history.events()] == [("error", "E9"), ("maintenance", "oil")]
    assert history.last[("error", "E9")] == H + MAX_RECENT_EVENTS + 499
