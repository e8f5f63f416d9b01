"""A revoked gateway's TLS certificate is refused by a real Mosquitto 2.0.11 (`crlfile`, with
`require_certificate true` and `use_identity_as_username true`, as in production), once the CA
has revoked it (`cloud_bridge.pki.revoke_identity`), written the list (`write_crl`) and the
broker has reloaded it.

What these tests pin down (the module docstring of cloud_bridge/pki.py says the same for the
operator): the broker reads the list at start and on SIGHUP, not when the file changes; the new
list replaces the old one; a revoked certificate fails the TLS handshake (alert "certificate
revoked") while the others connect and publish; a connection open at the SIGHUP stays open until
the broker restarts; an unreadable list at a SIGHUP turns revocation off (logged), and a list
past its next update refuses everyone.
"""

from __future__ import annotations

import datetime as dt
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud_bridge.pki import CA_CRL, create_ca, issue, revoke_identity, write_crl
from tests.component.test_mqtt_tls import TlsClient, _connects
from tests.conftest import Mosquitto

pytestmark = pytest.mark.mosquitto

GATEWAY_A = "gw-crl-a"  # lost, then revoked
GATEWAY_B = "gw-crl-b"
BRIDGE = "kiosk-bridge"
REVOKED = "SSLV3_ALERT_CERTIFICATE_REVOKED"
# MQTT 3.1.1 CONNECT: protocol "MQTT" level 4, clean session, keep-alive 5 s, empty client id.
CONNECT = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 5, 0, 0])
CONNACK_ACCEPTED = bytes([0x20, 2, 0, 0])


@dataclass
class Site:
    ca_dir: Path
    ca: Path
    broker: Mosquitto
    certs: dict[str, tuple[Path, Path]]  # name -> (certificate, key)

    @property
    def crl(self) -> Path:
        return self.ca_dir / CA_CRL

    def reload(self) -> None:
        """What the operator does after writing the list: SIGHUP."""
        assert self.broker.process is not None
        self.broker.process.send_signal(signal.SIGHUP)

    def client(self, name: str) -> TlsClient:
        """A connected MQTT client with that certificate (TLS as the gateways use it: 1.3)."""
        cert, key = self.certs[name]
        return TlsClient(self.broker.port, self.ca, cert, key)

    def connects(self, name: str) -> bool:
        """The broker answers CONNECT with success (paho, TLS 1.3, as a gateway connects)."""
        cert, key = self.certs[name]
        return _connects(self.broker.port, ca_certs=str(self.ca), certfile=str(cert), keyfile=str(key))

    def refusal(self, name: str) -> str | None:
        """None when the broker lets the certificate in; else the TLS alert it answered with.
        TLS 1.2, where the broker checks the client's certificate inside the handshake (in 1.3 the
        client finishes first and reads the alert afterwards)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(self.ca)
        context.load_cert_chain(*self.certs[name])
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", self.broker.port), timeout=5) as raw:
            try:
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    tls.sendall(CONNECT)
                    answer = tls.recv(4)
            except ssl.SSLError as exc:
                return exc.reason or str(exc)
        assert answer == CONNACK_ACCEPTED, answer
        return None

    def log(self) -> str:
        """The broker's log: complete once it has stopped (it buffers its stdout)."""
        return (self.broker.workdir / "mosquitto.log").read_text()


def eventually(check: Callable[[], bool], what: str) -> None:
    """A SIGHUP is handled in the broker's next loop: give it a moment, not forever."""
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def receive(subscriber: TlsClient, expected: int) -> list[tuple[str, bytes]]:
    deadline = time.monotonic() + 5
    while len(subscriber.received) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return subscriber.received


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    ca_dir = tmp_path / "ca"
    ca = create_ca(ca_dir)  # writes the empty list too: the broker will not start without one
    broker_cert = issue(ca_dir, "broker", tmp_path / "broker", server_names=("127.0.0.1",))
    assert broker_cert.key is not None
    certs: dict[str, tuple[Path, Path]] = {}
    for name in (GATEWAY_A, GATEWAY_B, BRIDGE):
        issued = issue(ca_dir, name, tmp_path / "clients")
        assert issued.key is not None
        certs[name] = (issued.cert, issued.key)
    broker = Mosquitto(tmp_path, tls=(ca, broker_cert.cert, broker_cert.key), crlfile=ca_dir / CA_CRL)
    broker.start()
    try:
        yield Site(ca_dir, ca, broker, certs)
    finally:
        broker.stop()


