"""Full-image bundles (gateway/firmware_image.py), the esptool command line (gateway/flash_image.py)
and the simulated ESP32 ROM's protocol (simulators/esp_rom.py), without esptool or a port.

The component test `tests/component/test_firmware_flash_image.py` runs the real esptool
against the simulated ROM; here are the refusals and the byte-level answers, each with its words.
"""

from __future__ import annotations

import hashlib
import json
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.firmware_bundle import FIRMWARE_SRC, BundleError, UnknownFormat, key_id, pack_bundle
from gateway.firmware_image import (
    CHIPS,
    IMAGE_BUNDLE_FORMAT,
    NotAnImage,
    build_image_bundle,
    check_image,
    frozen_modules,
    image_manifest,
    read_image_bundle,
    verify_image_bundle,
)
from gateway.flash_image import EspPort, esptool_command
from simulators.esp_rom import EspRom, SlipDecoder, slip_encode, synthetic_esp32_image

ESP32 = CHIPS["esp32"]
IMAGE = synthetic_esp32_image(8192, seed=1)
CREATED = datetime(2026, 3, 1, 8, 30, 0, tzinfo=UTC)


@pytest.fixture
def release() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def bundle_bytes(release: Ed25519PrivateKey, image: bytes = IMAGE, **manifest_changes: object) -> bytes:
    manifest = json.loads(
        image_manifest(
            image, ESP32, version="1.0.0", release_key_id=key_id(release.public_key()), created_at=CREATED
        )
    )
    manifest.update(manifest_changes)
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    return pack_bundle(manifest_bytes, release.sign(manifest_bytes), {"firmware.bin": image})


def test_the_manifest_names_chip_offset_and_the_image_hash(release: Ed25519PrivateKey) -> None:
    bundle = verify_image_bundle(bundle_bytes(release), release.public_key())
    assert bundle.manifest == {
        "format": IMAGE_BUNDLE_FORMAT,
        "chip": "esp32",
        "board": "ESP32_GENERIC",
        "version": "1.0.0",
        "micropython": None,
        "created_at": "2026-03-01T08:30:00Z",
        "key_id": key_id(release.public_key()),
        "offset": 0x1000,
        "image": {"path": "firmware.bin", "size": len(IMAGE), "sha256": hashlib.sha256(IMAGE).hexdigest()},
        "frozen": [],
    }
    assert bundle.image == IMAGE and bundle.offset == 0x1000 and bundle.chip is ESP32


def test_only_an_image_for_the_chip_is_bundled() -> None:
    check_image(IMAGE, ESP32)
    with pytest.raises(NotAnImage, match="no 0xE9 magic byte"):
        check_image(b"\x00" + IMAGE[1:], ESP32)
    esp32s3 = IMAGE[:12] + struct.pack("<H", 9) + IMAGE[14:]  # chip id 9: an ESP32-S3 image
    with pytest.raises(NotAnImage, match="image for chip id 9, not for esp32"):
        check_image(esp32s3, ESP32)
    with pytest.raises(NotAnImage, match="damaged"):
        check_image(IMAGE[:1] + b"\x00" + IMAGE[2:], ESP32)


def test_an_offset_off_a_sector_or_past_16_mb_and_a_bad_version_are_refused() -> None:
    with pytest.raises(UnknownFormat, match="not on a 4 KB flash sector boundary"):
        image_manifest(IMAGE, ESP32, version="1", offset=0x1800, release_key_id="k", created_at=CREATED)
    with pytest.raises(UnknownFormat, match="does not fit in 16 MB"):
        image_manifest(
            IMAGE, ESP32, version="1", offset=16 * 1024 * 1024 - 4096, release_key_id="k", created_at=CREATED
        )
    with pytest.raises(BundleError, match="version"):
        image_manifest(IMAGE, ESP32, version="1.0 beta/2", release_key_id="k", created_at=CREATED)


def test_a_signed_manifest_with_an_unknown_chip_or_wrong_types_is_not_this_format(
    release: Ed25519PrivateKey,
) -> None:
    with pytest.raises(UnknownFormat, match="chip 'esp32s3' is not one this tool writes"):
        read_image_bundle(bundle_bytes(release, chip="esp32s3"))
    with pytest.raises(UnknownFormat, match="field 'offset'"):
        read_image_bundle(bundle_bytes(release, offset="0x1000"))
    app_bundle = bundle_bytes(release, format="kiosk-edge-firmware-bundle/1")
    with pytest.raises(
        UnknownFormat, match=r"not a full-image bundle \(an application bundle is flashed with"
    ):
        verify_image_bundle(app_bundle, release.public_key())


def test_a_signed_image_for_another_chip_is_still_refused_at_verification(release: Ed25519PrivateKey) -> None:
    other_chip = IMAGE[:12] + struct.pack("<H", 5) + IMAGE[14:]
    manifest = json.loads(
        image_manifest(
            IMAGE, ESP32, version="1", release_key_id=key_id(release.public_key()), created_at=CREATED
        )
    )
    manifest["image"]["sha256"] = hashlib.sha256(other_chip).hexdigest()
    manifest_bytes = json.dumps(manifest).encode()
    data = pack_bundle(manifest_bytes, release.sign(manifest_bytes), {"firmware.bin": other_chip})
    with pytest.raises(NotAnImage, match="chip id 5"):
        verify_image_bundle(data, release.public_key())


