"""The HTTP application: `create_app` and the lifespan that starts and stops the twin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from twin.api.router import install
from twin.config import Settings
from twin.service import Twin


def create_app(settings: Settings, twin: Twin | None = None) -> FastAPI:
    """The FastAPI application; it starts and stops the twin with its lifespan."""
    service = twin or Twin(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="factory-twin",
        summary="Digital twins of a machine fleet: live state, history, alerts, predictions.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install(app, service)
    return app
