"""The health community's small certificate authority for MQTT over TLS.

The broker only lets in a client that shows a certificate this CA issued; its common name is the
client's identity (Mosquitto `use_identity_as_username`): a gateway's id, or the bridge's name.
A gateway makes its own key and a certificate request (`gateway.keys.create_tls_request`); the
key never leaves the gateway, the CA signs the request (`sign_request`). Keys are EC P-256 and
written with 0600 permissions.

Revocation. The CA keeps a register of every certificate it issues (`issued.json` beside ca.crt:
serial, identity, not-after, and when and why it was revoked), so a lost or stolen gateway's
certificates can be found by its name (`revoke_identity`) and listed in a certificate revocation
list, `ca.crl` (`write_crl`), which the broker checks at each TLS handshake (listener options
`crlfile`, with `cafile` and `require_certificate true`). A CA directory made before the register
existed does not know the certificates it issued then: revoke those by serial (`revoke_serial`;
`openssl x509 -noout -serial -in mqtt-tls.crt` shows it). The register and the CRL are replaced
atomically (temporary file, fsync, rename) under a lock, so a crash or a second writer (the
bridge's enrolment API signs requests while an operator revokes) never leaves either half-written.

What Mosquitto 2.0.11 does with the CRL (tests/component/test_broker_crl.py checks each point):
- It reads `crlfile` when it starts and again on SIGHUP; a rewritten file is ignored until then.
  On SIGHUP the new list replaces the old one (a serial taken out of it is let in again).
- The check is made at the TLS handshake only: a revoked gateway's connection that is open at
  the SIGHUP stays open until it drops; restart the broker to cut it at once. (The bridge
  already refuses its batches: `kiosk-bridge revoke`.) A refused client gets the TLS alert
  "certificate revoked" (TLS 1.2: in the handshake; TLS 1.3: at its first read).
- A missing or unreadable `crlfile` stops the broker at start ("Unable to load certificate
  revocation file"). On SIGHUP the same error is only logged and the broker carries on without
  checking revocation at all: every certificate of the CA gets in again. Hence the atomic write;
  look for that line in the broker's log after a SIGHUP.
- A CRL past its next update refuses every client (alert "certificate expired"). `write_crl`
  gives a year by default (`CRL_DAYS`); rewrite it well before then (`kiosk-bridge ca crl`, then
  SIGHUP), e.g. monthly from cron.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_CRL = "ca.crl"
REGISTER = "issued.json"
_REGISTER_LOCK = ".issued.lock"
_REGISTER_FORMAT = 1
CRL_DAYS = 365
_CLOCK_SKEW = dt.timedelta(minutes=5)  # a broker whose clock is a little behind still accepts it

# The reasons that make sense for a client certificate (RFC 5280 5.3.1), by the CLI's names.
# "unspecified" leaves the reason out of the CRL entry, as RFC 5280 asks.
REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    "key-compromise": x509.ReasonFlags.key_compromise,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "superseded": x509.ReasonFlags.superseded,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "privilege-withdrawn": x509.ReasonFlags.privilege_withdrawn,
    "unspecified": x509.ReasonFlags.unspecified,
}
_IDENTITY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class PkiError(ValueError):
    """A request or file the CA will not use; the message says why."""


@dataclass(frozen=True, slots=True)
class Issued:
    cert: Path
    key: Path | None  # None when the key stayed with the requester (a signed CSR)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


def create_ca(directory: Path, name: str = "Kiosk health community CA", days: int = 3650) -> Path:
    """A new CA in `directory` (ca.crt, ca.key); refuses to overwrite one. Returns ca.crt."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / CA_KEY).exists():
        raise PkiError(f"{directory / CA_KEY} exists: a CA is made once")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(directory / CA_KEY, _key_pem(key))
    (directory / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    with _register_locked(directory):
        _save_register(directory, _new_register(complete=True))
    write_crl(directory)  # the broker will not start on a `crlfile` that does not exist
    return directory / CA_CERT


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise PkiError(f"no usable CA in {ca_dir}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{ca_dir / CA_KEY} is not an EC key")
    return cert, key


def _build(
    ca_dir: Path,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    *,
    server_names: tuple[str, ...],
    days: int,
) -> x509.Certificate:
    ca_cert, ca_key = _load_ca(ca_dir)
    now = dt.datetime.now(dt.UTC)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server_names else [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server_names:
        names: list[x509.GeneralName] = []
        for name in server_names:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                names.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _record(ca_dir, cert)  # before anyone gets it: no certificate the register cannot revoke
    return cert


def _identity(name: str) -> x509.Name:
    if not _IDENTITY.match(name):
        raise PkiError(f"identity {name!r}: 1-64 letters, digits, '_', '.' or '-'")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def issue(
    ca_dir: Path, identity: str, out_dir: Path, *, server_names: tuple[str, ...] = (), days: int = 825
) -> Issued:
    """A key and certificate made here: for the broker (`server_names`: its DNS names or IPs)
    or for a client that has no key of its own yet (the bridge). Files: <identity>.crt/.key."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _build(ca_dir, _identity(identity), key.public_key(), server_names=server_names, days=days)
    out_dir.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = out_dir / f"{identity}.key", out_dir / f"{identity}.crt"
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert_path, key_path)


def sign_request(
    ca_dir: Path, csr_pem: bytes, out: Path, *, expected_identity: str, days: int = 825
) -> Issued:
    """Sign a gateway's certificate request, if it is well formed and names `expected_identity`
    (the gateway being enrolled): a request for another identity is refused."""
    cert_pem = sign_request_pem(ca_dir, csr_pem, expected_identity=expected_identity, days=days)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(cert_pem)
    return Issued(out, None)


def ca_certificate_pem(ca_dir: Path) -> bytes:
    """The CA's certificate (PEM), once the CA is known to be usable (its key loads)."""
    cert, _ = _load_ca(ca_dir)
    return cert.public_bytes(serialization.Encoding.PEM)


def sign_request_pem(ca_dir: Path, csr_pem: bytes, *, expected_identity: str, days: int = 825) -> bytes:
    """`sign_request` without the file: the certificate's PEM (the bridge's enrolment API)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate request: {exc}") from exc
    if not csr.is_signature_valid:
        raise PkiError("the request's signature does not verify")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    identity = str(names[0].value) if names else ""
    if identity != expected_identity:
        raise PkiError(f"the request is for {identity!r}, not {expected_identity!r}")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise PkiError("the request's key is not an EC key")
    cert = _build(ca_dir, _identity(identity), public_key, server_names=(), days=days)
    return cert.public_bytes(serialization.Encoding.PEM)


# The register of issued certificates and the revocation list.


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """One entry of the register. `identity` and `not_after` are None for a certificate issued
    before the register existed and revoked by its serial."""

    serial: int
    identity: str | None
    not_after: dt.datetime | None
    revoked_at: dt.datetime | None = None
    reason: x509.ReasonFlags | None = None

    @property
    def serial_hex(self) -> str:
        """As `openssl x509 -serial` prints it."""
        return format_serial(self.serial)

    def state(self, now: dt.datetime) -> str:
        """revoked, expired or valid."""
        if self.revoked_at is not None:
            return "revoked"
        if self.not_after is not None and self.not_after <= now:
            return "expired"
        return "valid"


def format_serial(serial: int) -> str:
    return f"{serial:X}"


def parse_serial(text: str) -> int:
    """A serial in hexadecimal, as `openssl x509 -serial` or `kiosk-bridge ca certificates` show it
    (upper or lower case, with or without `serial=`, `0x` or colons)."""
    digits = text.strip().removeprefix("serial=").removeprefix("0x").removeprefix("0X").replace(":", "")
    try:
        serial = int(digits, 16)
    except ValueError:
        raise PkiError(f"serial {text!r}: not a hexadecimal number") from None
    if serial <= 0:
        raise PkiError(f"serial {text!r}: a certificate's serial is positive")
    return serial


def issued_certificates(ca_dir: Path) -> list[IssuedCertificate]:
    """Every certificate in the register, oldest first (empty for a CA without a register)."""
    return [_entry(raw) for raw in _load_register(ca_dir)["certificates"]]


def register_is_complete(ca_dir: Path) -> bool:
    """False when the CA issued certificates before its register existed (they are not in it)."""
    return bool(_load_register(ca_dir)["complete"])


def register_started(ca_dir: Path) -> dt.datetime:
    return dt.datetime.fromisoformat(_load_register(ca_dir)["started_at"])


def revoke_identity(
    ca_dir: Path,
    identity: str,
    *,
    reason: x509.ReasonFlags = x509.ReasonFlags.key_compromise,
    now: dt.datetime | None = None,
) -> int:
    """Revoke every unexpired certificate issued to `identity` (the usual reason: a lost or
    stolen gateway). Returns how many were revoked now (0: all were revoked or expired already).
    Takes effect at the broker once the CRL is rewritten (`write_crl`) and the broker reloads it."""
    _check_reason(reason)
    _load_ca(ca_dir)
    now = now or dt.datetime.now(dt.UTC)
    with _register_locked(ca_dir):
        register = _load_register(ca_dir)
        entries = [raw for raw in register["certificates"] if raw["identity"] == identity]
        if not entries:
            raise PkiError(_unknown_identity(ca_dir, identity, register))
        revoking = [raw for raw in entries if _entry(raw).state(now) == "valid"]
        for raw in revoking:
            _mark_revoked(raw, reason, now)
        if revoking:
            _save_register(ca_dir, register)
    return len(revoking)


def revoke_serial(
    ca_dir: Path,
    serial: int,
    *,
    reason: x509.ReasonFlags = x509.ReasonFlags.key_compromise,
    now: dt.datetime | None = None,
) -> bool:
    """Revoke one certificate by its serial: the way for one issued before the register existed,
    which is then added to the register by serial alone. A serial the register should know but
    does not is refused (a typing error). Returns False when it was revoked already."""
    _check_reason(reason)
    _load_ca(ca_dir)
    now = now or dt.datetime.now(dt.UTC)
    with _register_locked(ca_dir):
        register = _load_register(ca_dir)
        found = [raw for raw in register["certificates"] if raw["serial"] == format_serial(serial)]
        if found and found[0]["revoked_at"] is not None:
            return False
        if found:
            raw = found[0]
        elif register["complete"]:
            raise PkiError(f"this CA never issued a certificate with serial {format_serial(serial)}")
        else:
            raw = {"serial": format_serial(serial), "identity": None, "not_after": None}
            register["certificates"].append(raw)
        _mark_revoked(raw, reason, now)
        _save_register(ca_dir, register)
    return True


def write_crl(ca_dir: Path, *, days: int = CRL_DAYS, now: dt.datetime | None = None) -> Path:
    """Write `ca.crl`: every revoked certificate that has not expired yet (an expired one is
    refused anyway), signed by the CA, valid for `days`, with the next CRL number. Returns it."""
    if days < 1:
        raise PkiError("a revocation list must be valid for at least a day")
    ca_cert, ca_key = _load_ca(ca_dir)
    now = now or dt.datetime.now(dt.UTC)
    with _register_locked(ca_dir):
        register = _load_register(ca_dir)
        register["crl_number"] += 1
        # The number is saved before the list is written: a crash in between skips a number,
        # never gives two lists the same one.
        _save_register(ca_dir, register)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - _CLOCK_SKEW)
            .next_update(now + dt.timedelta(days=days))
            .add_extension(x509.CRLNumber(register["crl_number"]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        for entry in map(_entry, register["certificates"]):
            if entry.revoked_at is None or (entry.not_after is not None and entry.not_after <= now):
                continue
            revoked = (
                x509.RevokedCertificateBuilder().serial_number(entry.serial).revocation_date(entry.revoked_at)
            )
            if entry.reason is not None and entry.reason is not x509.ReasonFlags.unspecified:
                revoked = revoked.add_extension(x509.CRLReason(entry.reason), critical=False)
            builder = builder.add_revoked_certificate(revoked.build())
        crl = builder.sign(ca_key, hashes.SHA256())
        _write_atomically(ca_dir / CA_CRL, crl.public_bytes(serialization.Encoding.PEM))
    return ca_dir / CA_CRL


def _check_reason(reason: x509.ReasonFlags) -> None:
    if reason not in REVOCATION_REASONS.values():
        names = ", ".join(REVOCATION_REASONS)
        raise PkiError(f"revocation reason {reason.value!r} does not fit a client certificate: {names}")


def _unknown_identity(ca_dir: Path, identity: str, register: dict[str, Any]) -> str:
    message = f"the CA in {ca_dir} has no certificate issued to {identity!r}"
    if register["complete"]:
        return message
    return (
        f"{message} in its register, which began {register['started_at'][:16]}: a certificate "
        "issued before then is revoked by its serial (kiosk-bridge ca revoke --serial SERIAL)"
    )


def _mark_revoked(raw: dict[str, Any], reason: x509.ReasonFlags, now: dt.datetime) -> None:
    raw["revoked_at"] = now.isoformat()
    raw["reason"] = reason.value


def _entry(raw: dict[str, Any]) -> IssuedCertificate:
    def when(text: str | None) -> dt.datetime | None:
        return None if text is None else dt.datetime.fromisoformat(text)

    reason = raw.get("reason")
    return IssuedCertificate(
        serial=int(raw["serial"], 16),
        identity=raw["identity"],
        not_after=when(raw["not_after"]),
        revoked_at=when(raw.get("revoked_at")),
        reason=None if reason is None else x509.ReasonFlags(reason),
    )


def _record(ca_dir: Path, cert: x509.Certificate) -> None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    with _register_locked(ca_dir):
        register = _load_register(ca_dir)
        register["certificates"].append(
            {
                "serial": format_serial(cert.serial_number),
                "identity": str(names[0].value),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "issued_at": dt.datetime.now(dt.UTC).isoformat(),
                "revoked_at": None,
                "reason": None,
            }
        )
        _save_register(ca_dir, register)


def _new_register(*, complete: bool) -> dict[str, Any]:
    """`complete`: made with the CA, so every certificate it issues is in it."""
    return {
        "format": _REGISTER_FORMAT,
        "complete": complete,
        "started_at": dt.datetime.now(dt.UTC).isoformat(),
        "crl_number": 0,
        "certificates": [],
    }


def _load_register(ca_dir: Path) -> dict[str, Any]:
    """The register; a CA directory from before registers gets an empty, incomplete one."""
    try:
        register = json.loads((ca_dir / REGISTER).read_text())
    except FileNotFoundError:
        return _new_register(complete=False)
    except (OSError, ValueError) as exc:
        raise PkiError(f"{ca_dir / REGISTER} is unreadable: {exc}") from exc
    if not isinstance(register, dict) or register.get("format") != _REGISTER_FORMAT:
        raise PkiError(f"{ca_dir / REGISTER}: not a register of format {_REGISTER_FORMAT}")
    return register


def _save_register(ca_dir: Path, register: dict[str, Any]) -> None:
    _write_atomically(ca_dir / REGISTER, (json.dumps(register, indent=1) + "\n").encode())


@contextlib.contextmanager
def _register_locked(ca_dir: Path) -> Iterator[None]:
    """One writer at a time, across processes (the bridge's API and the operator's CLI)."""
    try:
        fd = os.open(ca_dir / _REGISTER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise PkiError(f"cannot lock the register in {ca_dir}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers (the broker, a second CLI) see the old file or the new one, never a part."""
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(partial, 0o644)  # mkstemp makes it 0600; the broker's user reads the CRL
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
