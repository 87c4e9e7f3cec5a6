"""`/machines/{machine}/whatif`, `/forecast` and `/advice`: the twin as a simulator."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from twin.api.deps import BODY_ERRORS, NOT_FOUND, ForesightDep
from twin.api.schemas import (
    AdvicePublic,
    AdviceRequest,
    ForecastPublic,
    WhatIfPublic,
    WhatIfRequest,
)
from twin.durations import parse_duration
from twin.foresight import Scenario

router = APIRouter(prefix="/machines", tags=["foresight"])

MINUTE_MS = 60_000


@router.post(
    "/{machine}/whatif",
    response_model=WhatIfPublic,
    summary="The risk with some values changed, after maintenance, after operating on",
    responses={**NOT_FOUND, **BODY_ERRORS},
)
def whatif(foresight: ForesightDep, machine: str, request: WhatIfRequest) -> dict[str, Any]:
    """Scored by the model that scores the machine live, as if its readings had carried the
    values (a site model's window features recomputed from the rolled-forward history)."""
    scenario = Scenario(request.values, tuple(request.events), request.operate_min)
    return foresight.whatif(machine, scenario)


@router.get(
    "/{machine}/forecast",
    response_model=ForecastPublic,
    summary="Failure probability over time if the machine keeps operating as now",
    responses=NOT_FOUND,
)
def forecast(
    foresight: ForesightDep,
    machine: str,
    horizon: Annotated[str, Query(description="like '8h' or '2d'")] = "8h",
    step: Annotated[str, Query(description="like '10m'")] = "10m",
    window: Annotated[
        str, Query(description="process model: the probability of a failure within this long")
    ] = "30m",
) -> dict[str, Any]:
    """`method` says how: the AI4I process model, or each signal's recent trend."""
    return foresight.forecast(
        machine,
        parse_duration(horizon) / MINUTE_MS,
        parse_duration(step) / MINUTE_MS,
        parse_duration(window) / MINUTE_MS,
    )


@router.post(
    "/{machine}/advice",
    response_model=AdvicePublic,
    summary="The smallest setpoint change that brings the risk under a target",
    responses={**NOT_FOUND, **BODY_ERRORS},
)
def advice(foresight: ForesightDep, machine: str, request: AdviceRequest) -> dict[str, Any]:
    """Bounded search on the model (grid, then scipy's SLSQP); when no setting within the
    bounds does it, which maintenance action would."""
    bounds = request.controllable
    return foresight.advice(
        machine,
        request.target,
        None if bounds is None else {name: (low, high) for name, (low, high) in bounds.items()},
    )
