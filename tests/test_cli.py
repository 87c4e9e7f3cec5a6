"""The `twin` command as a user runs it: a real `twin serve` process against a real Mosquitto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devices.fleet import Fleet, FleetOptions
from tests.services import Mosquitto, free_port, wait_until
from twin.config import BrokerAddress, Settings
from twin.topics import Topics


def run_twin(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twin", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_names_the_commands() -> None:
    result = run_twin("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout
    assert "demo" in result.stdout


def test_bad_settings_exit_2_with_the_reason() -> None:
    result = run_twin("serve", env={"TWIN_MQTT_URL": "http://broker"})
    assert result.returncode == 2
    assert "mqtt_url" in result.stderr


def test_unusable_data_dir_fails_start_up_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_twin("serve", env={"TWIN_DATA_DIR": str(blocker / "data")})
    assert result.returncode == 1
    assert "cannot use the data directory" in result.stderr
    assert "Traceback" not in result.stderr


class Serve:
    """A `twin serve` process; `kill()` is kill -9."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "twin", "serve", "--port", str(self.port)],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=out,
            )
        wait_until(self.ready, 30, "twin serve to answer and connect")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
            return json.load(response)

    def ready(self) -> bool:
        try:
            return bool(self.get("/health")["broker_connected"])
        except OSError:
            return False

    def received(self) -> int:
        return sum(m["counters"]["received"] for m in self.get("/machines?limit=1000")["items"])

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def terminate(self) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(30)


@pytest.fixture
def serve(mosquitto: Mosquitto, tmp_path: Path, data_dir: Path) -> Iterator[Serve]:
    env = {
        "TWIN_MQTT_URL": mosquitto.url,
        "TWIN_DATA_DIR": str(data_dir),
        "TWIN_SNAPSHOT_INTERVAL_S": "1",
    }
    twin = Serve(env, tmp_path / "twin.log")
    twin.start()
    yield twin
    if twin.process is not None and twin.process.poll() is None:
        twin.kill()


@pytest.mark.integration
def test_kill_9_mid_stream_twice_loses_nothing_and_counts_nothing_twice(
    serve: Serve, mosquitto: Mosquitto
) -> None:
    broker = BrokerAddress(host="127.0.0.1", port=mosquitto.port, tls=False)
    fleet = Fleet(broker, Topics(), FleetOptions(machines=4, rate_hz=150, count=1200, seed=9))
    fleet.start()
    for threshold in (800, 2400):
        wait_until(lambda t=threshold: serve.received() > t, 60, f"{threshold} readings")
        serve.kill()
        serve.start()
    assert fleet.wait(60)
    fleet.stop()
    wait_until(lambda: serve.received() == 4800, 60, "all 4800 readings")
    items = serve.get("/machines")["items"]
    for item in items:
        counters = item["counters"]
        assert counters["received"] == 1200
        assert counters["gaps"] == 0
    log = serve.log.read_text()
    assert log.count("replayed") == 3  # one start and two restarts, each restoring


@pytest.mark.integration
def test_sigterm_flushes_the_journal_and_exits_cleanly(serve: Serve) -> None:
    # uvicorn re-raises the signal after its graceful shutdown, as service managers expect.
    assert serve.terminate() in (0, -signal.SIGTERM)
    log = serve.log.read_text()
    assert "journal flushed" in log
    assert "stopped" in log


def test_backup_of_a_live_twin_restores_its_state_and_restore_refuses_a_running_twin(
    settings: Settings, tmp_path: Path
) -> None:
    import msgspec

    from twin.app import Twin
    from twin.messages import RawMessage

    twin = Twin(settings)
    twin.start()
    try:
        for seq in range(5):
            body = msgspec.json.encode({"seq": seq, "values": {"tool_wear_min": 210 + seq}})
            twin.pipeline.submit(
                RawMessage("factory/s1/m1/telemetry", body, 1_800_000_000_000), (0, 0, 0)
            )
        wait_until(lambda: twin.state.totals.received == 5, 10, "the readings")
        wait_until(lambda: twin.alerts.query()[0] == 1, 10, "the tool wear alert")
        env = {"TWIN_DATA_DIR": str(settings.data_dir)}
        saved = run_twin("backup", str(tmp_path / "backup"), env=env)  # while it runs
        assert saved.returncode == 0, saved.stderr
        refused = run_twin("restore", str(tmp_path / "backup"), env=env)
        assert refused.returncode == 1
        assert "another twin is running" in refused.stderr
    finally:
        twin.stop()
    fresh = tmp_path / "fresh"
    restored = run_twin("restore", str(tmp_path / "backup"), env={"TWIN_DATA_DIR": str(fresh)})
    assert restored.returncode == 0, restored.stderr
    again = Twin(settings.model_copy(update={"data_dir": fresh}))
    again.start()
    try:
        m1 = again.state.get("m1")
        assert m1 is not None
        assert m1["counters"]["received"] == 5
        assert m1["values"]["tool_wear_min"]["value"] == 214
        (alert,) = again.alerts.query()[1]
        assert alert.rule == "tool_wear_high"
        assert "default" in again.scorer.models
    finally:
        again.stop()


def test_two_twins_cannot_share_a_data_directory(settings: Settings) -> None:
    from twin.app import Twin
    from twin.errors import ConfigError

    first = Twin(settings)
    first.start()
    try:
        with pytest.raises(ConfigError, match="another twin is running"):
            Twin(settings).start()
    finally:
        first.stop()