def test_the_frozen_modules_are_the_freeze_manifests_with_their_sources(tmp_path: Path) -> None:
    frozen = {entry["module"]: entry["source_sha256"] for entry in frozen_modules(FIRMWARE_SRC, ESP32)}
    assert "kiosk_link" in frozen and "build" not in frozen
    assert frozen["kiosk_link"] == hashlib.sha256((FIRMWARE_SRC / "kiosk_link.py").read_bytes()).hexdigest()

    (tmp_path / "manifest_esp32.py").write_text('module("gone.py")\n')
    with pytest.raises(BundleError, match=r"freezes gone\.py, which cannot be read"):
        frozen_modules(tmp_path, ESP32)


def test_build_writes_a_bundle_that_verifies(tmp_path: Path, release: Ed25519PrivateKey) -> None:
    (tmp_path / "firmware.bin").write_bytes(IMAGE)
    path = build_image_bundle(
        tmp_path / "firmware.bin",
        chip="esp32",
        version="2.0.0",
        private_key=release,
        out_dir=tmp_path / "out",
    )
    assert path == tmp_path / "out" / "image-esp32-2.0.0.zip"
    assert verify_image_bundle(path.read_bytes(), release.public_key()).image == IMAGE
    with pytest.raises(BundleError, match="unknown chip 'rp2'"):
        build_image_bundle(
            tmp_path / "firmware.bin", chip="rp2", version="1", private_key=release, out_dir=tmp_path
        )


def test_esptool_writes_through_the_rom_with_the_image_header_kept(release: Ed25519PrivateKey) -> None:
    bundle = verify_image_bundle(bundle_bytes(release), release.public_key())
    command = esptool_command(EspPort("/dev/ttyUSB0", esptool="esptool"), bundle, Path("/tmp/x/firmware.bin"))
    assert command == [
        "esptool", "--chip", "esp32", "--port", "/dev/ttyUSB0", "--baud", "460800",
        "--before", "default-reset", "--after", "hard-reset", "--no-stub", "--connect-attempts", "7",
        "write-flash", "--flash-mode", "keep", "--flash-freq", "keep", "--flash-size", "keep",
        "0x1000", "/tmp/x/firmware.bin",
    ]  # fmt: skip


# --- the simulated ROM, byte by byte (esptool loader.py: "<BBHI" header, ESP32 ROM status words) ---


def request(op: int, payload: bytes, checksum: int = 0) -> bytes:
    return struct.pack("<BBHI", 0, op, len(payload), checksum) + payload


def answer(raw: bytes) -> tuple[int, int, int, bytes]:
    direction, op, size, value = struct.unpack("<BBHI", raw[:8])
    assert direction == 1 and size == len(raw) - 8
    return op, value, size, raw[8:]


def test_slip_frames_escape_both_special_bytes_and_decode_back() -> None:
    packet = b"\x01\xc0\x02\xdb\x03"
    framed = slip_encode(packet)
    assert framed == b"\xc0\x01\xdb\xdc\x02\xdb\xdd\x03\xc0"
    assert list(SlipDecoder().feed(b"boot log noise" + framed + framed[:4])) == [packet]


def test_the_rom_syncs_eight_times_and_reads_the_chip_magic() -> None:
    rom = EspRom()
    answers = rom.handle(request(0x08, b"\x07\x07\x12\x20" + 32 * b"\x55"))
    assert len(answers) == 8 and answer(answers[0])[:2] == (0x08, 0x20120707)
    [magic] = rom.handle(request(0x0A, struct.pack("<I", 0x40001000)))
    assert answer(magic) == (0x0A, 0x00F01D83, 4, b"\x00\x00\x00\x00")


def test_the_rom_refuses_what_the_esp32_rom_would_with_its_error_codes() -> None:
    rom = EspRom()
    [unknown] = rom.handle(request(0x14, b""))  # GET_SECURITY_INFO: not in the ESP32 ROM
    assert answer(unknown) == (0x14, 0, 4, b"\x01\x05\x00\x00")
    [unattached] = rom.handle(request(0x02, struct.pack("<4I", 4096, 4, 1024, 0x1000)))
    assert answer(unattached)[3] == b"\x01\x06\x00\x00"  # FLASH_BEGIN before SPI_ATTACH
    rom.handle(request(0x0D, bytes(8)))
    rom.handle(request(0x02, struct.pack("<4I", 4096, 4, 1024, 0x1000)))
    block = bytes(range(256)) * 4
    [bad_sum] = rom.handle(request(0x03, struct.pack("<4I", 1024, 0, 0, 0) + block, checksum=0x12))
    assert answer(bad_sum)[3] == b"\x01\x07\x00\x00"  # invalid CRC: esptool sends the block again
    [good] = rom.handle(request(0x03, struct.pack("<4I", 1024, 0, 0, 0) + block, checksum=0xEF))
    assert answer(good)[3] == b"\x00\x00\x00\x00" and rom.flash[0x1000:0x1400] == block
    [md5] = rom.handle(request(0x13, struct.pack("<4I", 0x1000, 1024, 0, 0)))
    assert answer(md5)[3] == hashlib.md5(block).hexdigest().encode() + b"\x00\x00\x00\x00"
    [stub] = rom.handle(request(0x05, struct.pack("<4I", 100, 1, 100, 0x40080000)))
    assert answer(stub)[3] == b"\x01\x06\x00\x00"  # no flasher stub: esptool must use --no-stub
