"""The failure model: features, training, the registry and the predictor.

The only package that imports scikit-learn and joblib.
"""

from twin.model.features import FEATURES, feature_matrix, feature_row, missing_signals
from twin.model.predictor import ModelMismatch, Predictor
from twin.model.registry import DEFAULT_SCOPE, Registry
from twin.model.training import (
    BUNDLED_CSV,
    Dataset,
    Fitted,
    TrainingDataError,
    fit,
    fit_threshold,
    read_ai4i_csv,
)

__all__ = [
    "BUNDLED_CSV",
    "DEFAULT_SCOPE",
    "FEATURES",
    "Dataset",
    "Fitted",
    "ModelMismatch",
    "Predictor",
    "Registry",
    "TrainingDataError",
    "feature_matrix",
    "feature_row",
    "fit",
    "fit_threshold",
    "missing_signals",
    "read_ai4i_csv",
]
