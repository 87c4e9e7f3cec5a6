"""Time-series sinks, by name. A new sink is one module and one line in `build`."""

from __future__ import annotations

from twin.config import Settings
from twin.sinks.base import Sink, SinkError
from twin.sinks.influxdb1 import InfluxDB1Client, InfluxDB1Sink
from twin.sinks.influxdb2 import InfluxDB2Sink

__all__ = [
    "InfluxDB1Client",
    "InfluxDB1Sink",
    "InfluxDB2Sink",
    "Sink",
    "SinkError",
    "build",
    "reader",
]


def build(settings: Settings) -> list[Sink]:
    """The sinks the settings configure: InfluxDB 1.x with TWIN_INFLUX_DB, 2.x with a bucket."""
    url = settings.influx_url
    if not url:
        return []
    sinks: list[Sink] = []
    if settings.influx_db:
        sinks.append(
            InfluxDB1Sink(url, settings.influx_db, settings.influx_user, settings.influx_password)
        )
    if settings.influx_bucket:
        sinks.append(
            InfluxDB2Sink(
                url, settings.influx_token or "", settings.influx_org or "", settings.influx_bucket
            )
        )
    return sinks


def reader(settings: Settings) -> InfluxDB1Client | None:
    """Where history is read back from: InfluxDB 1.x (InfluxQL) when it is configured."""
    if not settings.influx_url or not settings.influx_db:
        return None
    return InfluxDB1Client(
        settings.influx_url, settings.influx_db, settings.influx_user, settings.influx_password
    )
