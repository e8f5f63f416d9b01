"""The CA's register of issued certificates, revocation and the revocation list (`cloud_bridge.pki`),
and the operator's commands for them (`kiosk-bridge revoke --ca-dir`, `ca revoke`, `ca crl`,
`ca certificates`). The broker's side is tests/component/test_broker_crl.py."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from cloud_bridge import pki, store
from cloud_bridge.cli import app as bridge_cli
from cloud_bridge.pki import (
    PkiError,
    create_ca,
    issue,
    issued_certificates,
    revoke_identity,
    revoke_serial,
    sign_request,
    sign_request_pem,
    write_crl,
)

# What a CA directory holds once it keeps a register: nothing half-written is left beside it.
CA_FILES = [".issued.lock", "ca.crl", "ca.crt", "ca.key", "issued.json"]


def csr(identity: str) -> bytes:
    """A gateway's certificate request, as `gateway.keys.create_tls_request` makes it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)])
    request = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM)


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def client(ca_dir: Path, identity: str, out: Path) -> x509.Certificate:
    """A client certificate issued here (each in its own directory: a key is never overwritten)."""
    return certificate(issue(ca_dir, identity, out).cert)


def crl_of(ca_dir: Path) -> x509.CertificateRevocationList:
    crl = x509.load_pem_x509_crl((ca_dir / pki.CA_CRL).read_bytes())
    ca_key = certificate(ca_dir / pki.CA_CERT).public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(ca_key)
    return crl


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def listed(crl: x509.CertificateRevocationList) -> dict[int, x509.ReasonFlags | None]:
    """Serial -> the reason the entry gives (None: no reason extension)."""
    reasons: dict[int, x509.ReasonFlags | None] = {}
    for entry in crl:
        try:
            reasons[entry.serial_number] = entry.extensions.get_extension_for_class(
                x509.CRLReason
            ).value.reason
        except x509.ExtensionNotFound:
            reasons[entry.serial_number] = None
    return reasons


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    create_ca(tmp_path / "ca")
    return tmp_path / "ca"


def test_a_new_ca_has_an_empty_register_and_a_signed_empty_list(ca_dir: Path) -> None:
    assert issued_certificates(ca_dir) == []
    assert pki.register_is_complete(ca_dir)
    crl = crl_of(ca_dir)
    assert len(crl) == 0 and crl_number(crl) == 1
    assert crl.issuer == certificate(ca_dir / pki.CA_CERT).subject
    now = dt.datetime.now(dt.UTC)
    assert crl.next_update_utc is not None
    assert crl.last_update_utc < now < crl.next_update_utc
    assert crl.next_update_utc - now > dt.timedelta(days=pki.CRL_DAYS - 1)
    assert (ca_dir / pki.CA_CRL).stat().st_mode & 0o777 == 0o644  # the broker's user reads it


def test_every_issue_and_sign_path_records_the_certificate(ca_dir: Path, tmp_path: Path) -> None:
    broker = certificate(issue(ca_dir, "broker", tmp_path / "b", server_names=("127.0.0.1",)).cert)
    bridge = client(ca_dir, "kiosk-bridge", tmp_path / "k")
    signed = certificate(
        sign_request(ca_dir, csr("gw-01"), tmp_path / "gw-01.crt", expected_identity="gw-01").cert
    )
    api = x509.load_pem_x509_certificate(sign_request_pem(ca_dir, csr("gw-02"), expected_identity="gw-02"))
    with pytest.raises(PkiError, match="not 'gw-03'"):
        sign_request_pem(ca_dir, csr("gw-other"), expected_identity="gw-03")  # refused: nothing issued
    recorded = issued_certificates(ca_dir)
    assert [(c.serial, c.identity, c.not_after, c.revoked_at, c.reason) for c in recorded] == [
        (cert.serial_number, name, cert.not_valid_after_utc, None, None)
        for cert, name in ((broker, "broker"), (bridge, "kiosk-bridge"), (signed, "gw-01"), (api, "gw-02"))
    ]
    assert {c.state(dt.datetime.now(dt.UTC)) for c in recorded} == {"valid"}
    assert (
        json.loads((ca_dir / pki.REGISTER).read_text())["certificates"][2]["serial"]
        == f"{signed.serial_number:X}"
    )
    assert sorted(p.name for p in ca_dir.iterdir()) == CA_FILES


