"""The `twin` command: `serve`, `demo`, `train`, `backup`, `restore`; and in cluster mode
`cluster init`, `worker`, `forward`, `api`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import uvicorn

from twin.config import Settings
from twin.errors import TwinError

log = logging.getLogger("twin")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # amqtt logs every packet at INFO; its warnings are what an operator needs.
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)


def _port(value: str) -> int:
    port = int(value)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError("must be between 1 and 65535")
    return port


def _serve(settings: Settings, host: str, port: int) -> None:
    from twin.app import create_app
    from twin.service import Twin

    twin = Twin(settings)
    twin.start()  # before uvicorn, so a bad data dir is one clear line, not a lifespan traceback
    try:
        # uvicorn turns SIGINT/SIGTERM into a lifespan shutdown, which flushes the journal.
        app = create_app(settings, twin)
        uvicorn.run(
            app, host=host, port=port, log_level=settings.log_level.lower(), access_log=False
        )
    finally:
        twin.stop()


def _demo(
    settings: Settings, machines: int, rate: float, port: int, mqtt_port: int, time_scale: float
) -> None:
    from devices.fleet import Fleet, FleetOptions
    from twin.app import create_app
    from twin.broker import EmbeddedBroker
    from twin.service import Twin

    broker = EmbeddedBroker("127.0.0.1", mqtt_port)
    broker.start()
    settings = settings.model_copy(
        update={"mqtt_url": f"mqtt://127.0.0.1:{mqtt_port}", "mqtt_protocol": "3.1.1"}
    )
    twin = Twin(settings)
    options = FleetOptions(machines, rate, protocol="3.1.1", time_scale=time_scale)
    fleet = Fleet(settings.broker, twin.topics, options)

    def start_fleet() -> None:
        # The twin's session must exist before devices publish, or the first readings have
        # nobody to be queued for.
        while not twin.ingest.connected:
            time.sleep(0.05)
        fleet.start()
        print(
            f"\nfactory-twin demo: {machines} simulated machines at {rate} Hz\n"
            f"  API:      http://127.0.0.1:{port}/machines\n"
            f"  health:   http://127.0.0.1:{port}/health\n"
            f"  API docs: http://127.0.0.1:{port}/docs\n"
            f"  orders:   http://127.0.0.1:{port}/catalogue, jobs at {time_scale:g} min/s\n"
            f"  MQTT:     mqtt://127.0.0.1:{mqtt_port} (topics {settings.topic_root}/#)\n"
            f"  data:     {settings.data_dir.resolve()}\n"
            "Ctrl-C stops it.\n",
            flush=True,
        )

    threading.Thread(target=start_fleet, name="demo-fleet", daemon=True).start()
    try:
        app = create_app(settings, twin)
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    finally:
        fleet.stop()
        broker.stop()


def _train(settings: Settings, csv: Path, out: Path | None, seed: int) -> None:
    from twin.model import Predictor, Registry, fit, read_ai4i_csv
    from twin.model.registry import manifest_for

    data = read_ai4i_csv(csv)  # a bad file fails here, before anything is written
    log.info(
        "fitting on %s: %d rows, %d failures (5-fold CV, then the 80/20 split, then all rows)",
        data.source,
        len(data.y),
        data.positives,
    )
    fitted = fit(data, seed=seed)
    if out is None:
        predictor = Registry(settings.models_dir).add(fitted, data)
        where = f"active default model in {settings.models_dir}"
    else:
        predictor = Predictor(fitted.pipeline, manifest_for(fitted, data, "default"))
        predictor.save(out)
        where = str(out)
    log.info("saved model %s (%s)", predictor.version, where)
    print(
        json.dumps(
            {"version": predictor.version, "threshold": fitted.threshold, **fitted.metrics},
            indent=2,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="twin",
        description="factory-twin: digital twins of a machine fleet over MQTT. Settings come from "
        "TWIN_* environment variables (and .env); see the README.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the twin service (MQTT ingest + HTTP API)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="HTTP port (8000)")

    demo = commands.add_parser(
        "demo", help="embedded broker + simulated fleet + twin + API, nothing else needed"
    )
    demo.add_argument("--machines", type=int, default=20, help="simulated machines (20)")
    demo.add_argument("--rate", type=float, default=1.0, help="readings per machine per second (1)")
    demo.add_argument("--port", type=_port, default=8000, help="HTTP port (8000)")
    demo.add_argument("--mqtt-port", type=_port, default=1883, help="embedded broker port (1883)")
    demo.add_argument(
        "--time-scale",
        type=float,
        default=10.0,
        help="simulated minutes of order work per real second (10: an order of hours runs in "
        "seconds)",
    )

    train = commands.add_parser(
        "train", help="fit the failure model on a CSV in the AI4I 2020 format, print its metrics"
    )
    train.add_argument("--csv", type=Path, required=True, help="training data (AI4I 2020 columns)")
    train.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the model here instead of making it the active model in TWIN_DATA_DIR",
    )
    train.add_argument("--seed", type=int, default=0, help="cross-validation seed (0)")

    save = commands.add_parser(
        "backup", help="copy TWIN_DATA_DIR's database (consistently, even while running) and models"
    )
    save.add_argument("path", type=Path, help="an empty or new directory")
    load = commands.add_parser(
        "restore", help="replace TWIN_DATA_DIR's database and models with a backup's"
    )
    load.add_argument("path", type=Path, help="a directory `twin backup` wrote")

    cluster = commands.add_parser(
        "cluster", help="cluster mode (TWIN_NATS_URL): set up NATS JetStream for the workers"
    )
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True)
    model = cluster_commands.add_parser(
        "model", help="the cluster's failure models (object store twin_models)"
    )
    model_commands = model.add_subparsers(dest="model_command", required=True)
    push = model_commands.add_parser(
        "push",
        help="store a saved model (twin train --out DIR) in the cluster and make it the active "
        "one of its scope on every worker",
    )
    push.add_argument("path", type=Path, help="the model's directory (model.joblib, model.json)")
    cluster_commands.add_parser(
        "init",
        help="create or update the streams, partition consumers and buckets, and each plant's "
        "TWIN_PLANT stream (TWIN_NATS_PLANTS) (idempotent); prints what it did",
    )
    commands.add_parser(
        "worker",
        help="run a cluster worker: takes its share of the partitions (TWIN_WORKER_ID, "
        "default the host name)",
    )
    commands.add_parser(
        "forward",
        help="write the cluster's readings, risk scores and alert changes to InfluxDB "
        "(TWIN_INFLUX_*), each point once; run one per cluster",
    )
    api = commands.add_parser(
        "api", help="run a stateless fleet API over the cluster's streams (any number of them)"
    )
    api.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    api.add_argument("--port", type=_port, default=8000, help="HTTP port (8000)")

    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValueError as exc:
        print(f"twin: bad settings:\n{exc}", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    try:
        if args.command == "serve":
            _serve(settings, args.host, args.port)
        elif args.command == "backup":
            from twin.backup import backup

            log.info("backed up %s to %s", settings.data_dir, backup(settings, args.path))
        elif args.command == "restore":
            from twin.backup import restore

            restore(settings, args.path)
            log.info("restored %s from %s", settings.data_dir, args.path)
        elif args.command == "train":
            _train(settings, args.csv, args.out, args.seed)
        elif args.command == "cluster" and args.cluster_command == "model":
            from twin.cluster.models import push as push_model

            print(push_model(settings, args.path))
        elif args.command == "cluster":
            from twin.cluster.layout import run_init

            for line in run_init(settings):
                print(line)
        elif args.command == "worker":
            from twin.cluster.worker import run

            run(settings)
        elif args.command == "forward":
            from twin.cluster.forward import run as run_forward

            run_forward(settings)
        elif args.command == "api":
            from twin.cluster.api import run as run_api

            run_api(settings, args.host, args.port)
        elif args.command == "demo":
            if args.machines < 1 or args.rate <= 0 or args.time_scale <= 0:
                parser.error("--machines, --rate and --time-scale must be positive")
            _demo(settings, args.machines, args.rate, args.port, args.mqtt_port, args.time_scale)
    except TwinError as exc:
        log.error("%s", exc)
        if hint := _data_dir_hint(settings.data_dir):
            log.error("%s", hint)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _data_dir_hint(data_dir: Path) -> str | None:
    """Why the data directory may be unusable, when its file system says so (SQLite often
    reports a full disk as a plain "disk I/O error")."""
    existing = next((p for p in (data_dir, *data_dir.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return None
    fs = os.statvfs(existing)
    if fs.f_flag & os.ST_RDONLY:
        return f"{existing} is on a read-only file system"
    free = fs.f_bavail * fs.f_frsize
    if free < 1 << 20:
        return f"the file system of {existing} is full: {free // 1024} KiB free"
    return None


if __name__ == "__main__":
    sys.exit(main())
