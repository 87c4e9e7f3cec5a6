"""InfluxDB line protocol, shared by both InfluxDB sinks.

Schema (timestamps in milliseconds, written with precision=ms):
- `telemetry`: tags `site`, `machine`; one field per signal; the reading's event time.
- `risk`: tags `site`, `machine`, `model_version`; fields `probability`, `threshold`; scoring time.
- `alert`: tags `site`, `machine`, `rule`, `severity`; fields `id`, `state`, `acknowledged`,
  `message`; the time of the change.
- `pipeline`: tag `sink`; fields `received`, `duplicates`, `rejected`, `sink_lag`; every 10 s.

Lines are formatted directly: influxdb-client's `Point` serialises ~4x slower, and this is the
sink's hot path.
"""

from __future__ import annotations

from twin.alerts import Alert
from twin.messages import Reading

_TAG_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\="})


def tag(value: str) -> str:
    return value.translate(_TAG_ESCAPES)


def telemetry_lines(site: str, machine: str, readings: list[Reading]) -> list[str]:
    """One line per reading; signal names are already safe (`[a-z][a-z0-9_]*`)."""
    series = f"telemetry,machine={tag(machine)},site={tag(site)} "
    return [
        series
        + ",".join(f"{name}={float(value)!r}" for name, value in r.values.items())
        + f" {r.ts}"
        for r in readings
    ]


def risk_line(
    site: str, machine: str, model_version: str, probability: float, threshold: float, ts: int
) -> str:
    return (
        f"risk,machine={tag(machine)},model_version={tag(model_version)},site={tag(site)} "
        f"probability={float(probability)!r},threshold={float(threshold)!r} {ts}"
    )


def _string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def alert_line(
    site: str,
    machine: str,
    rule: str,
    severity: str,
    alert_id: int,
    state: str,
    acknowledged: bool,
    message: str,
    ts: int,
) -> str:
    return (
        f"alert,machine={tag(machine)},rule={tag(rule)},severity={tag(severity)},site={tag(site)} "
        f"id={alert_id}i,state={_string(state)},acknowledged={'true' if acknowledged else 'false'},"
        f"message={_string(message)} {ts}"
    )


def alert_point(alert: Alert) -> str:
    """An alert change as an `alert` point, at the time of the change."""
    return alert_line(
        alert.site,
        alert.machine,
        alert.rule,
        alert.severity,
        alert.id,
        alert.state,
        alert.acknowledged,
        alert.message,
        alert.updated_at,
    )


def pipeline_line(
    sink: str, received: int, duplicates: int, rejected: int, lag: int, ts: int
) -> str:
    return (
        f"pipeline,sink={tag(sink)} received={received}i,duplicates={duplicates}i,"
        f"rejected={rejected}i,sink_lag={lag}i {ts}"
    )