def test_revoking_a_name_revokes_each_unexpired_certificate_of_it(ca_dir: Path, tmp_path: Path) -> None:
    first = client(ca_dir, "gw-a", tmp_path / "a1")
    second = x509.load_pem_x509_certificate(sign_request_pem(ca_dir, csr("gw-a"), expected_identity="gw-a"))
    other = client(ca_dir, "gw-b", tmp_path / "b")
    assert revoke_identity(ca_dir, "gw-a") == 2
    assert revoke_identity(ca_dir, "gw-a") == 0  # again: nothing left to revoke, not an error
    states = {c.serial: c.state(dt.datetime.now(dt.UTC)) for c in issued_certificates(ca_dir)}
    assert states == {
        first.serial_number: "revoked",
        second.serial_number: "revoked",
        other.serial_number: "valid",
    }
    write_crl(ca_dir)
    crl = crl_of(ca_dir)
    assert listed(crl) == {
        first.serial_number: x509.ReasonFlags.key_compromise,
        second.serial_number: x509.ReasonFlags.key_compromise,
    }
    assert crl.get_revoked_certificate_by_serial_number(other.serial_number) is None
    assert crl_number(crl) == 2


def test_revoking_by_serial_with_each_reason(ca_dir: Path, tmp_path: Path) -> None:
    replaced = client(ca_dir, "gw-a", tmp_path / "a")
    retired = client(ca_dir, "gw-b", tmp_path / "b")
    plain = client(ca_dir, "gw-c", tmp_path / "c")
    assert revoke_serial(ca_dir, replaced.serial_number, reason=x509.ReasonFlags.superseded)
    assert revoke_serial(ca_dir, retired.serial_number, reason=x509.ReasonFlags.cessation_of_operation)
    assert revoke_serial(ca_dir, plain.serial_number, reason=x509.ReasonFlags.unspecified)
    assert not revoke_serial(ca_dir, replaced.serial_number)  # already: the first reason stays
    write_crl(ca_dir)
    assert listed(crl_of(ca_dir)) == {
        replaced.serial_number: x509.ReasonFlags.superseded,
        retired.serial_number: x509.ReasonFlags.cessation_of_operation,
        plain.serial_number: None,  # RFC 5280: leave the reason out rather than say "unspecified"
    }
    revoked_at = {c.serial: c.revoked_at for c in issued_certificates(ca_dir)}[retired.serial_number]
    entry = crl_of(ca_dir).get_revoked_certificate_by_serial_number(retired.serial_number)
    assert entry is not None and revoked_at is not None
    assert entry.revocation_date_utc == revoked_at.replace(microsecond=0)


def test_the_crl_number_increases_with_each_list(ca_dir: Path) -> None:
    numbers = []
    for _ in range(3):
        write_crl(ca_dir)
        numbers.append(crl_number(crl_of(ca_dir)))
    assert numbers == [2, 3, 4]


def test_an_expired_certificate_is_not_revoked_and_leaves_the_list(ca_dir: Path, tmp_path: Path) -> None:
    old = certificate(issue(ca_dir, "gw-old", tmp_path / "old", days=0).cert)  # expires as it is made
    assert revoke_identity(ca_dir, "gw-old") == 0
    assert revoke_serial(ca_dir, old.serial_number)
    write_crl(ca_dir)
    assert listed(crl_of(ca_dir)) == {}  # TLS refuses it anyway: the list stays short


def test_refusals_say_why(ca_dir: Path, tmp_path: Path) -> None:
    client(ca_dir, "gw-a", tmp_path / "a")
    with pytest.raises(PkiError, match=r"has no certificate issued to 'gw-nobody'$"):
        revoke_identity(ca_dir, "gw-nobody")
    with pytest.raises(PkiError, match="this CA never issued a certificate with serial 1234ABCD"):
        revoke_serial(ca_dir, 0x1234ABCD)
    with pytest.raises(PkiError, match="'certificateHold' does not fit a client certificate: key-compromise"):
        revoke_identity(ca_dir, "gw-a", reason=x509.ReasonFlags.certificate_hold)
    with pytest.raises(PkiError, match="at least a day"):
        write_crl(ca_dir, days=0)
    with pytest.raises(PkiError, match="no usable CA in"):
        revoke_identity(tmp_path / "no-ca", "gw-a")
    with pytest.raises(PkiError, match="no usable CA in"):
        write_crl(tmp_path / "no-ca")
    with pytest.raises(PkiError, match="not a hexadecimal number"):
        pki.parse_serial("12:zz")
    assert pki.parse_serial("serial=0A:1b") == pki.parse_serial("0xa1B") == 0xA1B
    assert [c.state(dt.datetime.now(dt.UTC)) for c in issued_certificates(ca_dir)] == ["valid"]  # untouched


