"""Response and request schemas, layered by direction (`...Public` goes out)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from twin.durations import BadDuration, parse_duration
from twin.model.fleet import DEFAULT_WINDOWS_MS, window_label


class RequestModel(BaseModel):
    """What clients send: unknown fields and loose types (`false` for a number) are 422s."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Problem(BaseModel):
    """Every error answer: a message, or (a 422 from request validation) FastAPI's error list."""

    detail: str | list[dict[str, Any]]


class SignalValue(BaseModel):
    value: float
    ts: int = Field(description="event time, epoch milliseconds")


class SignalStats(BaseModel):
    count: int
    mean: float
    min: float
    max: float


class CountersPublic(BaseModel):
    received: int = Field(description="distinct readings applied")
    duplicates: int = Field(description="repeated or redelivered readings, not applied again")
    out_of_order: int = Field(description="readings older than a live value they carried")
    gaps: int = Field(description="sequence numbers skipped and not (yet) received")
    rejected: int
    rejected_by_reason: dict[str, int]
    events: dict[str, int] = Field(
        default_factory=dict, description="events applied, by type (births, deaths, ...)"
    )


class RiskPublic(BaseModel):
    probability: float = Field(ge=0, le=1, description="failure probability from the model")
    model_version: str
    threshold: float = Field(description="the model's alert threshold (best F1, out-of-fold)")
    updated_at: int = Field(description="epoch ms of the scoring")
    contributions: dict[str, float] = Field(
        description="each feature group's additive share of the logit against the training "
        "mean, largest magnitude first"
    )
    imputed: list[str] = Field(
        default_factory=list,
        description="the site model's signals this machine did not send lately: imputed",
    )


class AlertPublic(BaseModel):
    id: int
    machine: str
    site: str
    rule: str
    kind: str
    severity: str = Field(description="warning, minor, major or critical; may escalate")
    state: str = Field(description="active or cleared")
    message: str
    raised_at: int = Field(description="epoch ms")
    updated_at: int
    cleared_at: int | None
    acknowledged: bool
    acknowledged_by: str | None
    acknowledged_at: int | None
    comment: str | None
    model_version: str | None = Field(description="the model behind a risk alert")


class AlertPage(BaseModel):
    items: list[AlertPublic]
    total: int
    limit: int
    offset: int


class AckRequest(RequestModel):
    by: str | None = Field(default=None, max_length=200)
    comment: str | None = Field(default=None, max_length=2000)


class MachinePublic(BaseModel):
    machine: str
    site: str
    type: str | None = Field(description="machine type or model from the birth message")
    online: bool | None = Field(description="from status messages; null before the first")
    first_seen: int = Field(description="epoch ms")
    last_seen: int = Field(description="epoch ms of the last message received")
    values: dict[str, SignalValue]
    stats: dict[str, SignalStats] = Field(description="over the recent window (stats_window_s)")
    last_events: dict[str, dict[str, Any]]
    properties: dict[str, str | float | bool] = Field(
        default_factory=dict, description="what the device says of itself: the latest of each"
    )
    counters: CountersPublic
    revision: int
    risk: RiskPublic | None
    risk_reason: str | None = Field(description="why `risk` is null")
    alerts: list[AlertPublic] = Field(description="its active alerts")


class MachinePage(BaseModel):
    items: list[MachinePublic]
    total: int
    limit: int
    offset: int


class JournalHealth(BaseModel):
    lag: int = Field(description="messages received and not yet committed")
    committed: int = Field(description="messages committed since start")
    replayed: int = Field(description="messages replayed from the journal at start")
    rows: int
    dropped: int = Field(description="rows dropped by the journal's size bound")
    last_commit_ms: int | None
    failure: str | None


class ReadingTotals(BaseModel):
    received: int = Field(description="distinct readings applied, whole fleet")
    duplicates: int
    rejected: int = Field(description="rejections attributed to a machine")


