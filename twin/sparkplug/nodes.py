"""Sparkplug B edge nodes as the host application follows them, turned into the MQTT contract.

`Nodes.handle` takes one Sparkplug message and returns what it means for the twin: contract
messages (`factory/<site>/<machine>/status|telemetry|event`, JSON) that go through the journal
and the core as a device's would, and the edge nodes to ask for a rebirth. Per edge node it
keeps what the specification makes the host keep:

- NBIRTH starts a session: the alias map is reset, `bdSeq` and `seq` are taken, and the node's
  own metrics (other than `bdSeq` and `Node Control/*`) make the edge node a machine;
- DBIRTH defines a device's metrics; a birth with a metric without a name, or an alias used
  twice in the node, is refused and a rebirth asked for;
- NDATA/DDATA resolve aliases (`HasField`: an absent alias is not alias 0) or names;
- `seq` runs 0-255 and wraps, across all of a node's messages after NBIRTH; a message ahead of
  the next expected waits up to the reorder timeout for the ones before it, after which what
  waits is applied in order and a rebirth is asked for;
- NDEATH with the session's `bdSeq` (or none: a common deviation) and DDEATH make the machines
  offline at the host's receive time; an NDEATH of an earlier session is ignored; a node silent
  for the inactivity timeout is offline too (some nodes' deaths never match);
- data before a birth, an unknown alias or metric name: a rebirth request, at most one per node
  per `rebirth_s`, counted.

Numeric metrics (the integer types, Float, Double) and Boolean (0/1) become signals; String,
Text, UUID, DateTime and the rest are kept as the machine's `properties` (the latest of each).
`is_null` is not a value. The event time is the metric's timestamp, else the payload's, else
the receive time; an `is_historical` value is a reading marked `historical` (stats and
history, never the live value).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from google.protobuf.message import DecodeError

from twin.sparkplug.mapping import SparkplugMap
from twin.sparkplug.sparkplug_b_pb2 import Payload
from twin.topics import Topics

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
BD_SEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
_SIGNED = {1: 8, 2: 16, 3: 32, 4: 64}  # Int8..Int64: two's complement in the unsigned field
_NUMERIC = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
_BOOLEAN = 11
_MAX_BATCH = 1000  # readings per telemetry message (TWIN_MAX_BATCH's default)

Out = tuple[str, bytes]  # a contract message: topic, JSON payload


@dataclass(frozen=True, slots=True)
class Metric:
    """A metric a birth defined."""

    name: str
    datatype: int
    device: str | None  # None: the edge node's own


@dataclass
class Node:
    """One edge node's session, as far as the host has seen it."""

    group: str
    edge: str
    born: bool = False
    bdseq: int | None = None
    seq: int = 0  # of the last message applied
    aliases: dict[int, Metric] = field(default_factory=dict)
    names: dict[tuple[str | None, str], Metric] = field(default_factory=dict)
    devices: set[str] = field(default_factory=set)  # born
    own_metrics: bool = False  # the node itself is a machine
    waiting: dict[int, tuple[str, str | None, Any, int]] = field(default_factory=dict)
    gap_since: int | None = None  # ms: since when a message waits for those before it
    rebirth_at: int | None = None  # ms: when a rebirth was last asked for
    last_seen: int = 0


@dataclass
class Result:
    messages: list[Out] = field(default_factory=list)
    rebirths: list[tuple[str, str, str]] = field(default_factory=list)  # group, edge, why