def test_a_ca_from_before_the_register_revokes_its_old_certificates_by_serial(
    ca_dir: Path, tmp_path: Path
) -> None:
    old = client(ca_dir, "gw-old", tmp_path / "old")
    (ca_dir / pki.REGISTER).unlink()  # as a CA directory made before the register existed
    (ca_dir / pki.CA_CRL).unlink()
    assert issued_certificates(ca_dir) == []
    with pytest.raises(
        PkiError, match=r"register, which began .*: a certificate issued before then is revoked by"
    ):
        revoke_identity(ca_dir, "gw-old")
    new = client(ca_dir, "gw-new", tmp_path / "new")
    assert not pki.register_is_complete(ca_dir)
    assert revoke_serial(ca_dir, old.serial_number)  # unknown to the register, and that may be so
    assert revoke_serial(ca_dir, 0xDEAD)  # a typing error cannot be told apart: documented
    assert revoke_identity(ca_dir, "gw-new") == 1
    write_crl(ca_dir)
    crl = crl_of(ca_dir)
    assert set(listed(crl)) == {old.serial_number, 0xDEAD, new.serial_number}
    assert crl_number(crl) == 1  # the old directory's first list
    by_serial = {c.serial: c for c in issued_certificates(ca_dir)}
    assert (by_serial[old.serial_number].identity, by_serial[old.serial_number].not_after) == (None, None)


