"""The cluster's layout on JetStream: streams, the partition consumers, buckets; and the
subject contract between MQTT topics and NATS subjects.

    devices (MQTT 3.1.1, QoS 1) -> nats-server's MQTT listener -> {root}.{site}.{machine}.{kind}
      -> stream TWIN_IN, stored as twin.in.{partition(P, site, machine)}.{site}.{machine}.{kind}
      -> durable pull consumer part-NNN per partition, priority group "twin", pinned_client
      -> the worker that holds the partition's lease (KV twin_partitions, compare-and-swap)
    a plant's devices -> its leaf node's MQTT listener -> stream TWIN_PLANT in the plant's
      JetStream domain -> sourced by TWIN_IN (TWIN_NATS_PLANTS), partitioned the same way
    workers -> {root}.{site}.{machine}.twin -> stream TWIN_STATE (the last per machine)
            -> {root}.{site}.{machine}.alert -> stream TWIN_ALERTS
            -> twin.deadletters -> stream TWIN_DEADLETTERS (rejections, the newest 100,000)
            -> twin.risk -> stream TWIN_RISK (fresh scores, batched; `twin forward` reads it)
    heartbeats: KV twin_workers (entries expire); snapshots: object store twin_snapshots
    models: object store twin_models, the active version of each scope in KV twin_active_models
    twin api's allocations: KV twin_allocations
    open alerts: KV twin_alerts (opening one is a create: no two workers raise the same)

`init` creates or updates all of it and says what it did; `check` is what a worker and the API
run first: they refuse a missing or different layout, since a worker of another partition count
would apply machines to the wrong partitions.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError, NoServersError, TimeoutError
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType
from nats.js.kv import KeyValue

from twin.config import Settings
from twin.errors import TwinError
from twin.messages import RawMessage

log = logging.getLogger(__name__)

STREAM_IN = "TWIN_IN"
STREAM_STATE = "TWIN_STATE"
STREAM_ALERTS = "TWIN_ALERTS"
STREAM_DEADLETTERS = "TWIN_DEADLETTERS"
STREAM_PLANT = "TWIN_PLANT"  # on each plant's leaf node, in the plant's JetStream domain
STREAM_RISK = "TWIN_RISK"
STREAM_HISTORY = "TWIN_HISTORY"  # closed history buckets and device events, for training
HISTORY_PREFIX = "twin.history"  # twin.history.<site>
RISK_SUBJECT = "twin.risk"  # fresh risk scores, for `twin forward`
DEADLETTERS_SUBJECT = "twin.deadletters"
DEADLETTERS_MAX = 100_000  # the stream keeps the newest this many
WORKERS = "twin_workers"  # KV: worker id -> heartbeat (partitions held), expiring
LEASES = "twin_partitions"  # KV: p.NNN -> lease (owner, covered stream sequence, snapshot)
EPISODES = "twin_alerts"  # KV: site.machine.rule -> its open alert
SNAPSHOTS = "twin_snapshots"  # object store: a partition's state, named by its lease
MODELS = "twin_models"  # object store: <version>/model.joblib and <version>/model.json
ACTIVE_MODELS = "twin_active_models"  # KV: scope -> the version that scores it everywhere
ALLOCATIONS = "twin_allocations"  # KV: a.<id> -> an allocation of `twin api`; next -> the next id
TRAINING = "twin_training"  # KV: job -> the last training job of any `twin api`
BUCKETS = (WORKERS, LEASES, EPISODES, ACTIVE_MODELS, ALLOCATIONS, TRAINING)
GROUP = "twin"  # the priority group of every partition consumer
FORWARD_PREFIX = "forward-"  # `twin forward`'s consumers: forward-<sink>-<in|risk|alerts>
IN_PREFIX = "twin.in"

HEARTBEAT_S = 1.0  # a worker's heartbeat period
WORKER_TTL_S = 5.0  # a worker is gone when its heartbeat is this old
PIN_TIMEOUT_S = 5.0  # the server moves a pin after this long without a pull from its holder
ACK_WAIT_S = 60.0  # a delivered, unacknowledged message is redelivered after this
MAX_ACK_PENDING = 200_000  # per partition: acknowledged once per snapshot (cluster_snapshot_s)
DUPLICATE_WINDOW_S = 120.0
IN_MAX_AGE_S = 7 * 24 * 3600.0  # how long the input stream keeps readings (the replay horizon)
ALERTS_MAX_AGE_S = 30 * 24 * 3600.0
HISTORY_MAX_AGE_S = 90 * 24 * 3600.0  # what training can read: about 6 GB per 1,000 machines
PLANT_SILENT_S = 10.0  # a plant whose sourcing has been silent this long is not linked
_NS = 1_000_000_000


class ClusterError(TwinError):
    """The cluster cannot be used as asked: no server, a missing or different layout."""


def beat_is_recent(beat: dict[str, Any], now_ms: float) -> bool:
    """A worker is live while its heartbeat is this recent (the bucket expires entries lazily:
    an expired one can still be listed)."""
    return bool(now_ms - beat.get("ts", 0) < WORKER_TTL_S * 1000)


def consumer(partition: int) -> str:
    return f"part-{partition:03d}"


def lease_key(partition: int) -> str:
    return f"p.{partition:03d}"


def partition_filter(partition: int) -> str:
    return f"{IN_PREFIX}.{partition}.>"


def to_nats(topic: str) -> str:
    """An MQTT topic as nats-server's MQTT listener maps it: '.' -> '//', '/' -> '.'."""
    return topic.replace(".", "//").replace("/", ".")


