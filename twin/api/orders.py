"""`/catalogue` and `/orders`: personalised products, quoted and scheduled on the live fleet."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from twin.api.deps import BODY_ERRORS, NOT_FOUND, OperateAccess, QuoterDep
from twin.api.schemas import (
    CataloguePublic,
    OrderPage,
    OrderPublic,
    QuotePublic,
    QuoteRequest,
    ResequencePublic,
)
from twin.durations import parse_time
from twin.orders import QuoteRequest as Request
from twin.orders.quote import configure

OrderId = Annotated[int, Path(ge=1, le=2**63 - 1)]

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
    return quoter.quote(_request(request))


def _request(request: QuoteRequest) -> Request:
    due = None if request.due is None else parse_time(request.due, int(time.time() * 1000))
    return Request(
        request.product,
        request.options,
        request.quantity,
        due,
        request.customer,
        request.max_risk,
    )


@router.post(
    "/orders",
    response_model=OrderPublic,
    status_code=201,
    dependencies=[OperateAccess],
    summary="Place an order: a quote's request, scheduled after the work the fleet holds",
    responses={**BODY_ERRORS, 409: {"description": "no usable machine for an operation"}},
)
def place(quoter: QuoterDep, request: QuoteRequest) -> dict[str, Any]:
    wanted = _request(request)
    scheme = configure(quoter.catalogue, wanted.product, wanted.options, wanted.quantity)
    now = int(time.time() * 1000)
    return quoter.book.place(scheme, wanted.customer, wanted.due_ms, wanted.max_risk, now)


@router.post(
    "/orders/resequence",
    response_model=ResequencePublic,
    dependencies=[OperateAccess],
    summary="Schedule every planned operation again, the earliest due order first",
)
def resequence(quoter: QuoterDep) -> dict[str, Any]:
    """Orders placed as they arrive queue behind those placed before; this is the
    earliest-due-date schedule of all the work not started. Started operations stay."""
    return quoter.book.resequence(int(time.time() * 1000))


@router.get("/orders", response_model=OrderPage, summary="Orders, newest first")
def orders(
    quoter: QuoterDep,
    status: Annotated[
        str | None, Query(pattern="^(accepted|in_production|late|done|cancelled)$")
    ] = None,
    customer: Annotated[str | None, Query(max_length=200)] = None,
    product: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> dict[str, Any]:
    items, total = quoter.book.page(status, customer, product, limit, offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get(
    "/orders/{order_id}", response_model=OrderPublic, summary="One order", responses=NOT_FOUND
)
def order(quoter: QuoterDep, order_id: OrderId) -> dict[str, Any]:
    return quoter.book.get(order_id)


@router.post(
    "/orders/{order_id}/cancel",
    response_model=OrderPublic,
    dependencies=[OperateAccess],
    summary="Cancel an order (its machines' jobs are withdrawn)",
    responses={**NOT_FOUND, 409: {"description": "done or cancelled already"}},
)
def cancel(quoter: QuoterDep, order_id: OrderId) -> dict[str, Any]:
    return quoter.book.cancel(order_id, int(time.time() * 1000))
