"""Orders on a live fleet: the twin's order book against an earliest-due-date list scheduler.

A seeded fleet of simulated machines (AI4I types, two sites) is fed into a live twin, an hour of
readings each, so that every machine is scored; a generated catalogue has `--products` products
of 3-5 operations; `--orders` orders (a random product, 1-20 units, due 4-72 h ahead) arrive in
a seeded order. Both schedulers meet the same fleet and the same orders in the same run:

- the twin: each order placed through `POST /orders` as it arrives, scheduled in routing order
  after what the fleet holds, on the machines online and under the risk limit; then
  `POST /orders/resequence` once, the earliest-due-date schedule of all the planned work;
- the baseline, an earliest-due-date list scheduler: every order known up front, taken by due
  time, each operation on the machine of its type that frees first (precedence and transfers
  kept, machine health ignored).

Printed: scheduling time, on-time rate, makespan, the work booked on machines above the risk
limit, and `POST /orders/quote`'s latency with the book full.

Run: `python -m bench.orders [--machines 200] [--orders 2000] [--products 20] [--seed 5]`.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devices.simulator import make_fleet
from tests.conftest import feed_pipeline
from twin.app import create_app
from twin.config import Settings
from twin.orders.quote import configure
from twin.planning.allocation import usable_machines
from twin.planning.routing import schedule
from twin.service import Twin

MINUTE_MS = 60_000
TYPES, TYPE_WEIGHTS = ("L", "M", "H"), (6, 3, 1)  # as the fleet's machines are


def catalogue(products: int, rng: random.Random) -> str:
    out = []
    for p in range(products):
        out.append(f'[[products]]\nid = "p{p}"\nname = "Product {p}"\nprice_per_unit = 10.0\n')
        for k in range(rng.randint(3, 5)):
            out.append(
                f'[[products.operations]]\nname = "op{k}"\n'
                f'machine_type = "{rng.choices(TYPES, TYPE_WEIGHTS)[0]}"\n'
                f"minutes_per_unit = {rng.uniform(0.5, 4):.2f}\n"
                f"setup_min = {rng.uniform(5, 30):.1f}\n"
            )
    return "\n".join(out)


def fleet_messages(machines: int, seed: int, now: int) -> list[tuple[str, Any]]:
    """Status and an hour of readings (one a minute) for every machine, two sites."""
    fleet = make_fleet(machines, seed)
    messages: list[tuple[str, Any]] = []
    for i, m in enumerate(fleet):
        site = f"site{i % 2 + 1}"
        body = {"state": "online", "type": m.type, "ts": now - 3_700_000}
        messages.append((f"factory/{site}/{m.name}/status", body))
    for minute in range(60):
        for i, m in enumerate(fleet):
            values, _ = m.step()
            reading = {"seq": minute, "ts": now - (60 - minute) * MINUTE_MS, "values": values}
            messages.append((f"factory/site{i % 2 + 1}/{m.name}/telemetry", reading))
    return messages


def settle(twin: Twin, machines: int) -> None:
    """Until every machine is scored and no risk moved for a second (the scorer caught up)."""
    deadline = time.monotonic() + 120
    before: dict[str, float] = {}
    while True:
        assert time.monotonic() < deadline, "the fleet's risks did not settle"
        now = {t.machine: t.risk.probability for t in twin.state.summaries() if t.risk}
        if len(now) == machines and now == before:
            return
        before = now
        time.sleep(1.0)


def edd(
    twin: Twin, requests: list[dict[str, Any]], now: int, transfer_min: float
) -> tuple[float, list[tuple[float, float]], float]:
    """Seconds, per order (completion, due) in minutes from now, and the work (min) booked on
    machines above the risk limit: orders by due time, health ignored."""
    limit = twin.planner.default_max_risk()
    fleet, _ = usable_machines(twin.planner.fleet(), 1.0)  # online and scored: all of them
    risky = {m.machine for m in fleet if (m.risk or 0.0) > limit}
    began = time.perf_counter()
    load = {m.machine: 0.0 for m in fleet}
    results, on_risky = [], 0.0
    for request in sorted(requests, key=lambda r: r["due_ms"]):
        steps = configure(twin.quoter.catalogue, request["product"], {}, request["quantity"]).steps
        machines = [replace(m, load_min=load[m.machine]) for m in fleet]
        bookings = schedule(steps, machines, transfer_min)
        assert not isinstance(bookings, str), bookings
        for b in bookings:
            load[b.machine.machine] = b.end_min
            if b.machine.machine in risky:
                on_risky += b.end_min - b.start_min
        results.append((bookings[-1].end_min, (request["due_ms"] - now) / MINUTE_MS))
    return time.perf_counter() - began, results, on_risky


def summary(name: str, seconds: float, results: list[tuple[float, float]], risky: float) -> str:
    on_time = sum(end <= due for end, due in results) / len(results)
    makespan = max(end for end, _ in results)
    mean_late = statistics.fmean(max(0.0, end - due) for end, due in results)
    return (
        f"{name:34} {seconds:>9.2f} {on_time:>9.1%} {makespan / 60:>10.1f} "
        f"{mean_late / 60:>11.1f} {risky / 60:>11.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, default=200)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--products", type=int, default=20)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-orders-"))
    try:
        path = data_dir / "catalogue.toml"
        path.write_text(catalogue(args.products, rng))
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            mqtt_url="mqtt://127.0.0.1:9",  # fed through its inbox: the broker is not measured
            data_dir=data_dir / "data",
            journal_commit_ms=5,
            score_interval_ms=1,
            catalogue=path,
        )
        twin = Twin(settings)
        with TestClient(create_app(settings, twin)) as client:
            now = int(time.time() * 1000)
            print(f"feeding {args.machines} machines an hour of readings ...", flush=True)
            feed_pipeline(twin, *fleet_messages(args.machines, args.seed, now), wait=300)
            settle(twin, args.machines)
            now = int(time.time() * 1000)
            requests = [
                {
                    "product": f"p{rng.randrange(args.products)}",
                    "quantity": rng.randint(1, 20),
                    "due_ms": now + int(rng.uniform(4, 72) * 3_600_000),
                }
                for _ in range(args.orders)
            ]
            limit = twin.planner.default_max_risk()
            risky = {m.machine for m in twin.planner.fleet() if (m.risk or 0.0) > limit}
            print(
                f"{args.orders:,} orders on {args.machines} machines ({len(risky)} above the "
                f"risk limit {limit:.2f}), {args.products} products of 3-5 operations",
                flush=True,
            )
            baseline = edd(twin, requests, now, settings.order_transfer_min)
            latencies, ours, on_risky = [], [], 0.0
            began = time.perf_counter()
            for k, request in enumerate(requests):
                body = {
                    "product": request["product"],
                    "quantity": request["quantity"],
                    "due": time.strftime(
                        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(request["due_ms"] / 1000)
                    ),
                }
                t0 = time.perf_counter()
                answer = client.post("/orders", json=body)
                latencies.append(time.perf_counter() - t0)
                assert answer.status_code == 201, answer.text
                order = answer.json()
                ours.append(
                    ((order["eta_ms"] - now) / MINUTE_MS, (order["due_ms"] - now) / MINUTE_MS)
                )
                on_risky += sum(
                    (op["planned_end_ms"] - op["planned_start_ms"]) / MINUTE_MS
                    for op in order["operations"]
                    if op["machine"] in risky
                )
                if (k + 1) % 500 == 0:
                    print(f"  placed {k + 1:,} orders", flush=True)
            placed = time.perf_counter() - began
            began = time.perf_counter()
            client.post("/orders/resequence").raise_for_status()
            resequenced = time.perf_counter() - began
            after, after_risky = [], 0.0
            for offset in range(0, args.orders, 1000):
                page = client.get("/orders", params={"limit": 1000, "offset": offset}).json()
                for order in page["items"]:
                    after.append(
                        (
                            (order["eta_ms"] - now) / MINUTE_MS,
                            (order["due_ms"] - now) / MINUTE_MS,
                        )
                    )
                    after_risky += sum(
                        (op["planned_end_ms"] - op["planned_start_ms"]) / MINUTE_MS
                        for op in order["operations"]
                        if op["machine"] in risky
                    )
            quotes = []
            for _ in range(50):
                body = {"product": f"p{rng.randrange(args.products)}", "quantity": 10}
                t0 = time.perf_counter()
                client.post("/orders/quote", json=body).raise_for_status()
                quotes.append(time.perf_counter() - t0)
        print()
        print(
            f"{'scheduler':34} {'seconds':>9} {'on time':>9} {'makespan h':>10} "
            f"{'mean late h':>11} {'on risky h':>11}"
        )
        print(summary("the twin, orders as they arrive", placed, ours, on_risky))
        print(summary("the twin, then resequenced", resequenced, after, after_risky))
        print(summary("EDD list scheduler, all known", baseline[0], baseline[1], baseline[2]))
        print()
        print(
            f"POST /orders: median {statistics.median(latencies) * 1000:.1f} ms, p90 "
            f"{statistics.quantiles(latencies, n=10)[-1] * 1000:.1f} ms (the last 100: median "
            f"{statistics.median(latencies[-100:]) * 1000:.1f} ms)"
        )
        print(
            f"POST /orders/quote with {args.orders:,} orders booked: median "
            f"{statistics.median(quotes) * 1000:.1f} ms, p90 "
            f"{statistics.quantiles(quotes, n=10)[-1] * 1000:.1f} ms"
        )
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
