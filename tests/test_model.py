import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from twin.model import (
    BUNDLED_CSV,
    FEATURES,
    ModelMismatch,
    Predictor,
    Registry,
    TrainingDataError,
    feature_row,
    fit,
    missing_signals,
    read_ai4i_csv,
)
from twin.model.training import Dataset

SIGNALS = {
    "air_temp_k": 300.0,
    "process_temp_k": 310.5,
    "rotational_speed_rpm": 1500.0,
    "torque_nm": 40.0,
    "tool_wear_min": 100.0,
}


def test_feature_row_derives_power_temperature_difference_and_load() -> None:
    row = dict(zip(FEATURES, feature_row(SIGNALS, "M"), strict=True))
    assert row["power_w"] == pytest.approx(40.0 * 1500.0 * 2 * math.pi / 60)  # ~6283 W
    assert row["temp_diff_k"] == pytest.approx(10.5)
    assert row["wear_torque_min_nm"] == pytest.approx(4000.0)
    assert (row["type_l"], row["type_m"], row["type_h"]) == (0.0, 1.0, 0.0)


def test_unknown_type_has_no_type_indicator_and_missing_signals_are_named() -> None:
    row = dict(zip(FEATURES, feature_row(SIGNALS, None), strict=True))
    assert (row["type_l"], row["type_m"], row["type_h"]) == (0.0, 0.0, 0.0)
    assert missing_signals({"torque_nm": 1}) == [
        "air_temp_k",
        "process_temp_k",
        "rotational_speed_rpm",
        "tool_wear_min",
    ]


def small_csv(path: Path, rows: int = 3000) -> Path:
    lines = BUNDLED_CSV.read_text(encoding="utf-8-sig").splitlines()
    path.write_text("\n".join(lines[: rows + 1]) + "\n")
    return path


def test_fast_path_equals_predict_proba(models_dir: Path) -> None:
    predictor = Registry(models_dir).load_active()["default"]
    X = read_ai4i_csv(BUNDLED_CSV).X
    probabilities, contributions = predictor.score(X)
    reference = predictor.pipeline.predict_proba(X)[:, 1]
    assert np.max(np.abs(probabilities - reference)) < 1e-9
    # Contributions add up to the logit, less the intercept at the training mean.
    logits = predictor.pipeline.decision_function(X)
    baseline = logits - contributions.sum(axis=1)
    assert np.allclose(baseline, baseline[0], atol=1e-6)


def test_explanations_are_sorted_by_magnitude(models_dir: Path) -> None:
    predictor = Registry(models_dir).load_active()["default"]
    _, contributions = predictor.score(np.asarray([feature_row(SIGNALS, "L")]))
    explained = list(predictor.explain(contributions[0]).values())
    assert explained == sorted(explained, key=abs, reverse=True)
    assert set(predictor.explain(contributions[0])) >= {"power_w", "tool_wear_min", "type"}


def test_manifest_round_trip_and_refusal_on_version_mismatch(
    models_dir: Path, tmp_path: Path
) -> None:
    predictor = Registry(models_dir).load_active()["default"]
    predictor.save(tmp_path / "m")
    loaded = Predictor.load(tmp_path / "m")
    assert loaded.manifest == predictor.manifest
    assert set(loaded.manifest) >= {
        "features",
        "sklearn_version",
        "training_data",
        "metrics",
        "threshold",
        "created_at",
    }
    manifest = json.loads((tmp_path / "m" / "model.json").read_text())
    manifest["sklearn_version"] = "0.0.1"
    (tmp_path / "m" / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelMismatch, match=r"scikit-learn 0\.0\.1"):
        Predictor.load(tmp_path / "m")


def test_training_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    data = read_ai4i_csv(small_csv(tmp_path / "small.csv"))
    first = fit(data, seed=3, full_report=False)
    second = fit(data, seed=3, full_report=False)
    assert first.threshold == second.threshold
    assert first.metrics == second.metrics
    X = data.X[:100]
    assert np.array_equal(first.pipeline.predict_proba(X), second.pipeline.predict_proba(X))


def test_too_few_failures_refuses_to_fit() -> None:
    data = read_ai4i_csv(BUNDLED_CSV)
    few = Dataset(data.X[:200], data.y[:200], "few", "0" * 64)
    with pytest.raises(TrainingDataError, match="at least 10"):
        fit(few)


def twin_train(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twin", "train", *args],
        env={"TWIN_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_twin_train_prints_metrics_and_activates_the_model(tmp_path: Path) -> None:
    result = twin_train("--csv", str(small_csv(tmp_path / "s.csv")), data_dir=tmp_path / "d")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["cv5"]) == {"average_precision", "roc_auc", "f1", "precision", "recall"}
    assert "accuracy" not in json.dumps(report)
    assert Registry(tmp_path / "d" / "models").load_active()["default"].version == report["version"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace("Torque [Nm]", "Torque"), "missing column(s) 'Torque [Nm]'"),
        (
            lambda text: text.replace(",1551,42.8,", ",1551,forty,", 1),
            "line 2: column 'Torque [Nm]'",
        ),
    ],
)
def test_bad_csv_fails_clearly_and_keeps_the_active_model(
    tmp_path: Path, data_dir: Path, edit: object, message: str
) -> None:
    before = (data_dir / "models" / "active.json").read_text()
    bad = tmp_path / "bad.csv"
    bad.write_text(edit(small_csv(tmp_path / "s.csv").read_text()))  # type: ignore[operator]
    result = twin_train("--csv", str(bad), data_dir=data_dir)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert (data_dir / "models" / "active.json").read_text() == before
