"""`/model`: the failure models that score the fleet, and training new ones."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from twin.api.deps import BODY_ERRORS, AdminAccess, RegistryDep, ScorerDep, TrainerDep, problem
from twin.api.schemas import ModelsPublic, TrainingJobPublic, TrainRequest
from twin.durations import parse_duration

router = APIRouter(prefix="/model", tags=["model"])


@router.get("", response_model=ModelsPublic, summary="Active and stored models, and training")
def list_models(scorer: ScorerDep, registry: RegistryDep, trainer: TrainerDep) -> dict[str, Any]:
    return {
        "active": {scope: model.manifest for scope, model in scorer.models().items()},
        "stored": registry.manifests(),
        "training": trainer.job,
    }


@router.post(
    "/train",
    response_model=TrainingJobPublic,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[AdminAccess],
    summary="Train a model on the twin's own history, in the background",
    responses={409: problem("a job is running"), **BODY_ERRORS},
)
def train(trainer: TrainerDep, request: TrainRequest) -> dict[str, Any]:
    """Progress and the result (new metrics next to the active model's) show on `GET /model`."""
    return trainer.start(
        request.site, parse_duration(request.label_horizon), request.force, request.windows_ms
    )
