"""Reading a machine's history back: from InfluxDB 1.x when configured, else the recent window.

Raw points, or with `every` a mean/min/max per window. The answer says where it came from.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from twin.model.fleet import parse_duration
from twin.sinks import InfluxDB1Sink
from twin.state import FleetState


class BadQuery(ValueError):
    """A history request that cannot be answered as asked (a 422)."""


def parse_time(text: str, now_ms: int) -> int:
    """'now', a relative '-1h' / '-30m', or an RFC 3339 time -> epoch ms."""
    text = text.strip()
    if text == "now":
        return now_ms
    if text.startswith("-"):
        try:
            return now_ms - parse_duration(text[1:])
        except ValueError as exc:
            raise BadQuery(str(exc)) from None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadQuery(f"{text!r} is not 'now', a relative time like '-1h', or RFC 3339") from None
    if parsed.tzinfo is None:
        raise BadQuery(f"{text!r} needs a UTC offset, e.g. 'Z'")
    return int(parsed.timestamp() * 1000)


def query(
    state: FleetState,
    influx: InfluxDB1Sink | None,
    machine: str,
    signals: list[str],
    start: str,
    end: str,
    every: str | None,
    limit: int,
) -> dict[str, Any] | None:
    """The history of `machine`, or None when it never reported; raise `BadQuery` on bad input."""
    with state.lock:
        twin = state.twin(machine)
        if twin is None:
            return None
        known = sorted(twin.values)
        recent = list(twin.recent)
    unknown = [s for s in signals if s not in known]
    if unknown:
        raise BadQuery(
            f"{machine} has never sent {', '.join(unknown)}; it sends: {', '.join(known)}"
        )
    names = signals or known
    now = int(time.time() * 1000)
    start_ms, end_ms = parse_time(start, now), parse_time(end, now)
    if start_ms >= end_ms:
        raise BadQuery("start must be before end")
    every_ms = None
    if every is not None:
        try:
            every_ms = parse_duration(every)
        except ValueError as exc:
            raise BadQuery(str(exc)) from None
        if every_ms < 1000:
            raise BadQuery("every must be at least 1s")
    if influx is not None:
        series = _from_influx(influx, machine, names, start_ms, end_ms, every_ms, limit)
        source = "influxdb"
    else:
        series = _from_recent(recent, names, start_ms, end_ms, every_ms, limit)
        source = "recent"
    return {
        "machine": machine,
        "source": source,
        "start": start_ms,
        "end": end_ms,
        "every_ms": every_ms,
        "series": series,
    }


def _from_recent(
    recent: list[tuple[int, dict[str, float]]],
    names: list[str],
    start: int,
    end: int,
    every: int | None,
    limit: int,
) -> dict[str, list[dict[str, float]]]:
    rows = sorted(((ts, v) for ts, v in recent if start <= ts <= end), key=lambda row: row[0])
    out: dict[str, list[dict[str, float]]] = {}
    for name in names:
        points = [(ts, values[name]) for ts, values in rows if name in values]
        if every is None:
            out[name] = [{"ts": ts, "value": v} for ts, v in points[:limit]]
            continue
        windows: dict[int, list[float]] = {}
        for ts, v in points:
            windows.setdefault(ts - ts % every, []).append(v)
        out[name] = [
            {"ts": w, "mean": sum(vs) / len(vs), "min": min(vs), "max": max(vs)}
            for w, vs in sorted(windows.items())[:limit]
        ]
    return out


def _from_influx(
    influx: InfluxDB1Sink,
    machine: str,
    names: list[str],
    start: int,
    end: int,
    every: int | None,
    limit: int,
) -> dict[str, list[dict[str, float]]]:
    where = (
        f"\"machine\" = '{machine.replace(chr(39), '')}' AND time >= {start}ms AND time <= {end}ms"
    )
    out: dict[str, list[dict[str, float]]] = {}
    for name in names:
        if every is None:
            q = f'SELECT "{name}" FROM "telemetry" WHERE {where} ORDER BY time LIMIT {limit}'
            rows = _rows(influx.query(q))
            out[name] = [{"ts": r[0], "value": r[1]} for r in rows if r[1] is not None]
        else:
            q = (
                f'SELECT mean("{name}"), min("{name}"), max("{name}") FROM "telemetry" '
                f"WHERE {where} GROUP BY time({every}ms) fill(none) LIMIT {limit}"
            )
            out[name] = [
                {"ts": r[0], "mean": r[1], "min": r[2], "max": r[3]} for r in _rows(influx.query(q))
            ]
    return out


def _rows(series: list[dict[str, Any]]) -> list[list[Any]]:
    return [row for s in series for row in s.get("values", [])]
