"""The MQTT door: credentials, an ACL and TLS on a real Mosquitto, certificates made here."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import IN_CI
from tests.services import Mosquitto, ServiceMissing, free_port, wait_until
from twin.app import create_app
from twin.config import Settings
from twin.errors import BrokerError
from twin.service import Twin

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


def sign(directory: Path, common_name: str, name: str) -> None:
    """`{name}.key` and `{name}.crt` for `common_name`, signed by `ca` (valid for 127.0.0.1)."""
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={common_name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        cwd=directory,
    )
    openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
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
        f"{name}.crt",
        cwd=directory,
    )


@dataclass(frozen=True)
class Ports:
    tls: int  # TLS with a password
    mutual: int  # TLS that also requires a client certificate


@dataclass(frozen=True)
class Secured:
    broker: Mosquitto  # its plain listener needs a password too
    ports: Ports
    directory: Path  # certificates: ca, other-ca, server, client


@pytest.fixture
def secured() -> Iterator[Secured]:
    try:
        broker = Mosquitto(anonymous=False)
    except ServiceMissing as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    d = broker.directory
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    sign(d, "localhost", "server")
    sign(d, "m1", "client")  # a device certificate for mutual TLS
    (d / "passwd").touch()
    for user, password in (("twin", "twin-secret"), ("m1", "m1-secret"), ("m0000", "m0000-pw")):
        subprocess.run(["mosquitto_passwd", "-b", str(d / "passwd"), user, password], check=True)
    (d / "acl").write_text(
        "user twin\ntopic read factory/#\ntopic write factory/$twin/status\n"
        "topic write factory/+/+/alert\ntopic write factory/+/+/twin\n\n"
        "pattern write factory/+/%u/telemetry\npattern write factory/+/%u/status\n"
    )
    ports = Ports(tls=free_port(), mutual=free_port())
    tls = f"cafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n"
    broker.extra_config = (
        f"password_file {d}/passwd\nacl_file {d}/acl\n"
        f"listener {ports.tls} 127.0.0.1\n{tls}"
        f"listener {ports.mutual} 127.0.0.1\n{tls}require_certificate true\n"
    )
    broker.start()
    yield Secured(broker, ports, d)
    broker.close()


def connack(
    port: int, username: str | None = None, password: str | None = None, ca: Path | None = None
) -> str:
    """What the broker answers a client's CONNECT (over TLS trusting `ca`, when given)."""
    result: list[str] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{username}")
    if username:
        client.username_pw_set(username, password)
    if ca:
        client.tls_set(ca_certs=str(ca))

    def on_connect(c: mqtt.Client, u: object, flags: object, reason: object, props: object) -> None:
        result.append(str(reason))
        done.set()

    client.on_connect = on_connect
    try:
        client.connect("127.0.0.1", port)
    except OSError as exc:  # the TLS handshake failed
        return f"refused: {exc}"
    client.loop_start()
    done.wait(10)
    client.loop_stop()
    client.disconnect()
    return result[0] if result else "no answer"


def over_tls(settings: Settings, secured: Secured, ca: str, **update: Any) -> Settings:
    """Settings for the TLS listener, as user `twin`, trusting the CA file `ca`."""
    url = f"mqtts://twin:twin-secret@127.0.0.1:{secured.ports.tls}"
    changes = {"mqtt_url": url, "mqtt_ca_file": secured.directory / ca, **update}
    return settings.model_copy(update=changes)


def test_devices_need_credentials(secured: Secured) -> None:
    broker = secured.broker
    assert connack(broker.port) == "Not authorized"
    assert connack(broker.port, "m1", "wrong") == "Not authorized"
    assert connack(broker.port, "m1", "m1-secret") == "Success"


def test_the_twin_connects_with_credentials_over_tls_with_hostname_checks(
    settings: Settings, secured: Secured
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
    settings: Settings, secured: Secured
) -> None:
    config = over_tls(settings, secured, "other-ca.crt")
    twin = Twin(config)
    with pytest.raises(
        BrokerError, match=r"TLS with 127\.0\.0\.1:\d+ failed: .*certificate verify failed"
    ):
        twin.start()
    twin.stop()


def test_mutual_tls_admits_the_twin_and_a_simulated_machine_with_certificates(
    settings: Settings, secured: Secured
) -> None:
    from devices.fleet import Fleet, FleetOptions

    d, port = secured.directory, secured.ports.mutual
    certificate = {"mqtt_cert_file": d / "client.crt", "mqtt_key_file": d / "client.key"}
    url = f"mqtts://twin:twin-secret@127.0.0.1:{port}"
    config = over_tls(settings, secured, "ca.crt", mqtt_url=url, **certificate)
    twin = Twin(config)
    with TestClient(create_app(config, twin)) as client:
        wait_until(lambda: twin.ingest.connected, 10, "the twin to connect with its certificate")
        device = over_tls(
            settings,
            secured,
            "ca.crt",
            mqtt_url=f"mqtts://m0000:m0000-pw@127.0.0.1:{port}",
            **certificate,
        )
        fleet = Fleet(device.broker, twin.topics, FleetOptions(machines=1, rate_hz=50, count=20))
        fleet.start()
        assert fleet.wait(30)
        fleet.stop()
        wait_until(lambda: twin.state.totals.received == 20, 10, "the machine's 20 readings")
        assert client.get("/machines/m0000").json()["counters"]["received"] == 20
    # The same password, no certificate: under TLS 1.3 the handshake ends after the client
    # thinks it is done, so the client sees no CONNACK and the broker says why.
    assert connack(port, "m1", "m1-secret", ca=d / "ca.crt") == "no answer"
    log = (secured.broker.directory / "mosquitto.log").read_text()
    assert "peer did not return a certificate" in log
