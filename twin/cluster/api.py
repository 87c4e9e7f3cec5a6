"""`twin api`: the fleet API in cluster mode, stateless.

It holds nothing of its own: the fleet view is the twin-state stream (`TWIN_STATE`, the last
state of each machine) read from the start and then followed, the machines' active alerts
come from `TWIN_ALERTS` the same way, training reads a copy of `TWIN_HISTORY` it keeps the
same way (`twin.cluster.training`), and `/cluster` reads the heartbeats, leases and consumer
states at request time. So any number of these can run, and one restarted is whole again as
soon as it has read the stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import msgspec
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from twin.alerts import Severity
from twin.api import stream as stream_api
from twin.api.allocations import plan_for, tasks_for
from twin.api.deps import (
    ACCESS_ERRORS,
    BODY_ERRORS,
    NOT_FOUND,
    AdminAccess,
    OperateAccess,
    ReadAccess,
    json_response,
    problem,
)
from twin.api.params import LimitParam, MachineParam, MinRiskParam, OffsetParam, SiteParam
from twin.api.router import install_errors
from twin.api.schemas import (
    AckRequest,
    AlertPage,
    AlertPublic,
    AllocationPublic,
    AllocationRequest,
    Cleared,
    DeadLettersPublic,
    MachinePage,
    MachinePublic,
    ModelsPublic,
    PlanPublic,
    PlanRequest,
    TrainingJobPublic,
    TrainRequest,
)
from twin.cluster.allocations import ClusterLedger
from twin.cluster.episodes import episode_key
from twin.cluster.layout import (
    ALLOCATIONS,
    BUCKETS,
    DEADLETTERS_SUBJECT,
    EPISODES,
    FORWARD_PREFIX,
    LEASES,
    MODELS,
    PLANT_SILENT_S,
    SNAPSHOTS,
    STREAM_ALERTS,
    STREAM_DEADLETTERS,
    STREAM_HISTORY,
    STREAM_IN,
    STREAM_RISK,
    STREAM_STATE,
    WORKERS,
    Api,
    ClusterError,
    Mirror,
    beat_is_recent,
    check,
    connect,
    consumer,
    layout_of,
    lease_key,
    to_nats,
)
from twin.cluster.models import SharedModels, scope_key
from twin.cluster.training import ClusterTraining
from twin.config import Settings
from twin.deadletters import DeadLetters
from twin.durations import parse_duration
from twin.errors import Conflict, NotFound
from twin.messages import Reason
from twin.metrics import single
from twin.model.fleet import Attributes, attributes_of
from twin.model.registry import DEFAULT_SCOPE, Registry
from twin.planning.ledger import DEFAULT_MAX_RISK, healthy_by_site
from twin.state import SortKey
from twin.stream import EventHub

log = logging.getLogger(__name__)

_SORT = {"machine": "machine", "site": "site", "last_seen": "last_seen", "risk": "probability"}


def _probability(twin: dict[str, Any]) -> float:
    risk = twin.get("risk")
    return -1.0 if risk is None else float(risk["probability"])


class ClusterView:
    """The fleet as the streams tell it, kept current by following them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.layout = layout_of(settings)
        self.machines: dict[str, dict[str, Any]] = {}
        self._sorted: list[str] | None = []
        self.alerts: dict[int, dict[str, Any]] = {}  # id -> its latest change
        self._active: dict[str, dict[int, dict[str, Any]]] = {}  # machine -> id -> active alert
        self._nc: NATS | None = None
        self._peers: Mirror | None = None
        self._leases: Mirror | None = None
        self.deadletters = DeadLetters(settings.deadletter_max)
        self.hub = EventHub(
            client_buffer=settings.stream_buffer, heartbeat_s=settings.stream_heartbeat_s
        )
        self.models = SharedModels(Registry(settings.models_dir))
        self.training = ClusterTraining(
            self.models,
            self.attributes,
            settings.history_bucket_s * 1000,
            settings.feature_window_s * 1000,
        )
        self.ledger = ClusterLedger(self.hub)
        self._allocations: Mirror | None = None
        self._marking: set[asyncio.Task[None]] = set()
        self.started_at = time.monotonic()

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise RuntimeError("not started")
        return self._nc

    async def start(self) -> None:
        self._nc = await connect(self.settings, "twin-api")
        await check(self.nc, self.layout)
        js = self.nc.jetstream()
        root = self.settings.topic_root
        await js.subscribe(
            f"{root}.*.*.twin",
            stream=STREAM_STATE,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            cb=self._on_twin,
        )
        await js.subscribe(
            f"{root}.*.*.alert", stream=STREAM_ALERTS, ordered_consumer=True, cb=self._on_alert
        )
        await js.subscribe(
            DEADLETTERS_SUBJECT,
            stream=STREAM_DEADLETTERS,
            ordered_consumer=True,
            cb=self._on_deadletter,
        )
        self._peers = Mirror(await js.key_value(WORKERS))
        self._leases = Mirror(await js.key_value(LEASES))
        await self._peers.start()
        await self._leases.start()
        await self.models.start(self.nc)
        await self.training.start(self.nc)
        allocations = await js.key_value(ALLOCATIONS)
        self.ledger.start(allocations)
        self._allocations = Mirror(allocations)
        await self._allocations.start()
        log.info("following %s and %s", STREAM_STATE, STREAM_ALERTS)

    @staticmethod
    def _mirror(mirror: Mirror | None) -> Mirror:
        if mirror is None:
            raise RuntimeError("not started")
        return mirror

    async def stop(self) -> None:
        for mirror in (self._peers, self._leases, self._allocations):
            if mirror is not None:
                await mirror.stop()
        await self.training.stop()
        await self.models.stop()
        if self._nc is not None:
            await self._nc.drain()
            self._nc = None

    async def _on_twin(self, msg: Msg) -> None:
        twin = json.loads(msg.data)
        machine = twin["machine"]
        known = self.machines.get(machine)
        if known is not None and known.get("revision", 0) > twin.get("revision", 0):
            return  # a stalled former owner's late copy
        if known is None:
            self._sorted = None
        self.machines[machine] = twin
        self.hub.publish_json("twin", twin["site"], machine, msg.data)

    async def _on_deadletter(self, msg: Msg) -> None:
        self.deadletters.record(json.loads(msg.data))

    async def clear_deadletters(self) -> int:
        """Empty the cluster's dead letters (every API's list, as they follow the stream)."""
        dropped = self.deadletters.clear()
        await Api(self.nc).get(f"STREAM.PURGE.{STREAM_DEADLETTERS}")
        return dropped

    async def _on_alert(self, msg: Msg) -> None:
        alert = json.loads(msg.data)
        if self._remember(alert):
            self.hub.publish_json("alert", alert["site"], alert["machine"], msg.data)
            if self._allocations is not None and self._allocations.entries:
                entries = list(self._allocations.entries.values())
                task = asyncio.create_task(self.ledger.on_alert(alert, entries))
                self._marking.add(task)
                task.add_done_callback(self._marked)

    def _marked(self, task: asyncio.Task[None]) -> None:
        self._marking.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("marking allocations failed", exc_info=exc)

    def _remember(self, alert: dict[str, Any]) -> bool:
        """Keep an alert change; False for an older copy of one already kept."""
        known = self.alerts.get(alert["id"])
        if known is not None and (known["updated_at"], known["acknowledged"]) > (
            alert["updated_at"],
            alert["acknowledged"],
        ):
            return False
        self.alerts[alert["id"]] = alert
        active = self._active.setdefault(alert["machine"], {})
        if alert["state"] == "active":
            active[alert["id"]] = alert
        else:
            active.pop(alert["id"], None)
        return True

    def alerts_for(self, machine: str) -> list[dict[str, Any]]:
        return sorted(self._active.get(machine, {}).values(), key=lambda a: a["raised_at"])

    def query_alerts(
        self,
        machine: str | None,
        site: str | None,
        state: str | None,
        severity: str | None,
        acknowledged: bool | None,
        limit: int,
        offset: int,
    ) -> tuple[int, list[dict[str, Any]]]:
        """The same filters as `AlertManager.query`, newest first."""
        found = [
            a
            for a in sorted(self.alerts.values(), key=lambda a: (a["raised_at"], a["id"]))[::-1]
            if (machine is None or a["machine"] == machine)
            and (site is None or a["site"] == site)
            and (state is None or a["state"] == state)
            and (severity is None or a["severity"] == severity)
            and (acknowledged is None or a["acknowledged"] is acknowledged)
        ]
        return len(found), found[offset : offset + limit]

    async def acknowledge(
        self, alert_id: int, by: str | None, comment: str | None
    ) -> dict[str, Any]:
        """Acknowledge through the open-alerts bucket (compare-and-swap, so a worker's change
        in between is read again, not overwritten), then tell the alerts stream."""
        alert = self.alerts.get(alert_id)
        if alert is None:
            raise NotFound(f"no alert {alert_id}")
        if alert["acknowledged"]:
            return alert
        kv = await self.nc.jetstream().key_value(EPISODES)
        key = episode_key(alert["site"], alert["machine"], alert["rule"])
        now = int(time.time() * 1000)
        ack = {"acknowledged": True, "acknowledged_by": by, "acknowledged_at": now}
        for _ in range(5):
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                break  # cleared: only the record changes
            current = json.loads(entry.value or b"{}")
            if current.get("id") != alert_id:
                break
            alert = {**current, **ack, "comment": comment, "updated_at": now}
            try:
                await kv.update(key, json.dumps(alert).encode(), last=entry.revision)
                break
            except KeyWrongLastSequenceError:
                continue
        else:
            raise Conflict(f"alert {alert_id} kept changing; try again")
        alert = {**alert, **ack, "comment": comment, "updated_at": now}
        await self.nc.publish(
            f"{to_nats(self.settings.topic_root)}.{to_nats(alert['site'])}."
            f"{to_nats(alert['machine'])}.alert",
            json.dumps(alert).encode(),
            headers={"Nats-Msg-Id": f"{alert_id}:{alert['state']}:{now}:1"},
        )
        self._remember(alert)
        return alert

    def query(
        self,
        site: str | None,
        online: bool | None,
        sort: SortKey,
        limit: int,
        offset: int,
        min_risk: float | None,
    ) -> tuple[int, list[dict[str, Any]]]:
        """The same filters, order and paging as `FleetState.query`."""
        if self._sorted is None:
            self._sorted = sorted(self.machines)
        twins = [self.machines[m] for m in self._sorted]
        if site is not None:
            twins = [t for t in twins if t["site"] == site]
        if online is not None:
            twins = [t for t in twins if t["online"] is online]
        if min_risk is not None:
            twins = [t for t in twins if t.get("risk") is not None and _probability(t) >= min_risk]
        key, reverse = _SORT[sort.lstrip("-")], sort.startswith("-")
        if key == "probability":
            twins.sort(key=lambda t: (_probability(t), t["machine"]), reverse=reverse)
        elif key != "machine":
            twins.sort(key=lambda t: (t[key], t["machine"]), reverse=reverse)
        elif reverse:
            twins.reverse()
        return len(twins), twins[offset : offset + limit]

    # -- the cluster --------------------------------------------------------------------------

    async def cluster(self) -> dict[str, Any]:
        api, peers, leases = Api(self.nc), self._mirror(self._peers), self._mirror(self._leases)
        now = int(time.time() * 1000)
        workers = []
        for name in sorted(peers.entries):
            found = peers.json(name)
            if found is None:
                continue
            beat = found[0]
            recent = beat_is_recent(beat, now)
            workers.append(
                {"id": name, "last_heartbeat": beat.get("ts") or 0, "live": recent, **_worker(beat)}
            )
        live = {w["id"] for w in workers if w["live"]}
        partitions, unknown = [], []
        for number in range(self.layout.partitions):
            lease = (leases.json(lease_key(number)) or ({}, 0))[0]
            owner = lease.get("owner")
            row: dict[str, Any] = {
                "partition": number,
                "owner": owner if owner in live else None,
                "covered": lease.get("upto", 0),
                "lag": None,  # while JetStream cannot say (a leader moving)
                "pending": None,
                "unacknowledged": None,
                "redelivered": None,
            }
            try:
                info = await api.get(f"CONSUMER.INFO.{STREAM_IN}.{consumer(number)}")
            except ClusterError as exc:
                unknown.append(f"partition {number}: {exc}")
            else:
                row["lag"] = info["num_pending"] + info["num_ack_pending"]
                row["pending"] = info["num_pending"]
                row["unacknowledged"] = info["num_ack_pending"]
                row["redelivered"] = info["num_redelivered"]
            partitions.append(row)
        streams: dict[str, Any] = {}
        plants: list[dict[str, Any]] = []
        for name in (STREAM_IN, STREAM_STATE, STREAM_ALERTS, STREAM_HISTORY, STREAM_DEADLETTERS):
            try:
                info = await api.get(f"STREAM.INFO.{name}")
            except ClusterError as exc:
                unknown.append(f"stream {name}: {exc}")
                streams[name] = None
                continue
            if name == STREAM_IN:
                plants = [_plant(source) for source in info.get("sources") or []]
            streams[name] = {
                "subjects": info["config"]["subjects"],
                "messages": info["state"]["messages"],
                "bytes": info["state"]["bytes"],
                "replicas": info["config"]["num_replicas"],
            }
        return {
            "workers": workers,
            "partitions": partitions,
            "plants": plants,
            "forwarders": await self._forwarders(api, unknown),
            "layout": {
                "partitions": self.layout.partitions,
                "replicas": self.layout.replicas,
                "streams": streams,
                "buckets": [*BUCKETS, SNAPSHOTS, MODELS],
            },
            "unknown": unknown,  # what JetStream did not answer this time
        }

    async def default_max_risk(self) -> float:
        """The default model's threshold, as `twin serve`'s."""
        version = self.models.active().get(scope_key(DEFAULT_SCOPE))
        if version is None:
            return DEFAULT_MAX_RISK
        threshold: float = (await self.models.manifest(version))["threshold"]
        return threshold

    def attributes(self, machine: str) -> Attributes:
        twin = self.machines.get(machine) or {}
        return attributes_of(twin.get("type"), twin.get("properties") or {})

    def machine_types(self) -> set[str]:
        return {t["type"] for t in list(self.machines.values()) if t.get("type")}

    async def healthy_machines(self) -> dict[str, int]:
        """Per site: machines online and below the default model's threshold, as `twin serve`
        counts them for `/plans`."""
        limit = await self.default_max_risk()
        return healthy_by_site(
            (
                (m["site"], m["online"], (m.get("risk") or {}).get("probability"))
                for m in list(self.machines.values())
            ),
            limit,
        )

    async def _forwarders(self, api: Api, unknown: list[str]) -> list[dict[str, Any]]:
        """`twin forward`'s consumers: what each sink has yet to write."""
        rows = []
        for stream in (STREAM_IN, STREAM_RISK, STREAM_ALERTS):
            try:
                names = (await api.get(f"CONSUMER.NAMES.{stream}")).get("consumers") or []
                for name in sorted(n for n in names if n.startswith(FORWARD_PREFIX)):
                    info = await api.get(f"CONSUMER.INFO.{stream}.{name}")
                    rows.append(
                        {
                            "consumer": name,
                            "stream": stream,
                            "pending": info["num_pending"],
                            "unacknowledged": info["num_ack_pending"],
                        }
                    )
            except ClusterError as exc:
                unknown.append(f"forwarders of {stream}: {exc}")
        return rows

    async def health(self) -> dict[str, Any]:
        problems = []
        if self._nc is None or not self._nc.is_connected:
            return {"status": "degraded", "problems": ["not connected to NATS"]}
        cluster = await self.cluster()
        orphans = [p["partition"] for p in cluster["partitions"] if p["owner"] is None]
        if orphans:
            listed = ", ".join(map(str, orphans[:10])) + (", ..." if len(orphans) > 10 else "")
            problems.append(f"{len(orphans)} partitions have no owner: {listed}")
        problems += [f"JetStream did not answer for {what}" for what in cluster["unknown"][:5]]
        problems += [
            f"plant {p['domain']} not reached for {p['last_seen_ms'] / 1000:.0f} s"
            f" ({p['lag']} readings waiting there)"
            for p in cluster["plants"]
            if not p["linked"]
        ]
        return {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "machines": len(self.machines),
            "workers": len(cluster["workers"]),
            "lag": sum(p["lag"] or 0 for p in cluster["partitions"]),
        }


