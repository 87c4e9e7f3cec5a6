"""Cluster mode against `twin serve`, side by side in one run, on this machine's cores.

Every run has the same fleet (`--machines`, single readings, seeded values within the AI4I
ranges), an unpaced live publisher (one MQTT connection per machine) and a client reading the
whole fleet (`GET /machines?limit=1000`) four times a second from the API in use:

- `serve`: `twin serve` on Mosquitto (the baseline): its CPU per reading, readings/s.
- `workers=1`, `workers=2`: nats-server (JetStream, its MQTT listener), `twin cluster init`,
  that many `twin worker` processes and one `twin api`: the workers' CPU per reading, the
  server's, readings/s (until every reading is applied, as the workers' heartbeats count).
- `failover`: two workers, `kill -9` of one a few seconds into the stream: the seconds until its
  partitions have a live owner again and until every reading is applied (lag 0), and the replay
  rate of the takeovers (messages replayed a second over the span of the survivor's replays,
  which run side by side, from its log).

On 2 cores the server, the publisher, the workers and the API share them: no linear speed-up can
show, and `workers=2` says what a second process costs and brings here. Machines per core (at
1 reading a second each) is an extrapolation from the CPU per reading, and labelled so.
Run: `python -m bench.cluster [--machines 1000] [--readings 100000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import nats

from bench.ingest import Poller, Publisher, _cpu_seconds, payloads, twin
from tests.services import ClusterProcess, Mosquitto, NatsServer, free_port, wait_until
from twin.model import BUNDLED_CSV, Registry, fit, read_ai4i_csv

PARTITIONS = 32
_REPLAYED = re.compile(
    r"^(\S+ \S+) INFO \S+: partition \d+: replayed (\d+) messages, in ([\d.]+) s", re.M
)


def _logged_at(stamp: str) -> float:
    """A log line's time (logging's default format, local time) as epoch seconds."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


class _Api:
    """What `Poller` needs of a process: `get`."""

    def __init__(self, port: int) -> None:
        self.port = port

    def get(self, path: str, timeout: float = 5.0) -> Any:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
            return json.load(r)


def _heartbeats(url: str, names: list[str]) -> dict[str, dict[str, Any]]:
    async def read() -> dict[str, dict[str, Any]]:
        nc = await nats.connect(url)
        kv = await nc.jetstream().key_value("twin_workers")
        beats = {}
        for name in names:
            try:
                beats[name] = json.loads((await kv.get(name)).value or b"{}")
            except Exception:  # gone: killed, or not yet there
                continue
        await nc.close()
        return beats

    return asyncio.run(read())


def _owners(url: str) -> dict[int, str | None]:
    async def read() -> dict[int, str | None]:
        nc = await nats.connect(url)
        kv = await nc.jetstream().key_value("twin_partitions")
        owners = {}
        for p in range(PARTITIONS):
            try:
                owners[p] = json.loads((await kv.get(f"p.{p:03d}")).value or b"{}").get("owner")
            except Exception:
                owners[p] = None
        await nc.close()
        return owners

    return asyncio.run(read())


def _lag(url: str) -> tuple[int, int]:
    """Messages in the input stream, and those not yet acknowledged by the workers."""

    async def read() -> tuple[int, int]:
        nc = await nats.connect(url)
        js, lag = nc.jetstream(), 0
        for p in range(PARTITIONS):
            info = await js.consumer_info("TWIN_IN", f"part-{p:03d}")
            lag += (info.num_pending or 0) + (info.num_ack_pending or 0)
        stored = (await js.stream_info("TWIN_IN")).state.messages
        await nc.close()
        return stored, lag

    return asyncio.run(read())


