"""The `twin` command as a user runs it: a real `twin serve` process against a real Mosquitto."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.services import TwinProcess, wait_until
from twin.config import Settings


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


@contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A small file system of our own, for the drills a root process cannot fake with chmod."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs for the drill (needs root): {mounted.stderr.strip()}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(path: Path, leave: int) -> None:
    """Fill the file system of `path` up to `leave` bytes free."""
    with (path / "filler").open("wb") as out:
        while (fs := os.statvfs(path)).f_bavail * fs.f_frsize > leave:
            out.write(b"\0" * 4096)
            out.flush()


def assert_fails_clearly(data_dir: Path, *lines: str) -> None:
    result = run_twin("serve", env={"TWIN_DATA_DIR": str(data_dir)})
    assert result.returncode == 1
    for line in lines:
        assert line in result.stderr
    assert "Traceback" not in result.stderr


def test_unusable_data_dir_fails_start_up_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert_fails_clearly(blocker / "data", f"cannot use the data directory {blocker / 'data'}")


def test_read_only_data_dir_fails_start_up_clearly(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "size=1m,ro") as root:
        assert_fails_clearly(
            root / "data", "Read-only file system", f"{root} is on a read-only file system"
        )


# Free space left on a full disk: nothing (the lock file cannot be written), a few pages (the
# journal cannot be created), enough for the journal but not for the rest of the database.
@pytest.mark.parametrize("leave", [0, 16 * 1024, 128 * 1024])
def test_full_disk_fails_start_up_clearly(tmp_path: Path, leave: int) -> None:
    with tmpfs(tmp_path / "full", "size=2m") as root:
        fill(root, leave)
        assert_fails_clearly(root, f"the file system of {root} is full")


@pytest.mark.integration
def test_sigterm_flushes_the_journal_and_exits_cleanly(serve: TwinProcess) -> None:
    # uvicorn re-raises the signal after its graceful shutdown, as service managers expect.
    assert serve.terminate() in (0, -signal.SIGTERM)
    log = serve.log.read_text()
    assert "journal flushed" in log
    assert "stopped" in log


def test_backup_of_a_live_twin_restores_its_state_and_restore_refuses_a_running_twin(
    settings: Settings, tmp_path: Path
) -> None:
    import msgspec

    from twin.messages import RawMessage
    from twin.service import Twin

    twin = Twin(settings)
    twin.start()
    try:
        for seq in range(5):
            body = msgspec.json.encode({"seq": seq, "values": {"tool_wear_min": 210 + seq}})
            twin.inbox.put(
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
        assert "default" in again.scorer.models()
    finally:
        again.stop()


def test_two_twins_cannot_share_a_data_directory(settings: Settings) -> None:
    from twin.errors import ConfigError
    from twin.service import Twin

    first = Twin(settings)
    first.start()
    try:
        with pytest.raises(ConfigError, match="another twin is running"):
            Twin(settings).start()
    finally:
        first.stop()
