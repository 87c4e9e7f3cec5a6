"""Connect storm: 10,000 simulated machines connect at once; how fast does `GET /health` answer?

A real Mosquitto, `twin serve` and the simulator (`python -m devices`) run as three processes;
this one polls the twin's `/health` every 20 ms (one request at a time, as a load balancer's
health check would) before the storm, while the machines connect and send their first readings,
and in the steady state after. It prints the latency percentiles per phase against the target
(answers within a second throughout), how long until the twin had seen every machine, and the
twin's peak memory, and in the steady state the readings the twin applied a second against those
the simulator says it sent; with two fleet sizes, the memory per machine (the difference of the peak
RSS over the difference of machines). Run:
`python -m bench.connect_storm [--machines 1000 10000] [--rate 1] [--steady S]`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.services import Mosquitto, TwinProcess

TARGET_S = 1.0


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    return {
        "n": len(ordered),
        "p50_ms": at(0.5),
        "p95_ms": at(0.95),
        "p99_ms": at(0.99),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def poll(twin: TwinProcess, until: Any) -> tuple[list[float], dict[str, Any]]:
    """Time `/health` every 20 ms until `until(answer)` holds; the latencies and last answer."""
    latencies: list[float] = []
    while True:
        started = time.perf_counter()
        answer = twin.get("/health", timeout=30)
        latencies.append(time.perf_counter() - started)
        if until(answer):
            return latencies, answer
        time.sleep(0.02)


def elapsed(seconds: float) -> Any:
    """A `poll` condition: `seconds` have passed."""
    end = time.monotonic() + seconds
    return lambda _: time.monotonic() > end


def simulator_rate(log: str) -> float:
    """Readings a second the simulator sent, by its own closing count (`done: N readings ...
    in T s`): on two shared cores it may fall short of machines x rate."""
    done = re.search(r"done: (\d+) readings .* in ([\d.]+) s", log)
    if done is None:
        raise RuntimeError(f"the simulator did not finish cleanly:\n{log[-2000:]}")
    return int(done[1]) / float(done[2])


def storm(machines: int, rate: float, steady_s: float) -> dict[str, Any]:
    """One storm: `machines` connect at once, then run steadily for `steady_s`."""
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto()
        broker.start()
        env = {
            "TWIN_MQTT_URL": broker.url,
            "TWIN_DATA_DIR": str(Path(tmp) / "data"),
            "TWIN_LOG_LEVEL": "WARNING",
        }
        twin = TwinProcess(env)
        devices: subprocess.Popen[bytes] | None = None
        try:
            twin.start(timeout=120)  # fits the default model on first start
            before, _ = poll(twin, elapsed(3))
            storm_started = time.monotonic()
            devices_log = Path(tmp) / "devices.log"
            devices = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "devices",
                    "--machines",
                    str(machines),
                    "--rate",
                    str(rate),
                    "--mqtt-url",
                    broker.url,
                ],
                env={**os.environ, **env},
                stderr=devices_log.open("wb"),
            )
            storm, answer = poll(twin, lambda a: a["machines"] >= machines)
            all_seen_s = time.monotonic() - storm_started
            received, steady_started = answer["readings"]["received"], time.monotonic()
            steady, answer = poll(twin, elapsed(steady_s))
            applied_per_s = (answer["readings"]["received"] - received) / (
                time.monotonic() - steady_started
            )
            status = Path(f"/proc/{twin.pid}/status").read_text()
            peak_kib = int(
                next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]
            )
        finally:
            if devices is not None:
                devices.send_signal(signal.SIGTERM)
                devices.wait(120)
                sent_per_s = simulator_rate(devices_log.read_text())
            twin.close()
            broker.close()
    phases = {
        "before": percentiles(before),
        "storm": percentiles(storm),
        "steady": percentiles(steady),
    }
    return {
        "machines": machines,
        "rate_hz": rate,
        "phases": phases,
        "all_seen_s": round(all_seen_s, 1),
        "steady_applied_per_s": round(applied_per_s),
        "sent_per_s": round(sent_per_s),
        "steady_applied_of_sent": round(applied_per_s / sent_per_s, 3),
        "twin_readings": answer["readings"],
        "twin_peak_rss_kib": peak_kib,
        "worst_over_target": round(max(p["max_ms"] for p in phases.values()) / 1000 / TARGET_S, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--machines",
        type=int,
        nargs="+",
        default=[10_000],
        help="fleet sizes, one storm each; two or more also give the memory per machine",
    )
    parser.add_argument("--rate", type=float, default=1.0, help="readings per machine per second")
    parser.add_argument("--steady", type=float, default=20.0, help="seconds after the storm")
    args = parser.parse_args()
    results = [storm(machines, args.rate, args.steady) for machines in args.machines]
    for r in results:
        print(f"{r['machines']} machines at {r['rate_hz']} Hz; GET /health latency per phase:")
        print("phase      polls   p50 ms   p95 ms   p99 ms   max ms")
        for name, p in r["phases"].items():
            print(
                f"{name:<8} {p['n']:>7} {p['p50_ms']:>8} {p['p95_ms']:>8} {p['p99_ms']:>8} "
                f"{p['max_ms']:>8}"
            )
        print(
            f"every machine seen by the twin after {r['all_seen_s']:.1f} s; twin peak RSS "
            f"{r['twin_peak_rss_kib'] / 1024:.0f} MiB; in the steady phase the twin applied "
            f"{r['steady_applied_per_s']} readings/s of the {r['sent_per_s']}/s sent "
            f"({r['steady_applied_of_sent']:.2f})"
        )
        print(f"worst answer = {r['worst_over_target']:.2f} x the {TARGET_S:.0f} s target")
    if len(results) > 1:
        small, large = (
            min(results, key=lambda r: r["machines"]),
            max(results, key=lambda r: r["machines"]),
        )
        extra = large["machines"] - small["machines"]
        per = (large["twin_peak_rss_kib"] - small["twin_peak_rss_kib"]) / extra
        print(
            f"memory per machine: ({large['twin_peak_rss_kib']} - {small['twin_peak_rss_kib']}) "
            f"KiB / {extra} machines = {per:.1f} KiB"
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
