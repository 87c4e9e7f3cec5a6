"""Ingest throughput: `twin serve` against a bare paho-mqtt subscriber, on a real Mosquitto.

Loads, each run for the bare subscriber (which only counts) and for the twin on the same broker:
- `queued`: the readings are queued for the consumer's persistent session while it is away;
  then it connects and drains them. Publishing is outside the clock.
- `live`: the consumer is connected and an unpaced publisher (one connection per machine) sends
  the readings; the clock runs from the first publication to the last reading the consumer has
  (the twin: applied, as its `/health` says).
- `polled`: `live`, while a client reads the whole fleet (`GET /machines?limit=1000`) four times
  a second; the twin only, and its ratio is also given against its unpolled `live` run.

At each fleet size of `--machines`, single readings and batches of 50 a message. Readings follow
the wire contract (five canonical signals, increasing `seq` and `ts` per machine) with values
drawn at random within the AI4I 2020 ranges (seeded), so alerts raise and clear as on a noisy
fleet. Run: `python -m bench.ingest [--machines 10 1000 10000] [--loads queued live polled]
[--batch 1 50]`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from devices.publisher import DevicePublisher, NetworkLoop
from tests.services import Mosquitto, TwinProcess
from twin.config import BrokerAddress
from twin.topics import Topics

# AI4I 2020's observed ranges.
RANGES = {
    "air_temp_k": (295.3, 304.5),
    "process_temp_k": (305.7, 313.8),
    "rotational_speed_rpm": (1168.0, 2886.0),
    "torque_nm": (3.8, 76.6),
    "tool_wear_min": (0.0, 253.0),
}
POLL_EVERY_S = 0.25


def payloads(machines: int, readings: int, batch: int, seed: int = 0) -> dict[str, list[bytes]]:
    """`readings` distinct readings, `batch` to a message, spread evenly over `machines`."""
    rng = random.Random(seed)
    per_machine = max(batch, readings // machines // batch * batch)
    t0 = int(time.time() * 1000) - per_machine * 10
    out: dict[str, list[bytes]] = {}
    for m in range(machines):
        items = [
            {
                "ts": t0 + seq * 10,
                "seq": seq,
                "values": {
                    name: round(rng.uniform(lo, hi), 1) for name, (lo, hi) in RANGES.items()
                },
            }
            for seq in range(per_machine)
        ]
        if batch == 1:
            out[f"m{m:05d}"] = [msgspec.json.encode(item) for item in items]
        else:
            chunks = [items[i : i + batch] for i in range(0, len(items), batch)]
            out[f"m{m:05d}"] = [msgspec.json.encode(chunk) for chunk in chunks]
    return out


class Publisher:
    """One connection per machine on one network loop, connected before the clock starts."""

    def __init__(self, port: int, machines: list[str], protocol: str = "5") -> None:
        broker = BrokerAddress(host="127.0.0.1", port=port, tls=False)
        self.loop = NetworkLoop()
        self.devices = [
            DevicePublisher(
                broker,
                Topics(),
                "bench",
                m,
                "M",
                loop=self.loop,
                max_inflight=1000,
                protocol=protocol,
            )
            for m in machines
        ]
        for device in self.devices:
            device.start()
        deadline = time.monotonic() + 120
        for device in self.devices:
            assert device.wait_connected(max(0.1, deadline - time.monotonic()))

    def send(self, messages: dict[str, list[bytes]]) -> float:
        """Publish round-robin over the machines; return when the broker has acknowledged all."""
        started = time.time()
        for round_ in zip(*messages.values(), strict=True):
            for device, payload in zip(self.devices, round_, strict=True):
                device.publish_raw(payload)
        for device in self.devices:
            assert device.wait_delivered(600), "the broker did not acknowledge everything"
        return started

    def close(self) -> None:
        for device in self.devices:
            device.stop()
        self.loop.close()


@dataclass
class Result:
    readings: int
    seconds: float
    peak_rss_mib: float | None = None
    cpu_us_per_reading: float | None = None
    polls: int = 0
    poll_p95_ms: float | None = None

    @property
    def rate(self) -> float:
        return self.readings / self.seconds


def _bare_command(port: int, expect: int) -> list[str]:
    base = [sys.executable, "-m", "bench.bare_subscriber", "--port", str(port)]
    return [*base, "--expect", str(expect)]


def bare(port: int, messages: dict[str, list[bytes]], batch: int, load: str) -> Result:
    count = sum(len(m) for m in messages.values())
    subprocess.run(_bare_command(port, 0), check=True)  # creates the session
    publisher = Publisher(port, list(messages))
    try:
        if load == "queued":
            publisher.send(messages)
            out = subprocess.run(_bare_command(port, count), check=True, capture_output=True)
            seconds = json.loads(out.stdout)["seconds"]
        else:
            consumer = subprocess.Popen(_bare_command(port, count), stdout=subprocess.PIPE)
            time.sleep(1.0)  # connected and subscribed
            started = publisher.send(messages)
            stdout, _ = consumer.communicate(timeout=900)
            seconds = json.loads(stdout)["last_at"] - started
    finally:
        publisher.close()
    return Result(count * batch, seconds)


def twin(port: int, messages: dict[str, list[bytes]], batch: int, load: str, work: Path) -> Result:
    expected = sum(len(m) for m in messages.values()) * batch
    env = {
        "TWIN_MQTT_URL": f"mqtt://127.0.0.1:{port}",
        "TWIN_DATA_DIR": str(work / "data"),
        "TWIN_LOG_LEVEL": "WARNING",
    }
    first = TwinProcess(env)
    first.start(timeout=120)  # creates its session (and, the first time, fits the model)
    first.terminate()
    publisher = Publisher(port, list(messages))
    process = TwinProcess(env)
    poller: Poller | None = None
    try:
        if load == "queued":
            publisher.send(messages)
            process.start()
            started, cpu0 = time.time(), _cpu_seconds(process.pid)
        else:
            process.start()
            if load == "polled":
                poller = Poller(process)
            started, cpu0 = time.time(), _cpu_seconds(process.pid)
            threading.Thread(target=publisher.send, args=(messages,), daemon=True).start()
        while process.get("/health", timeout=30)["readings"]["received"] < expected:
            time.sleep(0.05)
        seconds = time.time() - started
        cpu = _cpu_seconds(process.pid) - cpu0
        status = Path(f"/proc/{process.pid}/status").read_text()
        peak_kib = int(
            next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]
        )
    finally:
        if poller is not None:
            poller.stop()
        process.terminate()
        publisher.close()
    result = Result(expected, seconds, peak_kib / 1024, cpu / expected * 1e6)
    if poller is not None:
        result.polls = len(poller.latencies)
        ordered = sorted(poller.latencies) or [0.0]
        result.poll_p95_ms = round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 1)
    return result


class Poller:
    """Reads the whole fleet (1,000 twins a page) four times a second, one request at a time."""

    def __init__(self, process: TwinProcess) -> None:
        self.process = process
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            self.process.get("/machines?limit=1000", timeout=30)
            took = time.perf_counter() - started
            self.latencies.append(took)
            self._stop.wait(max(0.0, POLL_EVERY_S - took))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(machines: int, readings: int, batch: int, loads: list[str]) -> list[dict[str, Any]]:
    """Every load at one fleet size and batch size, each consumer on a fresh broker."""
    messages = payloads(machines, readings, batch)
    results: dict[str, Result] = {}
    for load in loads:
        for consumer in ("bare", "twin"):
            if consumer == "bare" and load == "polled":
                continue  # the bare subscriber has no API: compared with its live run
            with tempfile.TemporaryDirectory() as tmp:
                broker = Mosquitto()
                broker.start()
                try:
                    results[f"{consumer}/{load}"] = (
                        bare(broker.port, messages, batch, load)
                        if consumer == "bare"
                        else twin(broker.port, messages, batch, load, Path(tmp))
                    )
                finally:
                    broker.close()
            print(f"  {machines} machines, x{batch}, {load}, {consumer}: done", file=sys.stderr)
    rows = []
    for load in loads:
        ours = results[f"twin/{load}"]
        base = results[f"bare/{'live' if load == 'polled' else load}"]
        row: dict[str, Any] = {
            "machines": machines,
            "batch": batch,
            "load": load,
            "readings": ours.readings,
            "bare_per_s": round(base.rate),
            "twin_per_s": round(ours.rate),
            "ratio": round(ours.rate / base.rate, 3),
            "twin_peak_rss_mib": round(ours.peak_rss_mib or 0, 1),
            "twin_cpu_us_per_reading": round(ours.cpu_us_per_reading or 0, 2),
        }
        if load == "polled":
            row["vs_unpolled"] = round(ours.rate / results["twin/live"].rate, 3)
            row["polls"] = ours.polls
            row["poll_p95_ms"] = ours.poll_p95_ms
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--machines", type=int, nargs="+", default=[10, 1000, 10_000], help="fleet sizes"
    )
    parser.add_argument(
        "--loads", nargs="+", choices=["queued", "live", "polled"], default=["queued", "live"]
    )
    parser.add_argument(
        "--batch", type=int, nargs="+", choices=[1, 50], default=[1, 50], help="readings a message"
    )
    parser.add_argument("--single", type=int, default=100_000, help="readings, one per message")
    parser.add_argument("--batched", type=int, default=500_000, help="readings, 50 per message")
    args = parser.parse_args()
    if "polled" in args.loads and "live" not in args.loads:
        parser.error("--loads polled needs live too (its baseline)")
    rows = []
    for machines in args.machines:
        for batch in args.batch:
            rows += run(machines, args.single if batch == 1 else args.batched, batch, args.loads)
    print(
        f"{'machines':>8} {'batch':>5} {'load':7} {'readings':>9} {'bare r/s':>10} "
        f"{'twin r/s':>10} {'ratio':>6} {'RSS MiB':>8} {'CPU us/r':>9}  polled"
    )
    for r in rows:
        polled = (
            f"  {r['vs_unpolled']}x unpolled, {r['polls']} polls, p95 {r['poll_p95_ms']} ms"
            if "vs_unpolled" in r
            else ""
        )
        print(
            f"{r['machines']:>8} {r['batch']:>5} {r['load']:7} {r['readings']:>9} "
            f"{r['bare_per_s']:>10} {r['twin_per_s']:>10} {r['ratio']:>6} "
            f"{r['twin_peak_rss_mib']:>8} {r['twin_cpu_us_per_reading']:>9}{polled}"
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