def _plant(source: dict[str, Any]) -> dict[str, Any]:
    """A plant as TWIN_IN's sourcing of its stream sees it."""
    api = (source.get("external") or {}).get("api", "")
    domain = api.removeprefix("$JS.").removesuffix(".API")
    active_ns = source.get("active", -1)  # since the last word from the plant; -1: never
    last_seen_ms = None if active_ns < 0 else round(active_ns / 1e6)
    return {
        "domain": domain,
        "lag": source.get("lag", 0),  # readings in the plant's stream not yet in TWIN_IN
        "last_seen_ms": last_seen_ms,
        "linked": last_seen_ms is not None and last_seen_ms < PLANT_SILENT_S * 1000,
        "error": (source.get("error") or {}).get("description"),
    }


def _worker(beat: dict[str, Any]) -> dict[str, Any]:
    """What a heartbeat says: partitions held, and since the worker started, partitions taken,
    given back and lost to another's lease; for those it holds, messages applied and skipped
    as redeliveries; the model version scoring each scope."""
    keys = ("machines", "applied", "redelivered", "taken", "given", "lost")
    return {
        "partitions": beat.get("partitions", []),
        **{k: beat.get(k, 0) for k in keys},
        "models": beat.get("models", {}),
    }


def _view(request: Request) -> ClusterView:
    view: ClusterView = request.app.state.view
    return view