class ScoringHealth(BaseModel):
    models: int = Field(description="active models")
    scored: int = Field(description="machine scorings since start")
    seconds: float = Field(description="time spent scoring since start")


class SinkHealth(BaseModel):
    name: str
    cursor: int = Field(description="the journal id forwarded up to")
    lag: int = Field(description="journal messages not yet forwarded")
    written: int = Field(description="points written since start")
    retries: int
    dropped: int = Field(description="journal rows the size bound dropped before they were sent")
    last_error: str | None


class StreamHealth(BaseModel):
    clients: int = Field(description="connected /stream clients")
    dropped: dict[str, int] = Field(description="clients dropped, by reason")


class OutboundHealth(BaseModel):
    queued: int = Field(description="twin and alert messages waiting for the broker")
    dropped: int = Field(description="messages not sent because that queue was full")


class SparkplugHealth(BaseModel):
    connected: bool
    host_id: str
    nodes: int = Field(description="edge nodes with a live session")
    counts: dict[str, int] = Field(
        description="messages by type (NBIRTH, DDATA, ...), rebirth_requests, seq_gaps, "
        "bad_births, unknown_metrics, stale_deaths, state_births, ..."
    )


class HealthPublic(BaseModel):
    status: str = Field(description="ok, or degraded with the reason in `problems`")
    problems: list[str]
    broker_connected: bool
    uptime_s: float
    machines: int
    readings: ReadingTotals
    journal: JournalHealth
    sinks: list[SinkHealth]
    stream: StreamHealth
    scoring: ScoringHealth
    outbound: OutboundHealth
    sparkplug: SparkplugHealth | None = Field(
        default=None, description="the Sparkplug B host, with TWIN_SPARKPLUG=true"
    )


class DeadLetterPublic(BaseModel):
    id: int
    received_at: int
    topic: str
    site: str | None
    machine: str | None
    reason: str
    detail: str
    index: int | None = Field(description="position in a batch, when the message was one")
    payload: str = Field(description="the start of the payload, as text")


class DeadLettersPublic(BaseModel):
    total: int = Field(description="rejections counted since the journal began")
    by_reason: dict[str, int]
    items: list[DeadLetterPublic]


class Cleared(BaseModel):
    cleared: int


def _duration(value: str) -> str:
    """A field that must parse as a duration."""
    try:
        parse_duration(value)
    except BadDuration as exc:
        raise ValueError(str(exc)) from None  # pydantic reports ValueErrors as 422 details
    return value


class TrainRequest(RequestModel):
    site: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="train a model for one site"
    )
    label_horizon: str = Field(
        default="24h",
        pattern=r"^\s*\d+(\.\d+)?\s*[smhd]\s*$",
        description="a failure within this long after a sample labels it (s/m/h/d)",
    )
    force: bool = Field(default=False, description="promote even if worse than the active model")
    windows: list[str] = Field(
        default=[window_label(w) for w in DEFAULT_WINDOWS_MS],
        min_length=1,
        max_length=4,
        description="the windows of event time window and event features cover (s/m/h/d); "
        "none longer than TWIN_FEATURE_WINDOW_S",
    )

    _label_horizon = field_validator("label_horizon")(_duration)

    @field_validator("windows")
    @classmethod
    def _windows(cls, value: list[str]) -> list[str]:
        for window in value:
            _duration(window)
        if len({parse_duration(w) for w in value}) < len(value):
            raise ValueError("windows must differ")
        return value

    @property
    def windows_ms(self) -> tuple[int, ...]:
        return tuple(sorted(parse_duration(w) for w in self.windows))


class TrainingJobPublic(BaseModel):
    id: int
    state: str = Field(description="running, done or failed")
    progress: str
    scope: str
    site: str | None
    label_horizon_ms: int
    windows_ms: list[int] = []
    force: bool
    started_at: int
    finished_at: int | None = None
    error: str | None = None
    candidate: dict[str, Any] | None = None
    active: dict[str, Any] | None = None
    promoted: bool | None = None
    reason: str | None = None