def history_subject(site: str) -> str:
    return f"{HISTORY_PREFIX}.{to_nats(site)}"


def to_topic(root: str, tokens: list[str]) -> str:
    """The MQTT topic of a stored input subject's site, machine and kind tokens."""
    topic = "/".join([root, *tokens])
    return topic.replace("//", ".") if "//" in topic else topic  # a "." came as "//"


def delivery_of(reply: str) -> tuple[int, int, int]:
    """Stream sequence, consumer sequence and store time (ms) of a delivery, from its ack
    subject."""
    tokens = reply.split(".")
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending> (9 tokens), or the
    # 2.10 form with <domain>.<account hash> after ACK (and a random token at the end).
    sseq, cseq, ns = tokens[5:8] if len(tokens) == 9 else tokens[7:10]
    return int(sseq), int(cseq), int(ns) // 1_000_000


def input_message(root: str, msg: Msg) -> RawMessage:
    """A delivery from TWIN_IN as the core takes it: its MQTT topic, payload, store time, and
    its stream sequence as its origin."""
    seq, _, stored_ms = delivery_of(msg.reply)
    return RawMessage(to_topic(root, msg.subject.split(".")[3:]), msg.data, stored_ms, str(seq))


@dataclass(frozen=True, slots=True)
class Layout:
    root: str  # TWIN_TOPIC_ROOT
    partitions: int  # TWIN_NATS_PARTITIONS
    replicas: int = 1  # TWIN_NATS_REPLICAS: 3 on a three-node cluster
    plants: tuple[str, ...] = ()  # TWIN_NATS_PLANTS: the leaf nodes' JetStream domains

    def _inputs(self) -> list[str]:
        r = self.root
        return [f"{r}.*.*.telemetry", f"{r}.*.*.status", f"{r}.*.*.event"]

    def streams(self) -> dict[str, dict[str, Any]]:
        r = self.root
        partitioned = {
            "src": f"{r}.*.*.*",
            "dest": f"{IN_PREFIX}.{{{{partition({self.partitions},1,2)}}}}"
            ".{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}",
        }
        return {
            STREAM_IN: {
                "name": STREAM_IN,
                "num_replicas": self.replicas,
                "subjects": self._inputs(),
                "subject_transform": partitioned,
                # A plant's readings, partitioned as the central devices' are on the way in.
                "sources": [
                    {
                        "name": STREAM_PLANT,
                        "external": {"api": plant_api(domain), "deliver": ""},
                        "subject_transforms": [partitioned],
                    }
                    for domain in self.plants
                ],
                "storage": "file",
                "retention": "limits",
                "discard": "old",
                "max_age": int(IN_MAX_AGE_S * _NS),
                "duplicate_window": int(DUPLICATE_WINDOW_S * _NS),
                "metadata": {"twin.partitions": str(self.partitions), "twin.root": r},
            },
            STREAM_STATE: {
                "name": STREAM_STATE,
                "num_replicas": self.replicas,
                "subjects": [f"{r}.*.*.twin"],
                "storage": "file",
                "max_msgs_per_subject": 1,
                "allow_direct": True,
            },
            STREAM_ALERTS: {
                "name": STREAM_ALERTS,
                "num_replicas": self.replicas,
                "subjects": [f"{r}.*.*.alert"],
                "storage": "file",
                "max_age": int(ALERTS_MAX_AGE_S * _NS),
                "duplicate_window": int(DUPLICATE_WINDOW_S * _NS),
            },
            STREAM_RISK: {
                "name": STREAM_RISK,
                "num_replicas": self.replicas,
                "subjects": [RISK_SUBJECT],
                "storage": "file",
                "max_age": int(IN_MAX_AGE_S * _NS),
            },
            STREAM_HISTORY: {
                "name": STREAM_HISTORY,
                "num_replicas": self.replicas,
                "subjects": [f"{HISTORY_PREFIX}.>"],
                "storage": "file",
                "max_age": int(HISTORY_MAX_AGE_S * _NS),
            },
            STREAM_DEADLETTERS: {
                "name": STREAM_DEADLETTERS,
                "num_replicas": self.replicas,
                "subjects": [DEADLETTERS_SUBJECT],
                "storage": "file",
                "max_msgs": DEADLETTERS_MAX,
                "max_age": int(IN_MAX_AGE_S * _NS),
                "duplicate_window": int(DUPLICATE_WINDOW_S * _NS),
            },
        }

    def plant_stream(self) -> dict[str, Any]:
        """TWIN_PLANT, on a plant's leaf node: its devices' readings while the link is down."""
        return {
            "name": STREAM_PLANT,
            "subjects": self._inputs(),
            "storage": "file",
            "retention": "limits",
            "discard": "old",
            "max_age": int(IN_MAX_AGE_S * _NS),
            "duplicate_window": int(DUPLICATE_WINDOW_S * _NS),
        }

    def consumers(self) -> dict[str, dict[str, Any]]:
        return {
            consumer(p): {
                "durable_name": consumer(p),
                "filter_subject": partition_filter(p),
                "deliver_policy": "all",
                "ack_policy": "all",  # one acknowledgement per snapshot covers the batch
                "ack_wait": int(ACK_WAIT_S * _NS),
                "max_ack_pending": MAX_ACK_PENDING,
                "max_deliver": -1,
                "priority_groups": [GROUP],
                "priority_policy": "pinned_client",
                "priority_timeout": int(PIN_TIMEOUT_S * _NS),
            }
            for p in range(self.partitions)
        }


