"""`kiosk-gateway provision` against a real bridge: its HTTP API served by uvicorn on a loopback
port over a real SQLite file, with the community's CA (`kiosk-bridge ca init`) or without one,
and a technician's token made with `kiosk-bridge token add`.

The provisioned configuration must load as the gateway loads it, its keys must be the ones the
bridge enrolled, its certificate must be the CA's for that gateway, and the gateway must show in
the fleet API and in the broker's ACL; every refusal must leave nothing behind and print no
traceback.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from cloud_bridge import ack_key, pki, store
from cloud_bridge.api import create_app
from cloud_bridge.cli import app as bridge_cli
from gateway.cli import app as gateway_cli
from gateway.config import load_config
from gateway.keys import (
    BRIDGE_ACK_KEY_FILE,
    PUBLIC_KEY_FILE,
    SIGNING_KEY_FILE,
    STORAGE_KEY_FILE,
    TLS_CA_FILE,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    TLS_REQUEST_FILE,
    GatewayKeys,
)
from simulators.chain import REPO_ROOT, free_port, port_open, wait_for

PROFILES = REPO_ROOT / "device_profiles"


class RunningBridge:
    """The bridge's HTTP API (`create_app`, as `kiosk-bridge run` serves it) on a free port."""

    def __init__(self, workdir: Path, *, with_ca: bool, with_ack_key: bool = True) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.db = workdir / "bridge.db"
        self.ca_dir = workdir / "ca" if with_ca else None
        if self.ca_dir is not None:
            pki.create_ca(self.ca_dir)
        # `kiosk-bridge run` always has one; without it, a bridge of an older release.
        self.ack_key = ack_key.create_ack_key(workdir / "bridge-ack.key") if with_ack_key else None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                create_app(
                    str(self.db),
                    ca_dir=self.ca_dir,
                    ack_public_pem=None if self.ack_key is None else ack_key.public_pem(self.ack_key),
                ),
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RunningBridge:
        self.thread.start()
        wait_for(lambda: port_open(self.port), timeout=10, what="the bridge's HTTP API")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def token(self, name: str, role: str) -> str:
        made = CliRunner().invoke(bridge_cli, ["token", "add", name, "--role", role, "--db", str(self.db)])
        assert made.exit_code == 0, made.output
        return made.stdout.strip()

    def enrolled(self) -> list[str]:
        conn = store.connect(self.db)
        try:
            return [str(row["gateway_id"]) for row in store.list_gateways(conn)]
        finally:
            conn.close()


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[RunningBridge]:
    with RunningBridge(tmp_path / "bridge", with_ca=True) as running:
        yield running


def provision_args(bridge_url: str, gateway_id: str, site_dir: Path, *extra: str) -> list[str]:
    return [
        "provision", gateway_id, "--bridge", bridge_url, "--site", "Lishui village clinic",
        "--data-dir", str(site_dir / "data"), "--config", str(site_dir / "etc" / "gateway.toml"),
        "--profiles-dir", str(PROFILES), *extra,
    ]  # fmt: skip


def provision(bridge_url: str, token: str, gateway_id: str, site_dir: Path, *extra: str):
    return CliRunner().invoke(
        gateway_cli,
        provision_args(bridge_url, gateway_id, site_dir, *extra),
        env={"KIOSK_BRIDGE_TOKEN": token, "COLUMNS": "200"},
    )


