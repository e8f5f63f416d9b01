"""The generated broker rules (`cloud_bridge.broker_acl`) on a real Mosquitto with TLS client
certificates, `use_identity_as_username` and `acl_file`, as the bridge workers meet them: MQTT v5
shared subscriptions `$share/GROUP/kiosk/+/up`.

What these tests pin down about Mosquitto 2.0.11 (README "Several bridge workers" relies on it):
a SUBSCRIBE is granted whatever the `acl_file` says; read access is checked per message on the
message's own topic (`kiosk/gw-X/up`, not `$share/…`), also for a shared subscription; and a
member of a shared group that may not read a message still takes its turn, so the message is
lost to the whole group; a SIGHUP reloads the rules for clients already connected.
"""

from __future__ import annotations

import signal
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_bridge.broker_acl import AclError, render_acl
from cloud_bridge.pki import create_ca, issue
from tests.conftest import Mosquitto

pytestmark = pytest.mark.mosquitto
WORKER_IDENTITIES = ("bridge-w1", "bridge-w2")
GATEWAYS = ("gw-acl-1", "gw-acl-2")
# Names with certificates from the community's CA: the two workers, the gateways, a certificate
# the rules do not name, and one whose rules name only `$share/…` filters.
NAMES = (*WORKER_IDENTITIES, *GATEWAYS, "stranger", "share-rules")


@dataclass
class Deployment:
    broker: Mosquitto
    ca: Path
    certs: dict[str, tuple[Path, Path]]  # name -> (certificate, key)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    ca = create_ca(tmp_path / "ca")
    broker_cert = issue(tmp_path / "ca", "broker", tmp_path / "broker", server_names=("127.0.0.1",))
    certs: dict[str, tuple[Path, Path]] = {}
    for name in NAMES:
        issued = issue(tmp_path / "ca", name, tmp_path / "clients")
        assert issued.key is not None
        certs[name] = (issued.cert, issued.key)
    acl = tmp_path / "mosquitto.acl"
    acl.write_text(
        render_acl(GATEWAYS, WORKER_IDENTITIES)
        + "\n# not generated: rules that name the shared subscription itself\n"
        + "user share-rules\ntopic read $share/#\ntopic read $share/bridge/kiosk/+/up\n"
    )
    assert broker_cert.key is not None
    broker = Mosquitto(tmp_path, tls=(ca, broker_cert.cert, broker_cert.key), acl_file=acl)
    broker.start()
    try:
        yield Deployment(broker, ca, certs)
    finally:
        broker.stop()


class Client:
    """An MQTT v5 client with a certificate: what it receives and how its subscriptions end."""

    def __init__(self, deployment: Deployment, name: str, client_id: str) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.granted: list[bool] = []
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        cert, key = deployment.certs[name]
        self.client.tls_set(
            ca_certs=str(deployment.ca), certfile=str(cert), keyfile=str(key),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )  # fmt: skip
        self.client.on_message = lambda c, u, m: self.received.append((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.granted.extend(
            not code.is_failure for code in codes
        )
        self.client.connect("127.0.0.1", deployment.broker.port)
        self.client.loop_start()

    def subscribe(self, topic_filter: str) -> bool:
        before = len(self.granted)
        self.client.subscribe(topic_filter, qos=1)
        deadline = time.monotonic() + 5
        while len(self.granted) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.granted) > before, f"no SUBACK for {topic_filter}"
        return self.granted[-1]

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Receiving(Protocol):
    received: list[tuple[str, bytes]]  # (topic, payload) of each message delivered to the client


def settle(*clients: Receiving, expected: int) -> None:
    """Wait until the clients hold `expected` messages together, then a little longer: anything
    the broker let through would be here by then. (Also used by test_broker_dynsec.py.)"""
    deadline = time.monotonic() + 5
    while sum(len(c.received) for c in clients) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)


