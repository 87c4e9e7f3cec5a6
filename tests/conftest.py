"""Fixtures: real services on free loopback ports, and twin settings pointing at them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import Mosquitto, ServiceMissing
from twin.config import Settings

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
def settings(tmp_path: Path) -> Settings:
    """Settings for a twin that talks to no broker (unit tests feed its pipeline directly)."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        mqtt_url="mqtt://127.0.0.1:9",
        data_dir=tmp_path / "data",
        journal_commit_ms=5,
    )
