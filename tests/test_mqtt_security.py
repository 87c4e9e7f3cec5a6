"""The MQTT door: credentials, an ACL and TLS on a real Mosquitto, certificates made here."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import IN_CI
from tests.services import Mosquitto, ServiceMissing, free_port, wait_until
from twin.app import Twin, create_app
from twin.config import Settings
from twin.errors import BrokerError

pytestmark = pytest.mark.integration


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> None:
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        cwd=directory,
    )


@pytest.fixture
def secured() -> Iterator[tuple[Mosquitto, int, Path]]:
    try:
        broker = Mosquitto(anonymous=False)
    except ServiceMissing as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    d = broker.directory
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        cwd=d,
    )
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
        "-out",
        "server.crt",
        cwd=d,
    )
    (d / "passwd").touch()
    for user, password in (("twin", "twin-secret"), ("m1", "m1-secret")):
        subprocess.run(["mosquitto_passwd", "-b", str(d / "passwd"), user, password], check=True)
    (d / "acl").write_text(
        "user twin\ntopic read factory/#\ntopic write factory/$twin/status\n"
        "topic write factory/+/+/alert\ntopic write factory/+/+/twin\n\n"
        "pattern write factory/+/%u/telemetry\npattern write factory/+/%u/status\n"
    )
    tls_port = free_port()
    broker.extra_config = (
        f"password_file {d}/passwd\nacl_file {d}/acl\n"
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n"
    )
    broker.start()
    yield broker, tls_port, d
    broker.close()


def connack(port: int, username: str | None = None, password: str | None = None) -> str:
    result: list[str] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{username}")
    if username:
        client.username_pw_set(username, password)

    def on_connect(c: mqtt.Client, u: object, flags: object, reason: object, props: object) -> None:
        result.append(str(reason))
        done.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    done.wait(10)
    client.loop_stop()
    client.disconnect()
    return result[0] if result else "no answer"


def over_tls(settings: Settings, secured: tuple[Mosquitto, int, Path], ca: str) -> Settings:
    """The twin's settings for the TLS listener, as user `twin`, trusting the CA file `ca`."""
    _, tls_port, directory = secured
    url = f"mqtts://twin:twin-secret@127.0.0.1:{tls_port}"
    return settings.model_copy(update={"mqtt_url": url, "mqtt_ca_file": directory / ca})


def test_devices_need_credentials(secured: tuple[Mosquitto, int, Path]) -> None:
    broker, _, _ = secured
    assert connack(broker.port) == "Not authorized"
    assert connack(broker.port, "m1", "wrong") == "Not authorized"
    assert connack(broker.port, "m1", "m1-secret") == "Success"


def test_the_twin_connects_with_credentials_over_tls_with_hostname_checks(
    settings: Settings, secured: tuple[Mosquitto, int, Path]
) -> None:
    config = over_tls(settings, secured, "ca.crt")
    twin = Twin(config)
    with TestClient(create_app(config, twin)) as client:
        wait_until(lambda: twin.ingest.connected, 10, "the twin to connect over TLS")
        assert client.get("/health").json()["broker_connected"] is True


# paho leaks the TLS socket whose handshake failed inside connect() (it never stores it, so the
# twin cannot close it); the garbage collector closes it, with a ResourceWarning.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_wrong_ca_fails_start_up_with_a_clear_message(
    settings: Settings, secured: tuple[Mosquitto, int, Path]
) -> None:
    config = over_tls(settings, secured, "other-ca.crt")
    twin = Twin(config)
    with pytest.raises(
        BrokerError, match=r"TLS with 127\.0\.0\.1:\d+ failed: .*certificate verify failed"
    ):
        twin.start()
    twin.stop()
