"""Reading a machine's history back: from InfluxDB 1.x when configured, else the recent window.

Raw points, or with `every` a mean/min/max per window. The answer says where it came from.
InfluxDB 2 is read by Grafana (Flux), not here.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from twin.durations import parse_duration, parse_time
from twin.errors import InvalidRequest, NotFound
from twin.state import FleetState


class InfluxQL(Protocol):
    """What history needs of InfluxDB 1.x (`twin.sinks.InfluxDB1Client` is one)."""

    def query(self, influxql: str) -> list[dict[str, Any]]: ...


class BadQuery(InvalidRequest):
    """A history request that cannot be answered as asked."""


class History:
    """Answers history queries for the API."""

    def __init__(self, state: FleetState, influx: InfluxQL | None) -> None:
        self.state = state
        self.influx = influx

    def query(
        self,
        machine: str,
        signals: list[str],
        start: str,
        end: str,
        every: str | None,
        limit: int,
    ) -> dict[str, Any]:
        """The history of `machine`; `NotFound` if it never reported, `InvalidRequest` on bad
        input, `SinkError` when InfluxDB does not answer."""
        found = self.state.recent(machine)
        if found is None:
            raise NotFound(f"no machine {machine!r} has reported")
        known, recent = found
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
            every_ms = parse_duration(every)
            if every_ms < 1000:
                raise BadQuery("every must be at least 1s")
        if self.influx is not None:
            series = _from_influx(self.influx, machine, names, start_ms, end_ms, every_ms, limit)
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
    influx: InfluxQL,
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
