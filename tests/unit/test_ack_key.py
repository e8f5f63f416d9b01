"""The bridge's ack key: made once, 0600, never replaced, refused when it cannot be trusted."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from cloud_bridge import ack_key
from cloud_bridge.cli import _default_ack_key
from cloud_bridge.cli import app as bridge_cli
from contract.wire import Ack, decode_ack, encode_ack
from gateway.errors import ConfigError
from gateway.keys import load_bridge_ack_key


def test_made_once_private_and_loaded_back(tmp_path: Path) -> None:
    path = tmp_path / "bridge-ack.key"
    made = ack_key.create_ack_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ack_key.public_pem(ack_key.load_ack_key(path)) == ack_key.public_pem(made)
    with pytest.raises(ack_key.AckKeyError, match="exists already"):
        ack_key.create_ack_key(path)
    assert ack_key.load_or_create_ack_key(path)[1] is False
    again, made_now = ack_key.load_or_create_ack_key(tmp_path / "other.key")
    assert made_now and ack_key.public_pem(again) != ack_key.public_pem(made)


def test_a_key_that_cannot_be_trusted_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ack_key.AckKeyError, match="does not exist: make it once"):
        ack_key.load_ack_key(tmp_path / "missing.key")
    path = tmp_path / "open.key"
    ack_key.create_ack_key(path)
    path.chmod(0o644)
    with pytest.raises(ack_key.AckKeyError, match="may be read by others"):
        ack_key.load_ack_key(path)
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    garbage.chmod(0o600)
    with pytest.raises(ack_key.AckKeyError, match="not an unencrypted PEM private key"):
        ack_key.load_ack_key(garbage)
    other = tmp_path / "ec.key"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    other.chmod(0o600)
    with pytest.raises(ack_key.AckKeyError, match="not an Ed25519 key"):
        ack_key.load_ack_key(other)


def test_the_gateway_reads_the_public_half_the_bridge_signs_with(tmp_path: Path) -> None:
    key = ack_key.create_ack_key(tmp_path / "bridge-ack.key")
    public = tmp_path / "bridge-ack.pub.pem"
    public.write_text(ack_key.public_pem(key))
    ack = Ack(bytes(32), 1, 9, bytes(32), server_time_ms=5)
    signed = encode_ack(ack, gateway_id="gw-1", signing_key=key)
    assert decode_ack(signed, bridge_key=load_bridge_ack_key(public), gateway_id="gw-1") == ack
    with pytest.raises(ConfigError, match=r"sync\.bridge_ack_key_file .*: not a PEM public key"):
        load_bridge_ack_key(tmp_path / "bridge-ack.key")  # the private half is not what it wants
    with pytest.raises(ConfigError, match=r"missing\.pem: No such file"):
        load_bridge_ack_key(tmp_path / "missing.pem")


def test_init_and_show_on_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "bridge-ack.key"
    made = CliRunner().invoke(bridge_cli, ["ack-key", "init", "--path", str(path)])
    assert made.exit_code == 0, made.output
    public = ack_key.public_pem(ack_key.load_ack_key(path))
    assert made.stdout.endswith(public)
    shown = CliRunner().invoke(bridge_cli, ["ack-key", "show", "--path", str(path)])
    assert (shown.exit_code, shown.stdout) == (0, public)
    again = CliRunner().invoke(bridge_cli, ["ack-key", "init", "--path", str(path)])
    assert again.exit_code == 1 and "exists already" in again.output
    assert ack_key.public_pem(ack_key.load_ack_key(path)) == public  # not replaced
    missing = CliRunner().invoke(bridge_cli, ["ack-key", "show", "--path", str(tmp_path / "none.key")])
    assert missing.exit_code == 1 and "kiosk-bridge ack-key init" in missing.output


def test_the_default_key_lives_beside_the_sqlite_store() -> None:
    assert _default_ack_key("/var/lib/kiosk-bridge/bridge.db") == Path("/var/lib/kiosk-bridge/bridge-ack.key")
    assert _default_ack_key("bridge.db") == Path("bridge-ack.key")
    assert _default_ack_key("postgresql://kiosk@db/bridge") == Path("bridge-ack.key")
