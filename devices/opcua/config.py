"""The OPC UA gateway's config file (TOML), validated: one clear error naming the key.

    mqtt_url = "mqtt://127.0.0.1:1883"          # as TWIN_MQTT_URL
    [[server]]
    endpoint = "opc.tcp://127.0.0.1:4840"
    security = "None"                            # or "Basic256Sha256:SignAndEncrypt"
    mode = "subscribe"                           # or "poll"
    [[server.machine]]
    site = "plant1"
    machine = "mill1"
    type = "M"
    [server.machine.signals]
    spindle_speed_rpm = { node = "nsu=urn:example:plant;s=Mill1.SpindleSpeed", interval_ms = 500 }
    torque_nm = { path = "Objects/Mill1/Torque", namespace = "urn:example:plant" }

A signal is bound to a node by its id with the namespace given by URI (`nsu=`; an index,
`ns=`, differs between servers and is refused), or by a browse path below `Objects` whose names
are in `namespace`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from twin.config import BrokerAddress, Settings, read_toml
from twin.messages import SIGNAL_NAME
from twin.topics import SEGMENT

Segment = Annotated[str, Field(pattern="^" + SEGMENT.pattern.removesuffix(r"\Z") + "$")]
_POLICIES = ("Basic128Rsa15", "Basic256", "Basic256Sha256", "Aes128Sha256RsaOaep")
_MODES = ("Sign", "SignAndEncrypt")
_NODE = re.compile(r"nsu=[^;]+;[isgb]=.+\Z")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SignalConfig(_Strict):
    """Where one signal's value comes from on the server."""

    node: str | None = Field(default=None, description="nsu=<namespace URI>;s=... (or i=, g=, b=)")
    path: str | None = Field(default=None, description="Objects/<name>/<name>...")
    namespace: str | None = Field(default=None, description="the namespace URI of a path's names")
    interval_ms: int = Field(default=1000, ge=10, le=3_600_000, description="sampling interval")
    deadband: float | None = Field(default=None, ge=0, description="absolute deadband")

    @field_validator("node")
    @classmethod
    def _by_uri(cls, value: str | None) -> str | None:
        if value is not None and not _NODE.match(value):
            raise ValueError(
                "must be nsu=<namespace URI>;<i|s|g|b>=<id>: a namespace index (ns=) differs "
                "between servers"
            )
        return value

    @field_validator("path")
    @classmethod
    def _below_objects(cls, value: str | None) -> str | None:
        if value is not None:
            names = value.strip("/").split("/")
            if names[0] != "Objects" or len(names) < 2 or not all(names):
                raise ValueError("must be Objects/<name>/...: a browse path below Objects")
        return value

    @model_validator(mode="after")
    def _one_binding(self) -> SignalConfig:
        if (self.node is None) == (self.path is None):
            raise ValueError("needs either node or path (one of them)")
        if self.path is not None and self.namespace is None:
            raise ValueError("a path needs the namespace URI of its names (namespace)")
        return self


class MachineConfig(_Strict):
    site: Segment
    machine: Segment
    type: str | None = Field(default=None, min_length=1, max_length=64)
    signals: dict[str, SignalConfig] = Field(min_length=1)

    @field_validator("signals")
    @classmethod
    def _signal_names(cls, value: dict[str, SignalConfig]) -> dict[str, SignalConfig]:
        for name in value:
            if not SIGNAL_NAME.match(name):
                raise ValueError(f"signal name {name!r} must match [a-z][a-z0-9_]{{0,63}}")
        return value


class ServerConfig(_Strict):
    endpoint: str = Field(pattern=r"^opc\.tcp://")
    security: str = "None"
    certificate: Path | None = None  # the gateway's certificate (DER or PEM), with security
    private_key: Path | None = None
    server_certificate: Path | None = None  # pinned; else the server's is taken as offered
    username: str | None = None
    password: str | None = None
    mode: Literal["subscribe", "poll"] = "subscribe"
    timeout_s: float = Field(default=4.0, gt=0, le=300)
    publishing_interval_ms: int = Field(default=500, ge=10, le=60_000)
    timestamps: Literal["source", "server", "gateway"] = "source"
    reconnect_max_s: float = Field(default=30.0, ge=1, le=3600)
    machine: list[MachineConfig] = Field(min_length=1)

    @field_validator("security")
    @classmethod
    def _security(cls, value: str) -> str:
        if value == "None":
            return value
        policy, _, mode = value.partition(":")
        if policy not in _POLICIES or mode not in _MODES:
            raise ValueError(
                f"must be None or <policy>:<mode>, policy one of {', '.join(_POLICIES)}, "
                f"mode one of {', '.join(_MODES)}"
            )
        return value

    @model_validator(mode="after")
    def _credentials(self) -> ServerConfig:
        if self.security != "None" and (self.certificate is None or self.private_key is None):
            raise ValueError(f"security {self.security} needs certificate and private_key")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


class GatewayConfig(_Strict):
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    topic_root: Segment = "factory"
    outbox: Path = Path("opcua-outbox.sqlite3")  # readings the broker has not acknowledged
    outbox_max: int = Field(default=1_000_000, ge=100)  # past this the oldest are dropped
    server: list[ServerConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_machines(self) -> GatewayConfig:
        seen: set[str] = set()
        for server in self.server:
            for machine in server.machine:
                if machine.machine in seen:
                    raise ValueError(f"machine {machine.machine!r} is configured twice")
                seen.add(machine.machine)
        return self

    @field_validator("mqtt_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return Settings._check_mqtt_url(value)  # as TWIN_MQTT_URL is checked

    @property
    def broker(self) -> BrokerAddress:
        return Settings(_env_file=None, mqtt_url=self.mqtt_url).broker  # type: ignore[call-arg]


def load(path: Path) -> GatewayConfig:
    """Read and validate `path`; raise `ConfigError` naming the file and the key."""
    config = read_toml(path, GatewayConfig)
    if not config.outbox.is_absolute():
        config = config.model_copy(update={"outbox": path.parent / config.outbox})
    return config
