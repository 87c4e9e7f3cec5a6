"""`/stream`: Server-Sent Events of twin changes and alert changes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from twin.api.deps import HubDep

router = APIRouter(tags=["stream"])


@router.get(
    "/stream",
    response_class=StreamingResponse,
    summary="Live events: `twin` and `alert`, with ids for Last-Event-ID resume",
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream(
    hub: HubDep,
    site: Annotated[str | None, Query(max_length=64)] = None,
    machine: Annotated[str | None, Query(max_length=64)] = None,
    last_event_id: Annotated[int | None, Header(ge=0)] = None,
) -> StreamingResponse:
    """A client that falls more than `TWIN_STREAM_BUFFER` events behind is dropped (counted)."""
    return StreamingResponse(
        hub.subscribe(site, machine, last_event_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
