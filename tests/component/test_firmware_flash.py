"""Flashing signed firmware bundles (gateway/flash.py) onto a simulated board, with the real mpremote.

The board is `simulators/repl_board.py`: the MicroPython unix port's REPL behind a pty bridged
to TCP, its flash a directory. The bundles are built from the real firmware sources by the real
mpy-cross: version 0.1.0 from `firmware/`, and a "0.2.0-test" from a copy whose bp_app.py says
so. Besides what is flashed, the board holds a stand-in `machine` module (the unix port has no
UART or Pin), so that importing the flashed app works as it would on an ESP32.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from typer.testing import CliRunner

from gateway.cli import app as gateway_cli
from gateway.firmware_bundle import (
    FIRMWARE_SRC,
    FileHashMismatch,
    WrongKey,
    build_bundle,
    create_release_keys,
    load_private_key,
    load_public_key,
    read_bundle,
)
from gateway.flash import BoardConnection, FlashError, find_mpremote, flash, read_board, rollback
from simulators.repl_board import ReplBoard

pytestmark = pytest.mark.micropython

V2 = "0.2.0-test"
BOARD_ROM = {
    # What the board's port provides and the bundle does not carry: `machine` (hal.py imports it).
    "machine.py": b"""
class _Part:
    def __init__(self, *args, **kwargs):
        pass
class UART(_Part):
    pass
class I2C(_Part):
    pass
class SPI(_Part):
    pass
class Pin(_Part):
    IN = 0
    OUT = 1
def unique_id():
    return b"\\x12\\x34\\xab"
""",
}
RUN_VERSION = (
    "import bp_app, kiosk_link\n"
    "print(bp_app.MODEL, bp_app.FIRMWARE_VERSION, hex(kiosk_link.crc16(b'123456789')))"
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return create_release_keys(tmp_path_factory.mktemp("release-keys"))


@pytest.fixture(scope="module")
def public_key(keys: tuple[Path, Path]) -> Ed25519PublicKey:
    return load_public_key(keys[1])


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> dict[str, bytes]:
    """{"0.1.0": bundle bytes, V2: bundle bytes}, bp_app for esp32, signed by the release key."""
    out = tmp_path_factory.mktemp("bundles")
    src_v2 = out / "firmware-v2"
    shutil.copytree(FIRMWARE_SRC, src_v2, ignore=shutil.ignore_patterns("__pycache__"))
    app_source = (src_v2 / "bp_app.py").read_text()
    assert 'FIRMWARE_VERSION = "0.1.0"' in app_source
    (src_v2 / "bp_app.py").write_text(
        app_source.replace('FIRMWARE_VERSION = "0.1.0"', f'FIRMWARE_VERSION = "{V2}"')
    )
    private = load_private_key(keys[0])
    v1 = build_bundle("bp_app", target="esp32", private_key=private, out_dir=out)
    v2 = build_bundle("bp_app", target="esp32", private_key=private, out_dir=out, src=src_v2)
    assert (v1.name, v2.name) == ("bp_app-0.1.0-esp32.zip", f"bp_app-{V2}-esp32.zip")
    return {"0.1.0": v1.read_bytes(), V2: v2.read_bytes()}


@pytest.fixture
def board() -> Iterator[ReplBoard]:
    with ReplBoard(files=BOARD_ROM) as simulated:
        yield simulated


def on_board(board: ReplBoard, code: str) -> str:
    result = subprocess.run(
        [find_mpremote(), "connect", board.url, "resume", "exec", code],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def installed(board: ReplBoard, folder: str = "") -> dict[str, bytes]:
    """The files in one folder of the board's flash (the top by default), by name."""
    prefix = folder + "/" if folder else ""
    return {
        name[len(prefix) :]: data
        for name, data in board.flash_files().items()
        if name.startswith(prefix) and "/" not in name[len(prefix) :]
    }


def expected_files(bundle_data: bytes) -> dict[str, bytes]:
    bundle = read_bundle(bundle_data)
    return {**bundle.files, "firmware.json": bundle.manifest_bytes, "firmware.sig": bundle.signature}


def test_a_signed_bundle_is_flashed_checked_and_runs_on_the_board(
    board: ReplBoard, bundles: dict[str, bytes], public_key: Ed25519PublicKey
) -> None:
    connection = BoardConnection(board.url)
    copied: list[str] = []
    totals: list[int] = []

    result = flash(bundles["0.1.0"], public_key, connection, on_copied=copied.append, on_total=totals.append)

    assert (result.app, result.version, result.previous_version) == ("bp_app", "0.1.0", None)
    expected = expected_files(bundles["0.1.0"])
    assert set(expected) == {
        *(
            name + ".mpy"
            for name in (
                *("bp_app", "bp_cuff", "hal", "kiosk_link"),
                *("link_client", "link_journal", "link_update", "updater"),
            )
        ),
        "main.py",
        "firmware.json",
        "firmware.sig",
    }
    assert installed(board) == {**expected, **BOARD_ROM}  # byte for byte, and nothing else
    assert sorted(copied) == sorted(expected) and totals == [len(expected)]
    assert not any(name.startswith("new/") for name in board.flash_files())  # staging cleared
    # The board imports the flashed bytecode and runs it: its version, and the CRC check value.
    assert on_board(board, RUN_VERSION) == "KX-BP100 0.1.0 0x29b1"

    # A file damaged on the board afterwards is found by reading the board back.
    (board.flash_dir / "link_client.mpy").write_bytes(b"M\x06\x00\x1f" + b"\x00" * 64)
    with pytest.raises(FlashError, match=r"link_client.mpy on the board has SHA-256"):
        read_board(connection, public_key)


