"""The bridge's ack key: an Ed25519 key that signs every ack the bridge sends (contract/wire.py).

A gateway given its public key (at provisioning, `bridge_ack_key_pem` in the enrolment answer)
acts on no other ack, so a broker that lets the wrong client publish on `kiosk/X/ack` cannot make
gateway X delete readings the bridge never stored, nor move their times. Every worker of one
bridge signs with the same key: make it once (`kiosk-bridge ack-key init`) and give each the file.
The private key is written 0600 and never leaves the bridge.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

DEFAULT_PATH = Path("bridge-ack.key")


class AckKeyError(ValueError):
    """An ack key file that cannot be used; the message says which and why."""


def create_ack_key(path: Path) -> Ed25519PrivateKey:
    """A new key at `path` (0600), never over an existing file: gateways trust the one they have."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise AckKeyError(f"{path} exists already: gateways trust that key, it is not replaced") from None
    except OSError as exc:
        raise AckKeyError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    return key


def load_ack_key(path: Path) -> Ed25519PrivateKey:
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise AckKeyError(f"{path} does not exist: make it once with `kiosk-bridge ack-key init`") from None
    except OSError as exc:
        raise AckKeyError(f"cannot read {path}: {exc.strerror}") from None
    if path.stat().st_mode & 0o077:
        raise AckKeyError(f"{path} may be read by others: chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise AckKeyError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AckKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_or_create_ack_key(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The key at `path`, made first if there is none -> (key, made now)."""
    if path.exists():
        return load_ack_key(path), False
    return create_ack_key(path), True


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")
