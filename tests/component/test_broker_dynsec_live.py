"""The registry's rules applied to a running Mosquitto 2.0.11 over its dynamic-security plugin's
control topic (`kiosk-bridge acl --format dynsec --apply-to`, `kiosk-bridge revoke --apply-to`,
cloud_bridge/broker_control.py), with TLS client certificates and `use_identity_as_username` as
deployed. The broker starts from a file holding only the plugin's admin and an operator's own
client; it is never restarted while the rules change.

What these tests pin down: an enrolment reaches the broker live, also for a gateway connected
before it; a revocation cuts the gateway's connection (DISCONNECT 0x98) and, once it reconnects,
refuses its every publish and subscribe; a changed role applies to connected clients without
disconnecting them; applying twice changes nothing; the operator's entries survive; the plugin
writes the changes back to its file, so a broker restart keeps them. And why a revocation
deletes the client rather than disable it: a disabled certificate identity reconnects with every
right. What the bridge does when the broker refuses or does not answer.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode
from typer.testing import CliRunner

from cloud_bridge.broker_acl import ADMIN_ROLE, dynsec_config
from cloud_bridge.broker_control import (
    AdminTls,
    BrokerControlError,
    BrokerTimeout,
    CommandError,
    DynsecAdmin,
    read_rules,
)
from cloud_bridge.cli import app as bridge_cli
from cloud_bridge.pki import create_ca, issue
from gateway.keys import create_keys
from tests.component.test_broker_acl import settle
from tests.component.test_broker_dynsec import GRANTED_QOS_1, NOT_AUTHORIZED, Client, Site, dynsec_plugin
from tests.conftest import Mosquitto

pytestmark = pytest.mark.mosquitto

ADMIN = "broker-admin"
WORKER = "bridge-w1"
GW_A = "gw-live-a"
GW_B = "gw-live-b"
STRANGER = "stranger"  # a certificate from the CA, neither admin nor in the registry
ADMINISTRATIVE_ACTION = 0x98  # MQTT v5 DISCONNECT reason code
OPERATOR_CLIENT = {"username": "grafana", "roles": [{"rolename": "monitoring"}]}
OPERATOR_ROLE = {
    "rolename": "monitoring",
    "acls": [{"acltype": "subscribePattern", "topic": "$SYS/#", "priority": 0, "allow": True}],
}


class Watched(Client):
    """A `Client` that also records each DISCONNECT reason; paho reconnects it by itself."""

    def __init__(self, site: Site, name: str, client_id: str) -> None:
        self.disconnects: list[int] = []
        super().__init__(site, name, client_id)
        self.client.on_disconnect = self._on_disconnect

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: ReasonCode,
                       properties: object) -> None:  # fmt: skip
        self.disconnects.append(reason.value)


@dataclass
class Live:
    site: Site
    admin_tls: AdminTls

    @property
    def broker(self) -> Mosquitto:
        return self.site.broker

    def broker_options(self, identity: str = ADMIN) -> list[str]:
        cert, key = self.site.certs[identity]
        return [
            "--apply-to", f"127.0.0.1:{self.broker.port}",
            "--tls-cert", str(cert), "--tls-key", str(key), "--ca-file", str(self.site.ca),
        ]  # fmt: skip

    def acl(self, *options: str, identity: str = ADMIN, exit_code: int = 0) -> list[str]:
        """`kiosk-bridge acl --format dynsec --apply-to ...` for the one worker; its output lines."""
        args = ["acl", "--format", "dynsec", "--db", str(self.site.db), "--bridge-user", WORKER]
        result = CliRunner().invoke(bridge_cli, [*args, *self.broker_options(identity), *options])
        assert result.exit_code == exit_code, result.output
        return result.output.splitlines()

    def changes(self, *options: str) -> list[str]:
        """The commands an apply sent (or would send), one line each, without HOST:PORT."""
        prefix = f"127.0.0.1:{self.broker.port}: "
        lines = [line.removeprefix(prefix) for line in self.acl(*options) if line.startswith(prefix)]
        assert lines[0].startswith("rules for ")
        assert "change(s)" in lines[-1] or lines[-1].startswith("the broker holds these rules already")
        return lines[1:-1]

    def admin(self, timeout: float = 5) -> DynsecAdmin:
        return DynsecAdmin("127.0.0.1", self.broker.port, self.admin_tls, timeout=timeout)


def wait_until(done: Callable[[], object], what: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert done(), f"no {what}"


def start_broker(tmp_path: Path, ca: Path, with_plugin: bool) -> Mosquitto:
    broker_cert = issue(tmp_path / "ca", "broker", tmp_path / "broker", server_names=("127.0.0.1",))
    assert broker_cert.key is not None
    broker = Mosquitto(tmp_path, tls=(ca, broker_cert.cert, broker_cert.key))
    if with_plugin:  # global settings come before the listener
        broker.config.write_text(
            "per_listener_settings false\n"
            f"plugin {dynsec_plugin()}\n"
            f"plugin_opt_config_file {tmp_path / 'dynamic-security.json'}\n" + broker.config.read_text()
        )
    broker.start()
    return broker


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    ca = create_ca(tmp_path / "ca")
    certs: dict[str, tuple[Path, Path]] = {}
    for name in (ADMIN, WORKER, GW_A, GW_B, STRANGER):
        issued = issue(tmp_path / "ca", name, tmp_path / "clients")
        assert issued.key is not None
        certs[name] = (issued.cert, issued.key)
    create_keys(tmp_path / "gw-keys")
    # Only the admin (as `acl --admin-identity` writes it), an operator's own entries, and the
    # default access `mosquitto_ctrl dynsec init` writes (it lets every client receive).
    with_admin = dynsec_config([], [WORKER], admin_identity=ADMIN)
    rules = tmp_path / "dynamic-security.json"
    rules.write_text(
        json.dumps(
            {
                "defaultACLAccess": {
                    "publishClientSend": False,
                    "publishClientReceive": True,
                    "subscribe": False,
                    "unsubscribe": True,
                },
                "clients": [with_admin["clients"][0], OPERATOR_CLIENT],
                "groups": [],
                "roles": [with_admin["roles"][0], OPERATOR_ROLE],
            }
        )
    )
    broker = start_broker(tmp_path, ca, with_plugin=True)
    site = Site(broker, ca, certs, tmp_path / "registry.db", rules, tmp_path / "gw-keys")
    admin_cert, admin_key = certs[ADMIN]
    try:
        yield Live(site, AdminTls(ca_file=ca, cert_file=admin_cert, key_file=admin_key))
    finally:
        broker.stop()


def test_enrolment_and_revocation_reach_the_running_broker(live: Live) -> None:
    assert live.broker.process is not None
    pid = live.broker.process.pid
    late = Watched(live.site, GW_B, "gateway-b")  # connected before its enrolment
    live.site.enrol(GW_A)
    planned = live.changes("--dry-run")
    assert planned == [
        "would setDefaultACLAccess publishClientReceive deny, unsubscribe deny",
        "would createRole kiosk-bridge (6 ACLs)",
        f"would createRole kiosk-gateway-{GW_A} (4 ACLs)",
        f"would createClient {WORKER} with role kiosk-bridge",
        f"would createClient {GW_A} with role kiosk-gateway-{GW_A}",
    ]
    assert live.changes() == [line.removeprefix("would ") for line in planned]  # the dry run changed nothing

    worker = Watched(live.site, WORKER, "kiosk-bridge-w1")
    gateway = Watched(live.site, GW_A, "gateway-a")
    try:
        assert worker.subscribe("kiosk/+/up") == GRANTED_QOS_1
        assert gateway.publish(f"kiosk/{GW_A}/up", b"a1") < 0x80
        assert late.publish(f"kiosk/{GW_B}/up", b"b1") == NOT_AUTHORIZED  # not enrolled yet
        settle(worker, expected=1)
        assert worker.received == [(f"kiosk/{GW_A}/up", b"a1")]

        live.site.enrol(GW_B)
        assert live.changes() == [
            f"createRole kiosk-gateway-{GW_B} (4 ACLs)",
            f"createClient {GW_B} with role kiosk-gateway-{GW_B}",
        ]
        assert late.publish(f"kiosk/{GW_B}/up", b"b2") < 0x80  # on the connection it already had
        settle(worker, expected=2)
        assert worker.received[1:] == [(f"kiosk/{GW_B}/up", b"b2")]

        result = CliRunner().invoke(
            bridge_cli, ["revoke", GW_A, "--db", str(live.site.db), *live.broker_options()]
        )
        assert result.exit_code == 0, result.output
        assert f"revoked {GW_A}" in result.output
        assert f"deleteClient {GW_A}" in result.output and f"deleteRole kiosk-gateway-{GW_A}" in result.output
        wait_until(lambda: gateway.disconnects, "disconnect of the revoked gateway")
        assert gateway.disconnects == [ADMINISTRATIVE_ACTION]
        wait_until(lambda: len(gateway.connack) == 2, "reconnection")  # its certificate still connects...
        assert gateway.connack == [0, 0]
        assert gateway.publish(f"kiosk/{GW_A}/up", b"after revocation") == NOT_AUTHORIZED  # ...to nothing
        assert gateway.subscribe(f"kiosk/{GW_A}/ack") == NOT_AUTHORIZED
        assert late.publish(f"kiosk/{GW_B}/up", b"b3") < 0x80
        settle(worker, expected=3)
        assert worker.received[2:] == [(f"kiosk/{GW_B}/up", b"b3")]
        assert worker.disconnects == late.disconnects == []  # nobody else was cut off

        assert live.changes() == []  # the registry's next apply agrees
        assert live.acl()[-1].endswith("the broker holds these rules already, nothing to change")
        with live.admin() as admin:
            rules = read_rules(admin)
        assert OPERATOR_CLIENT["username"] in [client["username"] for client in rules["clients"]]
        assert OPERATOR_ROLE in rules["roles"] and ADMIN_ROLE in [role["rolename"] for role in rules["roles"]]
        assert live.broker.process is not None and live.broker.process.pid == pid  # never restarted
    finally:
        for client in (worker, gateway, late):
            client.close()

    live.broker.stop()  # the plugin wrote every change to its file: a restart keeps them
    live.broker.start()
    assert live.changes() == []


@contextlib.contextmanager
def enrolled_gateway_and_worker(live: Live) -> Iterator[tuple[Watched, Watched]]:
    """Gateway A enrolled and applied, then connected, with a bridge worker; both closed after."""
    live.site.enrol(GW_A)
    live.changes()
    worker = Watched(live.site, WORKER, "kiosk-bridge-w1")
    gateway = Watched(live.site, GW_A, "gateway-a")
    try:
        yield worker, gateway
    finally:
        for client in (worker, gateway):
            client.close()


def test_a_disabled_certificate_identity_keeps_every_right(live: Live) -> None:
    """Why a revocation deletes the gateway's client: Mosquitto 2.0.11 checks `disabled` only
    with a password, which `use_identity_as_username` never gives. The next apply enables it
    again (the registry says it is active)."""
    with enrolled_gateway_and_worker(live) as (worker, gateway):
        assert worker.subscribe("kiosk/+/up") == GRANTED_QOS_1
        with live.admin() as admin:
            admin.run([{"command": "disableClient", "username": GW_A}])
        wait_until(lambda: len(gateway.connack) == 2, "reconnection after disableClient")
        assert gateway.disconnects == [ADMINISTRATIVE_ACTION]
        assert gateway.publish(f"kiosk/{GW_A}/up", b"while disabled") < 0x80
        settle(worker, expected=1)
        assert worker.received == [(f"kiosk/{GW_A}/up", b"while disabled")]
        assert live.changes() == [f"enableClient {GW_A}"]


def test_a_gateway_that_lost_its_role_gets_it_back(live: Live) -> None:
    """removeClientRole and addClientRole each disconnect the gateway (2.0.11); without its role
    it is refused, with it back it publishes again."""
    with enrolled_gateway_and_worker(live) as (worker, gateway):
        assert worker.subscribe("kiosk/+/up") == GRANTED_QOS_1
        with live.admin() as admin:
            admin.run(
                [{"command": "removeClientRole", "username": GW_A, "rolename": f"kiosk-gateway-{GW_A}"}]
            )
        wait_until(lambda: len(gateway.connack) == 2, "reconnection after removeClientRole")
        assert gateway.publish(f"kiosk/{GW_A}/up", b"without its role") == NOT_AUTHORIZED
        assert live.changes() == [f"addClientRole {GW_A} kiosk-gateway-{GW_A}"]
        wait_until(lambda: len(gateway.connack) == 3, "reconnection after addClientRole")
        assert gateway.disconnects == [ADMINISTRATIVE_ACTION, ADMINISTRATIVE_ACTION]
        assert gateway.publish(f"kiosk/{GW_A}/up", b"with its role") < 0x80
        settle(worker, expected=1)
        assert worker.received == [(f"kiosk/{GW_A}/up", b"with its role")]


def test_a_changed_role_applies_to_connected_clients(live: Live) -> None:
    """A new workers' group: the bridge's role gains two ACLs, its connected workers may join the
    group at once, without being disconnected; dropped again, a new subscription is refused."""
    with enrolled_gateway_and_worker(live) as (worker, gateway):
        assert worker.subscribe("$share/g2/kiosk/+/up") == NOT_AUTHORIZED
        assert live.changes("--share-group", "bridge", "--share-group", "g2") == [
            "addRoleACL kiosk-bridge subscribeLiteral $share/g2/kiosk/+/up allow",
            "addRoleACL kiosk-bridge unsubscribeLiteral $share/g2/kiosk/+/up allow",
        ]
        assert worker.subscribe("$share/g2/kiosk/+/up") == GRANTED_QOS_1
        assert gateway.publish(f"kiosk/{GW_A}/up", b"via g2") < 0x80
        settle(worker, expected=1)
        assert worker.received == [(f"kiosk/{GW_A}/up", b"via g2")]
        assert live.changes() == [
            "removeRoleACL kiosk-bridge subscribeLiteral $share/g2/kiosk/+/up",
            "removeRoleACL kiosk-bridge unsubscribeLiteral $share/g2/kiosk/+/up",
        ]
        assert worker.subscribe("$share/g2/kiosk/+/up") == NOT_AUTHORIZED
        assert worker.disconnects == gateway.disconnects == []


def test_the_acl_command_writes_the_admin_into_the_file_it_applies(live: Live, tmp_path: Path) -> None:
    live.site.enrol(GW_A)
    out = tmp_path / "written.json"
    lines = live.acl("--out", str(out))
    assert (
        lines[0] == f"{out}: rules for 1 gateway(s) and bridge {WORKER}; the running broker gets them below"
    )
    assert json.loads(out.read_text()) == dynsec_config([GW_A], [WORKER], admin_identity=ADMIN)
    other = live.acl("--out", str(out), "--admin-identity", "someone-else", exit_code=2)
    assert f"--admin-identity someone-else differs from --tls-cert's name {ADMIN}" in "\n".join(other)


def test_the_acl_command_checks_its_broker_options(tmp_path: Path) -> None:
    """Refused before anything is written or sent."""
    ca = create_ca(tmp_path / "ca")
    admin = issue(tmp_path / "ca", ADMIN, tmp_path / "clients")
    tls = ["--tls-cert", str(admin.cert), "--tls-key", str(admin.key), "--ca-file", str(ca)]
    base = ["acl", "--db", str(tmp_path / "registry.db")]
    for options, error in [
        (["--format", "dynsec"], "give --out FILE, --apply-to HOST:PORT, or both"),
        (["--apply-to", "127.0.0.1:1883", *tls], "--admin-identity and --apply-to are for --format dynsec"),
        (["--format", "dynsec", "--apply-to", "127.0.0.1:1883"], "--apply-to needs --tls-cert, --tls-key"),
        (["--format", "dynsec", "--apply-to", "broker", *tls], "--apply-to broker: give HOST:PORT"),
        (
            ["--format", "dynsec", "--out", str(tmp_path / "f"), *tls],
            "--tls-cert, --tls-key and --ca-file go",
        ),
        (
            ["--format", "dynsec", "--apply-to", "h:1", "--tls-cert", str(admin.key), *tls[2:]],
            "not a PEM cert",
        ),
    ]:
        result = CliRunner().invoke(bridge_cli, [*base, *options])
        assert result.exit_code == 2 and error in result.output, (options, result.output)
    assert not (tmp_path / "f").exists()


def test_a_certificate_that_is_not_the_admin_is_refused(live: Live) -> None:
    live.site.enrol(GW_A)
    live.changes()
    refused = "\n".join(live.acl(identity=STRANGER, exit_code=1))
    assert (
        f"does not let '{STRANGER}' read the plugin's answers ($CONTROL/dynamic-security/v1/response"
        in refused
    )
    clash = "\n".join(live.acl(identity=GW_A, exit_code=2))  # a gateway's certificate: not even tried
    assert f"'{GW_A}' is both the broker's admin and an enrolled gateway" in clash


def test_a_refused_command_is_named_with_the_plugins_reason(live: Live) -> None:
    with live.admin() as admin, pytest.raises(CommandError) as refused:
        admin.run([{"command": "listClients"}, {"command": "deleteClient", "username": "nobody"}])
    assert str(refused.value) == (
        "the broker's dynamic-security plugin refused deleteClient nobody: Client not found"
    )
    assert refused.value.error == "Client not found"


def test_a_broker_that_does_not_answer_times_out(tmp_path: Path) -> None:
    """No plugin: nobody answers on the control topic."""
    ca = create_ca(tmp_path / "ca")
    admin = issue(tmp_path / "ca", ADMIN, tmp_path / "clients")
    assert admin.key is not None
    tls = AdminTls(ca_file=ca, cert_file=admin.cert, key_file=admin.key)
    broker = start_broker(tmp_path, ca, with_plugin=False)
    try:
        started = time.monotonic()
        with (
            DynsecAdmin("127.0.0.1", broker.port, tls, timeout=1) as control,
            pytest.raises(BrokerTimeout) as late,
        ):
            read_rules(control)
        assert time.monotonic() - started < 5
        assert str(late.value) == (
            f"the broker at 127.0.0.1:{broker.port} did not answer within 1 s (waiting for the "
            "dynamic-security plugin's answer to listClients and 3 more)"
        )
    finally:
        broker.stop()
    with pytest.raises(BrokerControlError, match=f"cannot connect to the broker at 127.0.0.1:{broker.port}"):
        DynsecAdmin("127.0.0.1", broker.port, tls, timeout=1).connect()
