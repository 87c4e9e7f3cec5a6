"""`/machines`: the fleet and each machine's twin."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status

from twin.api.deps import TwinDep
from twin.api.schemas import MachinePage, MachinePublic
from twin.state import SortKey

router = APIRouter(prefix="/machines", tags=["machines"])


@router.get("", response_model=MachinePage, summary="List the fleet's twins")
def list_machines(
    twin: TwinDep,
    site: Annotated[str | None, Query(max_length=64)] = None,
    online: bool | None = None,
    sort: SortKey = "machine",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    min_risk: Annotated[float | None, Query(ge=0, le=1)] = None,
) -> dict[str, Any]:
    total, items = twin.state.query(site, online, sort, limit, offset, min_risk)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/{machine}", response_model=MachinePublic, summary="One machine's twin")
def get_machine(twin: TwinDep, machine: str) -> dict[str, Any]:
    found = twin.state.get(machine)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no machine {machine!r} has reported")
    return found
