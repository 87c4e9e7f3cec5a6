"""Real services for tests and benchmarks: processes started on free loopback ports, stopped by PID.

Each service gets its own config and data directory under a temporary folder. Nothing here
mocks a protocol.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


class ServiceMissing(RuntimeError):
    """The service's program is not installed (`make test` installs it)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def find_program(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/usr/bin") if (p := Path(d) / name).exists()), None
    )
    if found is None:
        raise ServiceMissing(f"{name} is not installed; `make test` installs it (as root)")
    return found


class Mosquitto:
    """A Mosquitto 2 broker with its own config, persistence and log, on a free port.

    The config raises the queue limits as DESIGN.md requires: with Mosquitto's default
    `max_queued_messages 1000`, a subscriber that falls behind loses QoS 1 messages.
    """

    def __init__(self, port: int | None = None, extra_config: str = "") -> None:
        # Its own directory in the system temp dir: started as root, Mosquitto drops to the
        # `mosquitto` user, who can neither enter pytest's root-only tmp_path nor write there.
        self.directory = Path(tempfile.mkdtemp(prefix="twin-mosquitto-"))
        self.port = port or free_port()
        self.extra_config = extra_config
        self.program = find_program("mosquitto")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "mosquitto.log"

    def start(self) -> None:
        config = self.directory / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.directory}/\n"
            "max_queued_messages 1000000\n"
            "max_queued_bytes 1073741824\n"
            "max_inflight_messages 1000\n"
            "set_tcp_nodelay true\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"{self.extra_config}"
        )
        if os.geteuid() == 0:
            # Started as root, Mosquitto drops to its own user, who must own this directory.
            shutil.chown(self.directory, "mosquitto", "mosquitto")
            for path in self.directory.iterdir():
                shutil.chown(path, "mosquitto", "mosquitto")
        with (self.directory / "stderr.log").open("ab") as stderr:
            self.process = subprocess.Popen(
                [self.program, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=stderr
            )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start; log:\n{self.read_log()}") from None

    def read_log(self) -> str:
        logs = [self.log, self.directory / "stderr.log"]
        return "\n".join(p.read_text() for p in logs if p.exists()) or "(no log)"

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def close(self) -> None:
        """Stop and remove the broker's directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout} s still waiting for {what}")
        time.sleep(0.05)
