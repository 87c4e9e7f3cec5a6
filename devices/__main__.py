"""`python -m devices`: run a simulated fleet against the broker in TWIN_MQTT_URL."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Callable

from devices.fleet import Fleet, FleetOptions
from twin.config import Settings
from twin.topics import SEGMENT, Topics


def _segment(value: str) -> str:
    if not SEGMENT.match(value):
        raise argparse.ArgumentTypeError("must match [A-Za-z0-9_.-]{1,64}")
    return value


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(value: str) -> int | float:
        number = kind(value)
        if number <= 0:
            raise argparse.ArgumentTypeError("must be greater than 0")
        return number

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devices",
        description="Simulated machines (AI4I 2020 physics) publishing telemetry, status and "
        "events over MQTT. The broker, topic root and protocol come from TWIN_* settings.",
    )
    parser.add_argument("--machines", type=_positive(int), default=20, help="fleet size (20)")
    parser.add_argument(
        "--rate", type=_positive(float), default=1.0, help="readings per machine per second (1)"
    )
    parser.add_argument("--site", type=_segment, default="site1", help="site name (site1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same run (0)")
    parser.add_argument(
        "--batch",
        type=_positive(int),
        default=1,
        help="readings per MQTT message (1 = single objects)",
    )
    parser.add_argument(
        "--count",
        type=_positive(int),
        default=None,
        help="readings per machine, then exit (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--prefix",
        type=_segment,
        default="m",
        help="machine ids are PREFIX0000, PREFIX0001, ... (m); a machine id names one machine "
        "across all sites, so give each simulator of the same twin its own",
    )
    parser.add_argument(
        "--time-scale",
        type=_positive(float),
        default=1 / 60,
        help="simulated minutes per real second for the jobs the twin sends (1/60: real time; "
        "60: an hour's job takes a second)",
    )
    parser.add_argument("--mqtt-url", default=None, help="overrides TWIN_MQTT_URL")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides = {"mqtt_url": args.mqtt_url} if args.mqtt_url else {}
    settings = Settings(**overrides)
    options = FleetOptions(
        args.machines,
        args.rate,
        args.site,
        args.seed,
        args.batch,
        args.count,
        settings.mqtt_protocol,
        args.prefix,
        args.time_scale,
    )
    fleet = Fleet(settings.broker, Topics(settings.topic_root), options)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log = logging.getLogger("devices")
    broker = settings.broker
    login = f" as {broker.username}" if broker.username else ""  # never the password
    log.info(
        "starting %d machines at %s Hz on %s:%d%s (site %s, seed %d)",
        args.machines,
        args.rate,
        broker.host,
        broker.port,
        login,
        args.site,
        args.seed,
    )
    fleet.start()
    started = time.monotonic()
    try:
        while not fleet.wait(timeout=10):
            log.info("%d readings, %d events published", fleet.readings, fleet.events)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        fleet.stop()
    log.info(
        "done: %d readings and %d events in %.1f s",
        fleet.readings,
        fleet.events,
        time.monotonic() - started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