ViewDep = Annotated[ClusterView, Depends(_view)]
router = APIRouter(dependencies=[ReadAccess])
open_router = APIRouter()  # liveness and metrics stay open, as with `twin serve`


@router.get("/machines", response_model=MachinePage, tags=["machines"], summary="List the fleet")
def list_machines(
    view: ViewDep,
    site: SiteParam = None,
    online: bool | None = None,
    sort: SortKey = "machine",
    limit: LimitParam = 100,
    offset: OffsetParam = 0,
    min_risk: MinRiskParam = None,
) -> Response:
    total, items = view.query(site, online, sort, limit, offset, min_risk)
    page = [{**m, "alerts": view.alerts_for(m["machine"])} for m in items]
    return json_response({"items": page, "total": total, "limit": limit, "offset": offset})


@router.get(
    "/machines/{machine}",
    response_model=MachinePublic,
    tags=["machines"],
    summary="One machine's twin",
    responses=NOT_FOUND,
)
def get_machine(view: ViewDep, machine: str) -> Response:
    found = view.machines.get(machine)
    if found is None:
        raise NotFound(f"no machine {machine!r} has reported")
    return json_response({**found, "alerts": view.alerts_for(machine)})


@router.get("/alerts", response_model=AlertPage, tags=["alerts"], summary="Alerts, newest first")
def list_alerts(
    view: ViewDep,
    machine: MachineParam = None,
    site: SiteParam = None,
    state: Literal["active", "cleared"] | None = None,
    severity: Severity | None = None,
    acknowledged: bool | None = None,
    limit: LimitParam = 100,
    offset: OffsetParam = 0,
) -> Response:
    total, found = view.query_alerts(machine, site, state, severity, acknowledged, limit, offset)
    return json_response({"items": found, "total": total, "limit": limit, "offset": offset})


