"""The generated dynamic-security rules (`kiosk-bridge acl --format dynsec`) on a real Mosquitto
2.0.11 with its dynamic-security plugin, TLS client certificates and `use_identity_as_username`,
as deployed (README "Several bridge workers").

What these tests pin down: the plugin checks every SUBSCRIBE on the whole filter as sent, so a
gateway's certificate cannot join the workers' shared subscription `$share/bridge/kiosk/+/up`
(SUBACK "not authorized"), and the workers' group keeps every message; a gateway publishes and
reads its own topics only; a revoked gateway (absent from the file) still connects, since the
plugin has no password to check, but every publish and subscribe is refused; the plugin reads
its file when the broker starts, not on a SIGHUP, and a broken file refuses everything.
"""

from __future__ import annotations

import glob
import json
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from typer.testing import CliRunner

from cloud_bridge import store
from cloud_bridge.broker_acl import dynsec_config
from cloud_bridge.cli import app as bridge_cli
from cloud_bridge.pki import create_ca, issue
from gateway.keys import PUBLIC_KEY_FILE, create_keys
from tests.component.test_broker_acl import settle
from tests.conftest import Mosquitto

pytestmark = pytest.mark.mosquitto

WORKERS = ("bridge-w1", "bridge-w2")
GATEWAYS = ("gw-ds-1", "gw-ds-2")
REVOKED = "gw-ds-revoked"
LATE = "gw-ds-late"  # has a certificate, enrolled only during a test
STRANGER = "stranger"  # a certificate from the CA that the registry never heard of
GROUP = "$share/bridge/kiosk/+/up"
GRANTED_QOS_1 = 1
NOT_AUTHORIZED = 0x87  # MQTT v5 reason code, in SUBACK and PUBACK
V311_FAILURE = 0x80  # MQTT 3.1.1 SUBACK return code


def dynsec_plugin() -> Path:
    found = glob.glob("/usr/lib/*/mosquitto_dynamic_security.so") + glob.glob(
        "/usr/lib/mosquitto_dynamic_security.so"
    )
    if not found:
        pytest.fail("mosquitto's dynamic-security plugin is not installed (Debian: package mosquitto)")
    return Path(found[0])


@dataclass
class Site:
    broker: Mosquitto
    ca: Path
    certs: dict[str, tuple[Path, Path]]  # name -> (certificate, key)
    db: Path
    rules: Path
    gateway_keys: Path

    def regenerate(self) -> str:
        """`kiosk-bridge acl --format dynsec` for both workers, as the operator runs it."""
        users = [arg for worker in WORKERS for arg in ("--bridge-user", worker)]
        result = CliRunner().invoke(
            bridge_cli, ["acl", "--format", "dynsec", "--db", str(self.db), "--out", str(self.rules), *users]
        )
        assert result.exit_code == 0, result.output
        return result.output

    def enrol(self, gateway_id: str) -> None:
        conn = store.connect(self.db)
        public_pem = (self.gateway_keys / PUBLIC_KEY_FILE).read_text()
        store.enrol_gateway(conn, gateway_id, public_pem, site="s", kind="kiosk", now_ms=0)
        conn.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    ca = create_ca(tmp_path / "ca")
    broker_cert = issue(tmp_path / "ca", "broker", tmp_path / "broker", server_names=("127.0.0.1",))
    assert broker_cert.key is not None
    certs: dict[str, tuple[Path, Path]] = {}
    for name in (*WORKERS, *GATEWAYS, REVOKED, LATE, STRANGER):
        issued = issue(tmp_path / "ca", name, tmp_path / "clients")
        assert issued.key is not None
        certs[name] = (issued.cert, issued.key)
    create_keys(tmp_path / "gw-keys")
    rules = tmp_path / "dynamic-security.json"
    broker = Mosquitto(tmp_path, tls=(ca, broker_cert.cert, broker_cert.key))
    # The plugin and its file, as README "Several bridge workers" deploys them; global settings
    # come before the listener.
    broker.config.write_text(
        "per_listener_settings false\n"
        f"plugin {dynsec_plugin()}\n"
        f"plugin_opt_config_file {rules}\n" + broker.config.read_text()
    )
    deployed = Site(broker, ca, certs, tmp_path / "registry.db", rules, tmp_path / "gw-keys")
    for gateway_id in (*GATEWAYS, REVOKED):
        deployed.enrol(gateway_id)
    conn = store.connect(deployed.db)
    assert store.revoke_gateway(conn, REVOKED)
    conn.close()
    assert (
        "rules for 2 gateway(s) and bridge bridge-w1, bridge-w2; restart the broker" in deployed.regenerate()
    )
    broker.start()
    try:
        yield deployed
    finally:
        broker.stop()