def test_shared_subscriptions_are_checked_on_each_message_topic(deployment: Deployment) -> None:
    members = {name: Client(deployment, name, f"probe-{name}") for name in NAMES}
    gateway_1 = Client(deployment, "gw-acl-1", "gateway-gw-acl-1")
    gateway_2 = Client(deployment, "gw-acl-2", "gateway-gw-acl-2")
    try:
        # Every name joins a group of its own, so no member takes another's turn. Mosquitto grants
        # every subscription: an acl_file is not consulted on SUBSCRIBE.
        for name, client in members.items():
            assert client.subscribe(f"$share/g-{name}/kiosk/+/up"), name
        assert gateway_1.subscribe("kiosk/gw-acl-1/ack")
        gateway_1.publish("kiosk/gw-acl-1/up", b"batch 1")
        gateway_2.publish("kiosk/gw-acl-2/up", b"batch 2")
        gateway_1.publish("kiosk/gw-acl-2/up", b"forged")  # refused: gw-acl-1 may publish its own only
        members["bridge-w1"].publish("kiosk/gw-acl-1/ack", b"ack from w1")
        members["stranger"].publish("kiosk/gw-acl-1/ack", b"not an ack")
        settle(*members.values(), gateway_1, expected=2 * 2 + 1)
        genuine = [("kiosk/gw-acl-1/up", b"batch 1"), ("kiosk/gw-acl-2/up", b"batch 2")]
        received = {name: client.received for name, client in members.items()}
        assert received == {
            "bridge-w1": genuine,  # `topic read kiosk/+/up` is what lets a worker read
            "bridge-w2": genuine,
            "gw-acl-1": [],  # a gateway may not read even its own uplink
            "gw-acl-2": [],
            "stranger": [],  # a certificate the rules do not name reads nothing
            "share-rules": [],  # rules naming `$share/…` grant nothing: the check is on kiosk/…/up
        }
        assert gateway_1.received == [("kiosk/gw-acl-1/ack", b"ack from w1")]
    finally:
        for client in (*members.values(), gateway_1, gateway_2):
            client.close()


def test_a_member_without_read_access_loses_its_turn_for_the_group(deployment: Deployment) -> None:
    """A worker whose certificate the rules do not name is not merely idle: the broker still hands
    it every other message of the group, finds it may not read it, and drops it. The gateway gets
    no ack and resends (README "Several bridge workers"). Two members under one name share fine."""
    worker = Client(deployment, "bridge-w1", "kiosk-bridge-w1")
    stranger = Client(deployment, "stranger", "kiosk-bridge-w9")
    gateway = Client(deployment, "gw-acl-1", "gateway-gw-acl-1")
    try:
        assert worker.subscribe("$share/bridge/kiosk/+/up")
        assert stranger.subscribe("$share/bridge/kiosk/+/up")  # granted all the same
        for n in range(10):
            gateway.publish("kiosk/gw-acl-1/up", b"%d" % n)
        settle(worker, stranger, expected=5)
        assert stranger.received == []
        assert [payload for _, payload in worker.received] == [b"0", b"2", b"4", b"6", b"8"]
    finally:
        for client in (worker, stranger, gateway):
            client.close()

    # The same group with both members under one certificate name: nothing is dropped.
    first = Client(deployment, "bridge-w1", "kiosk-bridge-a")
    second = Client(deployment, "bridge-w1", "kiosk-bridge-b")
    gateway = Client(deployment, "gw-acl-1", "gateway-gw-acl-1")
    try:
        assert first.subscribe("$share/shared-name/kiosk/+/up")
        assert second.subscribe("$share/shared-name/kiosk/+/up")
        for n in range(10):
            gateway.publish("kiosk/gw-acl-1/up", b"%d" % n)
        settle(first, second, expected=10)
        together = sorted(int(payload) for _, payload in first.received + second.received)
        assert together == list(range(10)) and first.received and second.received
    finally:
        for client in (first, second, gateway):
            client.close()