@router.get(
    "/alerts/{alert_id}",
    response_model=AlertPublic,
    tags=["alerts"],
    summary="One alert",
    responses=NOT_FOUND,
)
def get_alert(view: ViewDep, alert_id: int) -> Response:
    alert = view.alerts.get(alert_id)
    if alert is None:
        raise NotFound(f"no alert {alert_id}")
    return json_response(alert)


@router.post(
    "/alerts/{alert_id}/ack",
    response_model=AlertPublic,
    dependencies=[OperateAccess],
    tags=["alerts"],
    summary="Acknowledge an alert (through the cluster's open-alerts bucket)",
    responses={**NOT_FOUND, **BODY_ERRORS},
)
async def acknowledge(view: ViewDep, alert_id: int, body: AckRequest | None = None) -> Response:
    request = body or AckRequest()
    return json_response(await view.acknowledge(alert_id, request.by, request.comment))


@router.get(
    "/deadletters",
    response_model=DeadLettersPublic,
    tags=["deadletters"],
    summary="Rejected messages, newest first",
)
def list_deadletters(
    view: ViewDep,
    machine: MachineParam = None,
    reason: Reason | None = None,
    limit: LimitParam = 100,
) -> Response:
    dl = view.deadletters
    return json_response(
        {
            "total": dl.total,
            "by_reason": dict(dl.by_reason),
            "items": dl.query(machine, reason, limit),
        }
    )