def cluster(
    messages: dict[str, list[bytes]], workers: int, models: Path, kill_after_s: float | None
) -> dict[str, Any]:
    expected = sum(len(m) for m in messages.values())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = NatsServer(root / "nats")
        server.start()
        env = {
            "TWIN_NATS_URL": server.url,
            "TWIN_NATS_PARTITIONS": str(PARTITIONS),
            "TWIN_LOG_LEVEL": "INFO",
        }
        subprocess.run(
            [sys.executable, "-m", "twin", "cluster", "init"],
            env={**os.environ, **env},
            check=True,
            capture_output=True,
        )
        names = [f"w{i}" for i in range(workers)]
        procs = []
        for name in names:
            shutil.copytree(models, root / name / "models")
            worker_env = {**env, "TWIN_WORKER_ID": name, "TWIN_DATA_DIR": str(root / name)}
            proc = ClusterProcess(["worker"], worker_env, root / f"{name}.log")
            proc.start()
            procs.append(proc)
        api_port = free_port()
        api = ClusterProcess(["api", "--port", str(api_port)], env, root / "api.log")
        api.start()
        try:
            wait_until(lambda: set(_owners(server.url).values()) == set(names), 120, "the workers")
            publisher = Publisher(server.mqtt_port, list(messages), protocol="3.1.1")
            poller = Poller(_Api(api_port))  # type: ignore[arg-type]  # duck-typed: get()
            assert server.process is not None
            cpu0 = [_cpu_seconds(p.process.pid) for p in procs if p.process]
            server_cpu0 = _cpu_seconds(server.process.pid)
            started = time.time()
            threading.Thread(target=publisher.send, args=(messages,), daemon=True).start()
            result: dict[str, Any] = {"workers": workers}
            if kill_after_s is not None:
                time.sleep(kill_after_s)
                cpu0 = cpu0[1:]  # the victim's CPU is not counted
                procs[0].kill()
                killed, killed_at = time.monotonic(), time.time()
                survivors = set(names[1:])
                wait_until(lambda: set(_owners(server.url).values()) <= survivors, 120, "takeover")
                result["repinned_s"] = round(time.monotonic() - killed, 2)
                names, procs = names[1:], procs[1:]

            def done() -> bool:
                if kill_after_s is None:  # every worker's count: all it applied
                    beats = _heartbeats(server.url, names).values()
                    return sum(b.get("applied", 0) for b in beats) >= expected
                # After a kill the survivor applied only what the victim's snapshots missed.
                stored, lag = _lag(server.url)
                return stored >= expected and lag == 0

            wait_until(done, 900, "every reading applied")
            seconds = time.time() - started
            if kill_after_s is not None:
                result["lag_zero_s"] = round(time.monotonic() - killed, 2)
                # The takeovers' replays run side by side: their rate is what they replayed
                # over the span from the first one's start to the last one's end.
                replays = [
                    (_logged_at(at), int(n), float(took))
                    for at, n, took in _REPLAYED.findall(procs[0].log.read_text())
                ]
                replays = [r for r in replays if r[0] >= killed_at and r[1]]
                count = sum(n for _, n, _ in replays)
                span = (
                    max(end for end, _, _ in replays) - min(end - took for end, _, took in replays)
                    if replays
                    else 0
                )
                result["replayed"] = count
                result["replay_per_s"] = round(count / span) if span else None
            cpu = sum(_cpu_seconds(p.process.pid) for p in procs if p.process) - sum(cpu0)
            server_cpu = _cpu_seconds(server.process.pid) - server_cpu0
            poller.stop()
            publisher.close()
            result.update(
                readings=expected,
                per_s=round(expected / seconds),
                worker_cpu_us=round(cpu / expected * 1e6, 1),
                server_cpu_us=round(server_cpu / expected * 1e6, 1),
                polls=len(poller.latencies),
            )
            return result
        finally:
            for proc in [*procs, api]:
                proc.close()
            server.close()


def serve(messages: dict[str, list[bytes]]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto()
        broker.start()
        try:
            found = twin(broker.port, messages, 1, "polled", Path(tmp))
        finally:
            broker.close()
    return {
        "readings": found.readings,
        "per_s": round(found.rate),
        "cpu_us": round(found.cpu_us_per_reading or 0, 1),
        "polls": found.polls,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, default=1000, help="fleet size (1000)")
    parser.add_argument("--readings", type=int, default=100_000, help="readings a run (100000)")
    parser.add_argument("--kill-after", type=float, default=4.0, help="failover: seconds (4)")
    args = parser.parse_args()
    messages = payloads(args.machines, args.readings, 1)
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        data = read_ai4i_csv(BUNDLED_CSV)
        Registry(models).add(fit(data, full_report=False), data)
        runs = {"serve": serve(messages)}
        print(f"  serve: {runs['serve']}", file=sys.stderr)
        for workers in (1, 2):
            runs[f"workers={workers}"] = cluster(messages, workers, models, None)
            print(f"  workers={workers}: {runs[f'workers={workers}']}", file=sys.stderr)
        runs["failover"] = cluster(messages, 2, models, args.kill_after)
        print(f"  failover: {runs['failover']}", file=sys.stderr)
    base = runs["serve"]
    print(f"{args.machines} machines, {args.readings} single readings, live publisher, API polled")
    header = f"{'run':12} {'readings/s':>10} {'CPU us/reading':>15} {'nats-server us/r':>17}"
    print(f"{header} {'vs serve':>9}")
    print(f"{'serve':12} {base['per_s']:>10} {base['cpu_us']:>15} {'-':>17} {'1.00':>9}")
    for name in ("workers=1", "workers=2"):
        r = runs[name]
        print(
            f"{name:12} {r['per_s']:>10} {r['worker_cpu_us']:>15} {r['server_cpu_us']:>17} "
            f"{r['worker_cpu_us'] / base['cpu_us']:>9.2f}"
        )
    f = runs["failover"]
    print(
        f"failover (kill -9 of 1 of 2 workers): partitions owned again after {f['repinned_s']} s, "
        f"every reading applied {f['lag_zero_s']} s after the kill; replayed {f['replayed']} "
        f"messages at {f['replay_per_s']}/s"
    )
    one = runs["workers=1"]
    print(
        "extrapolated, machines at 1 reading/s per core: twin serve "
        f"{round(1e6 / base['cpu_us'])}, a worker {round(1e6 / one['worker_cpu_us'])} "
        f"(with nats-server's share {round(1e6 / (one['worker_cpu_us'] + one['server_cpu_us']))})"
    )
    print(json.dumps(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
