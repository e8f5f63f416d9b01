"""Writing a signed full-image bundle with the real esptool (gateway/flash_image.py).

The board is `simulators/esp_rom.py`: an ESP32 ROM serial bootloader on a TCP port, which the
real esptool reaches as `socket://127.0.0.1:PORT` and drives with its ROM protocol (--no-stub).
The image is `synthetic_esp32_image`: a valid ESP32 image header (esptool image-info accepts
it) over pseudo-random bytes, since building MicroPython itself needs ESP-IDF. The simulator's
flash starts with a pattern, so a test sees what esptool erased and wrote and what it left.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from typer.testing import CliRunner

from gateway.cli import app as gateway_cli
from gateway.firmware_bundle import (
    BadSignature,
    BundleError,
    FileHashMismatch,
    WrongKey,
    create_release_keys,
    load_private_key,
    load_public_key,
)
from gateway.firmware_image import build_image_bundle, verify_image_bundle
from gateway.flash_image import (
    BoardNotAnswering,
    EspPort,
    PortNotFound,
    VerifyMismatch,
    find_esptool,
    flash_image,
)
from simulators.esp_rom import EspRomBoard, synthetic_esp32_image

OFFSET = 0x1000
IMAGE = synthetic_esp32_image(96 * 1024 + 123, seed=7)  # not a whole number of 1 KB blocks
FLASH_SIZE = 1024 * 1024
PATTERN = bytes(range(256)) * (FLASH_SIZE // 256)  # what the flash held before: not 0xFF


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return create_release_keys(tmp_path_factory.mktemp("release-keys"))


@pytest.fixture(scope="module")
def public_key(keys: tuple[Path, Path]) -> Ed25519PublicKey:
    return load_public_key(keys[1])


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> Path:
    work = tmp_path_factory.mktemp("image")
    (work / "firmware.bin").write_bytes(IMAGE)
    return build_image_bundle(
        work / "firmware.bin",
        chip="esp32",
        version="1.24.1-kiosk.1",
        micropython="v1.24.1",
        private_key=load_private_key(keys[0]),
        out_dir=work / "bundles",
    )


@pytest.fixture
def board(tmp_path: Path) -> Iterator[EspRomBoard]:
    flash_file = tmp_path / "flash.bin"
    flash_file.write_bytes(PATTERN)
    with EspRomBoard(flash_size=FLASH_SIZE, flash_file=flash_file) as started:
        yield started


def port(board: EspRomBoard, connect_attempts: int = 7) -> EspPort:
    return EspPort(board.url, timeout_s=60, connect_attempts=connect_attempts)


def rezip(bundle: bytes, change: dict[str, bytes]) -> bytes:
    """The bundle with some entries' bytes replaced (an attacker's edit, signature kept)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(bundle)) as old, zipfile.ZipFile(out, "w") as new:
        for name in old.namelist():
            new.writestr(name, change.get(name, old.read(name)))
    return out.getvalue()