def test_a_technician_provisions_a_gateway_in_one_command(bridge: RunningBridge, tmp_path: Path) -> None:
    token = bridge.token("li.tech", "technician")
    site = tmp_path / "gw"
    done = subprocess.run(  # the installed command's own process
        [sys.executable, "-m", "gateway.cli",
         *provision_args(bridge.url, "gw-lishui-01", site, "--serial", "/dev/ttyUSB0",
                         "--serial", "/dev/ttyUSB1@921600", "--mqtt-host", "broker.county.example")],
        env={**os.environ, "KIOSK_BRIDGE_TOKEN": token, "COLUMNS": "200"},
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "provisioned gw-lishui-01" in done.stdout
    assert token not in done.stdout + done.stderr

    # The configuration loads as the gateway loads it, with every path in place.
    config = load_config(site / "etc" / "gateway.toml")
    data = site / "data"
    assert (config.gateway_id, config.data_dir, config.profiles_dir) == ("gw-lishui-01", data, PROFILES)
    assert [(p.path, p.baudrate) for p in config.serial] == [
        ("/dev/ttyUSB0", 115200),
        ("/dev/ttyUSB1", 921600),
    ]
    assert (config.mqtt.host, config.mqtt.port) == ("broker.county.example", 8883)
    assert config.mqtt.tls is not None
    assert (config.mqtt.tls.ca_file, config.mqtt.tls.cert_file, config.mqtt.tls.key_file) == (
        data / TLS_CA_FILE,
        data / TLS_CERT_FILE,
        data / TLS_KEY_FILE,
    )
    assert sorted(p.name for p in data.iterdir()) == sorted(
        [
            SIGNING_KEY_FILE,
            STORAGE_KEY_FILE,
            PUBLIC_KEY_FILE,
            TLS_KEY_FILE,
            TLS_REQUEST_FILE,
            TLS_CERT_FILE,
            TLS_CA_FILE,
            BRIDGE_ACK_KEY_FILE,
        ]
    )  # fmt: skip  (and no staging folder left)
    # It believes only acks signed with the bridge's key.
    assert config.sync.bridge_ack_key_file == data / BRIDGE_ACK_KEY_FILE
    assert bridge.ack_key is not None
    assert (data / BRIDGE_ACK_KEY_FILE).read_text() == ack_key.public_pem(bridge.ack_key)
    for secret in (SIGNING_KEY_FILE, STORAGE_KEY_FILE, TLS_KEY_FILE):
        assert stat.S_IMODE((data / secret).stat().st_mode) == 0o600, secret

    # The bridge enrolled exactly this gateway's signing key.
    keys = GatewayKeys.load(data)
    conn = store.connect(bridge.db)
    try:
        record = store.get_gateway(conn, "gw-lishui-01")
    finally:
        conn.close()
    assert record is not None and (record.site, record.kind, record.status) == (
        "Lishui village clinic",
        "kiosk",
        "active",
    )
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert record.public_key.public_bytes(*raw) == keys.signing.public_key().public_bytes(*raw)

    # Its certificate is the community CA's, for this gateway, on the key that stayed on it.
    assert bridge.ca_dir is not None
    ca = x509.load_pem_x509_certificate((bridge.ca_dir / pki.CA_CERT).read_bytes())
    assert (data / TLS_CA_FILE).read_bytes() == (bridge.ca_dir / pki.CA_CERT).read_bytes()
    cert = x509.load_pem_x509_certificate((data / TLS_CERT_FILE).read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.rfc4514_string() == "CN=gw-lishui-01"
    tls_key = serialization.load_pem_private_key((data / TLS_KEY_FILE).read_bytes(), None)
    assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
    assert cert.public_key() == tls_key.public_key()

    # It shows in the fleet API and in the broker's access rules.
    fleet = httpx.get(f"{bridge.url}/fleet/gateways", headers={"Authorization": f"Bearer {token}"}).json()
    assert [(g["gateway_id"], g["site"], g["status"]) for g in fleet] == [
        ("gw-lishui-01", "Lishui village clinic", "active")
    ]
    acl = tmp_path / "acl"
    written = CliRunner().invoke(bridge_cli, ["acl", "--db", str(bridge.db), "--out", str(acl)])
    assert written.exit_code == 0, written.output
    assert "user gw-lishui-01\ntopic write kiosk/gw-lishui-01/up\ntopic read kiosk/gw-lishui-01/ack\n" in (
        acl.read_text()
    )


def test_without_a_ca_at_the_bridge_the_gateway_is_enrolled_for_plain_mqtt(tmp_path: Path) -> None:
    with RunningBridge(tmp_path / "bridge", with_ca=False, with_ack_key=False) as bridge:
        result = provision(bridge.url, bridge.token("li.tech", "technician"), "gw-plain-01", tmp_path / "gw")
        assert result.exit_code == 0, result.output
        assert "plain: the bridge has no CA" in result.output
        assert bridge.enrolled() == ["gw-plain-01"]
    config = load_config(tmp_path / "gw" / "etc" / "gateway.toml")
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.tls) == ("127.0.0.1", 1883, None)
    assert config.sync.bridge_ack_key_file is None  # that bridge signs no acks
    text = (tmp_path / "gw" / "etc" / "gateway.toml").read_text()
    assert "# The bridge gave no ack key" in text
    assert "(kiosk-bridge ca sign gw-plain-01 --request mqtt-tls.csr" in text
    assert "\n# [mqtt.tls]\n" in text  # ready to uncomment once the CA has signed
    assert not (tmp_path / "gw" / "data" / TLS_CERT_FILE).exists()
    assert (tmp_path / "gw" / "data" / TLS_REQUEST_FILE).exists()  # for the CA operator


def _nothing_written(site: Path) -> None:
    data = site / "data"
    assert not (site / "etc" / "gateway.toml").exists()
    assert not data.exists() or list(data.iterdir()) == [], list(data.iterdir())


def test_refusals_say_why_and_leave_nothing_behind(bridge: RunningBridge, tmp_path: Path) -> None:
    technician = bridge.token("li.tech", "technician")

    nobody_port = free_port()
    away = provision(f"http://127.0.0.1:{nobody_port}", technician, "gw-a-01", tmp_path / "away")
    assert away.exit_code == 2
    assert f"error: the bridge at http://127.0.0.1:{nobody_port} does not answer (ConnectError" in away.output
    assert "nothing was written" in away.output
    _nothing_written(tmp_path / "away")

    unknown = provision(bridge.url, "kb_not-a-token", "gw-a-01", tmp_path / "unknown")
    assert unknown.exit_code == 1
    assert "error: the bridge refused the token: unknown token" in unknown.output
    _nothing_written(tmp_path / "unknown")

    doctor = provision(bridge.url, bridge.token("dr.chen", "doctor"), "gw-a-01", tmp_path / "doctor")
    assert doctor.exit_code == 1
    assert (
        "error: the bridge refused: dr.chen has role doctor; enrolling gateways needs role technician "
        "or admin" in doctor.output
    )
    _nothing_written(tmp_path / "doctor")

    revoked_token = bridge.token("old.tech", "technician")
    CliRunner().invoke(bridge_cli, ["token", "revoke", "old.tech", "--db", str(bridge.db)])
    revoked = provision(bridge.url, revoked_token, "gw-a-01", tmp_path / "revoked")
    assert (revoked.exit_code, "the bridge refused the token: this token was revoked" in revoked.output) == (
        1,
        True,
    )
    _nothing_written(tmp_path / "revoked")

    assert provision(bridge.url, technician, "gw-a-01", tmp_path / "first").exit_code == 0
    twice = provision(bridge.url, technician, "gw-a-01", tmp_path / "second")
    assert twice.exit_code == 1
    assert "error: gateway gw-a-01 is already enrolled at the bridge" in twice.output
    _nothing_written(tmp_path / "second")

    again_here = provision(bridge.url, technician, "gw-a-02", tmp_path / "first")
    assert again_here.exit_code == 1
    assert "error: already provisioned: " in again_here.output and "--force" in again_here.output
    assert bridge.enrolled() == ["gw-a-01"]  # refused before asking the bridge

    bad_id = provision(bridge.url, technician, "gw a/01", tmp_path / "bad")
    assert (bad_id.exit_code, "gateway id 'gw a/01'" in bad_id.output) == (1, True)

    for result in (away, unknown, doctor, revoked, twice, again_here, bad_id):
        assert "Traceback" not in result.output


def test_force_provisions_again_and_keeps_the_old_files(bridge: RunningBridge, tmp_path: Path) -> None:
    technician = bridge.token("li.tech", "technician")
    site = tmp_path / "gw"
    assert provision(bridge.url, technician, "gw-b-01", site).exit_code == 0
    old_key = (site / "data" / SIGNING_KEY_FILE).read_bytes()
    (site / "data" / "gateway.db").write_bytes(b"the old gateway's outbox")
    (site / "data" / "gateway.db-wal").write_bytes(b"its WAL")

    again = provision(bridge.url, technician, "gw-b-02", site, "--force")
    assert again.exit_code == 0, again.output
    assert load_config(site / "etc" / "gateway.toml").gateway_id == "gw-b-02"
    assert (site / "data" / SIGNING_KEY_FILE).read_bytes() != old_key
    kept = {p.name: p for p in (site / "data").iterdir() if ".replaced-" in p.name}
    stamp = next(iter(kept)).split(".replaced-")[1][:15]
    assert kept[f"{SIGNING_KEY_FILE}.replaced-{stamp}"].read_bytes() == old_key
    assert kept[f"gateway.db.replaced-{stamp}"].read_bytes() == b"the old gateway's outbox"
    assert kept[f"gateway.db.replaced-{stamp}-wal"].read_bytes() == b"its WAL"  # still paired
    assert (site / "etc" / f"gateway.toml.replaced-{stamp}").exists()
    assert not (site / "data" / "gateway.db").exists()
    assert bridge.enrolled() == ["gw-b-01", "gw-b-02"]


def test_the_enrolment_api_refuses_what_it_cannot_use(bridge: RunningBridge, tmp_path: Path) -> None:
    from gateway.keys import create_keys, create_tls_request

    headers = {"Authorization": f"Bearer {bridge.token('li.tech', 'technician')}"}
    public = create_keys(tmp_path / "keys").decode()
    other = create_tls_request(tmp_path / "keys", "gw-someone-else").read_text()

    def enrol(**body: object) -> httpx.Response:
        return httpx.post(
            f"{bridge.url}/fleet/gateways", json={"gateway_id": "gw-c-01", **body}, headers=headers
        )

    wrong = enrol(public_key_pem=public, tls_request_pem=other)
    assert (wrong.status_code, wrong.json()["detail"]) == (
        400,
        "tls_request_pem: the request is for 'gw-someone-else', not 'gw-c-01'",
    )
    garbage = enrol(public_key_pem=public, tls_request_pem="-----BEGIN CERTIFICATE REQUEST-----\nx\n")
    assert garbage.status_code == 400 and garbage.json()["detail"].startswith("tls_request_pem: not a PEM")
    not_ed25519 = enrol(public_key_pem=(bridge.ca_dir / pki.CA_CERT).read_text())  # type: ignore[operator]
    assert not_ed25519.status_code == 400 and not_ed25519.json()["detail"].startswith("public_key_pem: ")
    assert bridge.enrolled() == []  # nothing enrolled by a refused request
    plain = enrol(public_key_pem=public)  # no request: enrolled, no certificate
    assert plain.status_code == 201
    assert (plain.json()["enrolled_by"], plain.json()["tls_certificate_pem"]) == ("li.tech", None)
    again = enrol(public_key_pem=public)
    assert (again.status_code, again.json()) == (
        409,
        {"error": "conflict", "detail": "gateway gw-c-01 is already enrolled"},
    )


def test_the_bridge_will_not_start_with_a_ca_directory_that_holds_no_ca(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        bridge_cli, ["run", "--db", str(tmp_path / "bridge.db"), "--ca-dir", str(tmp_path / "no-ca")]
    )
    assert result.exit_code == 2
    assert "error: --ca-dir: no usable CA in" in result.output