class Nodes:
    """Every edge node's state; one thread at a time (the host's MQTT thread)."""

    def __init__(
        self,
        mapping: SparkplugMap,
        topics: Topics,
        reorder_ms: int,
        rebirth_ms: int,
        inactivity_ms: int,
    ) -> None:
        self.mapping = mapping
        self.topics = topics
        self.reorder_ms = reorder_ms
        self.rebirth_ms = rebirth_ms
        self.inactivity_ms = inactivity_ms
        self.nodes: dict[tuple[str, str], Node] = {}
        self.counts: Counter[str] = Counter()  # messages by type, rebirths, gaps, bad payloads

    # -- in -----------------------------------------------------------------------------------

    def handle(self, topic: str, data: bytes, now: int) -> Result:
        """One message on `spBv1.0/<group>/<type>/<edge>[/<device>]`."""
        result = Result()
        parts = topic.split("/")
        if len(parts) not in (4, 5) or parts[0] != NAMESPACE or parts[1] == "STATE":
            return result
        group, kind, edge = parts[1], parts[2], parts[3]
        device = parts[4] if len(parts) == 5 else None
        if kind in ("NCMD", "DCMD"):
            return result  # commands: to edge nodes, not from them
        self.counts[kind] += 1
        try:
            payload = Payload.FromString(data)
        except DecodeError:
            self.counts["bad_payloads"] += 1
            log.warning("sparkplug: %s is not a Sparkplug B payload; dropped", topic)
            return result
        node = self.nodes.setdefault((group, edge), Node(group, edge))
        node.last_seen = now
        if kind == "NBIRTH":
            self._nbirth(node, payload, now, result)
        elif kind == "NDEATH":
            self._ndeath(node, payload, now, result)
        elif kind in ("DBIRTH", "DDATA", "DDEATH", "NDATA"):
            if not node.born:
                self._rebirth(node, "before_birth", f"{kind} before the node's birth", now, result)
                return result
            self._in_order(node, kind, device, payload, now, result)
        return result

    def tick(self, now: int) -> Result:
        """Time passing: a seq gap past the reorder timeout, a node silent too long."""
        result = Result()
        for node in self.nodes.values():
            if node.gap_since is not None and now - node.gap_since >= self.reorder_ms:
                self._give_up_waiting(node, now, result)
            if node.born and now - node.last_seen >= self.inactivity_ms:
                log.warning(
                    "sparkplug: %s/%s silent for %.0f s: its machines are offline",
                    node.group,
                    node.edge,
                    (now - node.last_seen) / 1000,
                )
                self.counts["inactive"] += 1
                self._offline(node, None, "inactive", now, result)
                node.born = False
        return result

    # -- sequence -----------------------------------------------------------------------------

    def _in_order(
        self, node: Node, kind: str, device: str | None, payload: Any, now: int, result: Result
    ) -> None:
        if not payload.HasField("seq"):  # a deviation: apply it as it comes
            self._apply(node, kind, device, payload, now, result)
            return
        seq = payload.seq % 256
        expected = (node.seq + 1) % 256
        if seq == expected:
            self._apply(node, kind, device, payload, now, result)
            node.seq = seq
            self._drain(node, now, result)
        elif (seq - expected) % 256 >= 128 or seq in node.waiting:
            self.counts["stale_seq"] += 1  # behind what was applied: a repeat
        else:
            node.waiting[seq] = (kind, device, payload, now)
            if node.gap_since is None:
                node.gap_since = now
            if now - node.gap_since >= self.reorder_ms:
                self._give_up_waiting(node, now, result)

    def _drain(self, node: Node, now: int, result: Result) -> None:
        while (nxt := (node.seq + 1) % 256) in node.waiting:
            kind, device, payload, _ = node.waiting.pop(nxt)
            self._apply(node, kind, device, payload, now, result)
            node.seq = nxt
        if not node.waiting:
            node.gap_since = None

    def _give_up_waiting(self, node: Node, now: int, result: Result) -> None:
        """The messages before those waiting are lost: apply what waits, in order, and ask
        for a rebirth (what was lost may have been a birth)."""
        expected = (node.seq + 1) % 256
        missing = min((s - expected) % 256 for s in node.waiting)
        self.counts["seq_gaps"] += 1
        for seq in sorted(node.waiting, key=lambda s: (s - expected) % 256):
            kind, device, payload, _ = node.waiting.pop(seq)
            self._apply(node, kind, device, payload, now, result)
            node.seq = seq
        node.gap_since = None
        why = f"{missing} messages missing before seq {expected}"
        self._rebirth(node, "seq_gap", why, now, result)

    # -- births and deaths --------------------------------------------------------------------

    def _nbirth(self, node: Node, payload: Any, now: int, result: Result) -> None:
        node.aliases.clear()
        node.names.clear()
        node.devices.clear()
        node.waiting.clear()
        node.gap_since = None
        node.born = False
        problem = self._define(node, None, payload)
        bdseq = next((m for m in payload.metrics if m.name == BD_SEQ), None)
        if problem is None and bdseq is None:
            problem = "no bdSeq metric"
        if problem is not None:
            self.counts["bad_births"] += 1
            self._rebirth(node, "bad_birth", f"NBIRTH: {problem}", now, result)
            return
        assert bdseq is not None
        node.bdseq = _integer(bdseq)
        node.seq = payload.seq % 256
        node.born = True
        node.own_metrics = any(
            not _internal(m.name) for (device, _), m in node.names.items() if device is None
        )
        log.info("sparkplug: %s/%s born (bdSeq %s)", node.group, node.edge, node.bdseq)
        if node.own_metrics:
            self._born(node, None, payload, "nbirth", now, result)

    def _dbirth(self, node: Node, device: str, payload: Any, now: int, result: Result) -> None:
        for key in [k for k in node.names if k[0] == device]:
            node.names.pop(key)
        for alias in [a for a, m in node.aliases.items() if m.device == device]:
            node.aliases.pop(alias)
        problem = self._define(node, device, payload)
        if problem is not None:
            self.counts["bad_births"] += 1
            node.devices.discard(device)
            self._rebirth(node, "bad_birth", f"DBIRTH of {device}: {problem}", now, result)
            return
        node.devices.add(device)
        self._born(node, device, payload, "dbirth", now, result)

    def _define(self, node: Node, device: str | None, payload: Any) -> str | None:
        """Take a birth's metric definitions; what is wrong with them, if anything."""
        for metric in payload.metrics:
            if not metric.name:
                return "a metric without a name"
            datatype = metric.datatype
            defined = Metric(metric.name, datatype, device)
            if metric.HasField("alias"):
                if metric.alias in node.aliases:
                    return f"alias {metric.alias} used twice"
                node.aliases[metric.alias] = defined
            node.names[(device, metric.name)] = defined
        return None

    def _born(
        self,
        node: Node,
        device: str | None,
        payload: Any,
        code: str,
        now: int,
        result: Result,
    ) -> None:
        _, machine_type = self.mapping.machine(node.group, node.edge, device)
        status: dict[str, Any] = {"state": "online", "ts": now}
        if machine_type:
            status["type"] = machine_type
        self._send(self.topics.status, node, device, status, result)
        self._values(node, device, payload, now, result)
        self._send(
            self.topics.event, node, device, {"type": "birth", "code": code, "ts": now}, result
        )

    def _ndeath(self, node: Node, payload: Any, now: int, result: Result) -> None:
        bdseq = None
        for metric in payload.metrics:
            by_alias = node.aliases.get(metric.alias) if metric.HasField("alias") else None
            if metric.name == BD_SEQ or (by_alias is not None and by_alias.name == BD_SEQ):
                bdseq = _integer(metric)
        if bdseq is not None and node.bdseq is not None and bdseq != node.bdseq:
            self.counts["stale_deaths"] += 1
            log.info(
                "sparkplug: NDEATH of %s/%s with bdSeq %d, not the session's %d: ignored",
                node.group,
                node.edge,
                bdseq,
                node.bdseq,
            )
            return
        if node.born:
            self._offline(node, None, "ndeath", now, result)
        node.born = False
        log.info("sparkplug: %s/%s dead", node.group, node.edge)

    def _offline(self, node: Node, device: str | None, code: str, now: int, result: Result) -> None:
        """The device's machine (or, for None, every machine of the node) offline."""
        for each in [device] if device is not None else self._machines(node):
            self._send(self.topics.status, node, each, {"state": "offline", "ts": now}, result)
            event = {"type": "death", "code": code, "ts": now}
            self._send(self.topics.event, node, each, event, result)
        if device is None:
            node.devices.clear()

    # -- data ---------------------------------------------------------------------------------

    def _apply(
        self, node: Node, kind: str, device: str | None, payload: Any, now: int, result: Result
    ) -> None:
        if kind == "DBIRTH":
            if device is not None:
                self._dbirth(node, device, payload, now, result)
        elif kind == "DDEATH":
            if device is not None and device in node.devices:
                node.devices.discard(device)
                self._offline(node, device, "ddeath", now, result)
        elif kind == "DDATA":
            if device is None or device not in node.devices:
                why = f"DDATA of {device}, which has no birth"
                self._rebirth(node, "before_birth", why, now, result)
                return
            self._values(node, device, payload, now, result)
        elif kind == "NDATA":
            self._values(node, None, payload, now, result)

    def _values(
        self, node: Node, device: str | None, payload: Any, now: int, result: Result
    ) -> None:
        """A birth's or a data message's metric values as readings and properties."""
        sent = payload.timestamp if payload.HasField("timestamp") else now
        readings: dict[tuple[int, bool], dict[str, float]] = {}  # (ts, historical) -> values
        properties: dict[str, Any] = {}
        unknown = []
        for metric in payload.metrics:
            defined = None
            if metric.HasField("alias"):
                defined = node.aliases.get(metric.alias)
            if defined is None and metric.name:
                defined = node.names.get((device, metric.name))
            if defined is None or defined.device != device:
                unknown.append(metric.name or f"alias {metric.alias}")
                continue
            if _internal(defined.name) or (metric.HasField("is_null") and metric.is_null):
                continue
            value = _value(metric, metric.datatype or defined.datatype)
            if value is None:
                continue
            ts = metric.timestamp if metric.HasField("timestamp") else sent
            if isinstance(value, float):
                signal, scale, offset = self.mapping.signal(defined.name)
                if defined.datatype != _BOOLEAN:
                    value = value * scale + offset
                historical = metric.HasField("is_historical") and metric.is_historical
                readings.setdefault((ts, historical), {})[signal] = value
            else:
                properties[defined.name] = value
        if readings:
            batch = [
                {"ts": ts, "values": values, "historical": True}
                if historical
                else {"ts": ts, "values": values}
                for (ts, historical), values in sorted(readings.items())
            ]
            for start in range(0, len(batch), _MAX_BATCH):
                chunk = batch[start : start + _MAX_BATCH]
                self._send(self.topics.telemetry, node, device, chunk, result)
        if properties:
            status = {"state": "online", "ts": now, "properties": properties}
            self._send(self.topics.status, node, device, status, result)
        if unknown:
            self.counts["unknown_metrics"] += len(unknown)
            why = f"{len(unknown)} unknown, the first {unknown[0]!r}"
            self._rebirth(node, "unknown_metric", why, now, result)

    # -- rebirth ------------------------------------------------------------------------------

    def _rebirth(self, node: Node, code: str, why: str, now: int, result: Result) -> None:
        if node.rebirth_at is not None and now - node.rebirth_at < self.rebirth_ms:
            self.counts["rebirths_suppressed"] += 1
            return
        node.rebirth_at = now
        self.counts["rebirth_requests"] += 1
        result.rebirths.append((node.group, node.edge, f"{code.replace('_', ' ')}: {why}"))
        event = {"type": "rebirth_request", "code": code, "ts": now}
        for each in self._machines(node):
            self._send(self.topics.event, node, each, event, result)

    # -- out ----------------------------------------------------------------------------------

    @staticmethod
    def _machines(node: Node) -> list[str | None]:
        """Every machine of the node: its born devices, and itself if it has metrics of its
        own (None)."""
        return [*sorted(node.devices), *([None] if node.own_metrics else [])]

    def _send(
        self,
        topic: Callable[[str, str], str],
        node: Node,
        device: str | None,
        body: Any,
        result: Result,
    ) -> None:
        """A contract message for the machine of `device` (None: the edge node itself)."""
        machine, _ = self.mapping.machine(node.group, node.edge, device)
        result.messages.append((topic(self.mapping.site(node.group), machine), _json(body)))


