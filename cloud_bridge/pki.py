"""The health community's small certificate authority for MQTT over TLS.

The broker only lets in a client that shows a certificate this CA issued; its common name is the
client's identity (Mosquitto `use_identity_as_username`): a gateway's id, or the bridge's name.
A gateway makes its own key and a certificate request (`gateway.keys.create_tls_request`); the
key never leaves the gateway, the CA signs the request (`sign_request`). Keys are EC P-256 and
written with 0600 permissions.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
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
    return builder.sign(ca_key, hashes.SHA256())


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
