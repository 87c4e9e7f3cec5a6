"""The production stack's files, checked structurally (no Docker engine here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from twin.messages import CANONICAL_SIGNALS
from twin.sinks.lineprotocol import alert_line, pipeline_line, risk_line, telemetry_lines

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DASHBOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))


def test_the_stack_has_its_services_ports_and_volumes() -> None:
    cluster = {"nats1", "nats2", "nats3", "plant1", "cluster-init", "forwarder"}
    cluster |= {"worker1", "worker2", "twin-api"}
    assert set(SERVICES) == {"mosquitto", "influxdb", "grafana", "twin", "simulator", *cluster}
    assert SERVICES["simulator"]["profiles"] == ["sim"]
    assert all(SERVICES[name]["profiles"] == ["cluster"] for name in cluster)
    assert "1883:1883" in SERVICES["mosquitto"]["ports"]
    assert "8086:8086" in SERVICES["influxdb"]["ports"]
    assert "3000:3000" in SERVICES["grafana"]["ports"]
    assert "8000:8000" in SERVICES["twin"]["ports"]
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"
            else:
                assert source in COMPOSE["volumes"], f"{name} uses undeclared volume {source}"
            assert target.startswith("/")


def test_the_cluster_profile_runs_three_replicated_nodes_two_workers_and_the_api() -> None:
    for name in ("nats1", "nats2", "nats3"):
        assert SERVICES[name]["image"].startswith("nats:2.1")  # pinned consumers: 2.11
        assert SERVICES[name]["environment"]["NATS_NAME"] == name
    conf = (ROOT / "deploy/nats/cluster.conf").read_text()
    assert "stream_replicas: 3" in conf
    assert all(f"nats-route://{n}:6222" in conf for n in ("nats1", "nats2", "nats3"))
    env = SERVICES["worker1"]["environment"]
    assert env["TWIN_NATS_REPLICAS"] == "3"
    assert env["TWIN_NATS_URL"].count("nats://twin:${NATS_TWIN_PASSWORD") == 3
    assert SERVICES["worker1"]["environment"]["TWIN_WORKER_ID"] == "worker1"
    assert SERVICES["worker2"]["environment"]["TWIN_WORKER_ID"] == "worker2"
    assert SERVICES["twin-api"]["command"][:2] == ["twin", "api"]
    forwarder = SERVICES["forwarder"]
    assert forwarder["command"] == ["twin", "forward"]
    influx = SERVICES["twin"]["environment"]["TWIN_INFLUX_URL"]
    assert forwarder["environment"]["TWIN_INFLUX_URL"] == influx


def test_the_cluster_profile_has_a_plant_leaf_that_the_centre_sources() -> None:
    plant = SERVICES["plant1"]
    assert plant["image"] == SERVICES["nats1"]["image"]
    assert "./deploy/nats/plant.conf:/etc/nats/plant.conf:ro" in plant["volumes"]
    assert plant["environment"]["PLANT_HUB_URL"].endswith("@nats1:7422")
    assert "listen: 0.0.0.0:7422" in (ROOT / "deploy/nats/cluster.conf").read_text()
    assert SERVICES["cluster-init"]["environment"]["TWIN_NATS_PLANTS"] == "plant1"
    conf = (ROOT / "deploy/nats/plant.conf").read_text()
    # plant.conf reads every setting it needs from the environment the service sets
    needed = set(re.findall(r"\$(PLANT_\w+)", conf))
    assert needed == set(plant["environment"])


def test_the_twin_is_wired_to_the_broker_with_credentials_and_to_influxdb2() -> None:
    env = SERVICES["twin"]["environment"]
    assert env["TWIN_MQTT_URL"].startswith("mqtt://twin:${TWIN_MQTT_PASSWORD")
    assert env["TWIN_MQTT_URL"].endswith("@mosquitto:1883")
    assert env["TWIN_INFLUX_URL"] == "http://influxdb:8086"
    assert {"TWIN_INFLUX_TOKEN", "TWIN_INFLUX_ORG", "TWIN_INFLUX_BUCKET"} <= set(env)
    influx = SERVICES["influxdb"]["environment"]
    assert influx["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"].startswith("${INFLUXDB_TOKEN")


def test_no_secret_is_committed_every_one_comes_from_env() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for key in re.findall(r"(\w*(?:PASSWORD|TOKEN)\w*): (.+)", text):
        assert "${" in key[1], f"{key[0]} is set literally in docker-compose.yml"
    example = (ROOT / ".env.example").read_text()
    for variable in set(re.findall(r"\$\{(\w+)", text)):
        assert f"{variable}=" in example, f"{variable} is missing from .env.example"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_broker_requires_login_and_devices_publish_only_as_themselves() -> None:
    conf = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text().splitlines()
    settings = dict(line.split(None, 1) for line in conf if line and not line.startswith("#"))
    assert settings["allow_anonymous"] == "false"
    assert int(settings["max_queued_messages"]) >= 100_000
    assert int(settings["max_queued_bytes"]) > 0
    assert int(settings["max_inflight_messages"]) > 20
    acl = (ROOT / "deploy/mosquitto/acl").read_text()
    assert "user twin\ntopic read factory/#" in acl
    assert "pattern write factory/+/%u/telemetry" in acl
    # Only the simulator writes anywhere.
    assert "topic write factory/#\ntopic read factory/+/+/jobs\n\n# A real device" in acl


def test_grafana_provisions_the_datasource_and_the_dashboards() -> None:
    provisioning = ROOT / "deploy/grafana/provisioning"
    datasource = yaml.safe_load((provisioning / "datasources/influxdb.yaml").read_text())
    (source,) = datasource["datasources"]
    assert source["uid"] == "factory-influxdb"
    assert source["jsonData"]["version"] == "Flux"
    providers = yaml.safe_load((provisioning / "dashboards/factory-twin.yaml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    mounts = SERVICES["grafana"]["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts
    assert {d.stem for d in DASHBOARDS} == {"fleet", "machine", "pipeline"}


def _written() -> dict[str, set[str]]:
    """Measurements and fields the sink writes, read off its own serialiser."""
    from twin.messages import Reading

    lines = [
        *telemetry_lines("s", "m", [Reading(1, 1, dict.fromkeys(CANONICAL_SIGNALS, 1.0))]),
        risk_line("s", "m", "v", 0.5, 0.4, 1),
        pipeline_line("influxdb2", 1, 1, 1, 1, 1),
        alert_line("s", "m", "r", "major", 1, "active", False, "x", 1),
    ]
    out: dict[str, set[str]] = {}
    for line in lines:
        series, fields, _ = line.split(" ")
        out.setdefault(series.split(",")[0], set()).update(
            f.split("=")[0] for f in fields.split(",")
        )
    return out


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_queries_what_the_sink_writes(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    written = _written()
    assert dashboard["uid"].startswith("factory-")
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == "factory-influxdb"
    assert dashboard["panels"]
    annotations = [
        {"title": a["name"], "datasource": a["datasource"], "targets": [a["target"]]}
        for a in dashboard.get("annotations", {}).get("list", [])
    ]
    for panel in dashboard["panels"] + annotations:
        assert panel["datasource"]["uid"] == "factory-influxdb", panel["title"]
        for target in panel["targets"]:
            query = target["query"]
            measurements = re.findall(r'_measurement == "(\w+)"', query)
            assert measurements, f"{panel['title']}: names no measurement"
            for measurement in measurements:
                assert measurement in written, f"{panel['title']}: {measurement} is never written"
                for field in re.findall(r'_field == "(\w+)"', query):
                    assert field in written[measurement], f"{panel['title']}: no field {field}"
