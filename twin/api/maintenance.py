"""`/maintenance`: plans from predicted risk (a MILP), accepted windows, and their state."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from twin.api.deps import BODY_ERRORS, NOT_FOUND, ForesightDep, OperateAccess
from twin.api.params import MachineParam
from twin.api.schemas import (
    MaintenancePage,
    MaintenancePlanPublic,
    MaintenancePlanRequest,
)
from twin.durations import parse_duration
from twin.foresight import Action, Costs, PlanRequest, plan_maintenance

router = APIRouter(prefix="/maintenance", tags=["maintenance"])

MINUTE_MS = 60_000
PlanId = Annotated[int, Path(ge=1, le=2**63 - 1)]  # SQLite's integer range


@router.post(
    "/plans",
    response_model=MaintenancePlanPublic,
    dependencies=[OperateAccess],
    summary="Plan maintenance from the forecasts (MILP), against two baselines",
    responses=BODY_ERRORS,
)
def create_plan(foresight: ForesightDep, request: MaintenancePlanRequest) -> dict[str, Any]:
    """Times are minutes from the plan's `created_at`. Stored; nothing is scheduled until it
    is accepted."""
    return plan_maintenance(
        foresight,
        PlanRequest(
            parse_duration(request.horizon) / MINUTE_MS,
            parse_duration(request.step) / MINUTE_MS,
            request.crews,
            [Action(a.name, a.duration_min) for a in request.actions],
            Costs(**request.costs.model_dump()),
            request.baseline_interval_min,
            request.min_interval_min,
            request.machines,
            request.site,
        ),
    )


@router.get(
    "/plans/{plan_id}",
    response_model=MaintenancePlanPublic,
    summary="One maintenance plan",
    responses=NOT_FOUND,
)
def get_plan(foresight: ForesightDep, plan_id: PlanId) -> dict[str, Any]:
    return foresight.schedule.plan(plan_id)


@router.post(
    "/plans/{plan_id}/accept",
    response_model=MaintenancePage,
    dependencies=[OperateAccess],
    summary="Schedule a plan's windows (allocations keep them free)",
    responses={**NOT_FOUND, 409: {"description": "accepted already"}},
)
def accept(foresight: ForesightDep, plan_id: PlanId) -> dict[str, Any]:
    """Windows of the same machines from earlier plans that have not started are superseded."""
    windows = foresight.schedule.accept(plan_id, int(time.time() * 1000))
    return {"items": [w.public() for w in windows]}


@router.get("", response_model=MaintenancePage, summary="Accepted maintenance windows")
def windows(
    foresight: ForesightDep,
    machine: MachineParam = None,
    state: Annotated[str | None, Query(pattern="^(scheduled|due|done|superseded)$")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    return {"items": [w.public() for w in foresight.schedule.windows(machine, state, limit)]}