def plant_api(domain: str) -> str:
    """The JetStream API prefix of a plant's domain, as seen from the central cluster."""
    return f"$JS.{domain}.API"


def layout_of(settings: Settings) -> Layout:
    plants = tuple(p for p in settings.nats_plants.split(",") if p)
    return Layout(settings.topic_root, settings.nats_partitions, settings.nats_replicas, plants)


async def connect(settings: Settings, name: str) -> NATS:
    """Connect to the cluster (`TWIN_NATS_URL`); reconnects for ever once connected."""
    if not settings.nats_url:
        raise ClusterError("cluster mode needs TWIN_NATS_URL (e.g. nats://127.0.0.1:4222)")
    servers = [u.strip() for u in settings.nats_url.split(",")]
    nc = NATS()

    async def disconnected() -> None:
        if not (nc.is_closed or nc.is_draining):  # not when this process closes it
            log.warning("disconnected from NATS; reconnecting")

    async def reconnected() -> None:
        log.info("reconnected to NATS at %s", nc.connected_url.netloc if nc.connected_url else "?")

    async def error(exc: Exception) -> None:
        log.warning("NATS: %s", exc or type(exc).__name__)

    try:
        await nc.connect(
            servers=servers,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            connect_timeout=5,
            allow_reconnect=True,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
        return nc
    except (OSError, NoServersError, TimeoutError) as exc:
        raise ClusterError(f"cannot reach NATS at {settings.nats_url}: {exc}") from exc


def run_init(settings: Settings) -> list[str]:
    """`twin cluster init`."""

    async def main() -> list[str]:
        nc = await connect(settings, "twin-cluster-init")
        try:
            return await init(nc, layout_of(settings))
        finally:
            await nc.close()

    return asyncio.run(main())


class Mirror:
    """A key-value bucket kept current in memory by one watcher for the process's life.

    Listing a bucket's keys makes a consumer each time, which the server keeps for minutes:
    a worker listing its peers every second ran into the server's consumer limit.
    """

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.entries: dict[str, KeyValue.Entry] = {}
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._follow(self._watcher))
        async with asyncio.timeout(30):
            await self._ready.wait()

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # the bucket's current entries are all in
                self._ready.set()
            elif entry.operation in ("DEL", "PURGE"):
                self.entries.pop(entry.key, None)
            else:
                self.entries[entry.key] = entry

    def json(self, key: str) -> tuple[dict[str, Any], int] | None:
        """The entry's JSON value and revision, or None."""
        entry = self.entries.get(key)
        if entry is None or not entry.value:
            return None
        return json.loads(entry.value), entry.revision or 0

    async def stop(self) -> None:
        if self._watcher is not None:
            await self._watcher.stop()  # type: ignore[no-untyped-call]  # nats-py: no hint
        if self._task is not None:
            self._task.cancel()