@router.delete(
    "/deadletters",
    response_model=Cleared,
    dependencies=[OperateAccess],
    tags=["deadletters"],
    summary="Empty the dead-letter list, for every API",
)
async def clear_deadletters(view: ViewDep) -> Response:
    return json_response({"cleared": await view.clear_deadletters()})


@router.get(
    "/model", response_model=ModelsPublic, tags=["model"], summary="The models scoring the fleet"
)
async def list_models(view: ViewDep) -> Response:
    """The active model of each scope, from the cluster's store; every worker scores with it
    (`/cluster` shows each worker's versions). `training` is the cluster's last job, whichever
    `twin api` ran it."""
    active = {}
    for version in view.models.active().values():
        manifest = await view.models.manifest(version)
        active[manifest["scope"]] = manifest
    return json_response(
        {
            "active": active,
            "stored": await view.models.stored(),
            "training": await view.training.job(),
        }
    )


@router.post(
    "/model/train",
    response_model=TrainingJobPublic,
    status_code=202,
    dependencies=[AdminAccess],
    tags=["model"],
    summary="Train a model on the cluster's history (TWIN_HISTORY), in the background",
    responses={409: problem("a job is running, or the history is still being read"), **BODY_ERRORS},
)
async def train(view: ViewDep, request: TrainRequest) -> Response:
    """As `twin serve`'s, on the history the workers send to `TWIN_HISTORY`; a promoted model
    reaches every worker. One job at a time in the cluster; progress shows on `GET /model`
    of any instance."""
    horizon = parse_duration(request.label_horizon)
    response = json_response(
        await view.training.begin(request.site, horizon, request.force, request.windows_ms)
    )
    response.status_code = 202
    return response