class ModelPublic(BaseModel):
    model_config = ConfigDict(extra="allow")  # fleet models also carry their feature spec

    version: str
    scope: str
    kind: str
    features: list[str]
    sklearn_version: str
    training_data: dict[str, Any]
    metrics: dict[str, Any]
    threshold: float
    created_at: str


class ModelsPublic(BaseModel):
    active: dict[str, ModelPublic] = Field(description="the model scoring each scope")
    stored: list[ModelPublic] = Field(description="every stored model, newest first")
    training: TrainingJobPublic | None = Field(description="the last training job")


class HistoryPublic(BaseModel):
    machine: str
    source: str = Field(description="influxdb, or recent (the twin's bounded recent window)")
    start: int = Field(description="epoch ms")
    end: int = Field(description="epoch ms")
    every_ms: int | None = Field(description="aggregation window; null for raw points")
    series: dict[str, list[dict[str, float | int]]] = Field(
        description="per signal: {ts, value} points, or {ts, mean, min, max} per window"
    )


_ID = r"^[A-Za-z0-9_.:-]{1,128}$"


class TaskIn(RequestModel):
    id: str = Field(pattern=_ID)
    duration_min: float = Field(gt=0, le=100_000)
    machine_type: str | None = Field(default=None, max_length=64)
    site: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    due_min: float | None = Field(default=None, ge=0)
    priority: float = Field(default=1.0, gt=0, le=1000)


class AllocationRequest(RequestModel):
    tasks: list[TaskIn] = Field(min_length=1, max_length=100_000)
    horizon_min: float = Field(default=480, gt=0, le=1_000_000)
    max_risk: float | None = Field(
        default=None, ge=0, le=1, description="default: the default model's threshold"
    )

    @field_validator("tasks")
    @classmethod
    def _unique_ids(cls, tasks: list[TaskIn]) -> list[TaskIn]:
        ids = [t.id for t in tasks]
        if len(set(ids)) != len(ids):
            raise ValueError("task ids must be unique")
        return tasks


class AllocationPublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int
    created_at: int
    horizon_min: float
    max_risk: float
    assignments: list[dict[str, Any]] = Field(
        description="{task, machine, site, start_min, end_min, risk, late_min, why}"
    )
    unassigned: list[dict[str, Any]] = Field(description="{task, reason}")
    excluded: list[dict[str, Any]] = Field(description="machines left out, and why")
    objective: dict[str, float]
    solver: dict[str, Any]
    affected: list[dict[str, Any]] = Field(description="machines with assigned work now in alert")
    replans: int


