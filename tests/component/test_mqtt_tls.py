"""MQTT over TLS with client certificates, on a real Mosquitto configured as in production.

The health community's CA (`cloud_bridge.pki`) issues the broker's certificate and the bridge's;
the gateway makes its own key and request (`gateway.keys.create_tls_request`) and the CA signs
it. The gateway's real sync engine and the bridge's real consumer move a batch and its ack over
TLS; a client without a certificate, or with one from another CA, is turned away.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_bridge import store
from cloud_bridge.consumer import BridgeConsumer
from cloud_bridge.pki import PkiError, create_ca, issue, sign_request
from contract.wire import DeviceRef, Measurement
from gateway.config import MqttConfig, SyncConfig, TlsConfig
from gateway.keys import (
    PUBLIC_KEY_FILE,
    TLS_KEY_FILE,
    GatewayKeys,
    create_keys,
    create_tls_request,
)
from gateway.store import NewReading, Outbox
from gateway.sync import MqttSync
from tests.conftest import Mosquitto

pytestmark = pytest.mark.mosquitto
GATEWAY = "gw-tls-01"


@dataclass
class Pki:
    ca_dir: Path
    broker: tuple[Path, Path, Path]
    bridge: tuple[Path, Path, Path]
    gateway_dir: Path
    gateway_tls: TlsConfig


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca_dir = tmp_path / "ca"
    ca = create_ca(ca_dir)
    broker = issue(ca_dir, "broker", tmp_path / "broker", server_names=("127.0.0.1", "localhost"))
    bridge = issue(ca_dir, "kiosk-bridge", tmp_path / "bridge")
    gateway_dir = tmp_path / "gw"
    create_keys(gateway_dir)
    request = create_tls_request(gateway_dir, GATEWAY)
    signed = sign_request(
        ca_dir, request.read_bytes(), gateway_dir / "mqtt-tls.crt", expected_identity=GATEWAY
    )
    assert broker.key is not None and bridge.key is not None
    return Pki(
        ca_dir,
        (ca, broker.cert, broker.key),
        (ca, bridge.cert, bridge.key),
        gateway_dir,
        TlsConfig(ca_file=ca, cert_file=signed.cert, key_file=gateway_dir / TLS_KEY_FILE),
    )


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path, tls=pki.broker)
    broker.start()
    yield broker
    broker.stop()


def test_keys_stay_private(pki: Pki) -> None:
    assert (pki.gateway_dir / TLS_KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert (pki.ca_dir / "ca.key").stat().st_mode & 0o777 == 0o600
    assert pki.bridge[2].stat().st_mode & 0o777 == 0o600


def test_the_ca_signs_only_a_request_for_the_gateway_being_enrolled(pki: Pki, tmp_path: Path) -> None:
    request = create_tls_request(tmp_path / "other", "gw-someone-else")
    with pytest.raises(PkiError, match="is for 'gw-someone-else', not 'gw-tls-01'"):
        sign_request(pki.ca_dir, request.read_bytes(), tmp_path / "x.crt", expected_identity=GATEWAY)
    with pytest.raises(PkiError, match="not a PEM certificate request"):
        sign_request(pki.ca_dir, b"garbage", tmp_path / "x.crt", expected_identity=GATEWAY)


async def test_a_batch_and_its_ack_travel_over_tls_with_client_certificates(
    pki: Pki, tls_broker: Mosquitto, tmp_path: Path
) -> None:
    db = tmp_path / "bridge.db"
    conn = store.connect(db)
    public_pem = (pki.gateway_dir / PUBLIC_KEY_FILE).read_text()
    store.enrol_gateway(conn, GATEWAY, public_pem, site="test", kind="kiosk", now_ms=0)
    conn.close()
    consumer = BridgeConsumer(db, host="127.0.0.1", port=tls_broker.port, tls=pki.bridge)
    consumer.start()
    assert await asyncio.to_thread(consumer.connected.wait, 10), "the bridge did not get in over TLS"
    outbox = await Outbox.open(pki.gateway_dir / "gateway.db", GATEWAY, GatewayKeys.load(pki.gateway_dir))
    try:
        await outbox.add_reading(
            NewReading(
                device=DeviceRef("bp-0001", "KX-BP100", "0.1.0"),
                boot_id=1,
                link_seq=1,
                kind="bp",
                values=(
                    Measurement("systolic", Decimal(128), "mm[Hg]"),
                    Measurement("diastolic", Decimal(82), "mm[Hg]"),
                ),
                measured_at_ms=1795564800000,
                time_quality="ntp",
                received_mono_ms=1,
                resident=None,
                operator=None,
                flags=(),
            )
        )
        sync = MqttSync(
            GATEWAY,
            outbox,
            MqttConfig(port=tls_broker.port, tls=pki.gateway_tls),
            SyncConfig(idle_poll_s=0.1),
        )
        task = asyncio.create_task(sync.run())
        deadline = time.monotonic() + 15
        while (await outbox.status()).synced < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert (await outbox.status()).synced == 1, sync.state
    finally:
        await outbox.close()
        consumer.stop()
    with sqlite3.connect(db) as check:
        assert check.execute("SELECT gateway_id, seq FROM readings").fetchall() == [(GATEWAY, 1)]


def _connects(port: int, **tls: str) -> bool:
    """True when the broker answers CONNECT with success; False when TLS or the broker refuses."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    outcome: list[bool] = []
    client.on_connect = lambda c, u, f, reason, p: outcome.append(not reason.is_failure)
    client.on_disconnect = lambda *args: outcome.append(False)
    try:
        client.tls_set(cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT, **tls)  # type: ignore[arg-type]
        client.connect("127.0.0.1", port, keepalive=5)
        deadline = time.monotonic() + 5
        while not outcome and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    except (ssl.SSLError, OSError):
        return False
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
    return bool(outcome) and outcome[0]