def rebirth_payload(now: int) -> bytes:
    """NCMD `Node Control/Rebirth = true`."""
    payload = Payload(timestamp=now)
    payload.metrics.add(name=REBIRTH, timestamp=now, datatype=_BOOLEAN, boolean_value=True)
    return bytes(payload.SerializeToString())


def _internal(name: str) -> bool:
    return name == BD_SEQ or name.startswith(("Node Control/", "Device Control/"))


def _integer(metric: Any) -> int:
    kind = metric.WhichOneof("value")
    return int(getattr(metric, kind)) if kind in ("int_value", "long_value") else -1


def _value(metric: Any, datatype: int) -> float | str | bool | None:
    """A metric's value: float for signals, str or bool-free others for properties."""
    kind = metric.WhichOneof("value")
    if kind is None:
        return None
    raw = getattr(metric, kind)
    if datatype == _BOOLEAN or kind == "boolean_value":
        return 1.0 if raw else 0.0
    if kind in ("int_value", "long_value"):
        bits = _SIGNED.get(datatype)
        if bits is not None and raw >= 1 << (bits - 1):
            raw -= 1 << bits  # two's complement
        return float(raw) if datatype in _NUMERIC else str(raw)  # DateTime: a property
    if kind in ("float_value", "double_value"):
        return float(raw)
    if kind == "string_value":
        return str(raw)
    if kind == "bytes_value":
        return f"<{len(raw)} bytes>"
    if kind == "dataset_value":
        return f"<DataSet: {len(raw.rows)} rows of {', '.join(raw.columns)}>"
    if kind == "template_value":
        return f"<Template {raw.template_ref or raw.version or ''}>".replace(" >", ">")
    return f"<{kind}>"


def _json(body: Any) -> bytes:
    return msgspec.json.encode(body)