class Api:
    """JetStream's JSON API, for what nats-py has no call for (priority groups, pins)."""

    def __init__(self, nc: NATS, timeout_s: float = 5.0, prefix: str = "$JS.API") -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self.prefix = prefix  # another domain's, for a plant's leaf node

    async def call(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = b"" if body is None else json.dumps(body).encode()
        try:
            reply = await self.nc.request(
                f"{self.prefix}.{subject}", payload, timeout=self.timeout_s
            )
        except NoRespondersError as exc:
            if self.prefix == "$JS.API":
                raise ClusterError("the NATS server has no JetStream (start it with -js)") from exc
            raise ClusterError(f"no JetStream answers {self.prefix}: not linked") from exc
        except TimeoutError as exc:
            raise ClusterError(f"JetStream did not answer {self.prefix}.{subject} in time") from exc
        data: dict[str, Any] = json.loads(reply.data)
        return data

    async def get(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Like `call`, raising the API's error."""
        data = await self.call(subject, body)
        if "error" in data:
            error = data["error"]
            raise ClusterError(f"{subject}: {error.get('description')} ({error.get('err_code')})")
        return data

    async def unpin(self, partition: int) -> None:
        await self.get(f"CONSUMER.UNPIN.{STREAM_IN}.{consumer(partition)}", {"group": GROUP})


def _differs(want: dict[str, Any], have: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """The settings of `want` that `have` does not match (the server adds its own fields, and
    leaves out an empty list)."""
    skip = {"metadata", *ignore}
    return sorted(
        k for k, v in want.items() if k not in skip and (have.get(k) or None) != (v or None)
    )


async def _ensure_stream(api: Api, config: dict[str, Any], where: str = "") -> str:
    name = config["name"]
    info = await api.call(f"STREAM.INFO.{name}")
    if "error" in info:
        await api.get(f"STREAM.CREATE.{name}", config)
        return f"created stream {name}{where}"
    if differs := _differs(config, info["config"]):
        await api.get(f"STREAM.UPDATE.{name}", {**info["config"], **config})
        return f"updated stream {name}{where}: {', '.join(differs)}"
    return f"stream {name}{where} is as configured"


async def init(nc: NATS, layout: Layout) -> list[str]:
    """Create or update every stream, consumer and bucket; return a line for each."""
    api, done = Api(nc), []
    existing = await api.call(f"STREAM.INFO.{STREAM_IN}")
    if "error" not in existing:
        have = existing["config"].get("metadata", {}).get("twin.partitions")
        if have is not None and int(have) != layout.partitions:
            raise ClusterError(
                f"{STREAM_IN} has {have} partitions, the settings say {layout.partitions}: "
                "changing the partition count is a migration (README, Scaling out); "
                "set TWIN_NATS_PARTITIONS back"
            )
    for domain in layout.plants:  # first: TWIN_IN sources these
        plant = Api(nc, prefix=plant_api(domain))
        try:
            done.append(await _ensure_stream(plant, layout.plant_stream(), f" on plant {domain}"))
        except ClusterError as exc:
            raise ClusterError(
                f"plant {domain}: {exc}; start its leaf node (deploy/nats/plant.conf, "
                f"PLANT_DOMAIN={domain}), wait for its link, and run init again"
            ) from exc
    for config in layout.streams().values():
        done.append(await _ensure_stream(api, config))
    created = updated = 0
    for name, config in layout.consumers().items():
        info = await api.call(f"CONSUMER.INFO.{STREAM_IN}.{name}")
        if "error" not in info and not _differs(config, info["config"]):
            continue
        await api.get(
            f"CONSUMER.CREATE.{STREAM_IN}.{name}", {"stream_name": STREAM_IN, "config": config}
        )
        created, updated = (created + 1, updated) if "error" in info else (created, updated + 1)
    kept = layout.partitions - created - updated
    done.append(f"partition consumers: {created} created, {updated} updated, {kept} as configured")
    js = nc.jetstream()
    for bucket in BUCKETS:
        ttl = WORKER_TTL_S if bucket == WORKERS else None
        try:
            await js.key_value(bucket)
            done.append(f"bucket {bucket} exists")
        except Exception:
            await js.create_key_value(
                KeyValueConfig(
                    bucket=bucket,
                    history=1,
                    ttl=ttl,
                    storage=StorageType.FILE,
                    replicas=layout.replicas,
                )
            )
            done.append(f"created bucket {bucket}")
    for store in (SNAPSHOTS, MODELS):
        try:
            await js.object_store(store)
            done.append(f"object store {store} exists")
        except Exception:
            await js.create_object_store(
                store, ObjectStoreConfig(storage=StorageType.FILE, replicas=layout.replicas)
            )
            done.append(f"created object store {store}")
    return done


async def check(nc: NATS, layout: Layout) -> None:
    """Raise `ClusterError` saying what to do when the layout is missing or different."""
    api = Api(nc)
    fix = "run `twin cluster init` with the same TWIN_NATS_PARTITIONS and TWIN_TOPIC_ROOT"
    for name, want in layout.streams().items():
        info = await api.call(f"STREAM.INFO.{name}")
        if "error" in info:
            raise ClusterError(f"stream {name} is missing: {fix}")
        have = info["config"].get("metadata", {}).get("twin.partitions")
        if name == STREAM_IN and have is not None and int(have) != layout.partitions:
            raise ClusterError(
                f"{STREAM_IN} has {have} partitions, TWIN_NATS_PARTITIONS says "
                f"{layout.partitions}: set it to {have}"
            )
        # Where TWIN_IN's messages come from (its plants) is init's business, not a worker's.
        if differs := _differs(want, info["config"], ignore=("sources",)):
            raise ClusterError(f"stream {name} differs ({', '.join(differs)}): {fix}")
    for name, want in layout.consumers().items():
        info = await api.call(f"CONSUMER.INFO.{STREAM_IN}.{name}")
        if "error" in info:
            raise ClusterError(f"consumer {name} of {STREAM_IN} is missing: {fix}")
        if differs := _differs(want, info["config"]):
            raise ClusterError(f"consumer {name} differs ({', '.join(differs)}): {fix}")
    buckets = [f"KV_{b}" for b in BUCKETS]
    for bucket in (*buckets, f"OBJ_{SNAPSHOTS}", f"OBJ_{MODELS}"):
        if "error" in await api.call(f"STREAM.INFO.{bucket}"):
            raise ClusterError(f"bucket {bucket} is missing: {fix}")
