"""`/health`: is the twin ingesting, and how far behind is it."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from twin.api.deps import TwinDep
from twin.api.schemas import HealthPublic

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthPublic, summary="Service health")
def health(twin: TwinDep) -> dict[str, Any]:
    pipeline, journal, totals = twin.pipeline, twin.journal, twin.state.totals
    problems = []
    if not twin.ingest.connected:
        problems.append("not connected to the MQTT broker")
    if pipeline.failure:
        problems.append(f"journal failed: {pipeline.failure}")
    sinks = [forwarder.status() for forwarder in twin.forwarders]
    problems += [f"sink {s['name']} failing: {s['last_error']}" for s in sinks if s["last_error"]]
    return {
        "status": "degraded" if problems else "ok",
        "problems": problems,
        "broker_connected": twin.ingest.connected,
        "uptime_s": round(time.monotonic() - twin.started_at, 3),
        "machines": len(twin.state),
        "readings": {
            "received": totals.received,
            "duplicates": totals.duplicates,
            "rejected": totals.rejected,
        },
        "journal": {
            "lag": pipeline.pending,
            "committed": pipeline.committed,
            "replayed": pipeline.replayed,
            "rows": journal.rows,
            "dropped": journal.dropped,
            "last_commit_ms": pipeline.last_commit_ms,
            "failure": pipeline.failure,
        },
        "sinks": sinks,
        "stream": {"clients": twin.hub.clients, "dropped": dict(twin.hub.dropped)},
        "scoring": {
            "models": len(twin.scorer.models),
            "scored": twin.scorer.scored,
            "seconds": round(twin.scorer.seconds, 3),
        },
    }
