"""The model registry: model directories under `TWIN_DATA_DIR/models`, one active per scope.

Each model is `models/<version>/model.joblib` beside its `model.json` manifest (features,
scikit-learn version, training data reference and hash, metrics, threshold, created_at). The
active model of each scope (`default`, or `site:<name>`) is named in `models/active.json`,
replaced atomically.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sklearn

from twin.model.features import FEATURES
from twin.model.predictor import MANIFEST_FILE, ModelMismatch, Predictor
from twin.model.training import Dataset, Fitted

log = logging.getLogger(__name__)

DEFAULT_SCOPE = "default"


def new_version(tag: str) -> tuple[str, str]:
    """A sortable, unique model version and its creation time."""
    created = datetime.now(UTC)
    return f"{created:%Y%m%dT%H%M%S%f}-{tag}", created.isoformat()


def manifest_for(fitted: Fitted, data: Dataset, scope: str) -> dict[str, Any]:
    version, created = new_version(data.sha256[:8])
    return {
        "version": version,
        "scope": scope,
        "kind": "ai4i",
        "features": list(FEATURES),
        "sklearn_version": sklearn.__version__,
        "training_data": {"source": data.source, "sha256": data.sha256, "rows": len(data.y)},
        "metrics": fitted.metrics,
        "threshold": fitted.threshold,
        "created_at": created,
    }


class Registry:
    """Stores models and remembers which one is active in each scope."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def _active_file(self) -> Path:
        return self.root / "active.json"

    def _active(self) -> dict[str, str]:
        try:
            return dict(json.loads(self._active_file.read_text()))
        except FileNotFoundError:
            return {}

    def add(self, fitted: Fitted, data: Dataset, scope: str = DEFAULT_SCOPE) -> Predictor:
        """Store a model fitted on AI4I-format data and make it the active one of `scope`."""
        return self.store(Predictor(fitted.pipeline, manifest_for(fitted, data, scope)))

    def store(self, predictor: Predictor, *, activate: bool = True) -> Predictor:
        """Store a model; make it the active one of its scope unless `activate` is False."""
        predictor.save(self.root / predictor.version)
        if not activate:
            log.info("model %s stored as a candidate for %s", predictor.version, predictor.scope)
            return predictor
        scope = predictor.scope
        active = self._active()
        active[scope] = predictor.version
        tmp = self._active_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(active, indent=2) + "\n")
        os.replace(tmp, self._active_file)
        log.info("model %s is now active for %s", predictor.version, scope)
        return predictor

    def load_active(self) -> dict[str, Predictor]:
        """Every scope's active model that this installation can load."""
        loaded = {}
        for scope, version in self._active().items():
            try:
                loaded[scope] = Predictor.load(self.root / version)
            except ModelMismatch as exc:
                log.warning("not loading the %s model: %s", scope, exc)
        return loaded

    def manifests(self) -> list[dict[str, Any]]:
        """Every stored model's manifest, newest first."""
        found = []
        for path in self.root.glob(f"*/{MANIFEST_FILE}"):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return sorted(found, key=lambda m: m.get("created_at", ""), reverse=True)