@router.post(
    "/allocations",
    response_model=AllocationPublic,
    dependencies=[OperateAccess],
    tags=["allocations"],
    summary="Allocate tasks to healthy machines (optimised)",
    responses=BODY_ERRORS,
)
async def create_allocation(view: ViewDep, request: AllocationRequest) -> Response:
    """As `twin serve`'s, kept in the cluster (`twin_allocations`): any instance answers."""
    tasks = tasks_for(request, view.machine_types())
    limit = await view.default_max_risk() if request.max_risk is None else request.max_risk
    twins = list(view.machines.values())
    return json_response(await view.ledger.allocate(tasks, twins, request.horizon_min, limit))


@router.get(
    "/allocations/{allocation_id}",
    response_model=AllocationPublic,
    tags=["allocations"],
    summary="One allocation",
    responses=NOT_FOUND,
)
async def get_allocation(view: ViewDep, allocation_id: int) -> Response:
    return json_response(await view.ledger.get(allocation_id))


@router.post(
    "/allocations/{allocation_id}/replan",
    response_model=AllocationPublic,
    dependencies=[OperateAccess],
    tags=["allocations"],
    summary="Move the tasks of machines now in alert",
    responses={**NOT_FOUND, 409: problem("another replan changed it meanwhile")},
)
async def replan(view: ViewDep, allocation_id: int) -> Response:
    twins = list(view.machines.values())
    return json_response(await view.ledger.replan(allocation_id, twins))