def test_a_tampered_bundle_is_refused_before_the_board_is_touched(
    board: ReplBoard, bundles: dict[str, bytes], public_key: Ed25519PublicKey, tmp_path: Path
) -> None:
    (board.flash_dir / "main.py").write_bytes(b"# firmware installed by hand\n")
    before = board.flash_files()
    good = bundles["0.1.0"]
    tampered = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as source, zipfile.ZipFile(tampered, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name == "files/bp_app.mpy":
                data = data[:200] + bytes([data[200] ^ 0xFF]) + data[201:]
            target.writestr(name, data)
    other_key = Ed25519PrivateKey.generate()
    foreign = build_bundle("bp_app", target="esp32", private_key=other_key, out_dir=tmp_path)

    with pytest.raises(FileHashMismatch, match=r"bp_app\.mpy"):
        flash(tampered.getvalue(), public_key, BoardConnection(board.url))
    with pytest.raises(WrongKey):
        flash(foreign.read_bytes(), public_key, BoardConnection(board.url))
    # Refused without connecting: a board that does not exist gives the same refusal, not a board error.
    with pytest.raises(FileHashMismatch):
        flash(tampered.getvalue(), public_key, BoardConnection("socket://127.0.0.1:9"))

    assert board.flash_files() == before
    assert sorted(path.name for path in board.flash_dir.iterdir()) == [
        "machine.py",
        "main.py",
    ]  # no new/, prev/


def test_the_previous_version_is_kept_and_rollback_restores_it(
    board: ReplBoard, bundles: dict[str, bytes], public_key: Ed25519PublicKey
) -> None:
    connection = BoardConnection(board.url)
    flash(bundles["0.1.0"], public_key, connection)
    result = flash(bundles[V2], public_key, connection)

    assert (result.version, result.previous_version) == (V2, "0.1.0")
    assert installed(board) == {**expected_files(bundles[V2]), **BOARD_ROM}
    assert installed(board, "prev") == expected_files(bundles["0.1.0"])
    board.reboot()
    assert on_board(board, RUN_VERSION) == f"KX-BP100 {V2} 0x29b1"

    restored = rollback(connection, public_key)

    assert (restored.version, restored.rolled_back_from) == ("0.1.0", V2)
    assert installed(board) == {**expected_files(bundles["0.1.0"]), **BOARD_ROM}
    assert installed(board, "prev") == expected_files(bundles[V2])  # a second rollback goes forward
    board.reboot()
    assert on_board(board, RUN_VERSION) == "KX-BP100 0.1.0 0x29b1"
    assert read_board(connection, public_key).version == "0.1.0"


class _DamagingConnection(BoardConnection):
    """Flips a byte of kiosk_link.mpy on its way to the board, as a bad cable would."""

    def run(self, *args: str, **kwargs: object) -> str:
        if "cp" in args:
            path = Path(next(arg for arg in args if arg.endswith("kiosk_link.mpy")))
            data = path.read_bytes()
            path.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))
        return super().run(*args, **kwargs)  # type: ignore[arg-type]


def test_a_file_damaged_in_transfer_is_not_switched_in(
    board: ReplBoard, bundles: dict[str, bytes], public_key: Ed25519PublicKey
) -> None:
    (board.flash_dir / "main.py").write_bytes(b"# firmware installed by hand\n")
    before = installed(board)

    with pytest.raises(
        FlashError, match=r"kiosk_link.mpy \(corrupted in transfer\); the installed version is kept"
    ):
        flash(bundles["0.1.0"], public_key, _DamagingConnection(board.url))

    assert installed(board) == before
    assert installed(board, "prev") == {}
    with pytest.raises(FlashError, match="no previous version on the board"):
        rollback(BoardConnection(board.url), public_key)


def test_the_technician_cli_verifies_flashes_and_rolls_back(
    board: ReplBoard, bundles: dict[str, bytes], keys: tuple[Path, Path], tmp_path: Path
) -> None:
    runner = CliRunner()
    bundle_path = tmp_path / "bp_app-0.1.0-esp32.zip"
    bundle_path.write_bytes(bundles["0.1.0"])
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really")
    key = ["--public-key", str(keys[1])]

    refused = runner.invoke(gateway_cli, ["firmware", "flash", str(broken), "--device", board.url, *key])
    assert refused.exit_code == 1
    assert "refused, the board was not touched" in refused.output and "not a zip archive" in refused.output

    checked = runner.invoke(gateway_cli, ["firmware", "verify", str(bundle_path), *key])
    assert checked.exit_code == 0, checked.output
    assert checked.output.startswith(f"ok: {bundle_path}: bp_app 0.1.0 (KX-BP100) for esp32")

    flashed = runner.invoke(gateway_cli, ["firmware", "flash", str(bundle_path), "--device", board.url, *key])
    assert flashed.exit_code == 0, flashed.output
    assert f"flashed bp_app 0.1.0 to {board.url}: 9 files" in flashed.output
    assert installed(board)["firmware.json"] == read_bundle(bundles["0.1.0"]).manifest_bytes

    nothing = runner.invoke(gateway_cli, ["firmware", "rollback", "--device", board.url, *key])
    assert nothing.exit_code == 2
    assert "no previous version on the board" in nothing.output
