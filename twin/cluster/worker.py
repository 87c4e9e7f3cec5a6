"""`twin worker`: the twin's core fed by JetStream, a share of the fleet's partitions at a time.

Each partition of the input stream has a durable pull consumer in a `pinned_client` priority
group, and a lease in the `twin_partitions` bucket. Ownership is the lease: a worker takes a
partition by a compare-and-swap on the lease's revision, and every snapshot it writes later is
another compare-and-swap, so a stalled former owner's write fails and it drops the partition
(the pin only steers delivery; the server does not promise exclusivity). A worker

1. heartbeats into `twin_workers` (entries expire after `WORKER_TTL_S`) with the partitions it
   holds, and takes partitions whose lease has no live owner, up to its fair share
   (ceil(P / live workers)), preferring its own (rendezvous hashing, so workers prefer
   different ones); above its share it gives the least preferred back;
2. on taking a partition, loads the lease's snapshot (object store) and replays the stream
   after the sequence it covers, then pulls the partition's consumer in batches;
3. applies each batch through `Core.apply` and reacts through `Core.react` on one thread (the
   state's only writer), skipping deliveries at or below the sequence it has applied (they are
   redeliveries of what a former owner was sent, or of what the replay read); where the
   consumer sequence shows deliveries that went elsewhere (a former owner still pulling while
   its lease was taken over), it reads those from the stream first;
4. every `cluster_snapshot_s`, for each partition that moved: the history buckets closed and
   the device events applied so far to `TWIN_HISTORY` (each message acknowledged by the
   stream), snapshot, lease update (CAS), then one ack-all for everything the snapshot covers.
   The stream is the journal; a snapshot never covers history the history stream lacks.

`SIGTERM` (or `stop`) snapshots, acknowledges, frees and unpins every partition, and exits.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyValueError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from twin.alerts import Alert, load_rules
from twin.backup import DataDirLock
from twin.cluster.episodes import KvEpisodes, message_id
from twin.cluster.layout import (
    DEADLETTERS_SUBJECT,
    EPISODES,
    GROUP,
    HEARTBEAT_S,
    LEASES,
    RISK_SUBJECT,
    SNAPSHOTS,
    STREAM_HISTORY,
    STREAM_IN,
    WORKER_TTL_S,
    WORKERS,
    Api,
    ClusterError,
    Mirror,
    beat_is_recent,
    check,
    connect,
    consumer,
    delivery_of,
    history_subject,
    input_message,
    layout_of,
    lease_key,
    partition_filter,
    to_nats,
)
from twin.cluster.models import SharedModels, scope_key
from twin.config import Settings
from twin.core import Core, fleet_state, limits_of
from twin.deadletters import DeadLetters
from twin.history import HistoryOutbox, pack
from twin.messages import RawMessage
from twin.model.predictor import ModelMismatch, Predictor
from twin.model.registry import DEFAULT_SCOPE
from twin.risk import Risk
from twin.topics import Topics

log = logging.getLogger(__name__)

T = TypeVar("T")
Outgoing = tuple[str, bytes, dict[str, str] | None]  # subject, payload, headers
_BATCH = 1000  # messages one pull asks for
_PULL_EXPIRES_S = 1.0  # how long the server holds a pull open
_IDLE_REACT_S = 0.5  # time-based rules and scoring run this often without traffic
_RISKS_PER_MESSAGE = 1000
_HISTORY_ROWS = 500  # buckets and events per history message


@dataclass
class Lease:
    """A partition's entry in `twin_partitions`."""

    owner: str | None
    upto: int  # the stream sequence the snapshot covers
    snapshot: str | None  # its object's name
    revision: int

    def encode(self) -> bytes:
        return json.dumps(
            {"owner": self.owner, "upto": self.upto, "snapshot": self.snapshot}
        ).encode()