class Client:
    """An MQTT client with a certificate: what it receives, and the broker's answer to each
    SUBSCRIBE, UNSUBSCRIBE and QoS 1 PUBLISH (reason code values)."""

    def __init__(
        self, site: Site, name: str, client_id: str, protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5
    ) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.connack: list[int] = []
        self._answers: dict[int, int] = {}  # message id -> first reason code
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
        )
        cert, key = site.certs[name]
        self.client.tls_set(
            ca_certs=str(site.ca), certfile=str(cert), keyfile=str(key), tls_version=ssl.PROTOCOL_TLS_CLIENT
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_acked
        self.client.on_unsubscribe = self._on_acked
        self.client.on_publish = self._on_published
        self.client.connect("127.0.0.1", site.broker.port)
        self.client.loop_start()
        self._wait(lambda: bool(self.connack), "CONNACK")

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode,
                    properties: object) -> None:  # fmt: skip
        self.connack.append(reason.value)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.received.append((message.topic, bytes(message.payload)))

    def _on_acked(self, client: mqtt.Client, userdata: object, mid: int, reasons: list[ReasonCode],
                  properties: object) -> None:  # fmt: skip
        self._answers.setdefault(mid, reasons[0].value)

    def _on_published(self, client: mqtt.Client, userdata: object, mid: int, reason: ReasonCode,
                      properties: object) -> None:  # fmt: skip
        self._answers.setdefault(mid, reason.value)

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 5
        while not done() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert done(), f"no {what}"

    def _answer(self, mid: int, what: str) -> int:
        self._wait(lambda: mid in self._answers, what)
        return self._answers[mid]

    def subscribe(self, topic_filter: str) -> int:
        _, mid = self.client.subscribe(topic_filter, qos=1)
        assert mid is not None
        return self._answer(mid, f"SUBACK for {topic_filter}")

    def unsubscribe(self, topic_filter: str) -> int:
        _, mid = self.client.unsubscribe(topic_filter)
        assert mid is not None
        return self._answer(mid, f"UNSUBACK for {topic_filter}")

    def publish(self, topic: str, payload: bytes) -> int:
        """The PUBACK's reason code: below 0x80 the broker took the message."""
        return self._answer(self.client.publish(topic, payload, qos=1).mid, f"PUBACK for {topic}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_gateway_cannot_join_the_workers_shared_subscription(site: Site) -> None:
    """The hazard of the acl_file (tests/component/test_broker_acl.py: a member that may not read
    swallows every other message of the group) does not arise: the subscription is refused."""
    worker = Client(site, "bridge-w1", "kiosk-bridge-w1")
    rogue = Client(site, "gw-ds-2", "rogue-v5")
    rogue_311 = Client(site, "gw-ds-2", "rogue-v311", protocol=mqtt.MQTTv311)
    stranger = Client(site, STRANGER, "kiosk-bridge-w9")
    gateway = Client(site, "gw-ds-1", "gateway-gw-ds-1")
    try:
        assert worker.subscribe(GROUP) == GRANTED_QOS_1
        for topic_filter in (GROUP, "$share/bridge/#", "$share/other/kiosk/+/up", "kiosk/+/up", "#"):
            assert rogue.subscribe(topic_filter) == NOT_AUTHORIZED, topic_filter
        assert rogue_311.subscribe(GROUP) == V311_FAILURE
        assert stranger.subscribe(GROUP) == NOT_AUTHORIZED
        for n in range(10):
            assert gateway.publish("kiosk/gw-ds-1/up", b"%d" % n) < 0x80
        settle(worker, rogue, rogue_311, stranger, expected=10)
        assert [payload for _, payload in worker.received] == [b"%d" % n for n in range(10)]
        assert rogue.received == rogue_311.received == stranger.received == []
    finally:
        for client in (worker, rogue, rogue_311, stranger, gateway):
            client.close()


def test_workers_share_the_group_and_ack_their_gateways(site: Site) -> None:
    first = Client(site, "bridge-w1", "kiosk-bridge-w1")
    second = Client(site, "bridge-w2", "kiosk-bridge-w2")
    single = Client(site, "bridge-w1", "kiosk-bridge")  # one bridge process, no --worker
    gateway = Client(site, "gw-ds-1", "gateway-gw-ds-1")
    try:
        assert first.subscribe(GROUP) == GRANTED_QOS_1
        assert second.subscribe(GROUP) == GRANTED_QOS_1
        assert single.subscribe("kiosk/+/up") == GRANTED_QOS_1
        assert gateway.subscribe("kiosk/gw-ds-1/ack") == GRANTED_QOS_1
        for n in range(10):
            gateway.publish("kiosk/gw-ds-1/up", b"%d" % n)
        settle(first, second, single, expected=20)
        together = sorted(int(payload) for _, payload in first.received + second.received)
        assert together == list(range(10)) and first.received and second.received  # each batch once
        assert len(single.received) == 10
        assert second.publish("kiosk/gw-ds-1/ack", b"ack 9") < 0x80
        settle(gateway, expected=1)
        assert gateway.received == [("kiosk/gw-ds-1/ack", b"ack 9")]
        assert gateway.unsubscribe("kiosk/gw-ds-1/ack") == 0  # its own filter: granted
        assert first.unsubscribe(GROUP) == 0
    finally:
        for client in (first, second, single, gateway):
            client.close()


def test_a_gateway_reaches_only_its_own_topics(site: Site) -> None:
    worker = Client(site, "bridge-w1", "kiosk-bridge-w1")
    forger = Client(site, "gw-ds-1", "gateway-gw-ds-1")
    victim = Client(site, "gw-ds-2", "gateway-gw-ds-2")
    try:
        assert worker.subscribe(GROUP) == GRANTED_QOS_1
        assert victim.subscribe("kiosk/gw-ds-2/ack") == GRANTED_QOS_1
        assert forger.publish("kiosk/gw-ds-2/up", b"forged batch") == NOT_AUTHORIZED
        assert forger.publish("kiosk/gw-ds-2/ack", b"forged ack") == NOT_AUTHORIZED
        assert forger.subscribe("kiosk/gw-ds-2/ack") == NOT_AUTHORIZED
        assert forger.subscribe("kiosk/+/ack") == NOT_AUTHORIZED
        assert forger.unsubscribe("kiosk/gw-ds-2/ack") == NOT_AUTHORIZED  # the defaults deny it too
        assert forger.publish("kiosk/gw-ds-1/up", b"own batch") < 0x80  # the control
        settle(worker, victim, forger, expected=1)
        assert worker.received == [("kiosk/gw-ds-1/up", b"own batch")]
        assert victim.received == [] and forger.received == []
    finally:
        for client in (worker, forger, victim):
            client.close()


def test_a_revoked_gateway_connects_but_is_refused_everything(site: Site) -> None:
    """Absent from the file, the revoked gateway's certificate still opens a connection: with
    `use_identity_as_username` the plugin has no password to check, so only its rules refuse.
    (Refusing the TLS handshake would need a certificate revocation list.)"""
    worker = Client(site, "bridge-w1", "kiosk-bridge-w1")
    revoked = Client(site, REVOKED, f"gateway-{REVOKED}")
    try:
        assert revoked.connack == [0]
        assert worker.subscribe(GROUP) == GRANTED_QOS_1
        assert revoked.publish(f"kiosk/{REVOKED}/up", b"after revocation") == NOT_AUTHORIZED
        assert revoked.subscribe(f"kiosk/{REVOKED}/ack") == NOT_AUTHORIZED
        assert revoked.subscribe(GROUP) == NOT_AUTHORIZED
        settle(worker, revoked, expected=1)
        assert worker.received == [] and revoked.received == []
    finally:
        for client in (worker, revoked):
            client.close()


def test_the_plugin_reads_its_file_only_when_the_broker_starts(site: Site) -> None:
    """An enrolment needs a broker restart: after a SIGHUP the new gateway is still refused, on
    its old connection and on a new one. A broken file refuses everything (fails closed)."""
    late = Client(site, LATE, "gateway-late")
    try:
        assert late.publish(f"kiosk/{LATE}/up", b"before") == NOT_AUTHORIZED
        site.enrol(LATE)
        assert "rules for 3 gateway(s)" in site.regenerate()
        assert site.broker.process is not None
        site.broker.process.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert late.publish(f"kiosk/{LATE}/up", b"after sighup") == NOT_AUTHORIZED
    finally:
        late.close()
    late = Client(site, LATE, "gateway-late-2")
    try:
        assert late.publish(f"kiosk/{LATE}/up", b"after sighup, new connection") == NOT_AUTHORIZED
    finally:
        late.close()

    site.broker.stop()
    site.broker.start()
    worker = Client(site, "bridge-w1", "kiosk-bridge-w1")
    late = Client(site, LATE, "gateway-late-3")
    try:
        assert worker.subscribe(GROUP) == GRANTED_QOS_1
        assert late.publish(f"kiosk/{LATE}/up", b"after restart") < 0x80
        settle(worker, expected=1)
        assert worker.received == [(f"kiosk/{LATE}/up", b"after restart")]
    finally:
        for client in (worker, late):
            client.close()

    site.broker.stop()
    site.rules.write_text(site.rules.read_text()[:-10])  # cut short: not JSON
    site.broker.start()
    worker = Client(site, "bridge-w1", "kiosk-bridge-w1")
    gateway = Client(site, "gw-ds-1", "gateway-gw-ds-1")
    try:
        assert worker.subscribe(GROUP) == NOT_AUTHORIZED
        assert gateway.publish("kiosk/gw-ds-1/up", b"broken rules") == NOT_AUTHORIZED
    finally:
        for client in (worker, gateway):
            client.close()
    site.broker.stop()  # its log reaches the file when it exits
    assert "Error loading Dynamic security plugin config" in (site.rules.parent / "mosquitto.log").read_text()


def test_the_acl_command_writes_the_dynsec_file(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    create_keys(tmp_path / "gw")
    public_pem = (tmp_path / "gw" / PUBLIC_KEY_FILE).read_text()
    conn = store.connect(db)
    for gateway_id in ("gw-a", "gw b", "gw-c"):  # "gw b" could never hold a certificate
        store.enrol_gateway(conn, gateway_id, public_pem, site="s", kind="kiosk", now_ms=0)
    store.revoke_gateway(conn, "gw-c")
    conn.close()
    out = tmp_path / "dynamic-security.json"
    runner = CliRunner()
    base = ["acl", "--db", str(db), "--out", str(out), "--format", "dynsec"]
    result = runner.invoke(bridge_cli, [*base, "--bridge-user", "bridge-w1", "--share-group", "g2"])
    assert result.exit_code == 0, result.output
    assert "rules for 1 gateway(s) and bridge bridge-w1; restart the broker" in result.output
    assert "left out gateway 'gw b'" in result.output
    assert json.loads(out.read_text()) == dynsec_config(["gw-a"], ["bridge-w1"], ["g2"])
    assert runner.invoke(bridge_cli, base).exit_code == 0
    assert json.loads(out.read_text()) == dynsec_config(["gw-a"], ["kiosk-bridge"], ["bridge"])  # defaults
    clash = runner.invoke(bridge_cli, [*base, "--bridge-user", "gw-a"])
    assert clash.exit_code == 2 and "'gw-a' is both a bridge identity and an enrolled gateway" in clash.output
    assert json.loads(out.read_text()) == dynsec_config(["gw-a"])  # the old file stays
    acl_file = runner.invoke(bridge_cli, ["acl", "--db", str(db), "--out", str(out), "--share-group", "g2"])
    assert acl_file.exit_code == 2 and "--share-group is for --format dynsec" in acl_file.output
