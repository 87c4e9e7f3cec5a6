"""Settings: the only place that reads the environment (``TWIN_*`` variables and ``.env``)."""

from __future__ import annotations

import re
import socket
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from twin.errors import ConfigError

ROLES = ("read", "operate", "admin")
# What each role may do: operate (ack alerts, allocations) includes read; admin (models) all.
ROLE_GRANTS = {"read": ("read",), "operate": ("read", "operate"), "admin": ROLES}


M = TypeVar("M", bound=BaseModel)


Loc = tuple[int | str, ...]


def read_toml(
    path: Path, model: type[M], check: Callable[[M], Iterable[tuple[Loc, str]]] | None = None
) -> M:
    """A TOML file validated as `model`, then by `check` (problems that need the whole file:
    its key path and the reason); `ConfigError` names the file, the line and the key:
    `gateway.toml: line 7: server[0].machine[1].signals.torque_nm: Field required`."""
    try:
        text = path.read_text()
        data = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from exc
    try:
        validated = model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise _located(path, text, error["loc"], error["msg"]) from None
    for loc, problem in check(validated) if check else ():
        raise _located(path, text, loc, problem)
    return validated


def _located(path: Path, text: str, loc: Loc, problem: str) -> ConfigError:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    line = toml_line(text, loc)
    where = f"line {line}: " if line else ""
    return ConfigError(f"{path}: {where}{key or 'the file'}: {problem}")