def test_clients_without_a_certificate_of_the_community_ca_are_turned_away(
    pki: Pki, tls_broker: Mosquitto, tmp_path: Path
) -> None:
    ca = str(pki.broker[0])
    assert _connects(tls_broker.port, ca_certs=ca, certfile=str(pki.bridge[1]), keyfile=str(pki.bridge[2]))
    assert not _connects(tls_broker.port, ca_certs=ca)  # no client certificate
    stranger_ca = tmp_path / "stranger-ca"
    create_ca(stranger_ca, name="Somebody else")
    stranger = issue(stranger_ca, GATEWAY, tmp_path / "stranger")  # even with the right name
    assert not _connects(tls_broker.port, ca_certs=ca, certfile=str(stranger.cert), keyfile=str(stranger.key))


def test_the_technician_commands_make_the_same_files(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cloud_bridge.cli import app as bridge_cli
    from gateway.cli import app as gateway_cli

    runner = CliRunner()
    ca_dir = str(tmp_path / "ca")
    assert runner.invoke(bridge_cli, ["ca", "init", "--ca-dir", ca_dir]).exit_code == 0
    again = runner.invoke(bridge_cli, ["ca", "init", "--ca-dir", ca_dir])
    assert again.exit_code == 1 and "a CA is made once" in again.output
    broker = runner.invoke(
        bridge_cli, ["ca", "issue", "broker", "--out-dir", str(tmp_path / "b"), "--server-name", "127.0.0.1",
                     "--ca-dir", ca_dir],
    )  # fmt: skip
    assert broker.exit_code == 0, broker.output
    made = runner.invoke(gateway_cli, ["tls-request", GATEWAY, "--data-dir", str(tmp_path / "gw")])
    assert made.exit_code == 0, made.output
    signed = runner.invoke(
        bridge_cli, ["ca", "sign", GATEWAY, "--request", str(tmp_path / "gw" / "mqtt-tls.csr"),
                     "--out", str(tmp_path / "gw" / "mqtt-tls.crt"), "--ca-dir", ca_dir],
    )  # fmt: skip
    assert signed.exit_code == 0, signed.output
    refused = runner.invoke(
        bridge_cli, ["ca", "sign", "gw-other", "--request", str(tmp_path / "gw" / "mqtt-tls.csr"),
                     "--out", str(tmp_path / "x.crt"), "--ca-dir", ca_dir],
    )  # fmt: skip
    assert refused.exit_code == 1 and "not 'gw-other'" in refused.output
    assert (tmp_path / "gw" / "mqtt-tls.crt").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")


class TlsClient:
    """A paho client with a certificate, recording what it receives and how subscribes end."""

    def __init__(self, port: int, ca: Path, cert: Path, key: Path) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.granted: list[bool] = []
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.tls_set(
            ca_certs=str(ca), certfile=str(cert), keyfile=str(key), tls_version=ssl.PROTOCOL_TLS_CLIENT
        )
        self.client.on_message = lambda c, u, m: self.received.append((m.topic, m.payload))
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.granted.extend(
            not code.is_failure for code in codes
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def subscribe(self, topic: str) -> bool:
        before = len(self.granted)
        self.client.subscribe(topic, qos=1)
        deadline = time.monotonic() + 5
        while len(self.granted) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.granted[-1]

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_the_generated_rules_keep_each_gateway_to_its_own_topics(pki: Pki, tmp_path: Path) -> None:
    from cloud_bridge.broker_acl import mosquitto_acl

    db = tmp_path / "registry.db"
    conn = store.connect(db)
    public_pem = (pki.gateway_dir / PUBLIC_KEY_FILE).read_text()
    for gateway_id in (GATEWAY, "gw-other-02", "gw-revoked-03"):
        store.enrol_gateway(conn, gateway_id, public_pem, site="test", kind="kiosk", now_ms=0)
    store.revoke_gateway(conn, "gw-revoked-03")
    acl = tmp_path / "mosquitto.acl"
    acl.write_text(mosquitto_acl(conn))
    conn.close()
    broker = Mosquitto(tmp_path, tls=pki.broker, acl_file=acl)
    broker.start()
    ca = pki.broker[0]
    revoked = issue(pki.ca_dir, "gw-revoked-03", tmp_path / "revoked")
    assert revoked.key is not None
    bridge = TlsClient(broker.port, ca, pki.bridge[1], pki.bridge[2])
    gateway = TlsClient(broker.port, ca, pki.gateway_tls.cert_file, pki.gateway_tls.key_file)
    gone = TlsClient(broker.port, ca, revoked.cert, revoked.key)
    try:
        assert bridge.subscribe("kiosk/+/up")
        assert gateway.subscribe(f"kiosk/{GATEWAY}/ack")
        # Mosquitto grants these subscriptions but delivers nothing the rules forbid reading.
        gateway.subscribe("kiosk/gw-other-02/ack")  # another gateway's acks
        gateway.subscribe("kiosk/+/up")  # every gateway's batches
        gateway.publish("kiosk/gw-other-02/up", b"forged")  # posing as another gateway
        gone.publish("kiosk/gw-revoked-03/up", b"from a revoked gateway")
        gateway.publish(f"kiosk/{GATEWAY}/up", b"genuine")
        bridge.publish("kiosk/gw-other-02/ack", b"not yours")
        bridge.publish(f"kiosk/{GATEWAY}/ack", b"ack")
        deadline = time.monotonic() + 5
        while (not bridge.received or not gateway.received) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # anything the broker let through would be here by now
        assert bridge.received == [(f"kiosk/{GATEWAY}/up", b"genuine")]
        assert gateway.received == [(f"kiosk/{GATEWAY}/ack", b"ack")]
    finally:
        for client in (bridge, gateway, gone):
            client.close()
        broker.stop()


def test_the_acl_command_writes_the_rules_for_active_gateways(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cloud_bridge.cli import app as bridge_cli

    db = tmp_path / "registry.db"
    conn = store.connect(db)
    create_keys(tmp_path / "gw")
    public_pem = (tmp_path / "gw" / PUBLIC_KEY_FILE).read_text()
    store.enrol_gateway(conn, "gw-a", public_pem, site="s", kind="kiosk", now_ms=0)
    store.enrol_gateway(conn, "gw-b", public_pem, site="s", kind="vehicle", now_ms=0)
    store.revoke_gateway(conn, "gw-b")
    conn.close()
    result = CliRunner().invoke(bridge_cli, ["acl", "--db", str(db), "--out", str(tmp_path / "acl")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "acl").read_text()
    assert "user gw-a\ntopic write kiosk/gw-a/up\ntopic read kiosk/gw-a/ack" in text
    assert "gw-b" not in text
    assert "rules for 1 gateway(s)" in result.output
