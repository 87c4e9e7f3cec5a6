"""`/health`: is the twin ingesting, and how far behind is it."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter

from twin.api.deps import StatusDep
from twin.api.schemas import HealthPublic

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthPublic, summary="Service health")
def health(status: StatusDep) -> dict[str, Any]:
    return asdict(status)