@router.post(
    "/plans",
    response_model=PlanPublic,
    dependencies=[OperateAccess],
    tags=["allocations"],
    summary="Plan production across sites (linear programme)",
    responses=BODY_ERRORS,
)
async def create_plan(view: ViewDep, request: PlanRequest) -> Response:
    """As `twin serve`'s: a site without a capacity gets its healthy machines' worth, from the
    fleet the streams tell."""
    healthy = await view.healthy_machines()
    return json_response(await asyncio.to_thread(plan_for, request, healthy))  # off the loop


@router.get("/cluster", tags=["cluster"], summary="Workers, partitions, lag and layout")
async def get_cluster(view: ViewDep) -> Response:
    return json_response(await view.cluster())


@open_router.get("/health", tags=["operations"], summary="ok, or degraded with the reasons")
async def get_health(view: ViewDep) -> Response:
    health = await view.health()
    return Response(
        msgspec.json.encode(health),
        status_code=200 if health["status"] == "ok" else 503,
        media_type="application/json",
    )


@open_router.get(
    "/metrics", response_class=Response, tags=["operations"], summary="Prometheus metrics"
)
async def get_metrics(view: ViewDep) -> Response:
    """The cluster as `/cluster` sees it now, and the fleet as the streams tell it."""
    cluster = await view.cluster()
    gauge, counter = GaugeMetricFamily, CounterMetricFamily
    live = [w for w in cluster["workers"] if w["live"]]
    families: list[GaugeMetricFamily | CounterMetricFamily] = [
        single(gauge, "twin_cluster_workers", "Workers with a recent heartbeat", len(live)),
        single(
            gauge,
            "twin_cluster_partitions_unowned",
            "Partitions without a live owner",
            sum(p["owner"] is None for p in cluster["partitions"]),
        ),
        single(gauge, "twin_machines", "Machines with a twin", len(view.machines)),
        single(
            counter,
            "twin_readings_applied",
            "Distinct readings applied, over every machine",
            sum(m["counters"]["received"] for m in view.machines.values()),
        ),
    ]
    lag = gauge("twin_cluster_partition_lag", "Messages not yet acknowledged", labels=["partition"])
    redelivered = counter(
        "twin_cluster_partition_redelivered", "Messages delivered again", labels=["partition"]
    )
    for p in cluster["partitions"]:
        if p["lag"] is not None:
            lag.add_metric([str(p["partition"])], p["lag"])
            redelivered.add_metric([str(p["partition"])], p["redelivered"])
    held = gauge("twin_cluster_worker_partitions", "Partitions a worker holds", labels=["worker"])
    for worker in live:
        held.add_metric([worker["id"]], len(worker["partitions"]))
    stored = gauge("twin_cluster_stream_messages", "Messages in a stream", labels=["stream"])
    for name, stream in cluster["layout"]["streams"].items():
        if stream is not None:
            stored.add_metric([name], stream["messages"])
    rejected = counter("twin_rejections", "Rejected messages or readings", labels=["reason"])
    for reason, count in sorted(view.deadletters.by_reason.items()):
        rejected.add_metric([reason], count)
    families += [lag, redelivered, held, stored, rejected]
    registry = CollectorRegistry()
    registry.register(_Families(families))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class _Families(Collector):
    def __init__(self, families: list[GaugeMetricFamily | CounterMetricFamily]) -> None:
        self.families = families

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        return iter(self.families)


def create_app(settings: Settings) -> FastAPI:
    view = ClusterView(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await view.start()
        try:
            yield
        finally:
            await view.stop()

    app = FastAPI(
        title="factory-twin (cluster)",
        summary="The fleet's twins from the cluster's streams: stateless, any number of them.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.view = view
    app.state.settings = settings
    app.state.hub = view.hub
    install_errors(app)
    app.include_router(open_router)
    app.include_router(router)
    app.include_router(stream_api.router, dependencies=[ReadAccess], responses=ACCESS_ERRORS)
    return app


def run(settings: Settings, host: str, port: int) -> None:
    """`twin api`."""
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )
