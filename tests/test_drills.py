"""Failure drills against real processes: a `twin serve` process, a real Mosquitto, the simulator.

Broker restarts under load are drilled in test_ingest, InfluxDB outages in test_sinks, slow
stream clients in test_stream.
"""

from __future__ import annotations

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
