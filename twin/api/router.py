"""Includes every resource router, the access rules, the size limit and the error handlers.

Domain errors become HTTP problems in one place, by their category in the `TwinError` tree.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from twin.api import (
    alerts,
    allocations,
    dashboard,
    deadletters,
    foresight,
    health,
    machines,
    maintenance,
    metrics,
    model,
    orders,
    stream,
)
from twin.api.deps import ACCESS_ERRORS, ReadAccess, Service, bind
from twin.errors import Conflict, InvalidRequest, NotFound, StorageError, TwinError, Unavailable

log = logging.getLogger(__name__)

_STATUS: tuple[tuple[type[TwinError], int], ...] = (
    (NotFound, 404),
    (Conflict, 409),
    (InvalidRequest, 422),
    (Unavailable, 503),
    (StorageError, 503),
)


async def _twin_error(request: Request, exc: Exception) -> JSONResponse:
    """A `TwinError` as a problem answer: its category picks the status, its text the detail."""
    code = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
    if code >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": str(exc)}, status_code=code)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error; see the twin's log"}, status_code=500)


class BodyLimit:
    """Answers 413 to a request body over `limit` bytes, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body over {self.limit} bytes"}, status_code=413
        )
        await response({"type": "http"}, _nothing, send)


class _TooLarge(Exception):
    pass


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


def install_errors(app: FastAPI) -> None:
    """A `TwinError` answers with its category's status; anything else is a logged 500."""
    app.add_exception_handler(TwinError, _twin_error)
    app.add_exception_handler(Exception, _internal_error)


def install(app: FastAPI, twin: Service) -> None:
    bind(app, twin)
    settings = twin.settings
    # Liveness, metrics and the dashboard's files stay open; every resource follows the rules.
    app.include_router(health.router)
    app.include_router(metrics.router)
    metrics.install_metrics(app)
    dashboard.install_dashboard(app)
    resources = (
        machines,
        foresight,
        maintenance,
        alerts,
        allocations,
        orders,
        stream,
        model,
        deadletters,
    )
    for resource in resources:
        app.include_router(resource.router, dependencies=[ReadAccess], responses=ACCESS_ERRORS)
    install_errors(app)
    if settings.cors_origins:
        origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
