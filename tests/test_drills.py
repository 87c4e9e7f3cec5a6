"""Failure drills against real processes: a `twin serve` process, a real Mosquitto, the simulator.

Broker restarts under load are drilled in test_ingest, InfluxDB outages in test_sinks, slow
stream clients in test_stream.
"""

from __future__ import annotations

import threading
import time

import pytest

from devices.fleet import Fleet, FleetOptions
from tests.services import Mosquitto, TwinProcess, wait_until
from twin.config import BrokerAddress
from twin.topics import Topics

pytestmark = pytest.mark.integration


def test_kill_9_mid_stream_twice_loses_nothing_and_counts_nothing_twice(
    serve: TwinProcess, mosquitto: Mosquitto
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
    assert serve.log is not None
    assert serve.log.read_text().count("replayed") == 3  # one start and two restarts


def test_ten_thousand_machines_connecting_at_once_all_arrive_and_health_answers_throughout(
    serve: TwinProcess, mosquitto: Mosquitto
) -> None:
    # How fast /health answers during the storm is measured by bench/connect_storm.py; here
    # every poll must answer, and every machine and reading must arrive.
    machines = 10_000
    broker = BrokerAddress(host="127.0.0.1", port=mosquitto.port, tls=False)
    fleet = Fleet(broker, Topics(), FleetOptions(machines=machines, rate_hz=1, count=2, seed=3))
    answers: list[str] = []
    storm_over = threading.Event()

    def poll_health() -> None:
        while not storm_over.is_set():
            answers.append(serve.get("/health", timeout=30)["status"])
            time.sleep(0.05)

    poller = threading.Thread(target=poll_health)
    poller.start()
    try:
        fleet.start(connect_timeout=120)
        assert fleet.connected == machines
        assert fleet.wait(120)
        wait_until(lambda: serve.get("/health")["machines"] == machines, 120, "every machine")
        wait_until(
            lambda: serve.get("/health")["readings"]["received"] == 2 * machines,
            120,
            "every reading",
        )
        assert serve.get("/machines?online=true&limit=1")["total"] == machines
    finally:
        storm_over.set()
        poller.join()
        fleet.stop()
    assert len(answers) > 10
    assert set(answers) == {"ok"}
