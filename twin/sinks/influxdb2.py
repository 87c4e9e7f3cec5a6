"""InfluxDB 2.x through influxdb-client (`TWIN_INFLUX_TOKEN`, `_ORG`, `_BUCKET`).

The only module that imports influxdb-client. Ready line-protocol strings go to its synchronous
write API, so no `Point` objects are built.
"""

from __future__ import annotations

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from urllib3.exceptions import HTTPError

from twin.sinks.base import SinkError


class InfluxDB2Sink:
    name = "influxdb2"

    def __init__(self, url: str, token: str, org: str, bucket: str) -> None:
        self.url = url
        self.token = token
        self.org = org
        self.bucket = bucket
        self._client: InfluxDBClient | None = None

    def start(self) -> None:
        self._client = InfluxDBClient(url=self.url, token=self.token, org=self.org, timeout=10_000)
        self._write = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, lines: list[str]) -> None:
        try:
            self._write.write(
                self.bucket,
                self.org,
                lines,
                # The constant is the str "ms"; the client's own hint names the class instead.
                write_precision=WritePrecision.MS,  # type: ignore[arg-type]
            )
        except ApiException as exc:
            raise SinkError(f"InfluxDB 2 answered {exc.status}: {str(exc.body)[:300]}") from exc
        except (HTTPError, OSError) as exc:
            raise SinkError(f"InfluxDB 2 at {self.url} is unreachable: {exc}") from exc

    def close(self) -> None:
        if self._client is not None:
            self._client.close()  # type: ignore[no-untyped-call]  # the client has no hints here
            self._client = None
