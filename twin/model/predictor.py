"""Load a fitted model with its manifest, and score many machines in one vectorised call.

The fast path: the pipeline's feature step, then `p = 1 / (1 + exp(-(w.z + b)))` with the
scaler folded into `w` and `b`. It equals `predict_proba` to 1e-9 (a test shows it) and costs one
transform per micro-batch, not one `predict_proba` per reading. Contributions are each feature
group's additive share of the logit, relative to the training data's mean.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from scipy.special import expit
from sklearn.pipeline import Pipeline

from twin.errors import ConfigError
from twin.model.fleet import FleetSpec
from twin.model.training import feature_groups

MODEL_FILE = "model.joblib"
MANIFEST_FILE = "model.json"


class ModelMismatch(ConfigError):
    """A stored model that this installation must not load (another scikit-learn version)."""


class Predictor:
    """A fitted pipeline ready to score feature rows."""

    def __init__(self, pipeline: Pipeline, manifest: dict[str, Any]) -> None:
        self.pipeline = pipeline
        self.manifest = manifest
        self.version: str = manifest["version"]
        self.scope: str = manifest["scope"]
        self.kind: str = manifest.get("kind", "ai4i")
        self.threshold: float = manifest["threshold"]
        scale = pipeline.named_steps["scale"]
        classify = pipeline.named_steps["classify"]
        self._features = pipeline.named_steps["features"]
        self._w = classify.coef_[0] / scale.scale_
        self._b = float(classify.intercept_[0] - np.dot(self._w, scale.mean_))
        self._mean = scale.mean_
        # A site model's features, read once: live scoring builds a row with them per machine.
        self.fleet = FleetSpec.from_json(manifest["fleet"]) if self.kind == "fleet" else None
        if self.fleet is not None:
            width = len(self._features.get_feature_names_out()) // len(self.fleet.names)
            groups = [g for g in self.fleet.groups for _ in range(width)]
        else:
            groups = feature_groups(pipeline)
        self.groups = tuple(dict.fromkeys(groups))
        self._group_matrix = np.zeros((len(groups), len(self.groups)))
        for column, group in enumerate(groups):
            self._group_matrix[column, self.groups.index(group)] = 1.0

    def score(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (n,) and per-group logit contributions (n, groups) for rows `X`."""
        logits, contributions = self.logits(X)
        return expit(logits), contributions

    def logits(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`score` before the sigmoid: the logits are the contributions' sums plus a constant."""
        Z = self._features.transform(X)
        return Z @ self._w + self._b, ((Z - self._mean) * self._w) @ self._group_matrix

    def explain(self, shares: Sequence[float]) -> dict[str, float]:
        """One row of `score`'s contributions by group, largest magnitude first."""
        return ranked(self.groups, shares)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.pipeline, directory / MODEL_FILE)
        (directory / MANIFEST_FILE).write_text(json.dumps(self.manifest, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Predictor:
        """Load a saved model; refuse one saved by another scikit-learn version."""
        try:
            manifest = json.loads((directory / MANIFEST_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise ModelMismatch(f"no readable manifest in {directory}: {exc}") from exc
        if manifest.get("kind") == "fleet" and "interactions" not in manifest.get("fleet", {}):
            raise ModelMismatch(
                f"site model {manifest.get('version')} has the features of an earlier twin: "
                "train it again (POST /model/train)"
            )
        saved = manifest.get("sklearn_version")
        if saved != sklearn.__version__:
            raise ModelMismatch(
                f"model {manifest.get('version')} was saved by scikit-learn {saved}, "
                f"this is {sklearn.__version__}: refit it (twin train)"
            )
        return cls(joblib.load(directory / MODEL_FILE), manifest)


def ranked(groups: Sequence[str], shares: Sequence[float]) -> dict[str, float]:
    """Each group's share of the logit (rounded), largest magnitude first."""
    order = sorted(range(len(shares)), key=lambda i: -abs(shares[i]))
    return {groups[i]: round(shares[i], 4) for i in order}