def test_a_revoked_gateway_is_refused_once_the_broker_reloads_the_list(site: Site) -> None:
    assert site.connects(GATEWAY_A) and site.connects(GATEWAY_B)
    assert site.refusal(GATEWAY_A) is None and site.refusal(GATEWAY_B) is None
    bridge = site.client(BRIDGE)
    lost = site.client(GATEWAY_A)  # connected when the gateway goes missing
    try:
        assert bridge.subscribe("kiosk/+/up")

        assert revoke_identity(site.ca_dir, GATEWAY_A) == 1
        write_crl(site.ca_dir)
        time.sleep(1)
        assert site.refusal(GATEWAY_A) is None, "the broker read the changed file without a SIGHUP"

        site.reload()
        eventually(lambda: site.refusal(GATEWAY_A) is not None, "the SIGHUP did not load the new list")
        assert site.refusal(GATEWAY_A) == REVOKED  # the TLS handshake fails
        assert not site.connects(GATEWAY_A)  # and over TLS 1.3, as the gateway itself connects
        assert site.refusal(GATEWAY_B) is None and site.connects(GATEWAY_B)

        gateway_b = site.client(GATEWAY_B)
        try:
            gateway_b.publish(f"kiosk/{GATEWAY_B}/up", b"batch from B")
            # The check is made at the handshake: the connection open before the SIGHUP stays.
            lost.publish(f"kiosk/{GATEWAY_A}/up", b"from the open connection")
            assert sorted(receive(bridge, 2)) == [
                (f"kiosk/{GATEWAY_A}/up", b"from the open connection"),
                (f"kiosk/{GATEWAY_B}/up", b"batch from B"),
            ]
        finally:
            gateway_b.close()
    finally:
        lost.close()
        bridge.close()


def test_the_broker_reads_the_list_at_start_and_a_sighup_replaces_it(site: Site) -> None:
    empty_list = site.crl.read_bytes()
    revoke_identity(site.ca_dir, GATEWAY_A)
    write_crl(site.ca_dir)
    lost = site.client(GATEWAY_A)
    try:
        site.broker.stop()
        site.broker.start()  # same port, the list read at start
        assert site.refusal(GATEWAY_A) == REVOKED
        assert site.refusal(GATEWAY_B) is None
        eventually(lambda: not lost.client.is_connected(), "the restart did not cut the open connection")
    finally:
        lost.close()
    # An older list (a restored backup) lets the revoked certificate in again: the new list is
    # the whole truth, nothing is remembered from the one before.
    site.crl.write_bytes(empty_list)
    site.reload()
    eventually(lambda: site.refusal(GATEWAY_A) is None, "the SIGHUP did not replace the list")


def test_an_unreadable_list_at_a_sighup_turns_revocation_off(site: Site) -> None:
    """Why `write_crl` replaces the file atomically: half a file at a SIGHUP (a copy or a write
    cut short) is logged, and from then on every certificate of the CA gets in."""
    revoke_identity(site.ca_dir, GATEWAY_A)
    good_list = write_crl(site.ca_dir).read_bytes()
    site.reload()
    eventually(lambda: site.refusal(GATEWAY_A) == REVOKED, "the SIGHUP did not load the list")

    site.crl.write_bytes(good_list[: len(good_list) // 2])
    site.reload()
    eventually(lambda: site.refusal(GATEWAY_A) is None, "the broker kept checking revocation")
    assert site.broker.process is not None and site.broker.process.poll() is None  # still running
    assert site.refusal(GATEWAY_B) is None

    write_crl(site.ca_dir)  # the cure: a whole list, then SIGHUP again
    site.reload()
    eventually(lambda: site.refusal(GATEWAY_A) == REVOKED, "the good list did not come back")
    site.broker.stop()
    assert f'Unable to load certificate revocation file "{site.crl}"' in site.log()


def test_a_list_past_its_next_update_refuses_every_client(site: Site) -> None:
    """Rewrite the list well before its next update (`kiosk-bridge ca crl`), or no kiosk gets in."""
    write_crl(site.ca_dir, days=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    site.reload()
    eventually(lambda: site.refusal(GATEWAY_B) is not None, "the SIGHUP did not load the list")
    assert site.refusal(GATEWAY_B) == "SSLV3_ALERT_CERTIFICATE_EXPIRED"  # its certificate is fine
    assert not site.connects(BRIDGE)
    write_crl(site.ca_dir)
    site.reload()
    eventually(lambda: site.refusal(GATEWAY_B) is None, "a fresh list did not let the clients in")
