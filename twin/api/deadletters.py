"""`/deadletters`: what was rejected, and why."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from twin.api.deps import DeadLettersDep, OperateAccess
from twin.api.params import LimitParam, MachineParam
from twin.api.schemas import Cleared, DeadLettersPublic
from twin.messages import Reason

router = APIRouter(prefix="/deadletters", tags=["deadletters"])


@router.get("", response_model=DeadLettersPublic, summary="Rejected messages, newest first")
def list_deadletters(
    dl: DeadLettersDep,
    machine: MachineParam = None,
    reason: Reason | None = None,
    limit: LimitParam = 100,
) -> dict[str, Any]:
    return {
        "total": dl.total,
        "by_reason": dict(dl.by_reason),
        "items": dl.query(machine, reason, limit),
    }


@router.delete(
    "", response_model=Cleared, dependencies=[OperateAccess], summary="Empty the dead-letter list"
)
def clear_deadletters(dl: DeadLettersDep) -> dict[str, int]:
    """The counters by reason are kept; only the stored entries go."""
    return {"cleared": dl.clear()}
