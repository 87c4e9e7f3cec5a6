"""Includes every resource router and the JSON error handler."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from twin.api import (
    alerts,
    allocations,
    dashboard,
    deadletters,
    health,
    machines,
    metrics,
    model,
    stream,
)

log = logging.getLogger(__name__)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error; see the twin's log"}, status_code=500)


def install(app: FastAPI) -> None:
    app.include_router(health.router)
    app.include_router(metrics.router)
    metrics.install_metrics(app)
    app.include_router(machines.router)
    dashboard.install_dashboard(app)
    app.include_router(alerts.router)
    app.include_router(allocations.router)
    app.include_router(stream.router)
    app.include_router(model.router)
    app.include_router(deadletters.router)
    app.add_exception_handler(Exception, _internal_error)