@dataclass
class Partition:
    """One partition this worker holds."""

    number: int
    lease: Lease
    upto: int  # highest stream sequence applied
    machines: set[str] = field(default_factory=set)
    pin: str | None = None
    delivered: int | None = None  # the consumer sequence of the last delivery to this worker
    last_reply: str | None = None  # the ack subject of the consumer's newest delivery applied
    acked: str | None = None  # the last one acknowledged
    applied: int = 0  # messages applied since taken
    skipped: int = 0  # deliveries at or below `upto`: redeliveries
    active: bool = True  # False once given back or lost: what is still queued is not applied
    drained: asyncio.Event = field(default_factory=asyncio.Event)  # nothing of it queued
    task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.drained.set()


def _rank(worker: str, partition: int) -> bytes:
    """Rendezvous hashing: each worker ranks the partitions in its own order."""
    return hashlib.blake2b(f"{worker}/{partition}".encode(), digest_size=8).digest()


def _open(handle: T | None) -> T:
    if handle is None:
        raise ClusterError("not connected to NATS")
    return handle


class Worker:
    """One worker process; `run` until `stop` (or SIGTERM)."""

    def __init__(self, settings: Settings) -> None:
        s = self.settings = settings
        self.id = s.worker_id
        self.layout = layout_of(s)
        self.topics = Topics(s.topic_root)
        self.lock = DataDirLock(s.data_dir)
        self.outbox = HistoryOutbox()
        self.state = fleet_state(s, self.outbox)
        self.deadletters = DeadLetters(s.deadletter_max, listener=self._deadletter)
        self._out: list[Outgoing] = []  # published by the core thread, sent by the loop
        self.episodes = KvEpisodes()
        store = s.data_dir / "worker.sqlite3"
        self.core = Core(
            s,
            self.state,
            self.deadletters,
            self.topics,
            limits_of(s),
            self._publish,
            store,
            risk_listeners=[self._risks],
            episodes=self.episodes,
        )
        self._unsent: list[tuple[str, bytes]] = []  # history the stream has not acknowledged
        self.models = SharedModels(self.core.registry)
        self._refused: set[str] = set()  # model versions this installation cannot load
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twin-core")
        self.partitions: dict[int, Partition] = {}
        self.taken = 0
        self.given = 0
        self.lost = 0
        self._stopping = asyncio.Event()
        self._nc: NATS | None = None
        self._workers: KeyValue | None = None
        self._leases: KeyValue | None = None
        self._snapshots: ObjectStore | None = None
        self._peers: Mirror | None = None  # twin_workers, followed
        self._lease_view: Mirror | None = None  # twin_partitions, followed
        self._busy = asyncio.Lock()  # taking, giving back and snapshots, one at a time
        self._beat_ok = float("-inf")  # when this worker's heartbeat last reached the bucket
        # Deliveries pulled and not yet applied, of every partition: applied together once a
        # commit window (TWIN_JOURNAL_COMMIT_MS) has let them gather, as `twin serve` does.
        self._arrived: list[tuple[Partition, list[Msg]]] = []
        self._ready = asyncio.Event()

    # -- the core thread ----------------------------------------------------------------------

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        headers = None
        if topic.endswith("/alert"):  # the stream drops a change it has had already
            headers = {"Nats-Msg-Id": message_id(msgspec.json.decode(payload, type=Alert))}
        self._out.append((to_nats(topic), payload, headers))

    def _risks(self, fresh: list[tuple[str, str, Risk]]) -> None:
        """Fresh scores, for `twin forward` (its `risk` points): a message per 1,000."""
        for start in range(0, len(fresh), _RISKS_PER_MESSAGE):
            rows = [
                (site, machine, r.model_version, r.probability, r.threshold, r.updated_at)
                for site, machine, r in fresh[start : start + _RISKS_PER_MESSAGE]
            ]
            self._out.append((RISK_SUBJECT, msgspec.json.encode(rows), None))

    def _deadletter(self, raw: RawMessage, entry: dict[str, Any]) -> None:
        # The next owner of a partition replaying the message rejects it again, under the same
        # id (its sequence in the input stream): the stream keeps it once.
        ident = f"{raw.origin}:{entry['index']}:{entry['reason']}"
        payload = json.dumps(entry).encode()
        self._out.append((DEADLETTERS_SUBJECT, payload, {"Nats-Msg-Id": ident}))

    async def _core(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the core thread, then send what it published."""
        loop = asyncio.get_running_loop()
        result, out = await loop.run_in_executor(self._thread, self._collect, fn, *args)
        for subject, payload, headers in out:
            await self.nc.publish(subject, payload, headers=headers)
        return result

    def _collect(self, fn: Callable[..., T], *args: Any) -> tuple[T, list[Outgoing]]:
        """Core thread: run `fn` and take what it published. Taken here, on the only thread
        that appends to `_out`, so what a later call publishes is never in this call's list."""
        result = fn(*args)
        out, self._out = self._out, []
        return result, out

    def _apply(self, batches: list[tuple[Partition, list[Msg]]]) -> int:
        """Apply each partition's deliveries above its sequence, in order, then react once;
        return how many were applied. Core thread."""
        raws: list[RawMessage] = []
        root = self.settings.topic_root
        for part, msgs in batches:
            if not part.active:
                continue  # given back meanwhile: the next owner gets these again
            before = len(raws)
            durable = f".{STREAM_IN}.{consumer(part.number)}."  # not a replay's consumer
            for msg in msgs:
                raw = input_message(root, msg)
                seq = int(raw.origin)
                if durable in msg.reply:
                    part.last_reply = msg.reply
                if seq <= part.upto:
                    part.skipped += 1
                    continue
                part.upto = seq
                tokens = msg.subject.split(".")[3:]
                if len(tokens) == 3:
                    part.machines.add(tokens[1].replace("//", "."))
                raws.append(raw)
            part.applied += len(raws) - before
        self.core.react(self.core.apply(raws))
        return len(raws)

    def _forget(self, machines: list[str]) -> None:
        self.core.alerts.forget(machines)
        self.state.forget(machines)

    def _dump(self, part: Partition) -> tuple[bytes, int, str | None, list[tuple[str, bytes]]]:
        """The partition's state, what it covers, and the history applied so far (of every
        partition: sent early, it is only sent again by a replay, and stored once)."""
        blob = msgspec.json.encode({"machines": self.state.dump(part.machines)})
        history = [
            (history_subject(r.site), msgspec.json.encode(r))
            for r in pack(*self.outbox.drain(), _HISTORY_ROWS)
        ]
        return blob, part.upto, part.last_reply, history

    @staticmethod
    def _applied(parts: list[Partition]) -> list[tuple[int, str | None]]:
        """What each partition has applied and its newest delivery, together (core thread)."""
        return [(part.upto, part.last_reply) for part in parts]

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise ClusterError("not connected to NATS")
        return self._nc

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        s = self.settings
        rules = load_rules(s.alert_rules)
        self.lock.acquire()
        try:
            self._nc = await connect(s, f"twin-worker-{self.id}")
            await check(self.nc, self.layout)
            js = self.nc.jetstream()
            self._workers = await js.key_value(WORKERS)
            self._leases = await js.key_value(LEASES)
            self._snapshots = await js.object_store(SNAPSHOTS)
            self._peers, self._lease_view = Mirror(self._workers), Mirror(self._leases)
            await self._peers.start()
            await self._lease_view.start()
            await self.episodes.start(await js.key_value(EPISODES))
            self.core.alerts.open(rules)
            await self.models.start(self.nc)
            for version in self.models.active().values():  # the cluster's, before its own
                await self._install(version)
            await asyncio.get_running_loop().run_in_executor(self._thread, self.core.scorer.start)
            await self._share_default()
            log.info(
                "worker %s: %d partitions, snapshots every %.1f s",
                self.id,
                self.layout.partitions,
                s.cluster_snapshot_s,
            )
            await self._heartbeat()
            await asyncio.sleep(2 * HEARTBEAT_S)  # workers started together see each other
            tasks = [
                asyncio.create_task(self._every(HEARTBEAT_S, self._heartbeat)),
                asyncio.create_task(self._every(HEARTBEAT_S, self._balance)),
                asyncio.create_task(self._every(s.cluster_snapshot_s, self._snapshot_all)),
                asyncio.create_task(self._every(_IDLE_REACT_S, self._idle)),
                asyncio.create_task(self._every(HEARTBEAT_S, self._follow_models)),
                asyncio.create_task(self._applier()),
            ]
            stopping = asyncio.create_task(self._stopping.wait())
            await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in [stopping, *tasks]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            ended = [t for t in tasks if not t.cancelled() and t.exception() is not None]
            if ended:
                # Only the applier can end (the others retry). The state may be half applied,
                # so no snapshot: once this worker's heartbeat is stale its peers take its
                # partitions and replay them from the last snapshots.
                log.error("the core failed", exc_info=ended[0].exception())
                raise ClusterError(f"worker {self.id} stopped: its core failed")
            async with self._busy:
                for number in list(self.partitions):
                    try:
                        await self._give_back(number)
                    except Exception as exc:
                        log.error(
                            "partition %d not given back (%s): once this worker's heartbeat "
                            "is stale, its next owner replays it from the last snapshot",
                            number,
                            exc,
                        )
            await _open(self._workers).delete(self.id)
            await self._peers.stop()
            await self._lease_view.stop()
            await self.episodes.stop()
            await self.models.stop()
        finally:
            if self._nc is not None:
                await self._nc.drain()
            self._thread.shutdown()
            self.core.alerts.close()
            self.lock.release()
        log.info(
            "worker %s stopped: took %d partitions, gave back %d, lost %d",
            self.id,
            self.taken,
            self.given,
            self.lost,
        )

    async def _every(self, period_s: float, step: Callable[[], Any]) -> None:
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except ClusterError as exc:  # said plainly: what is wrong and what waits for it
                log.warning("%s: %s; trying again", step.__name__, exc)
            except Exception:
                log.exception("%s failed; trying again", step.__name__)
            await asyncio.sleep(period_s)

    async def _applier(self) -> None:
        window = self.settings.journal_commit_ms / 1000
        while True:
            await self._ready.wait()
            await asyncio.sleep(window)
            self._ready.clear()
            batches, self._arrived = self._arrived, []
            try:
                await self._core(self._apply, batches)
            finally:
                for part, _ in batches:
                    part.drained.set()

    async def _heartbeat(self) -> None:
        beat = {
            "partitions": sorted(self.partitions),
            "ts": int(time.time() * 1000),
            "machines": len(self.state),
            "applied": sum(p.applied for p in self.partitions.values()),
            "redelivered": sum(p.skipped for p in self.partitions.values()),
            "taken": self.taken,
            "given": self.given,
            "lost": self.lost,  # dropped when another worker's lease was found
            "models": {scope: m.version for scope, m in self.core.scorer.models().items()},
        }
        await _open(self._workers).put(self.id, json.dumps(beat).encode())
        self._beat_ok = time.monotonic()

    async def _idle(self) -> None:
        await self._core(self.core.react, set())

    # -- models -------------------------------------------------------------------------------

    async def _install(self, version: str) -> Predictor | None:
        """Fetch a version into the local registry and make it active there."""
        if version in self._refused:
            return None
        try:
            predictor = await self.models.fetch(version)
        except ModelMismatch as exc:
            self._refused.add(version)
            log.error("not using model %s: %s", version, exc)
            return None
        await asyncio.to_thread(self.core.registry.store, predictor)
        return predictor

    async def _share_default(self) -> None:
        """Publish this worker's default model if the cluster has none; if another worker
        was first, `_follow_models` switches to the cluster's."""
        default = self.core.scorer.model(DEFAULT_SCOPE)
        if default is not None and await self.models.publish(default, only_if_none=True):
            log.info("published model %s as the cluster's default", default.version)

    async def _follow_models(self) -> None:
        """Score each scope with the version the cluster says is active."""
        mine = {scope_key(scope): m.version for scope, m in self.core.scorer.models().items()}
        for key, version in self.models.active().items():
            if mine.get(key) == version:
                continue
            predictor = await self._install(version)
            if predictor is not None:
                await asyncio.to_thread(self.core.scorer.activate, predictor, 0)
                log.info("model %s scores %s here from now on", version, predictor.scope)

    # -- partitions ---------------------------------------------------------------------------

    def _live(self) -> set[str]:
        """The workers whose heartbeat is recent."""
        peers, now = _open(self._peers), time.time() * 1000
        return {
            name
            for name in list(peers.entries)
            if (found := peers.json(name)) is not None and beat_is_recent(found[0], now)
        }

    def _lease(self, number: int) -> Lease | None:
        found = _open(self._lease_view).json(lease_key(number))
        if found is None:
            return None
        data, revision = found
        return Lease(data.get("owner"), data.get("upto", 0), data.get("snapshot"), revision)

    async def _balance(self) -> None:
        if time.monotonic() - self._beat_ok > WORKER_TTL_S / 2:
            # The bucket is not taking this worker's heartbeats (a leader moving, the server
            # away): the others' look stale for the same reason, so judge nobody meanwhile.
            return
        async with self._busy:
            live = self._live() | {self.id}
            share = math.ceil(self.layout.partitions / len(live))
            held = sorted(self.partitions, key=lambda p: _rank(self.id, p))
            for number in held[share:]:
                await self._give_back(number)
            if len(self.partitions) >= share:
                return
            wanted = sorted(
                (p for p in range(self.layout.partitions) if p not in self.partitions),
                key=lambda p: _rank(self.id, p),
            )
            for number in wanted:
                if len(self.partitions) >= share or self._stopping.is_set():
                    break
                lease = self._lease(number)
                # Free, its owner gone, or this worker's own from before a restart.
                if lease is None or lease.owner in (None, self.id) or lease.owner not in live:
                    await self._take(number, lease)

    async def _take(self, number: int, lease: Lease | None) -> None:
        """Claim the lease (CAS), load its snapshot, start replaying after it and pulling."""
        mine = (
            Lease(self.id, 0, None, 0)
            if lease is None
            else Lease(self.id, lease.upto, lease.snapshot, lease.revision)
        )
        try:
            if lease is None:
                mine.revision = await _open(self._leases).create(lease_key(number), mine.encode())
            else:
                mine.revision = await _open(self._leases).update(
                    lease_key(number), mine.encode(), last=lease.revision
                )
        except KeyValueError:
            return  # another worker claimed it first
        started = time.monotonic()
        part = Partition(number, mine, mine.upto)
        if mine.snapshot is not None:
            blob = (await _open(self._snapshots).get(mine.snapshot)).data or b"{}"
            machines = msgspec.json.decode(blob)["machines"]
            await self._core(self.state.adopt, machines)
            part.machines = {m["machine"] for m in machines}
        await self._core(self.core.alerts.adopt, self.episodes.open_for(part.machines))
        # The replay runs in the partition's task: the next partitions are taken meanwhile
        # instead of after it (a failover's takeovers each waited for the previous replay).
        part.task = asyncio.create_task(self._pull(part))
        self.partitions[number] = part
        self.taken += 1
        log.info(
            "took partition %d: %d machines from its snapshot at sequence %d, in %.2f s",
            number,
            len(part.machines),
            mine.upto,
            time.monotonic() - started,
        )

    async def _replay(self, part: Partition, before: int | None = None) -> int:
        """Apply what the stream holds for the partition after what it has applied (and before
        the stream sequence `before`)."""
        js = self.nc.jetstream()
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=part.upto + 1,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
        )
        sub = await js.pull_subscribe(
            partition_filter(part.number), stream=STREAM_IN, config=config
        )
        replayed = 0
        try:
            pending = (await sub.consumer_info()).num_pending
            while pending:
                msgs = await sub.fetch(min(pending, _BATCH), timeout=5)
                pending = msgs[-1].metadata.num_pending
                if before is not None:
                    kept = [m for m in msgs if m.metadata.sequence.stream < before]
                    pending = pending if len(kept) == len(msgs) else 0
                    msgs = kept
                replayed += await self._core(self._apply, [(part, msgs)])
        finally:
            await sub.unsubscribe()
        return replayed

    async def _pull(self, part: Partition) -> None:
        """Replay what the snapshot does not cover, then pull the partition's consumer in
        batches, with its pin once the server gives one."""
        started = time.monotonic()
        while True:
            try:
                replayed = await self._replay(part)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the connection, mostly: again from where it got to
                log.warning("replaying partition %d failed (%s); again in 1 s", part.number, exc)
                await asyncio.sleep(1)
        log.info(
            "partition %d: replayed %d messages, in %.2f s",
            part.number,
            replayed,
            time.monotonic() - started,
        )
        arrived: list[Msg] = []
        wake = asyncio.Event()

        async def on_message(msg: Msg) -> None:
            arrived.append(msg)
            wake.set()

        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=on_message, pending_msgs_limit=4 * _BATCH)
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM_IN}.{consumer(part.number)}"
        try:
            while True:
                try:
                    await self._pull_once(part, next_subject, inbox, arrived, wake)
                except (asyncio.CancelledError, ClusterError):
                    raise
                except Exception as exc:  # the connection, mostly: nats-py reconnects
                    log.warning("pulling partition %d failed (%s); again in 1 s", part.number, exc)
                    await asyncio.sleep(1)
        finally:
            await sub.unsubscribe()

    async def _pull_once(
        self,
        part: Partition,
        next_subject: str,
        inbox: str,
        arrived: list[Msg],
        wake: asyncio.Event,
    ) -> None:
        """One pull request, applied as its messages arrive."""
        expires_ns = int(_PULL_EXPIRES_S * 1e9)
        await part.drained.wait()  # what the last request brought is applied: no backlog here
        request: dict[str, Any] = {"batch": _BATCH, "expires": expires_ns, "group": GROUP}
        if part.pin is not None:
            request["id"] = part.pin
        await self.nc.publish(next_subject, json.dumps(request).encode(), reply=inbox)
        outstanding, deadline = _BATCH, time.monotonic() + _PULL_EXPIRES_S + 0.5
        while outstanding > 0 and time.monotonic() < deadline:
            try:
                # Not `wait_for`: on 3.11 it returns instead of raising when cancelled as the
                # event fires (gh-86296), and giving the partition back waited for it forever.
                async with asyncio.timeout(deadline - time.monotonic()):
                    await wake.wait()
            except TimeoutError:
                break
            wake.clear()
            msgs, arrived[:] = list(arrived), []
            data = []
            for msg in msgs:
                headers = msg.headers or {}
                status = headers.get("Status")
                if status is not None:
                    outstanding = 0  # the request is over
                    if status == "423":  # the pin moved: to whom, the lease says
                        part.pin = None
                    continue
                part.pin = headers.get("Nats-Pin-Id", part.pin)
                data.append(msg)
            outstanding -= len(data)
            await self._queue(part, data)

    async def _queue(self, part: Partition, data: list[Msg]) -> None:
        """Queue deliveries for the applier, after catching up on what went to someone else.

        A hole in the consumer sequence (or a first delivery since taking the partition) means
        the server delivered messages that did not reach this worker: to a former owner still
        pulling while its lease was taken over, or to a pull request lost with a server node
        that stopped. Those would come back here only as redeliveries below what this worker
        has applied, and be skipped; so what the stream holds between is read and applied
        first."""
        start = 0
        for i, msg in enumerate(data):
            sseq, cseq, _ = delivery_of(msg.reply)
            if part.delivered is not None and cseq == part.delivered + 1:
                part.delivered = cseq
                continue
            part.delivered = cseq
            if i > start:
                self._enqueue(part, data[start:i])
            start = i
            await part.drained.wait()
            caught_up = await self._replay(part, before=sseq)
            if caught_up:
                log.info(
                    "partition %d: read %d messages delivered elsewhere from the stream",
                    part.number,
                    caught_up,
                )
        if start < len(data):
            self._enqueue(part, data[start:])

    def _enqueue(self, part: Partition, data: list[Msg]) -> None:
        part.drained.clear()
        self._arrived.append((part, data))
        self._ready.set()

    async def _snapshot_all(self) -> None:
        async with self._busy:
            parts = list(self.partitions.values())
            for part, (upto, reply) in zip(
                parts, await self._core(self._applied, parts), strict=True
            ):
                if upto > part.lease.upto:
                    await self._snapshot(part, self.id)
                elif reply is not None and reply != part.acked:
                    # Only redeliveries since the snapshot (what a former owner was sent and
                    # never acknowledged): it covers them, and unacknowledged they would come
                    # back every ack wait, the partition's lag never reaching 0.
                    await self._ack(part, reply)

    async def _snapshot(self, part: Partition, owner: str | None) -> bool:
        """Write the partition's state, move its lease (CAS), ack what it covers; a failed
        CAS means another worker holds the lease now: drop the partition."""
        blob, upto, reply, history = await self._core(self._dump, part)
        await self._store_history(history)
        name = f"p{part.number:03d}-{upto}-{self.id}"
        await _open(self._snapshots).put(name, blob)
        lease = Lease(owner, upto, name, part.lease.revision)
        try:
            lease.revision = await _open(self._leases).update(
                lease_key(part.number), lease.encode(), last=part.lease.revision
            )
        except KeyValueError:
            await _open(self._snapshots).delete(name)
            log.warning("partition %d is leased to another worker now: dropping it", part.number)
            self.lost += 1
            await self._drop(part)
            return False
        previous, part.lease = part.lease.snapshot, lease
        if previous is not None and previous != name:
            await _open(self._snapshots).delete(previous)
        if reply is not None:
            await self._ack(part, reply)
        return True

    async def _store_history(self, history: list[tuple[str, bytes]]) -> None:
        """Send history to `TWIN_HISTORY` and wait for the stream to acknowledge it; raise
        `ClusterError` if it has not, so that no snapshot covers it (what is not sent is kept
        and sent first the next time)."""
        self._unsent += history
        if not self._unsent:
            return
        js = self.nc.jetstream()
        sent = await asyncio.gather(
            *(js.publish(subject, payload, timeout=5) for subject, payload in self._unsent),
            return_exceptions=True,
        )
        failed = [
            (m, r) for m, r in zip(self._unsent, sent, strict=True) if isinstance(r, Exception)
        ]
        self._unsent = [m for m, _ in failed]
        if failed:
            raise ClusterError(
                f"{STREAM_HISTORY} did not store {len(failed)} history messages "
                f"({failed[0][1]}): no snapshot until it does"
            )

    async def _ack(self, part: Partition, reply: str) -> None:
        await self.nc.publish(reply, b"+ACK")  # ack-all: everything up to this delivery
        part.acked = reply

    async def _give_back(self, number: int) -> None:
        """Stop pulling, snapshot and ack, free the lease, unpin."""
        part = self.partitions[number]
        await self._stop_pulling(part)
        try:
            kept = await self._snapshot(part, None)
        except Exception:
            if not self._stopping.is_set():  # still this worker's: go on with it
                part.active, part.task = True, asyncio.create_task(self._pull(part))
            raise
        if kept:
            try:
                await Api(self.nc).unpin(number)
            except ClusterError as exc:  # the pin times out by itself (PIN_TIMEOUT_S)
                log.warning("could not unpin partition %d: %s", number, exc)
            await self._drop(part)
            self.given += 1
            log.info("gave partition %d back at sequence %d", number, part.upto)

    async def _stop_pulling(self, part: Partition) -> None:
        """No more pulls for the partition, and what is still queued of it is not applied."""
        part.active = False
        if part.task is not None:
            part.task.cancel()
            await asyncio.gather(part.task, return_exceptions=True)

    async def _drop(self, part: Partition) -> None:
        await self._stop_pulling(part)
        self.partitions.pop(part.number, None)
        await self._core(self._forget, list(part.machines))


def run(settings: Settings) -> None:
    """`twin worker`: run until SIGTERM or SIGINT."""

    async def main() -> None:
        worker = Worker(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        await worker.run()

    asyncio.run(main())
