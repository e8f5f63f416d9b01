"""The gateway's secrets: its Ed25519 signing key, the key that encrypts residents at rest, and
its MQTT TLS client key (with the certificate request the health community's CA signs).

Both live in the data directory as separate files with mode 0600, apart from the database, so
a copied database alone reveals no resident.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from contract.wire import ResidentRef
from gateway.errors import ConfigError

SIGNING_KEY_FILE = "gateway-signing.pem"
STORAGE_KEY_FILE = "storage.key"
PUBLIC_KEY_FILE = "gateway-signing.pub.pem"


def write_secret(path: Path, data: bytes) -> None:
    """A new file only its owner can read (0600), refusing to replace one, flushed to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def create_keys(data_dir: Path) -> bytes:
    """Provisioning: make both keys (refusing to overwrite) and return the public key PEM."""
    data_dir.mkdir(parents=True, exist_ok=True)
    signing = Ed25519PrivateKey.generate()
    write_secret(
        data_dir / SIGNING_KEY_FILE,
        signing.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    write_secret(data_dir / STORAGE_KEY_FILE, AESGCM.generate_key(bit_length=256))
    public_pem = signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (data_dir / PUBLIC_KEY_FILE).write_bytes(public_pem)
    return public_pem


TLS_KEY_FILE = "mqtt-tls.key"
TLS_REQUEST_FILE = "mqtt-tls.csr"
TLS_CERT_FILE = "mqtt-tls.crt"  # the CA's answer to the request, put here at enrolment
TLS_CA_FILE = "mqtt-ca.crt"  # the health community's CA: the broker must show a cert it issued
BRIDGE_ACK_KEY_FILE = "bridge-ack.pub.pem"  # the bridge's ack key (public), from the enrolment answer


def create_tls_request(data_dir: Path, gateway_id: str) -> Path:
    """Provisioning: the gateway's MQTT TLS key (0600, never leaves the gateway) and a certificate
    request naming the gateway, for the health community's CA to sign. Returns the request path."""
    data_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    write_secret(
        data_dir / TLS_KEY_FILE,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)]))
        .sign(key, hashes.SHA256())
    )
    (data_dir / TLS_REQUEST_FILE).write_bytes(request.public_bytes(serialization.Encoding.PEM))
    return data_dir / TLS_REQUEST_FILE


def load_bridge_ack_key(path: Path) -> Ed25519PublicKey:
    """The bridge's public ack key; ConfigError naming the file when it cannot be used."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"sync.bridge_ack_key_file {path}: {exc.strerror}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"sync.bridge_ack_key_file {path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"sync.bridge_ack_key_file {path}: a {type(key).__name__}, not an Ed25519 key")
    return key


@dataclass(frozen=True)
class GatewayKeys:
    signing: Ed25519PrivateKey
    storage: AESGCM

    @classmethod
    def load(cls, data_dir: Path) -> GatewayKeys:
        signing = serialization.load_pem_private_key((data_dir / SIGNING_KEY_FILE).read_bytes(), None)
        if not isinstance(signing, Ed25519PrivateKey):
            raise TypeError(f"{data_dir / SIGNING_KEY_FILE} is not an Ed25519 key")
        return cls(signing=signing, storage=AESGCM((data_dir / STORAGE_KEY_FILE).read_bytes()))

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self.storage.encrypt(nonce, plaintext, context)

    def unseal(self, sealed: bytes, context: bytes) -> bytes:
        return self.storage.decrypt(sealed[:12], sealed[12:], context)

    def seal_resident(self, resident: ResidentRef) -> bytes:
        return self.seal(f"{resident.system}|{resident.value}".encode(), b"resident")

    def unseal_resident(self, sealed: bytes) -> ResidentRef:
        system, value = self.unseal(sealed, b"resident").decode().split("|", 1)
        return ResidentRef(system, value)