def test_a_worker_added_to_the_rules_reads_after_a_sighup(deployment: Deployment, tmp_path: Path) -> None:
    """Adding a worker: regenerate the rules with its name and SIGHUP the broker; its subscription,
    made before, now delivers (Mosquitto reloads the acl_file for connected clients too)."""
    new = Client(deployment, "stranger", "kiosk-bridge-w3")  # a certificate the rules do not name yet
    gateway = Client(deployment, "gw-acl-1", "gateway-gw-acl-1")
    try:
        assert new.subscribe("$share/bridge/kiosk/+/up")
        gateway.publish("kiosk/gw-acl-1/up", b"before")
        time.sleep(0.5)
        assert new.received == []
        (tmp_path / "mosquitto.acl").write_text(render_acl(GATEWAYS, [*WORKER_IDENTITIES, "stranger"]))
        assert deployment.broker.process is not None
        deployment.broker.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while not new.received and time.monotonic() < deadline:  # until the broker has reloaded
            gateway.publish("kiosk/gw-acl-1/up", b"after")
            time.sleep(0.2)
        assert new.received and set(new.received) == {("kiosk/gw-acl-1/up", b"after")}
    finally:
        for client in (new, gateway):
            client.close()


def test_rules_for_several_bridge_identities() -> None:
    text = render_acl(["gw-a", "gw b+", "gw-c"], ["bridge-w1", "bridge-w2", "bridge-w1"])
    blocks = [block.splitlines() for block in text.split("\n\n")[1:]]
    assert blocks == [
        ["user bridge-w1", "topic read kiosk/+/up", "topic write kiosk/+/ack"],
        ["user bridge-w2", "topic read kiosk/+/up", "topic write kiosk/+/ack"],
        ["user gw-a", "topic write kiosk/gw-a/up", "topic read kiosk/gw-a/ack"],
        # "gw b+" cannot be a certificate name, so it could never connect; its `+` would be a wildcard
        ["user gw-c", "topic write kiosk/gw-c/up", "topic read kiosk/gw-c/ack"],
    ]
    assert render_acl(["gw-a"], "kiosk-bridge").count("user kiosk-bridge\n") == 1  # one name, not letters
    with pytest.raises(AclError, match="'gw-a' is both a bridge identity and an enrolled gateway"):
        render_acl(["gw-a"], ["bridge", "gw-a"])
    with pytest.raises(AclError, match="bridge identity 'bad name'"):
        render_acl(["gw-a"], ["bad name"])
    with pytest.raises(AclError, match="at least one"):
        render_acl(["gw-a"], [])


def test_the_acl_command_names_every_bridge_identity(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cloud_bridge import store
    from cloud_bridge.cli import app as bridge_cli
    from gateway.keys import PUBLIC_KEY_FILE, create_keys

    db = tmp_path / "registry.db"
    create_keys(tmp_path / "gw")
    public_pem = (tmp_path / "gw" / PUBLIC_KEY_FILE).read_text()
    conn = store.connect(db)
    for gateway_id in ("gw-a", "gw b"):  # the second could never hold a certificate
        store.enrol_gateway(conn, gateway_id, public_pem, site="s", kind="kiosk", now_ms=0)
    conn.close()
    out = tmp_path / "acl"
    runner = CliRunner()
    base = ["acl", "--db", str(db), "--out", str(out)]
    result = runner.invoke(bridge_cli, [*base, "--bridge-user", "bridge-w1", "--bridge-user", "bridge-w2"])
    assert result.exit_code == 0, result.output
    assert "rules for 1 gateway(s) and bridge bridge-w1, bridge-w2" in result.output
    assert "left out gateway 'gw b'" in result.output
    text = out.read_text()
    assert text == render_acl(["gw-a"], ["bridge-w1", "bridge-w2"])
    assert "user bridge-w2\ntopic read kiosk/+/up\ntopic write kiosk/+/ack" in text
    assert runner.invoke(bridge_cli, base).exit_code == 0
    assert "\nuser kiosk-bridge\n" in out.read_text() and "bridge-w1" not in out.read_text()  # the default
    clash = runner.invoke(bridge_cli, [*base, "--bridge-user", "gw-a"])
    assert clash.exit_code == 2 and "'gw-a' is both a bridge identity and an enrolled gateway" in clash.output
    assert "user gw-a" in out.read_text() and "user kiosk-bridge" in out.read_text()  # the old file stays
