"""`python -m devices.opcua --config gateway.toml`: run the gateway until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from devices.opcua.config import load
from devices.opcua.gateway import Gateway
from twin.errors import ConfigError, StorageError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devices.opcua",
        description="Read machines' values from OPC UA servers (subscriptions, or polling) and "
        "publish them as the twin's MQTT contract (QoS 1, birth and last will per machine), "
        "through a SQLite outbox so that a broker outage loses nothing.",
    )
    parser.add_argument("--config", type=Path, required=True, help="the gateway's TOML file")
    parser.add_argument(
        "--outbox", type=Path, default=None, help="the outbox file (default: the config's)"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("asyncua").setLevel(logging.WARNING)  # its INFO is every request
    # Its session's errors are a lost connection, with a traceback; the gateway says it in a line.
    logging.getLogger("asyncua.client.ua_session").setLevel(logging.CRITICAL)
    logging.getLogger("asyncua.client.ua_client").setLevel(logging.ERROR)
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.outbox is not None:
        config = config.model_copy(update={"outbox": args.outbox})

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Gateway(config).run(stop)

    try:
        asyncio.run(run())
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
