"""Reading history back: the recent window, or InfluxQL against InfluxDB 1.x (a fake here; the
real server is in test_sinks)."""

from __future__ import annotations

import time

import pytest

from tests.fakes import InfluxQL
from twin.durations import BadDuration, parse_duration, parse_time
from twin.errors import InvalidRequest, NotFound
from twin.messages import Decoded, Reading
from twin.state import FleetState
from twin.timeseries import BadQuery, History
from twin.topics import Address

NOW = int(time.time() * 1000)


def fleet() -> FleetState:
    """Six readings over the last minute (taken when the test runs, not at import)."""
    state = FleetState()
    now = int(time.time() * 1000)
    readings = [
        Reading(now - 60_000 + i * 10_000, i, {"t": float(i), "p": 10.0 * i}) for i in range(6)
    ]
    state.apply(Decoded(Address("s1", "m1", "telemetry"), readings), now)
    return state


def test_without_influxdb_the_recent_window_answers_raw_or_per_window() -> None:
    history = History(fleet(), None)
    raw = history.query("m1", ["t"], "-2m", "now", None, 1000)
    assert raw["source"] == "recent"
    assert [p["value"] for p in raw["series"]["t"]] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert sorted(history.query("m1", [], "-2m", "now", None, 3)["series"]) == ["p", "t"]
    assert len(history.query("m1", [], "-2m", "now", None, 3)["series"]["p"]) == 3
    windows = history.query("m1", ["p"], "-2m", "now", "30s", 1000)
    assert windows["every_ms"] == 30_000
    points = windows["series"]["p"]
    assert sum(1 for _ in points) >= 2
    assert all(p["min"] <= p["mean"] <= p["max"] for p in points)


def test_with_influxdb_the_history_is_asked_in_influxql() -> None:
    influx = InfluxQL({"t": [{"values": [[NOW - 1000, 1.5], [NOW, None]]}]})
    history = History(fleet(), influx)
    found = history.query("m1", ["t"], "-1h", "now", None, 10)
    assert found["source"] == "influxdb"
    assert found["series"]["t"] == [{"ts": NOW - 1000, "value": 1.5}]  # nulls left out
    (query,) = influx.queries
    assert query.startswith('SELECT "t" FROM "telemetry" WHERE "machine" = \'m1\'')
    assert query.endswith("ORDER BY time LIMIT 10")
    influx.series = {"t": [{"values": [[NOW, 1.0, 0.5, 1.5]]}]}
    per_minute = history.query("m1", ["t"], "-1h", "now", "1m", 10)
    assert "GROUP BY time(60000ms) fill(none)" in influx.queries[-1]
    assert per_minute["series"]["t"] == [{"ts": NOW, "mean": 1.0, "min": 0.5, "max": 1.5}]


def test_bad_history_requests_are_named() -> None:
    history = History(fleet(), None)
    with pytest.raises(NotFound, match="no machine 'ghost'"):
        history.query("ghost", [], "-1h", "now", None, 10)
    with pytest.raises(BadQuery, match="never sent x; it sends: p, t"):
        history.query("m1", ["x"], "-1h", "now", None, 10)
    with pytest.raises(BadQuery, match="start must be before end"):
        history.query("m1", [], "now", "-1h", None, 10)
    with pytest.raises(BadQuery, match="at least 1s"):
        history.query("m1", [], "-1h", "now", "0.5s", 10)
    with pytest.raises(InvalidRequest, match="needs a UTC offset"):
        history.query("m1", [], "2026-01-01T00:00:00", "now", None, 10)


def test_durations_and_times_parse_or_say_why() -> None:
    assert parse_duration("90m") == 90 * 60_000
    assert parse_duration(" 1.5h ") == 5_400_000
    assert parse_time("-2d", 10 * 86_400_000) == 8 * 86_400_000
    assert parse_time("1970-01-01T00:00:01Z", 0) == 1000
    for bad in ("", "10", "5w", "0s", "-1h"):
        with pytest.raises(BadDuration):
            parse_duration(bad)
    with pytest.raises(BadDuration, match="not 'now'"):
        parse_time("yesterday", 0)
