"""`/alerts`: raised by the rules, acknowledged by operators."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter

from twin.alerts import Severity
from twin.api.deps import BODY_ERRORS, NOT_FOUND, AlertsDep, OperateAccess
from twin.api.params import LimitParam, MachineParam, OffsetParam, SiteParam
from twin.api.schemas import AckRequest, AlertPage, AlertPublic

router = APIRouter(prefix="/alerts", tags=["alerts"])


@router.get("", response_model=AlertPage, summary="Alerts, newest first")
def list_alerts(
    alerts: AlertsDep,
    machine: MachineParam = None,
    site: SiteParam = None,
    state: Literal["active", "cleared"] | None = None,
    severity: Severity | None = None,
    acknowledged: bool | None = None,
    limit: LimitParam = 100,
    offset: OffsetParam = 0,
) -> dict[str, Any]:
    total, found = alerts.query(
        machine=machine,
        site=site,
        state=state,
        severity=severity,
        acknowledged=acknowledged,
        limit=limit,
        offset=offset,
    )
    return {"items": [asdict(a) for a in found], "total": total, "limit": limit, "offset": offset}


@router.get("/{alert_id}", response_model=AlertPublic, summary="One alert", responses=NOT_FOUND)
def get_alert(alerts: AlertsDep, alert_id: int) -> dict[str, Any]:
    return asdict(alerts.get(alert_id))


@router.post(
    "/{alert_id}/ack",
    response_model=AlertPublic,
    dependencies=[OperateAccess],
    summary="Acknowledge an alert (independent of its active/cleared state)",
    responses={**NOT_FOUND, **BODY_ERRORS},
)
def acknowledge(alerts: AlertsDep, alert_id: int, body: AckRequest | None = None) -> dict[str, Any]:
    request = body or AckRequest()
    return asdict(alerts.acknowledge(alert_id, request.by, request.comment))
