"""`/allocations` and `/plans`: distributed manufacturing on the live fleet."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status

from twin.allocation import Demand, PlanError, Site, Task, plan
from twin.api.deps import BODY_ERRORS, NOT_FOUND, OperateAccess, TwinDep
from twin.api.schemas import AllocationPublic, AllocationRequest, PlanPublic, PlanRequest

router = APIRouter(tags=["allocations"])

_422 = status.HTTP_422_UNPROCESSABLE_CONTENT


@router.post(
    "/allocations",
    response_model=AllocationPublic,
    dependencies=[OperateAccess],
    summary="Allocate tasks to healthy machines (optimised)",
    responses=BODY_ERRORS,
)
def create_allocation(twin: TwinDep, request: AllocationRequest) -> dict[str, Any]:
    """Tasks that cannot fit come back in `unassigned` with a reason, never as an error."""
    known = twin.planner.machine_types()
    unknown = sorted({t.machine_type for t in request.tasks if t.machine_type} - known)
    if unknown:
        raise HTTPException(
            _422,
            f"unknown machine type(s) {', '.join(unknown)}; "
            f"the fleet has {', '.join(sorted(known)) or 'none'}",
        )
    tasks = [Task(**t.model_dump()) for t in request.tasks]
    return twin.planner.allocate(tasks, request.horizon_min, request.max_risk)


@router.get(
    "/allocations/{allocation_id}",
    response_model=AllocationPublic,
    summary="One allocation",
    responses=NOT_FOUND,
)
def get_allocation(twin: TwinDep, allocation_id: int) -> dict[str, Any]:
    found = twin.planner.get(allocation_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no allocation {allocation_id}")
    return found


@router.post(
    "/allocations/{allocation_id}/replan",
    response_model=AllocationPublic,
    dependencies=[OperateAccess],
    summary="Move the tasks of machines now in alert",
    responses=NOT_FOUND,
)
def replan(twin: TwinDep, allocation_id: int) -> dict[str, Any]:
    found = twin.planner.replan(allocation_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no allocation {allocation_id}")
    return found


@router.post(
    "/plans",
    response_model=PlanPublic,
    dependencies=[OperateAccess],
    summary="Plan production across sites (linear programme)",
    responses=BODY_ERRORS,
)
def create_plan(twin: TwinDep, request: PlanRequest) -> dict[str, Any]:
    site_names = {s.name for s in request.sites}
    demand_ids = {d.id for d in request.demands}
    for route in request.transport:
        if route.site not in site_names or route.demand not in demand_ids:
            raise HTTPException(
                _422, f"transport names an unknown site or demand: {route.site}/{route.demand}"
            )
    healthy = twin.planner.healthy_machines()
    sites = [
        Site(
            s.name,
            s.capacity
            if s.capacity is not None
            else healthy.get(s.name, 0) * request.capacity_per_machine,
            s.unit_cost,
        )
        for s in request.sites
    ]
    demands = [Demand(d.id, d.quantity, d.shortfall_cost) for d in request.demands]
    try:
        return plan(sites, demands, {(r.site, r.demand): r.cost for r in request.transport})
    except PlanError as exc:
        raise HTTPException(_422, str(exc)) from exc
