"""Feature rows for the failure model: pure functions, no scikit-learn.

From the five canonical signals and the machine type: the signals themselves, mechanical power
(torque x angular speed, W), the process-air temperature difference (K), tool wear x torque
(min Nm, the overstrain load) and the type as indicators. The model learns every shape and
threshold from data; none is written here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from twin.messages import CANONICAL_SIGNALS

DERIVED = ("power_w", "temp_diff_k", "wear_torque_min_nm")
FEATURES: tuple[str, ...] = (*CANONICAL_SIGNALS, *DERIVED, "type_l", "type_m", "type_h")


def feature_row(values: Mapping[str, float], machine_type: str | None) -> list[float]:
    """One feature row; raises `KeyError` naming the first missing canonical signal."""
    row: list[float] = feature_columns(values, machine_type)
    return row


def feature_matrix(values: Mapping[str, np.ndarray], machine_type: str | None) -> np.ndarray:
    """Many rows at once from a column of values per signal (forecasts score thousands)."""
    columns = np.broadcast_arrays(*feature_columns(values, machine_type))
    return np.column_stack(columns)


def feature_columns(values: Mapping[str, Any], machine_type: str | None) -> list[Any]:
    """The features from numbers or from arrays of them: the one place they are defined."""
    air = values["air_temp_k"]
    process = values["process_temp_k"]
    speed = values["rotational_speed_rpm"]
    torque = values["torque_nm"]
    wear = values["tool_wear_min"]
    return [
        air,
        process,
        speed,
        torque,
        wear,
        torque * speed * 2 * math.pi / 60,
        process - air,
        wear * torque,
        float(machine_type == "L"),
        float(machine_type == "M"),
        float(machine_type == "H"),
    ]


def missing_signals(values: Mapping[str, object]) -> list[str]:
    """The canonical signals a machine has not sent yet."""
    return [name for name in CANONICAL_SIGNALS if name not in values]