class SiteIn(RequestModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    capacity: float | None = Field(
        default=None, ge=0, description="default: healthy online machines x capacity_per_machine"
    )
    unit_cost: float = Field(ge=0)


class DemandIn(RequestModel):
    id: str = Field(pattern=_ID)
    quantity: float = Field(ge=0)
    shortfall_cost: float = Field(ge=0)


class TransportIn(RequestModel):
    site: str
    demand: str
    cost: float = Field(ge=0)


# Sites x demands: the linear programme's size, so that a plan answers within seconds
# (100,000 pairs took 3 s here).
MAX_PLAN_PAIRS = 100_000


class PlanRequest(RequestModel):
    sites: list[SiteIn] = Field(min_length=1, max_length=1000)
    demands: list[DemandIn] = Field(min_length=1, max_length=10_000)
    transport: list[TransportIn] = Field(default_factory=list)
    capacity_per_machine: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _well_formed(self) -> PlanRequest:
        for what, names in (
            ("site names", [s.name for s in self.sites]),
            ("demand ids", [d.id for d in self.demands]),
        ):
            if len(set(names)) != len(names):
                raise ValueError(f"{what} must be unique")
        pairs = len(self.sites) * len(self.demands)
        if pairs > MAX_PLAN_PAIRS:
            raise ValueError(
                f"{len(self.sites)} sites x {len(self.demands)} demands = {pairs} pairs; "
                f"a plan takes at most {MAX_PLAN_PAIRS}"
            )
        return self


class PlanPublic(BaseModel):
    status: str
    total_cost: float
    quantities: list[dict[str, Any]]
    shortfalls: list[dict[str, Any]]
    capacities: list[dict[str, Any]] = Field(
        description="{site, capacity, used, binding, shadow_price}: what one more unit would save"
    )
    solver: dict[str, Any]


_SIGNAL = r"^[a-z][a-z0-9_]{0,63}$"
_ACTION = r"^[A-Za-z0-9_.-]{1,64}$"


class ScoredPublic(BaseModel):
    probability: float
    threshold: float
    model_version: str
    contributions: dict[str, float] = Field(description="feature group -> share of the logit")


class WhatIfRequest(RequestModel):
    values: dict[str, float] = Field(
        default_factory=dict, max_length=64, description="signal -> the value to try"
    )
    events: list[str] = Field(
        default_factory=list, max_length=8, description="maintenance actions done first"
    )
    operate_min: float = Field(
        default=0, ge=0, le=7 * 24 * 60, description="minutes of operation rolled forward"
    )


class WhatIfPublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    machine: str
    now: ScoredPublic
    whatif: ScoredPublic


class ForecastPoint(BaseModel):
    t_min: float
    probability: float = Field(description="of a failure within probability_window_min")
    low: float
    high: float
    expected_failures: float = Field(description="summed chance of a failure per step so far")


class SigmoidFit(BaseModel):
    theta: float = Field(description="per minute")
    t0_min: float | None
    rmse: float


class ForecastPublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    machine: str
    method: str = Field(description="process_model or trend")
    threshold: float
    probability_window_min: float | None
    points: list[ForecastPoint]
    crosses_threshold_at_min: float | None
    p_t_fit: SigmoidFit


class AdviceRequest(RequestModel):
    target: float | None = Field(default=None, gt=0, lt=1, description="default: the threshold")
    controllable: dict[str, Annotated[list[float], Field(min_length=2, max_length=2)]] | None = (
        Field(
            default=None,
            max_length=4,
            description="signal -> [low, high]; default: TWIN_CONTROLS for the machine's type",
        )
    )


class AdvicePublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    machine: str
    target: float
    feasible: bool
    change: dict[str, dict[str, float]] | None = Field(description="signal -> {from, to, delta}")
    advice: str
    now: ScoredPublic


class ActionIn(RequestModel):
    name: str = Field(pattern=_ACTION)
    duration_min: float = Field(gt=0, le=7 * 24 * 60)


class CostsIn(RequestModel):
    failure: float = Field(ge=0)
    maintenance: float = Field(ge=0)
    downtime_per_h: float = Field(ge=0)


class MaintenancePlanRequest(RequestModel):
    horizon: str = Field(default="8h", description="like '8h' or '2d'")
    step: str = Field(default="10m", description="the slot: services start on slot boundaries")
    crews: int = Field(default=1, ge=1, le=10_000, description="machines in service at once")
    actions: list[ActionIn] = Field(
        default_factory=lambda: [ActionIn(name="tool_change", duration_min=30)],
        min_length=1,
        max_length=8,
    )
    costs: CostsIn = Field(
        default_factory=lambda: CostsIn(failure=10_000, maintenance=200, downtime_per_h=300)
    )
    machines: list[str] | None = Field(default=None, max_length=10_000)
    site: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    min_interval_min: float = Field(
        default=120,
        ge=0,
        le=7 * 24 * 60,
        description="operation between two services of a machine, at least; a tool younger "
        "than this counts as new (its risk is read at this age)",
    )
    baseline_interval_min: float = Field(
        default=200, gt=0, description="the fixed-interval baseline's service interval"
    )

    _horizon = field_validator("horizon", "step")(_duration)

    @field_validator("actions")
    @classmethod
    def _unique_actions(cls, actions: list[ActionIn]) -> list[ActionIn]:
        if len({a.name for a in actions}) != len(actions):
            raise ValueError("action names must be unique")
        return actions


class MaintenancePlanPublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int
    created_at: int
    accepted_at: int | None
    horizon_min: float
    step_min: float
    crews: int
    windows: list[dict[str, Any]] = Field(
        description="{machine, site, action, start_min, end_min, reason}"
    )
    objective: dict[str, Any]
    baselines: dict[str, Any] = Field(description="run_to_failure, fixed_interval")
    solver: dict[str, Any]
    skipped: list[dict[str, Any]] = Field(description="machines left out, and why")


class MaintenanceWindowPublic(BaseModel):
    id: int
    plan: int
    machine: str
    site: str
    action: str
    start_ms: int
    end_ms: int
    state: str = Field(description="scheduled, due, done or superseded")
    accepted_at: int
    done_at: int | None
    reason: dict[str, Any]


class MaintenancePage(BaseModel):
    items: list[MaintenanceWindowPublic]


class CataloguePublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    products: list[dict[str, Any]] = Field(
        description="id, name, price_per_unit, currency, operations, options {name: {values? "
        "| pattern and max_length, default, effects}}, rules"
    )


class QuoteRequest(RequestModel):
    product: str = Field(min_length=1, max_length=64)
    options: dict[str, str] = Field(
        default_factory=dict, max_length=64, description="option -> value (else its default)"
    )
    quantity: int = Field(default=1, ge=1, le=1_000_000)
    due: str | None = Field(default=None, description="RFC 3339, with an offset")
    customer: str | None = Field(default=None, max_length=200)
    max_risk: float | None = Field(default=None, ge=0, le=1)


class BookingPublic(BaseModel):
    operation: str
    machine: str
    site: str
    quantity: int
    start_min: float
    end_min: float
    transfer_min: float
    risk: float | None


class PromisePublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    completion: str = Field(description="RFC 3339, UTC")
    completion_min: float = Field(description="minutes from the quote")
    on_time: bool | None
    p_on_time: float | None = Field(description="the chance of finishing by the due time")
    p_no_failure: float
    expected_failures: float
    operations: list[BookingPublic]


class AlternativePublic(PromisePublic):
    kind: str = Field(description="site | split")
    description: str


class QuotePublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    product: str
    name: str
    options: dict[str, str]
    quantity: int
    customer: str | None
    due: str | None
    quoted_at: str
    scheme: dict[str, Any] = Field(description="operations (with durations), work_min, price")
    max_risk: float
    excluded: list[dict[str, Any]]
    promise: PromisePublic | None
    unavailable: str | None = Field(description="why no promise can be made")
    alternatives: list[AlternativePublic]


class OrderOperationPublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    seq: int
    name: str
    job: str = Field(description="<order>/<operation>, as the machine reports it")
    machine: str
    site: str
    quantity: int
    state: str = Field(description="planned | started | done | cancelled")
    planned_start_ms: int
    planned_end_ms: int
    started_ms: int | None
    done_ms: int | None


class OrderPublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int
    created_at: int
    status: str = Field(description="accepted | in_production | late | done | cancelled")
    product: str
    options: dict[str, str]
    quantity: int
    customer: str | None
    due: str | None
    eta: str = Field(description="RFC 3339, recomputed from the operations' progress")
    eta_ms: int
    on_time: bool | None
    price: dict[str, Any]
    operations: list[OrderOperationPublic]
    replans: int
    moves: list[dict[str, Any]] = Field(description="the last re-plan's moves, with why")


class OrderPage(BaseModel):
    items: list[OrderPublic]
    total: int
    limit: int
    offset: int


class ResequencePublic(BaseModel):
    orders: int = Field(description="open orders")
    operations_moved: int = Field(description="operations with a new machine or start")
    kept: int = Field(description="orders left as they were: an operation has no usable machine")
    seconds: float