_TABLE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)
_PART = re.compile(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""")


def toml_line(text: str, loc: Loc) -> int | None:
    """The line that defines the deepest part of `loc` (a validation error's path) that the
    text names: a table header or a `key = value` line. None when it names none of it (a
    missing top-level key). Array-of-tables headers count their entries, as TOML does."""
    lines: dict[Loc, int] = {}
    arrays: dict[Loc, int] = {}  # an array of tables -> its last index

    def resolve(keys: list[str]) -> list[int | str]:
        out: list[int | str] = []
        for k in keys:
            out.append(k)
            if tuple(out) in arrays:
                out.append(arrays[tuple(out)])
        return out

    def parts(dotted: str) -> list[str]:
        return [p.strip("\"'") for p in _PART.findall(dotted)]

    table: list[int | str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TABLE.match(line)
        if header:
            keys = parts(header.group(2))
            if header.group(1) == "[[":
                array = (*resolve(keys[:-1]), keys[-1])
                arrays[array] = arrays.get(array, -1) + 1
                table = [*array, arrays[array]]
            else:
                table = resolve(keys)
            for end in range(1, len(table) + 1):  # a header defines its parents too
                lines.setdefault(tuple(table[:end]), number)
            continue
        key = _KEY.match(line)
        if key:
            full = [*table, *parts(key.group(1))]
            for end in range(len(table) + 1, len(full) + 1):
                lines.setdefault(tuple(full[:end]), number)
    for end in range(len(loc), 0, -1):
        if tuple(loc[:end]) in lines:
            return lines[tuple(loc[:end])]
    return None


def _host_id() -> str:
    """This host's name as a worker id (its first label, in the id's alphabet)."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:64]
    return name or "worker"


class BrokerAddress(BaseModel):
    """Where the MQTT broker is and how to log in, from ``TWIN_MQTT_URL`` and the TLS files."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None  # None: the system's CAs
    cert_file: Path | None = None  # client certificate, for mutual TLS
    key_file: Path | None = None


class Settings(BaseSettings):
    """Every operator-facing setting; unset means off or the embedded default."""

    model_config = SettingsConfigDict(env_prefix="TWIN_", env_file=".env", extra="ignore")

    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_client_id: str = "factory-twin"
    mqtt_ca_file: Path | None = None  # with mqtts://; hostnames are always verified
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    # MQTT 5 is the contract; 3.1.1 (clean_session=False) exists for brokers without 5,
    # such as the embedded demo broker.
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    mqtt_session_expiry_s: int = Field(default=7 * 24 * 3600, ge=1)
    topic_root: str = Field(default="factory", pattern=r"^[A-Za-z0-9_.-]{1,64}$")

    # Sparkplug B 3.0 host application: a second MQTT connection to the same broker.
    sparkplug: bool = False
    sparkplug_host_id: str = Field(default="factory-twin", pattern=r"^[^/#+]{1,64}$")
    sparkplug_map: Path | None = None  # TOML: groups -> sites, ids -> machines, metric names
    sparkplug_reorder_s: float = Field(default=2.0, ge=0)  # a seq gap waits this long
    sparkplug_rebirth_s: float = Field(default=10.0, ge=0)  # rebirth requests a node, at most
    sparkplug_inactivity_s: float = Field(default=300.0, gt=0)  # a silent node is offline

    data_dir: Path = Path("twin-data")
    journal_commit_ms: int = Field(default=20, ge=1, le=1000)
    journal_max_rows: int = Field(default=2_000_000, ge=1000)
    journal_sync: Literal["normal", "full"] = "normal"
    snapshot_interval_s: float = Field(default=30.0, gt=0)

    max_payload_bytes: int = Field(default=256 * 1024, ge=1024)
    max_batch: int = Field(default=1000, ge=1)
    max_future_s: float = Field(default=300.0, ge=0)
    deadletter_max: int = Field(default=1000, ge=1)
    recent_readings: int = Field(default=500, ge=1)
    stats_window_s: float = Field(default=600.0, gt=0)

    history_bucket_s: int = Field(default=300, ge=1, le=86_400)
    # The longest window a site model's features may use: each twin keeps this much history
    # in memory (about 1 KB a bucket of five signals).
    feature_window_s: int = Field(default=86_400, ge=60, le=30 * 86_400)
    alert_rules: Path | None = None  # a TOML file of [[rule]] tables, added to the defaults
    alert_retention_s: float = Field(default=7 * 24 * 3600, gt=0)
    controls: Path | None = None  # TOML: the signals setpoint advice may change, per type
    catalogue: Path | None = None  # TOML: the products orders configure (else the bundled one)
    order_transfer_min: float = Field(default=60.0, ge=0)  # moving an order between sites
    order_repair_min: float = Field(default=60.0, gt=0)  # an order's delay per failure
    twin_publish_interval_s: float = Field(default=1.0, ge=0)  # retained twin states, per machine
    twin_publish_max_per_s: float = Field(default=2000.0, ge=0)  # fleet-wide; 0: no budget
    stream_buffer: int = Field(default=1000, ge=1)  # events a /stream client may fall behind
    stream_heartbeat_s: float = Field(default=15.0, gt=0)
    score_interval_ms: int = Field(default=200, ge=1, le=60_000)

    influx_url: str | None = None
    influx_db: str | None = None  # InfluxDB 1.x database: the /write API
    influx_user: str | None = None
    influx_password: str | None = None
    influx_token: str | None = None  # InfluxDB 2.x
    influx_org: str | None = None
    influx_bucket: str | None = None
    sink_batch: int = Field(default=5000, ge=1, le=100_000)  # points per write at most
    sink_max_delay_ms: int = Field(default=1000, ge=10)  # how long points may wait for a batch

    # Cluster mode: `twin worker` and `twin api` on NATS JetStream (README, "Scaling out").
    nats_url: str | None = None  # nats://[user:pass@]host[:port][,nats://...]
    nats_partitions: int = Field(default=32, ge=1, le=1024)  # changing it is a migration
    nats_replicas: int = Field(default=1, ge=1, le=5)  # of every stream and bucket: 3 on 3 nodes
    worker_id: str = Field(default_factory=lambda: _host_id(), pattern=r"^[A-Za-z0-9_-]{1,64}$")
    cluster_snapshot_s: float = Field(default=2.0, gt=0, le=60)  # a partition's ack cadence
    # JetStream domains of the plants' leaf nodes whose TWIN_PLANT streams TWIN_IN sources.
    nats_plants: str = Field(default="", pattern=r"^([A-Za-z0-9_-]+(,[A-Za-z0-9_-]+)*)?$")

    api_tokens: str = ""  # "token" (every role) or "token:role", comma-separated
    api_read_open: bool = True  # GETs without a token; false: they need one with the read role
    cors_origins: str = ""  # comma-separated origins allowed by CORS; empty: CORS off
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("must look like mqtt://[user:pass@]host[:port] or mqtts://...")
        return value

    @model_validator(mode="after")
    def _check_influx(self) -> Settings:
        if self.influx_url and not (self.influx_db or self.influx_bucket):
            raise ValueError(
                "TWIN_INFLUX_URL needs TWIN_INFLUX_DB (1.x) or TWIN_INFLUX_BUCKET (2.x)"
            )
        if self.influx_bucket and not (self.influx_token and self.influx_org):
            raise ValueError("TWIN_INFLUX_BUCKET needs TWIN_INFLUX_TOKEN and TWIN_INFLUX_ORG")
        return self

    @property
    def broker(self) -> BrokerAddress:
        parts = urlsplit(self.mqtt_url)
        tls = parts.scheme == "mqtts"
        return BrokerAddress(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            ca_file=self.mqtt_ca_file,
            cert_file=self.mqtt_cert_file,
            key_file=self.mqtt_key_file,
        )

    @property
    def tokens(self) -> dict[str, frozenset[str]]:
        """token -> roles, from `token:role` pairs; a bare token has every role."""
        out: dict[str, frozenset[str]] = {}
        for item in (t.strip() for t in self.api_tokens.split(",")):
            if not item:
                continue
            token, _, role = item.partition(":")
            out[token] = frozenset(ROLE_GRANTS[role]) if role else frozenset(ROLES)
        return out

    @field_validator("nats_url")
    @classmethod
    def _check_nats_url(cls, value: str | None) -> str | None:
        for url in (value or "").split(","):
            parts = urlsplit(url.strip())
            if value is not None and (parts.scheme not in ("nats", "tls") or not parts.hostname):
                raise ValueError("must look like nats://[user:pass@]host[:port], comma-separated")
        return value

    @field_validator("api_tokens")
    @classmethod
    def _check_roles(cls, value: str) -> str:
        for item in (t.strip() for t in value.split(",")):
            role = item.partition(":")[2]
            if role and role not in ROLES:
                raise ValueError(f"unknown role {role!r}: use {', '.join(ROLES)}")
        return value

    @property
    def journal_path(self) -> Path:
        return self.data_dir / "twin.sqlite3"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"