def test_the_synthetic_image_is_an_esp32_image_to_esptool(tmp_path: Path) -> None:
    (tmp_path / "firmware.bin").write_bytes(IMAGE)
    info = subprocess.run(
        [find_esptool(), "--chip", "esp32", "image-info", str(tmp_path / "firmware.bin")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert info.returncode == 0, info.stdout + info.stderr
    assert "Chip ID: 0 (ESP32)" in info.stdout
    assert "Checksum: " in info.stdout and "(valid)" in info.stdout
    assert "Validation hash: " in info.stdout and "invalid" not in info.stdout


def test_a_signed_image_is_written_at_its_offset_and_verified_by_the_rom(
    board: EspRomBoard, bundle_path: Path, public_key: Ed25519PublicKey
) -> None:
    stages: list[str] = []
    written: list[int] = []

    result = flash_image(
        bundle_path.read_bytes(), public_key, port(board), on_stage=stages.append, on_written=written.append
    )

    assert board.read_flash(OFFSET, len(IMAGE)) == IMAGE
    # Before the offset: untouched. After the image: its last sector erased, the rest untouched.
    assert board.read_flash(0, OFFSET) == PATTERN[:OFFSET]
    end = OFFSET + len(IMAGE)
    sector_end = -(-end // 0x1000) * 0x1000
    assert board.read_flash(end, sector_end - end) == b"\xff" * (sector_end - end)
    assert board.read_flash(sector_end, FLASH_SIZE - sector_end) == PATTERN[sector_end:]
    assert result.version == "1.24.1-kiosk.1" and result.offset == OFFSET and result.bytes == len(IMAGE)
    assert result.sha256 == hashlib.sha256(IMAGE).hexdigest()
    # esptool really talked the ROM protocol and asked the ROM for the MD5 of what it wrote.
    commands = board.commands
    assert commands[0] == "SYNC" and "SPI_ATTACH" in commands and "CHANGE_BAUDRATE" in commands
    assert commands.count("FLASH_DATA") == -(-len(IMAGE) // 1024)
    assert commands.index("FLASH_BEGIN") < commands.index("FLASH_DATA") < commands.index("SPI_FLASH_MD5")
    assert board.rom.baud == 460800
    assert stages[:1] == ["connecting"] and "writing" in stages and "verifying" in stages
    assert written[-1] == len(IMAGE) and written == sorted(written)


@pytest.mark.parametrize("tamper", ["manifest", "image", "other key"])
def test_a_tampered_bundle_is_refused_before_any_byte_reaches_the_port(
    board: EspRomBoard, bundle_path: Path, public_key: Ed25519PublicKey, tamper: str, tmp_path: Path
) -> None:
    good = bundle_path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(good)) as archive:
        manifest = archive.read("manifest.json")
        image = archive.read("files/firmware.bin")
    if tamper == "manifest":  # point the image somewhere else, keep the old signature
        edited = json.loads(manifest)
        edited["offset"] = 0x10000
        bad = rezip(good, {"manifest.json": json.dumps(edited, indent=2, sort_keys=True).encode()})
        expected: type[BundleError] = BadSignature
    elif tamper == "image":  # one byte of the image changed
        bad = rezip(good, {"files/firmware.bin": image[:5000] + bytes([image[5000] ^ 0xFF]) + image[5001:]})
        expected = FileHashMismatch
    else:  # a well-made bundle, signed by a key that is not the release key
        (tmp_path / "firmware.bin").write_bytes(IMAGE)
        other = build_image_bundle(
            tmp_path / "firmware.bin",
            chip="esp32",
            version="1.24.1-kiosk.1",
            private_key=Ed25519PrivateKey.generate(),
            out_dir=tmp_path,
        )
        bad = other.read_bytes()
        expected = WrongKey

    with pytest.raises(expected):
        flash_image(bad, public_key, port(board))

    assert board.connections == 0 and board.bytes_received == 0
    assert board.read_flash(0, FLASH_SIZE) == PATTERN


def test_a_flash_the_board_corrupts_fails_verification_with_a_clear_error(
    tmp_path: Path, bundle_path: Path, public_key: Ed25519PublicKey
) -> None:
    with EspRomBoard(flash_size=FLASH_SIZE, corrupt_at=OFFSET + 40_000) as board:
        with pytest.raises(VerifyMismatch) as failed:
            flash_image(bundle_path.read_bytes(), public_key, port(board))
        landed = board.read_flash(OFFSET, len(IMAGE))

    message = str(failed.value)
    assert message.startswith(f"{board.url}: verification failed: the flash does not hold the image")
    assert f"sent MD5 {hashlib.md5(IMAGE).hexdigest()}" in message
    assert f"flash MD5 {hashlib.md5(landed).hexdigest()}" in message
    assert "Traceback" not in message and "flash it again" in message
    # The ROM's 8-bit checksum let it through (two flips of the same bit); only the MD5 saw it.
    assert sum(a != b for a, b in zip(landed, IMAGE, strict=True)) == 2


def test_a_board_that_does_not_answer_and_a_port_that_is_not_there(
    bundle_path: Path, public_key: Ed25519PublicKey
) -> None:
    data = bundle_path.read_bytes()
    with EspRomBoard(silent=True) as mute:
        with pytest.raises(BoardNotAnswering) as silent:
            flash_image(data, public_key, port(mute, connect_attempts=1))
        assert mute.connections == 1
    assert "the board does not answer esptool: it is not in download mode" in str(silent.value)

    with pytest.raises(PortNotFound) as no_device:
        flash_image(data, public_key, EspPort("/dev/ttyUSB-not-plugged-in"))
    assert (
        str(no_device.value)
        == "/dev/ttyUSB-not-plugged-in: no such serial port (is the board plugged in? see `ls /dev/tty*`)"
    )

    closed = EspRomBoard().start()
    closed.stop()  # its port is closed now: nothing listens there
    with pytest.raises(PortNotFound) as refused:
        flash_image(data, public_key, EspPort(closed.url, timeout_s=60))
    assert "cannot open the serial port" in str(refused.value) and "Connection refused" in str(refused.value)


def test_the_technician_cli_bundles_verifies_and_flashes_an_image(
    board: EspRomBoard, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    runner = CliRunner()
    (tmp_path / "firmware.bin").write_bytes(IMAGE)
    key = ["--public-key", str(keys[1])]

    made = runner.invoke(
        gateway_cli,
        [
            "firmware", "bundle-image", str(tmp_path / "firmware.bin"), "--version", "1.24.1-kiosk.2",
            "--key", str(keys[0]), "--out", str(tmp_path / "bundles"),
        ],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    path = tmp_path / "bundles" / "image-esp32-1.24.1-kiosk.2.zip"
    assert made.output.startswith(
        f"{path}: esp32 image 1.24.1-kiosk.2 (ESP32_GENERIC), {len(IMAGE)} B at 0x1000"
    )
    frozen = verify_image_bundle(path.read_bytes(), load_public_key(keys[1])).manifest["frozen"]
    assert {"kiosk_link", "bp_app", "updater"} <= {entry["module"] for entry in frozen}

    checked = runner.invoke(gateway_cli, ["firmware", "verify-image", str(path), *key])
    assert checked.exit_code == 0, checked.output
    assert f"sha256 {hashlib.sha256(IMAGE).hexdigest()}" in checked.output

    tampered = tmp_path / "tampered.zip"
    tampered.write_bytes(rezip(path.read_bytes(), {"files/firmware.bin": IMAGE[::-1]}))
    refused = runner.invoke(
        gateway_cli, ["firmware", "flash-image", str(tampered), "--device", board.url, *key]
    )
    assert refused.exit_code == 1
    assert "refused, the board was not touched" in refused.output and "firmware.bin" in refused.output
    assert board.connections == 0

    flashed = runner.invoke(gateway_cli, ["firmware", "flash-image", str(path), "--device", board.url, *key])
    assert flashed.exit_code == 0, flashed.output
    assert f"wrote esp32 image 1.24.1-kiosk.2 to {board.url}: {len(IMAGE)} B at 0x1000" in flashed.output
    assert "esptool verified the flash" in flashed.output
    assert board.read_flash(OFFSET, len(IMAGE)) == IMAGE

    with EspRomBoard(silent=True) as mute:
        failed = runner.invoke(
            gateway_cli,
            ["firmware", "flash-image", str(path), "--device", mute.url, "--connect-attempts", "1", *key],
        )
    assert failed.exit_code == 2
    assert "flash-image failed:" in failed.output and "does not answer esptool" in failed.output
    assert "Traceback" not in failed.output
