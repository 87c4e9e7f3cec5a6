"""`/model`: the failure models that score the fleet."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from twin.api.deps import TwinDep
from twin.api.schemas import ModelsPublic

router = APIRouter(prefix="/model", tags=["model"])


@router.get("", response_model=ModelsPublic, summary="Active and stored models with metrics")
def list_models(twin: TwinDep) -> dict[str, Any]:
    return {
        "active": {scope: model.manifest for scope, model in twin.scorer.models.items()},
        "stored": twin.registry.manifests(),
    }
