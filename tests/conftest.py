"""Fixtures: real services on free loopback ports, and twin settings pointing at them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import InfluxDB1, Mosquitto, ServiceMissing, VictoriaMetrics
from twin.config import Settings
from twin.model import BUNDLED_CSV, Registry, fit, read_ai4i_csv

IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing(exc: ServiceMissing) -> None:
    # Under CI a missing service is a failure: the test command is supposed to install it.
    if IN_CI:
        pytest.fail(str(exc))
    pytest.skip(str(exc))


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    try:
        broker = Mosquitto()
    except ServiceMissing as exc:
        _missing(exc)
    broker.start()
    yield broker
    broker.close()


@pytest.fixture
def influxdb(tmp_path: Path) -> Iterator[InfluxDB1]:
    try:
        server = InfluxDB1(tmp_path / "influxdb")
    except ServiceMissing as exc:
        _missing(exc)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    try:
        server = VictoriaMetrics(tmp_path / "victoria")
    except ServiceMissing as exc:
        _missing(exc)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model registry with a default model fitted on the bundled data, once per session."""
    root = tmp_path_factory.mktemp("models")
    data = read_ai4i_csv(BUNDLED_CSV)
    Registry(root).add(fit(data, full_report=False), data)
    return root


@pytest.fixture
def data_dir(tmp_path: Path, models_dir: Path) -> Path:
    """A twin data directory holding a copy of the session's model registry."""
    shutil.copytree(models_dir, tmp_path / "data" / "models")
    return tmp_path / "data"


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    """Settings for a twin that talks to no broker (unit tests feed its pipeline directly)."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        mqtt_url="mqtt://127.0.0.1:9",
        data_dir=data_dir,
        journal_commit_ms=5,
        score_interval_ms=1,
    )
