"""The OPC UA gateway: values read from OPC UA servers, published as the twin's MQTT contract.

    OPC UA server --subscription (or polling)--> ServerLink: a DataValue for (machine, signal)
        -> Gateway: readings grouped by machine and timestamp, each with the machine's next seq
        -> Outbox (SQLite): stored before they are published
        -> DevicePublisher, one MQTT connection per machine (persistent session, QoS 1, birth
           and last will on .../status) -> deleted from the outbox once the broker acknowledged

A `ServerLink` connects with its security and login, resolves each signal's node (a node id's
namespace URI to the server's index, a browse path to its node) on every connection, then
subscribes (or polls). When the connection is lost (a server restart) it says `offline` for the
server's machines, reconnects with backoff, resolves every node again (a restarted server may
give a browse path another node id) and subscribes again. A value whose status is not Good is
not a reading: it is counted and logged at most every `_BAD_LOG_S` per signal; the machine's
other signals go on, and it stays online.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeNotif
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from devices.opcua.config import GatewayConfig, MachineConfig, ServerConfig, SignalConfig
from devices.opcua.outbox import Outbox
from devices.publisher import DevicePublisher, NetworkLoop
from twin.messages import Reading, encode
from twin.topics import Topics

log = logging.getLogger(__name__)

_BAD_LOG_S = 10.0  # a signal's bad values are logged at most this often
_REPORT_S = 10.0  # the outbox's backlog is logged this often while there is one
_MAX_INFLIGHT = 1000  # readings published and not yet acknowledged, across machines
_SEND_BATCH = 500
_SESSION_EXPIRY_S = 24 * 3600
_SESSION_TIMEOUT_MS = 600_000  # what asyncua's server grants at most
_NULL_DATE = datetime(1601, 1, 2, tzinfo=UTC)  # OPC UA's null DateTime is 1601-01-01


class UnresolvedNode(Exception):
    """A configured node the server does not have."""


@dataclass
class Binding:
    """A configured signal and the node it resolved to on this connection."""

    machine: str
    signal: str
    config: SignalConfig
    node: Node | None = None
    bad: int = 0
    logged: float = float("-inf")


@dataclass
class Counters:
    values: int = 0  # Good values taken
    bad: int = 0  # values whose status was not Good, or that were not numbers
    delivered: int = 0  # readings the broker acknowledged


def event_time(value: ua.DataValue, source: str) -> int:
    """Epoch ms of a value by the configured source, falling back to the server's and then the
    gateway's clock; OPC UA's null date (1601-01-01) counts as missing."""
    candidates: list[datetime | None] = []
    if source == "source":
        candidates = [value.SourceTimestamp, value.ServerTimestamp]
    elif source == "server":
        candidates = [value.ServerTimestamp]
    for ts in candidates:
        if ts is not None:
            aware = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
            if aware >= _NULL_DATE:
                return int(aware.timestamp() * 1000)
    return int(time.time() * 1000)


def numeric(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return None


class Gateway:
    """Every configured server's link, the outbox and the machines' MQTT connections."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.topics = Topics(config.topic_root)
        self.outbox = Outbox(config.outbox, config.outbox_max)
        self.network: NetworkLoop | None = None  # started by `run`
        self.counters = Counters()
        self.publishers: dict[str, DevicePublisher] = {}
        self.links = [ServerLink(server, self) for server in config.server]
        self._pending: dict[tuple[str, int], dict[str, float]] = {}  # (machine, ts) -> values
        self._flush_due = False
        self._acked: deque[tuple[str, int]] = deque()  # (machine, mid), from the loop's thread
        self._inflight: dict[tuple[str, int], int] = {}  # (machine, mid) -> outbox row id
        self._last_sent = 0  # the outbox row id published last
        self._wake = asyncio.Event()
        self._dropped_logged = float("-inf")  # when drops were last logged

    def _publisher(self, machine: MachineConfig, network: NetworkLoop) -> DevicePublisher:
        def delivered(mid: int) -> None:
            self._acked.append((machine.machine, mid))

        return DevicePublisher(
            self.config.broker,
            self.topics,
            machine.site,
            machine.machine,
            machine.type or "",
            loop=network,
            protocol=self.config.mqtt_protocol,
            session_expiry_s=_SESSION_EXPIRY_S,
            on_delivered=delivered,
        )

    async def run(self, stop: asyncio.Event) -> None:
        self.outbox.open()
        log.info("outbox %s: %d readings waiting from before", self.outbox.path, len(self.outbox))
        self.network = NetworkLoop()
        for link in self.links:
            for machine in link.config.machine:
                publisher = self._publisher(machine, self.network)
                self.publishers[machine.machine] = publisher
                publisher.available = False  # until its server is reached
                publisher.start()
        tasks = [asyncio.create_task(link.run()) for link in self.links]
        tasks.append(asyncio.create_task(self._send()))
        tasks.append(asyncio.create_task(self._report()))
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._flush()
            await self._drain(timeout_s=5.0)
            for publisher in self.publishers.values():
                publisher.stop()  # says offline
            self.network.close()
            log.info(
                "stopped: %d values taken, %d readings delivered, %d waiting in the outbox, "
                "%d bad values, %d dropped",
                self.counters.values,
                self.counters.delivered,
                len(self.outbox),
                self.counters.bad,
                self.outbox.dropped,
            )
            self.outbox.close()

    # -- values in ----------------------------------------------------------------------------

    def value(self, binding: Binding, data: ua.DataValue, timestamps: str) -> None:
        """A DataValue for a bound signal: a reading, or counted as bad."""
        status = data.StatusCode
        if status is not None and not status.is_good():
            self._bad(binding, status.name)
            return
        number = numeric(data.Value.Value if data.Value is not None else None)
        if number is None:
            self._bad(binding, "not a number")
            return
        self.counters.values += 1
        key = (binding.machine, event_time(data, timestamps))
        self._pending.setdefault(key, {})[binding.signal] = number
        if not self._flush_due:  # the rest of this notification batch joins the same readings
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _bad(self, binding: Binding, why: str) -> None:
        binding.bad += 1
        self.counters.bad += 1
        now = time.monotonic()
        if now - binding.logged >= _BAD_LOG_S:
            binding.logged = now
            log.warning(
                "%s.%s: %s is not a value (%s; %d so far)",
                binding.machine,
                binding.signal,
                binding.config.node or binding.config.path,
                why,
                binding.bad,
            )

    def _flush(self) -> None:
        """Store what is pending as readings, one per machine and timestamp."""
        self._flush_due = False
        pending, self._pending = self._pending, {}
        items: list[tuple[str, int, bytes]] = []
        next_seq: dict[str, int] = {}
        for (machine, ts), values in sorted(pending.items(), key=lambda kv: kv[0][1]):
            seq = next_seq.get(machine) or self.outbox.next_seq(machine)
            next_seq[machine] = seq + 1
            items.append((machine, seq, encode(Reading(ts, seq, values).to_wire())))
        if not items:
            return
        dropped = self.outbox.put(items)
        if dropped and time.monotonic() - self._dropped_logged > _BAD_LOG_S:
            self._dropped_logged = time.monotonic()
            log.warning(
                "the outbox holds %d readings: dropped the oldest (%d so far)",
                self.outbox.max_rows,
                self.outbox.dropped,
            )
        self._wake.set()

    def available(self, machines: list[MachineConfig], available: bool) -> None:
        for machine in machines:
            self.publishers[machine.machine].set_available(available)

    # -- readings out -------------------------------------------------------------------------

    async def _send(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await self._wake.wait()
            self._wake.clear()
            try:
                self._send_once()
            except Exception:  # what is not sent stays in the outbox for the next round
                log.exception("sending from the outbox failed; trying again")
                await asyncio.sleep(1)

    def _send_once(self) -> None:
        """Forget what the broker acknowledged; publish what waits, in order, while each
        reading's machine is connected."""
        done, early = [], []
        while self._acked:
            key = self._acked.popleft()
            sent = self._inflight.pop(key, None)
            if sent is None:
                early.append(key)  # acknowledged before its publish was recorded
            else:
                done.append(sent)
        self._acked.extend(early)
        self.outbox.delete(done)
        self.counters.delivered += len(done)
        room = _MAX_INFLIGHT - len(self._inflight)
        if room <= 0:
            return
        for row in self.outbox.after(self._last_sent, min(room, _SEND_BATCH)):
            publisher = self.publishers.get(row.machine)
            if publisher is None:  # a machine no longer configured: nobody will send it
                self.outbox.delete([row.id])
                continue
            if not publisher.connected:
                break  # in order: the rest waits for this machine's connection
            info = publisher.publish_raw(row.payload)
            self._inflight[(row.machine, info.mid)] = row.id
            self._last_sent = row.id

    async def _report(self) -> None:
        """While readings wait (the broker away), say how many, every `_REPORT_S`."""
        while True:
            await asyncio.sleep(_REPORT_S)
            connected = sum(p.connected for p in self.publishers.values())
            backlog = len(self.outbox) > _SEND_BATCH or connected < len(self.publishers)
            if len(self.outbox) and backlog:  # not just what is in flight
                log.info(
                    "%d readings waiting in the outbox (%d of %d machines connected to the "
                    "broker; %d delivered so far, %d dropped)",
                    len(self.outbox),
                    connected,
                    len(self.publishers),
                    self.counters.delivered,
                    self.outbox.dropped,
                )

    async def _drain(self, timeout_s: float) -> None:
        """At shutdown: wait a little for acknowledgements (what is left stays stored)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._send_once()
            if not self._inflight and not self.outbox.after(self._last_sent, 1):
                return
            await asyncio.sleep(0.05)


class ServerLink:
    """One OPC UA server: connect, resolve, subscribe or poll; again after a loss."""

    def __init__(self, config: ServerConfig, gateway: Gateway) -> None:
        self.config = config
        self.gateway = gateway
        self.bindings = [
            Binding(machine.machine, signal, signal_config)
            for machine in config.machine
            for signal, signal_config in machine.signals.items()
        ]
        self.connects = 0

    async def run(self) -> None:
        delay = 1.0
        while True:
            lost = asyncio.Event()
            client = Client(self.config.endpoint, timeout=self.config.timeout_s)
            client.session_timeout = _SESSION_TIMEOUT_MS

            async def on_lost(exc: Exception, lost: asyncio.Event = lost) -> None:
                log.warning("%s: connection lost (%s)", self.config.endpoint, exc)
                lost.set()

            client.connection_lost_callback = on_lost
            try:
                await self._configure(client)
                await client.connect()
                resolved = await self._resolve(client)
                mode = self.config.mode
                if mode == "subscribe":
                    try:
                        await self._subscribe(client, resolved)
                    except UaStatusCodeError as exc:  # a server without subscriptions
                        log.warning(
                            "%s: subscriptions refused (%s): polling instead",
                            self.config.endpoint,
                            exc,
                        )
                        mode = "poll"
                if mode == "subscribe":
                    waiting = asyncio.create_task(_until(lost))
                else:
                    waiting = asyncio.create_task(self._poll(client, resolved))
                self.connects += 1
                self.gateway.available(self.config.machine, True)
                log.info(
                    "%s: connected (%s), %d of %d signals resolved, %s",
                    self.config.endpoint,
                    "first time" if self.connects == 1 else f"reconnect {self.connects - 1}",
                    len(resolved),
                    len(self.bindings),
                    "subscribed" if mode == "subscribe" else "polling",
                )
                delay = 1.0
                await waiting
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, ConnectionError, UaError) as exc:
                log.warning(
                    "%s: not reachable (%s: %s); again in %.0f s",
                    self.config.endpoint,
                    type(exc).__name__,
                    exc,
                    delay,
                )
            finally:
                self.gateway.available(self.config.machine, False)
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        await client.disconnect()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.reconnect_max_s)

    async def _configure(self, client: Client) -> None:
        c = self.config
        if c.username is not None and c.password is not None:
            client.set_user(c.username)
            client.set_password(c.password)
        if c.security != "None":
            policy, mode = c.security.split(":")
            parts = [policy, mode, str(c.certificate), str(c.private_key)]
            if c.server_certificate is not None:
                parts.append(str(c.server_certificate))
            await client.set_security_string(",".join(parts))

    async def _resolve(self, client: Client) -> list[Binding]:
        """Each binding's node on this connection; those the server lacks are logged."""
        namespaces = await client.get_namespace_array()
        resolved = []
        for binding in self.bindings:
            try:
                binding.node = await _node(client, namespaces, binding.config)
            except UnresolvedNode as exc:
                binding.node = None
                log.error("%s.%s: %s", binding.machine, binding.signal, exc)
                continue
            resolved.append(binding)
        return resolved

    async def _subscribe(self, client: Client, bindings: list[Binding]) -> None:
        handler = _Handler(self, {b.node.nodeid: b for b in bindings if b.node is not None})
        sub = await client.create_subscription(self.config.publishing_interval_ms, handler)
        groups: dict[tuple[int, float | None], list[Binding]] = defaultdict(list)
        for b in bindings:
            groups[(b.config.interval_ms, b.config.deadband)].append(b)
        for (interval, deadband), group in groups.items():
            nodes = [b.node for b in group if b.node is not None]
            if deadband is None:
                results = await sub.subscribe_data_change(
                    nodes, sampling_interval=ua.Double(interval)
                )
            else:  # the server samples these at the publishing interval
                results = await sub.deadband_monitor(nodes, ua.Double(deadband))
            for b, result in zip(group, results, strict=True):
                if isinstance(result, ua.StatusCode):
                    log.error("%s.%s: not subscribed: %s", b.machine, b.signal, result.name)

    async def _poll(self, client: Client, bindings: list[Binding]) -> None:
        """Read every node in one request each sampling interval (the shortest configured)."""
        interval = min((b.config.interval_ms for b in bindings), default=1000) / 1000
        nodes = [b.node for b in bindings if b.node is not None]
        while True:
            started = time.monotonic()
            values = await client.read_attributes(nodes)
            for binding, data in zip(bindings, values, strict=True):
                self.gateway.value(binding, data, self.config.timestamps)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


async def _until(event: asyncio.Event) -> None:
    await event.wait()


class _Handler:
    """asyncua's data change callback, for one subscription."""

    def __init__(self, link: ServerLink, by_node: dict[ua.NodeId, Binding]) -> None:
        self.link = link
        self.by_node = by_node

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        log.warning("%s: subscription status %s", self.link.config.endpoint, status.Status.name)

    def datachange_notification(self, node: Node, val: Any, data: DataChangeNotif) -> None:
        binding = self.by_node.get(node.nodeid)
        if binding is not None:
            self.link.gateway.value(binding, data.monitored_item.Value, self.link.config.timestamps)


async def _node(client: Client, namespaces: list[str], config: SignalConfig) -> Node:
    """The node a signal is bound to on this server."""
    if config.node is not None:
        uri, _, rest = config.node.removeprefix("nsu=").partition(";")
        if uri not in namespaces:
            raise UnresolvedNode(f"the server has no namespace {uri!r} (node {config.node})")
        node = client.get_node(ua.NodeId.from_string(f"ns={namespaces.index(uri)};{rest}"))
        try:
            await node.read_browse_name()
        except UaStatusCodeError as exc:
            raise UnresolvedNode(f"node {config.node}: {exc}") from exc
        return node
    assert config.path is not None
    assert config.namespace is not None
    if config.namespace not in namespaces:
        raise UnresolvedNode(f"the server has no namespace {config.namespace!r}")
    index = namespaces.index(config.namespace)
    names = config.path.strip("/").split("/")[1:]
    try:
        return await client.nodes.objects.get_child([f"{index}:{name}" for name in names])
    except UaStatusCodeError:
        pass
    # Browse names differ in case between servers: walk the path ignoring it.
    node = client.nodes.objects
    for name in names:
        for child in await node.get_children():
            browse = await child.read_browse_name()
            if browse.NamespaceIndex == index and browse.Name.lower() == name.lower():
                node = child
                break
        else:
            raise UnresolvedNode(f"no {name!r} on the path {config.path}")
    return node
