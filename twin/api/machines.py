"""`/machines`: the fleet and each machine's twin."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from twin.alerts import AlertManager
from twin.api.deps import NOT_FOUND, AlertsDep, HistoryDep, StateDep, json_response, problem
from twin.api.params import LimitParam, MinRiskParam, OffsetParam, SiteParam
from twin.api.schemas import HistoryPublic, MachinePage, MachinePublic
from twin.errors import NotFound
from twin.state import SortKey

router = APIRouter(prefix="/machines", tags=["machines"])


@router.get("", response_model=MachinePage, summary="List the fleet's twins")
def list_machines(
    state: StateDep,
    alerts: AlertsDep,
    site: SiteParam = None,
    online: bool | None = None,
    sort: SortKey = "machine",
    limit: LimitParam = 100,
    offset: OffsetParam = 0,
    min_risk: MinRiskParam = None,
) -> Response:
    total, items = state.query(site, online, sort, limit, offset, min_risk)
    return json_response(
        {
            "items": [_with_alerts(alerts, m) for m in items],
            "total": total,
            "limit": limit,
            "offset": offset,
        }
    )


@router.get(
    "/{machine}", response_model=MachinePublic, summary="One machine's twin", responses=NOT_FOUND
)
def get_machine(state: StateDep, alerts: AlertsDep, machine: str) -> Response:
    found = state.get(machine)
    if found is None:
        raise NotFound(f"no machine {machine!r} has reported")
    return json_response(_with_alerts(alerts, found))


def _with_alerts(alerts: AlertManager, machine: dict[str, Any]) -> dict[str, Any]:
    """The twin with its active alerts."""
    return {**machine, "alerts": alerts.active_for(machine["machine"])}


@router.get(
    "/{machine}/history",
    response_model=HistoryPublic,
    summary="A machine's signals over time",
    responses={**NOT_FOUND, 503: problem("InfluxDB did not answer")},
)
def history(
    reader: HistoryDep,
    machine: str,
    signal: Annotated[list[str] | None, Query(description="one or several; all by default")] = None,
    start: Annotated[str, Query(description="RFC 3339, 'now' or relative like '-1h'")] = "-1h",
    end: Annotated[str, Query(description="RFC 3339, 'now' or relative")] = "now",
    every: Annotated[
        str | None, Query(description="aggregation window like '1m': mean/min/max per window")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="points per signal")] = 1000,
) -> dict[str, Any]:
    """From InfluxDB 1.x when it is configured, else the twin's recent window (`source` says)."""
    return reader.query(machine, signal or [], start, end, every, limit)
