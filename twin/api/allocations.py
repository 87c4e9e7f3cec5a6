"""`/allocations` and `/plans`: distributed manufacturing on the live fleet."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from twin.api.deps import BODY_ERRORS, NOT_FOUND, OperateAccess, PlannerDep
from twin.api.schemas import AllocationPublic, AllocationRequest, PlanPublic, PlanRequest
from twin.errors import InvalidRequest
from twin.planning import Demand, Site, Task, plan

router = APIRouter(tags=["allocations"])


@router.post(
    "/allocations",
    response_model=AllocationPublic,
    dependencies=[OperateAccess],
    summary="Allocate tasks to healthy machines (optimised)",
    responses=BODY_ERRORS,
)
def create_allocation(planner: PlannerDep, request: AllocationRequest) -> dict[str, Any]:
    """Tasks that cannot fit come back in `unassigned` with a reason, never as an error."""
    tasks = tasks_for(request, planner.machine_types())
    return planner.allocate(tasks, request.horizon_min, request.max_risk)


def tasks_for(request: AllocationRequest, known: set[str]) -> list[Task]:
    """The request's tasks; a 422 for a machine type the fleet (`known`) does not have. Also
    `twin api`'s."""
    unknown = sorted({t.machine_type for t in request.tasks if t.machine_type} - known)
    if unknown:
        raise InvalidRequest(
            f"unknown machine type(s) {', '.join(unknown)}; "
            f"the fleet has {', '.join(sorted(known)) or 'none'}",
        )
    return [Task(**t.model_dump()) for t in request.tasks]


@router.get(
    "/allocations/{allocation_id}",
    response_model=AllocationPublic,
    summary="One allocation",
    responses=NOT_FOUND,
)
def get_allocation(planner: PlannerDep, allocation_id: int) -> dict[str, Any]:
    return planner.get(allocation_id)


@router.post(
    "/allocations/{allocation_id}/replan",
    response_model=AllocationPublic,
    dependencies=[OperateAccess],
    summary="Move the tasks of machines now in alert",
    responses=NOT_FOUND,
)
def replan(planner: PlannerDep, allocation_id: int) -> dict[str, Any]:
    return planner.replan(allocation_id)


@router.post(
    "/plans",
    response_model=PlanPublic,
    dependencies=[OperateAccess],
    summary="Plan production across sites (linear programme)",
    responses=BODY_ERRORS,
)
def create_plan(planner: PlannerDep, request: PlanRequest) -> dict[str, Any]:
    return plan_for(request, planner.healthy_machines())


def plan_for(request: PlanRequest, healthy: dict[str, int]) -> dict[str, Any]:
    """The plan a request asks for; a site without a capacity gets its healthy machines' worth
    (`healthy`: per site, machines online and under the risk limit). Also `twin api`'s."""
    site_names = {s.name for s in request.sites}
    demand_ids = {d.id for d in request.demands}
    for route in request.transport:
        if route.site not in site_names or route.demand not in demand_ids:
            raise InvalidRequest(
                f"transport names an unknown site or demand: {route.site}/{route.demand}"
            )
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
    return plan(sites, demands, {(r.site, r.demand): r.cost for r in request.transport})
