"""Ingest throughput: `twin serve` against a bare paho-mqtt subscriber, on a real Mosquitto.

For each mode (single readings, batches of 50) the same distinct readings are queued on the
broker for a consumer's persistent session while it is away; then the consumer connects and
drains them. The time from its connection to its last reading applied (the twin: visible in its
API) gives readings/s. Publishing is outside the measurement, so the figure is the consumer's
capacity, not the publisher's. Run: `python -m bench.ingest [--single N] [--batched N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from devices.publisher import DevicePublisher, NetworkLoop
from tests.services import Mosquitto, TwinProcess
from twin.config import BrokerAddress
from twin.topics import Topics

CANONICAL = ("air_temp_k", "process_temp_k", "rotational_speed_rpm", "torque_nm", "tool_wear_min")


def payloads(machines: int, readings: int, batch: int) -> dict[str, list[bytes]]:
    """Distinct readings (own seq, ts and values), `batch` to a message, spread over machines."""
    per_machine = readings // machines
    t0 = int(time.time() * 1000) - per_machine * 10
    out: dict[str, list[bytes]] = {}
    for m in range(machines):
        items = [
            {
                "ts": t0 + seq * 10,
                "seq": seq,
                # Values with the one or two decimals sensors and the simulator send.
                "values": {
                    "air_temp_k": round(300 + (seq % 50) / 10, 1),
                    "process_temp_k": round(310 + (seq % 30) / 10, 1),
                    "rotational_speed_rpm": 1400 + seq % 300,
                    "torque_nm": round(30 + (seq % 200) / 10, 1),
                    "tool_wear_min": seq % 240,
                },
            }
            for seq in range(per_machine)
        ]
        if batch == 1:
            out[f"m{m:03d}"] = [msgspec.json.encode(item) for item in items]
        else:
            chunks = [items[i : i + batch] for i in range(0, len(items), batch)]
            out[f"m{m:03d}"] = [msgspec.json.encode(chunk) for chunk in chunks]
    return out


def publish(port: int, messages: dict[str, list[bytes]]) -> float:
    broker = BrokerAddress(host="127.0.0.1", port=port, tls=False)
    loop = NetworkLoop()
    devices = [
        DevicePublisher(broker, Topics(), "bench", machine, "M", loop=loop, max_inflight=1000)
        for machine in messages
    ]
    for device in devices:
        device.start()
    for device in devices:
        assert device.wait_connected(10)
    started = time.perf_counter()
    for batch in zip(*messages.values(), strict=True):
        for device, payload in zip(devices, batch, strict=True):
            device.publish_raw(payload)
    for device in devices:
        assert device.wait_delivered(600), "the broker did not acknowledge everything"
    elapsed = time.perf_counter() - started
    for device in devices:
        device.stop()
    loop.close()
    return elapsed


def bare(port: int, messages: dict[str, list[bytes]], batch: int) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.bare_subscriber", "--port", str(port)]
    subprocess.run([*command, "--expect", "0"], check=True)  # creates the session
    count = sum(len(m) for m in messages.values())
    publish(port, messages)
    out = subprocess.run([*command, "--expect", str(count)], check=True, capture_output=True)
    result = json.loads(out.stdout)
    return {"seconds": result["seconds"], "readings": result["messages"] * batch}


def twin(
    port: int, messages: dict[str, list[bytes]], expected: int, workdir: Path
) -> dict[str, float]:
    env = {
        "TWIN_MQTT_URL": f"mqtt://127.0.0.1:{port}",
        "TWIN_DATA_DIR": str(workdir / "data"),
        "TWIN_LOG_LEVEL": "WARNING",
    }
    first = TwinProcess(env)
    first.start()  # creates its session
    first.terminate()
    publish(port, messages)
    process = TwinProcess(env)
    try:
        process.start()

        def health() -> Any:
            return process.get("/health")

        t0, cpu0 = time.perf_counter(), _cpu_seconds(process.pid)
        score0 = health()["scoring"]["seconds"]
        while health()["readings"]["received"] < expected:
            time.sleep(0.1)
        seconds = time.perf_counter() - t0
        cpu = _cpu_seconds(process.pid) - cpu0
        scoring = health()["scoring"]["seconds"] - score0
        status = Path(f"/proc/{process.pid}/status").read_text()
        peak_kib = int(
            next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]
        )
    finally:
        process.terminate()
    return {
        "seconds": seconds,
        "readings": expected,
        "peak_rss_mib": peak_kib / 1024,
        "cpu_us_per_reading": cpu / expected * 1e6,
        "scoring_share": scoring / seconds,
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_mode(name: str, readings: int, batch: int, machines: int) -> dict[str, Any]:
    messages = payloads(machines, readings, batch)
    total = sum(len(m) for m in messages.values()) * batch
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto()
        broker.start()
        try:
            base = bare(broker.port, messages, batch)
            ours = twin(broker.port, messages, total, Path(tmp))
        finally:
            broker.close()
    base_rate = base["readings"] / base["seconds"]
    our_rate = ours["readings"] / ours["seconds"]
    return {
        "mode": name,
        "readings": total,
        "bare_readings_per_s": round(base_rate),
        "twin_readings_per_s": round(our_rate),
        "ratio": round(our_rate / base_rate, 3),
        "twin_peak_rss_mib": round(ours["peak_rss_mib"], 1),
        "twin_cpu_us_per_reading": round(ours["cpu_us_per_reading"], 2),
        "twin_scoring_share": round(ours["scoring_share"], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--single", type=int, default=100_000, help="readings, one per message")
    parser.add_argument("--batched", type=int, default=1_000_000, help="readings, 50 per message")
    parser.add_argument("--machines", type=int, default=10)
    args = parser.parse_args()
    rows = [
        run_mode("single", args.single, 1, args.machines),
        run_mode("batch50", args.batched, 50, args.machines),
    ]
    print(
        f"{'mode':8} {'readings':>9} {'bare r/s':>10} {'twin r/s':>10} {'ratio':>6} "
        f"{'twin RSS':>10} {'twin CPU/reading':>17} {'scoring':>8}"
    )
    for r in rows:
        print(
            f"{r['mode']:8} {r['readings']:>9} {r['bare_readings_per_s']:>10} "
            f"{r['twin_readings_per_s']:>10} {r['ratio']:>6} {r['twin_peak_rss_mib']:>6} MiB "
            f"{r['twin_cpu_us_per_reading']:>14} us {r['twin_scoring_share']:>8.1%}"
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
