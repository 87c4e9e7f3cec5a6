"""`/model`: the failure models that score the fleet, and training new ones."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status

from twin.api.deps import BODY_ERRORS, AdminAccess, TwinDep, problem
from twin.api.schemas import ModelsPublic, TrainingJobPublic, TrainRequest
from twin.model.fleet import FleetTrainingError, parse_duration
from twin.trainer import TrainerBusy

router = APIRouter(prefix="/model", tags=["model"])


@router.get("", response_model=ModelsPublic, summary="Active and stored models, and training")
def list_models(twin: TwinDep) -> dict[str, Any]:
    return {
        "active": {scope: model.manifest for scope, model in twin.scorer.models.items()},
        "stored": twin.registry.manifests(),
        "training": twin.trainer.job,
    }


@router.post(
    "/train",
    response_model=TrainingJobPublic,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[AdminAccess],
    summary="Train a model on the twin's own history, in the background",
    responses={409: problem("a job is running"), **BODY_ERRORS},
)
def train(twin: TwinDep, request: TrainRequest) -> dict[str, Any]:
    """Progress and the result (new metrics next to the active model's) show on `GET /model`."""
    try:
        return twin.trainer.start(
            request.site, parse_duration(request.label_horizon), request.force
        )
    except FleetTrainingError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    except TrainerBusy as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
