"""`/metrics`: Prometheus text format, and the middleware that times API requests."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from twin.api.deps import status_source
from twin.metrics import registry_for

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)


def install_metrics(app: FastAPI) -> None:
    registry, latency = registry_for(status_source(app))
    app.state.metrics = registry

    @app.middleware("http")
    async def time_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        latency.labels(path, request.method, str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response
