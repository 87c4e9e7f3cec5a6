"""MQTT topic patterns: the wire contract's addresses, shared by twin, simulator, docs and tests."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from twin.errors import InvalidRequest

SEGMENT = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")

InboundKind = Literal["telemetry", "status", "event"]
INBOUND_KINDS: tuple[InboundKind, ...] = ("telemetry", "status", "event")


@dataclass(frozen=True, slots=True)
class Address:
    """Site, machine and message kind of one topic."""

    site: str
    machine: str
    kind: str


class BadTopic(InvalidRequest):
    """A topic that does not follow ``{root}/{site}/{machine}/{kind}``."""


@dataclass(frozen=True, slots=True)
class Topics:
    """All topics under one root prefix (``TWIN_TOPIC_ROOT``, default ``factory``)."""

    root: str = "factory"

    def telemetry(self, site: str, machine: str) -> str:
        return f"{self.root}/{site}/{machine}/telemetry"

    def status(self, site: str, machine: str) -> str:
        return f"{self.root}/{site}/{machine}/status"

    def event(self, site: str, machine: str) -> str:
        return f"{self.root}/{site}/{machine}/event"

    def alert(self, site: str, machine: str) -> str:
        return f"{self.root}/{site}/{machine}/alert"

    def twin(self, site: str, machine: str) -> str:
        return f"{self.root}/{site}/{machine}/twin"

    def jobs(self, site: str, machine: str) -> str:
        """The machine's next operations (retained)."""
        return f"{self.root}/{site}/{machine}/jobs"

    @property
    def orders(self) -> str:
        """Every order change."""
        return f"{self.root}/$twin/orders"

    @property
    def twin_status(self) -> str:
        """The twin's own birth and last-will topic."""
        return f"{self.root}/$twin/status"

    def subscriptions(self) -> list[str]:
        """What the twin subscribes to: every device's telemetry, status and events."""
        return [f"{self.root}/+/+/{kind}" for kind in INBOUND_KINDS]

    def parse(self, topic: str) -> Address:
        """Split an inbound topic; raise `BadTopic` with the reason when it is not one."""
        parts = topic.split("/")
        if len(parts) != 4 or parts[0] != self.root:
            raise BadTopic(f"expected {self.root}/{{site}}/{{machine}}/{{kind}}, got {topic!r}")
        _, site, machine, kind = parts
        if kind not in INBOUND_KINDS:
            raise BadTopic(f"unknown message kind {kind!r}")
        for name, value in (("site", site), ("machine", machine)):
            if not SEGMENT.match(value):
                raise BadTopic(f"{name} {value[:80]!r} must match [A-Za-z0-9_.-]{{1,64}}")
        return Address(site, machine, kind)