def test_concurrent_signing_loses_no_record(ca_dir: Path) -> None:
    """The bridge's API signs enrolments on several threads while an operator may revoke."""
    requests = {f"gw-{n:02}": csr(f"gw-{n:02}") for n in range(8)}
    start = threading.Barrier(len(requests))

    def sign(identity: str) -> None:
        start.wait()
        sign_request_pem(ca_dir, requests[identity], expected_identity=identity)

    threads = [threading.Thread(target=sign, args=(identity,)) for identity in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(c.identity or "" for c in issued_certificates(ca_dir)) == sorted(requests)


def test_a_failed_write_leaves_the_register_as_it_was(
    ca_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename is the commit: fail before it (a crash, a full disk) and the old file stands."""
    client(ca_dir, "gw-a", tmp_path / "a")
    before = (ca_dir / pki.REGISTER).read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pki.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        revoke_identity(ca_dir, "gw-a")
    monkeypatch.undo()
    assert (ca_dir / pki.REGISTER).read_bytes() == before
    assert sorted(p.name for p in ca_dir.iterdir()) == CA_FILES
    assert revoke_identity(ca_dir, "gw-a") == 1


# The operator's commands.


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(bridge_cli, list(args), env={"COLUMNS": "240"})
    return result.exit_code, result.output


def enrol(db: Path, *gateway_ids: str) -> None:
    public_pem = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    conn = store.connect(db)
    for gateway_id in gateway_ids:
        store.enrol_gateway(conn, gateway_id, public_pem, site="s", kind="kiosk", now_ms=0)
    conn.close()


def statuses(db: Path) -> dict[object, object]:
    conn = store.connect(db)
    try:
        return {row["gateway_id"]: row["status"] for row in store.list_gateways(conn)}
    finally:
        conn.close()


def test_revoke_with_ca_dir_refuses_the_gateway_and_its_certificate(ca_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "bridge.db"
    enrol(db, "gw-a", "gw-b", "gw-c")
    gw_a = client(ca_dir, "gw-a", tmp_path / "a")
    gw_b = client(ca_dir, "gw-b", tmp_path / "b")

    code, output = run("revoke", "gw-a", "--db", str(db), "--ca-dir", str(ca_dir))
    assert code == 0, output
    assert "revoked gw-a\nrevoked 1 certificate(s) of gw-a\n" in output
    assert f"{ca_dir / pki.CA_CRL}: revocation list 2, 1 revoked, valid until" in output
    assert "send the broker SIGHUP" in output
    assert listed(crl_of(ca_dir)) == {gw_a.serial_number: x509.ReasonFlags.key_compromise}
    assert statuses(db) == {"gw-a": "revoked", "gw-b": "active", "gw-c": "active"}

    code, output = run(
        "revoke", "gw-b", "--db", str(db), "--ca-dir", str(ca_dir), "--reason", "cessation-of-operation"
    )
    assert code == 0, output
    assert listed(crl_of(ca_dir))[gw_b.serial_number] == x509.ReasonFlags.cessation_of_operation

    code, output = run("ca", "certificates", "--ca-dir", str(ca_dir))
    assert code == 0, output
    lines = output.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(
        f"{gw_a.serial_number:X}  gw-a  until {gw_a.not_valid_after_utc:%Y-%m-%d}  revoked "
    )
    assert lines[0].endswith(" UTC (key-compromise)")
    assert lines[1].endswith("(cessation-of-operation)")


def test_revoke_without_ca_dir_leaves_the_certificates_alone(ca_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "bridge.db"
    enrol(db, "gw-c")
    client(ca_dir, "gw-c", tmp_path / "c")
    crl_before = (ca_dir / pki.CA_CRL).read_bytes()
    code, output = run("revoke", "gw-c", "--db", str(db))
    assert (code, output) == (0, "revoked gw-c\n")
    assert (ca_dir / pki.CA_CRL).read_bytes() == crl_before
    assert [c.state(dt.datetime.now(dt.UTC)) for c in issued_certificates(ca_dir)] == ["valid"]


def test_revoke_refusals(ca_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "bridge.db"
    enrol(db, "gw-a")
    client(ca_dir, "gw-a", tmp_path / "a")
    # a wrong --ca-dir: refused before anything changes
    code, output = run("revoke", "gw-a", "--db", str(db), "--ca-dir", str(tmp_path / "nowhere"))
    assert code == 1 and "error: no usable CA in" in output
    assert statuses(db) == {"gw-a": "active"}
    # a name neither the registry nor the CA knows
    code, output = run("revoke", "gw-x", "--db", str(db), "--ca-dir", str(ca_dir))
    assert code == 1
    assert "no gateway gw-x\n" in output and "has no certificate issued to 'gw-x'" in output
    # a certificate for a gateway the registry never enrolled is still revoked; the exit says so
    client(ca_dir, "gw-unenrolled", tmp_path / "u")
    code, output = run("revoke", "gw-unenrolled", "--db", str(db), "--ca-dir", str(ca_dir))
    assert code == 1 and "no gateway gw-unenrolled\nrevoked 1 certificate(s) of gw-unenrolled\n" in output
    code, output = run(
        "revoke", "gw-a", "--db", str(db), "--ca-dir", str(ca_dir), "--reason", "certificate-hold"
    )
    assert code == 2 and "certificate-hold" in output


def test_the_ca_commands_revoke_by_serial_and_rewrite_the_list(ca_dir: Path, tmp_path: Path) -> None:
    worker = client(ca_dir, "bridge-w1", tmp_path / "w")
    code, output = run("ca", "revoke", "--serial", f"{worker.serial_number:x}", "--ca-dir", str(ca_dir))
    assert code == 0, output
    assert (
        f"revoked certificate {worker.serial_number:x}\n" in output
        and "revocation list 2, 1 revoked" in output
    )
    code, output = run("ca", "revoke", "--serial", f"{worker.serial_number:X}", "--ca-dir", str(ca_dir))
    assert code == 0 and "was revoked already" in output and "revocation list 3, 1 revoked" in output
    code, output = run("ca", "revoke", "--serial", "0BAD", "--ca-dir", str(ca_dir))
    assert code == 1 and "error: this CA never issued a certificate with serial BAD" in output
    assert run("ca", "revoke", "bridge-w1", "--serial", "1", "--ca-dir", str(ca_dir))[0] == 2
    assert run("ca", "revoke", "--ca-dir", str(ca_dir))[0] == 2
    code, output = run("ca", "crl", "--days", "30", "--ca-dir", str(ca_dir))
    assert code == 0 and "revocation list 4, 1 revoked" in output  # the refusals wrote none
    next_update = crl_of(ca_dir).next_update_utc
    assert next_update is not None
    assert dt.timedelta(days=29) < next_update - dt.datetime.now(dt.UTC) <= dt.timedelta(days=30)
    code, output = run("ca", "crl", "--ca-dir", str(tmp_path / "nowhere"))
    assert code == 1 and "error: no usable CA in" in output


def test_ca_certificates_of_an_old_ca_directory_says_what_it_cannot_list(
    ca_dir: Path, tmp_path: Path
) -> None:
    (ca_dir / pki.REGISTER).unlink()
    client(ca_dir, "gw-new", tmp_path / "n")
    code, output = run("ca", "certificates", "--ca-dir", str(ca_dir))
    assert code == 0
    assert (
        "are not listed (the register began then): revoke one of those with `kiosk-bridge ca revoke --serial"
        in output
    )
    assert "  gw-new  until " in output and output.rstrip().endswith("  valid")
