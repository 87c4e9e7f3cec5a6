"""InfluxDB 1.x through its HTTP API (`TWIN_INFLUX_DB`): the sink writes, the reader queries.

Both go through one small HTTP client: `/write?db=...&precision=ms` for line protocol, `/query`
for InfluxQL (epoch ms times).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from twin.sinks.base import SinkError


class InfluxDB1Client:
    """One database on one InfluxDB 1.x server; errors come out as `SinkError`."""

    def __init__(
        self, url: str, db: str, user: str | None = None, password: str | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.db = db
        self._headers: dict[str, str] = {}
        if user:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"

    def _request(self, path: str, params: dict[str, str], body: bytes | None) -> bytes:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise SinkError(f"InfluxDB answered {exc.code} on {path}: {detail}") from exc
        except OSError as exc:
            raise SinkError(f"InfluxDB at {self.url} is unreachable: {exc}") from exc

    def write(self, lines: list[str]) -> None:
        self._request("/write", {"db": self.db, "precision": "ms"}, "\n".join(lines).encode())

    def query(self, influxql: str) -> list[dict[str, Any]]:
        """Run InfluxQL; return the first statement's series (epoch ms times)."""
        raw = self._request("/query", {"db": self.db, "q": influxql, "epoch": "ms"}, b"")
        result = json.loads(raw)["results"][0]
        if "error" in result:
            raise SinkError(f"InfluxDB query failed: {result['error']}")
        return list(result.get("series", []))


class InfluxDB1Sink:
    """Writes line protocol; creates the database (idempotently) before the first write."""

    name = "influxdb1"

    def __init__(
        self, url: str, db: str, user: str | None = None, password: str | None = None
    ) -> None:
        self.client = InfluxDB1Client(url, db, user, password)
        self._created = False

    def start(self) -> None:
        """Nothing to do: the database is created before the first write."""

    def write(self, lines: list[str]) -> None:
        if not self._created:
            self.client.query(f'CREATE DATABASE "{self.client.db}"')
            self._created = True
        self.client.write(lines)

    def close(self) -> None:
        pass
