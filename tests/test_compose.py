"""docker-compose.yml and its files, checked structurally (no Docker engine here)."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_runs_broker_twin_and_optional_simulator() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"mosquitto", "twin", "simulator"}
    assert services["simulator"]["profiles"] == ["sim"]
    assert services["twin"]["environment"]["TWIN_MQTT_URL"] == "mqtt://mosquitto:1883"
    assert "8000:8000" in services["twin"]["ports"]
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{source} is mounted but missing"
            else:
                assert source in compose["volumes"]


def test_shipped_broker_config_raises_the_queue_limits() -> None:
    conf = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text().split("\n")
    settings = dict(line.split(None, 1) for line in conf if line and not line.startswith("#"))
    assert int(settings["max_queued_messages"]) >= 100_000
    assert int(settings["max_queued_bytes"]) > 0
    assert int(settings["max_inflight_messages"]) > 20


def test_image_runs_as_a_non_root_user_with_a_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "\nUSER twin\n" in dockerfile
    assert "/health" in dockerfile
