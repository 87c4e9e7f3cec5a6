"""Fixtures: real services on free loopback ports, and twin settings pointing at them."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import msgspec
import pytest
from fastapi.testclient import TestClient

from tests.services import (
    InfluxDB1,
    Mosquitto,
    NatsServer,
    ServiceMissing,
    TwinProcess,
    VictoriaMetrics,
    uvicorn_server,
    wait_until,
)
from twin.app import create_app
from twin.config import Settings
from twin.messages import RawMessage
from twin.model import BUNDLED_CSV, Registry, fit, read_ai4i_csv
from twin.service import Twin

IN_CI = os.environ.get("CI", "").lower() == "true"
S = TypeVar("S", Mosquitto, InfluxDB1, VictoriaMetrics)


def feed_pipeline(
    twin: Twin,
    *messages: tuple[str, object],
    received_ms: int | None = None,
    wait: float | None = 10.0,
) -> None:
    """Hand (topic, body) messages to the twin's pipeline as ingest would, without a broker
    (QoS 0: no ack due); bytes go as they are, anything else as JSON. Then wait up to `wait`
    seconds until they are committed (None: do not wait)."""
    now = received_ms if received_ms is not None else int(time.time() * 1000)
    target = twin.pipeline.committed + len(messages)
    for topic, body in messages:
        payload = body if isinstance(body, bytes) else msgspec.json.encode(body)
        twin.inbox.put(RawMessage(topic, payload, now), (0, 0, 0))
    if wait is not None:
        wait_until(lambda: twin.pipeline.committed >= target, wait, "the messages committed")


def _missing(exc: ServiceMissing) -> None:
    # Under CI a missing service is a failure: the test command is supposed to install it.
    if IN_CI:
        pytest.fail(str(exc))
    pytest.skip(str(exc))


def _running(make: Callable[[], S]) -> Iterator[S]:
    """Start a service for one test and close it after; missing is a skip, or in CI a failure."""
    try:
        service = make()
    except ServiceMissing as exc:
        _missing(exc)
    service.start()
    try:
        yield service
    finally:
        service.close()


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    yield from _running(Mosquitto)


@pytest.fixture
def influxdb(tmp_path: Path) -> Iterator[InfluxDB1]:
    yield from _running(lambda: InfluxDB1(tmp_path / "influxdb"))


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    yield from _running(lambda: VictoriaMetrics(tmp_path / "victoria"))


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


TOKEN = {"Authorization": "Bearer t0k"}  # writes, for the `twin` fixture's API


@pytest.fixture
def twin(settings: Settings) -> Twin:
    """A twin (not started: `client` starts it) whose API takes writes with `TOKEN`."""
    return Twin(settings.model_copy(update={"api_tokens": "t0k"}))


@pytest.fixture
def client(twin: Twin) -> Iterator[TestClient]:
    """The `twin` fixture's API in process; the twin runs while it is open."""
    with TestClient(create_app(twin.settings, twin)) as client:
        yield client


@pytest.fixture
def serve(mosquitto: Mosquitto, tmp_path: Path, data_dir: Path) -> Iterator[TwinProcess]:
    """A `twin serve` process on `mosquitto`, snapshotting every second, logging to a file."""
    env = {
        "TWIN_MQTT_URL": mosquitto.url,
        "TWIN_DATA_DIR": str(data_dir),
        "TWIN_SNAPSHOT_INTERVAL_S": "1",
    }
    twin = TwinProcess(env, tmp_path / "twin.log")
    twin.start()
    yield twin
    twin.close()


@pytest.fixture
def served(settings: Settings, tmp_path: Path) -> Iterator[tuple[Twin, int]]:
    """A twin behind a real uvicorn (yields it and the port): one alert rule, `hot` (signal `t`
    above 100), twin events on every change, writes with the token `op`."""
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nid = "hot"\nkind = "threshold"\nsignal = "t"\nabove = 100\n')
    config = settings.model_copy(
        update={"alert_rules": rules, "twin_publish_interval_s": 0, "api_tokens": "op"}
    )
    twin = Twin(config)
    with uvicorn_server(create_app(config, twin)) as port:
        yield twin, port


def feed_t(twin: Twin, machine: str, value: float, seq: int) -> None:
    """One reading of signal `t` (the `served` twin's alert rule) from `machine`, not awaited."""
    body = {"seq": seq, "values": {"t": value}}
    feed_pipeline(twin, (f"factory/s1/{machine}/telemetry", body), wait=None)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """nats-server with JetStream and an MQTT listener, on free loopback ports."""
    yield from _running(lambda: NatsServer(tmp_path / "nats"))
