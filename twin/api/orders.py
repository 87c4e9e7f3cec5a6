"""`/catalogue` and `/orders/quote`: personalised products, quoted against the live fleet."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from twin.api.deps import BODY_ERRORS, QuoterDep
from twin.api.schemas import CataloguePublic, QuotePublic, QuoteRequest
from twin.durations import parse_time
from twin.orders import QuoteRequest as Request

router = APIRouter(tags=["orders"])


@router.get("/catalogue", response_model=CataloguePublic, summary="The product catalogue")
def catalogue(quoter: QuoterDep) -> dict[str, Any]:
    return quoter.catalogue.public()


@router.post(
    "/orders/quote",
    response_model=QuotePublic,
    summary="A customised scheme and its promised date on the live fleet",
    responses=BODY_ERRORS,
)
def quote(quoter: QuoterDep, request: QuoteRequest) -> dict[str, Any]:
    """Reads only: nothing is booked. A bad option or combination is a 422 naming it."""
    due = None if request.due is None else parse_time(request.due, int(time.time() * 1000))
    return quoter.quote(
        Request(
            request.product,
            request.options,
            request.quantity,
            due,
            request.customer,
            request.max_risk,
        )
    )
