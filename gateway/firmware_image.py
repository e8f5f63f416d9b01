"""Signed full-image bundles: MicroPython with our modules frozen in, for esptool to write.

An application bundle (`gateway/firmware_bundle.py`) updates the `.mpy` files of a board that
already runs MicroPython. A full-image bundle carries the whole flash image instead: the
`firmware.bin` that MicroPython's build makes with the kiosk modules frozen into it, the
chip it is for and the flash offset it goes to. `gateway/flash_image.py` writes it with
esptool. Same container, same release key, same order of checks as an application bundle:

    manifest.json      the signed bytes: JSON, see `IMAGE_MANIFEST_FIELDS`
    manifest.sig       64 bytes, Ed25519 signature of manifest.json by the release key
    files/firmware.bin the image, exactly the bytes written to flash at `offset`

The manifest names the format, the chip (`esp32`) and the MicroPython board it was built for,
the version, MicroPython's own version (as the build machine reports it), when the bundle was
made, the release key's id, the offset, the image's size and SHA-256, and the modules frozen
into it (each with the SHA-256 of the source it was frozen from, taken from the freeze
manifest in `firmware/` at bundling time: bundle from the checkout the image was built from).

The image itself is built on a build machine with ESP-IDF, which CI does not have: in a
checkout of MicroPython, `ports/esp32`,

    make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/kiosk-edge/firmware/manifest_esp32.py

gives `build-ESP32_GENERIC/firmware.bin` (bootloader, partition table and application in one
file, written at 0x1000 on an ESP32). `build_image_bundle` checks that it starts as an image
for the chip (the ESP image header's magic byte 0xE9 and the chip id of its extended header),
then signs it. It cannot check more: the image is ESP-IDF's output, not ours.

Refusals are the application bundle's exceptions (`UnknownFormat`, `WrongKey`,
`BadSignature`, `MissingFile`, `UnexpectedFile`, `FileHashMismatch`), plus `NotAnImage` for
bytes that are not an image for the chip.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.firmware_bundle import (
    FIRMWARE_SRC,
    BundleError,
    FileHashMismatch,
    MissingFile,
    UnknownFormat,
    check_manifest_fields,
    check_release_signature,
    key_id,
    read_signed_zip,
    write_signed_bundle,
)

__all__ = [
    "CHIPS",
    "IMAGE_BUNDLE_FORMAT",
    "IMAGE_MANIFEST_FIELDS",
    "IMAGE_NAME",
    "Chip",
    "ImageBundle",
    "NotAnImage",
    "build_image_bundle",
    "check_image",
    "frozen_modules",
    "image_manifest",
    "read_image_bundle",
    "verify_image_bundle",
]

IMAGE_BUNDLE_FORMAT = "kiosk-edge-firmware-image/1"
IMAGE_NAME = "firmware.bin"
ESP_IMAGE_MAGIC = 0xE9
FLASH_SECTOR = 0x1000
MAX_FLASH = 16 * 1024 * 1024  # the ESP32 ROM loader addresses 16 MB (esptool check_flash_size)


@dataclass(frozen=True)
class Chip:
    """A chip a full image can be written to, and where MicroPython's firmware.bin goes on it."""

    name: str  # esptool --chip
    image_chip_id: int  # the chip id in the ESP image's extended header (esptool IMAGE_CHIP_ID)
    offset: int  # MicroPython's ports/esp32 README: where firmware.bin is written
    micropython_board: str  # make BOARD=...
    freeze_manifest: str  # in firmware/


CHIPS = {
    "esp32": Chip(
        name="esp32",
        image_chip_id=0,
        offset=0x1000,
        micropython_board="ESP32_GENERIC",
        freeze_manifest="manifest_esp32.py",
    ),
}

IMAGE_MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "chip": str,
    "board": str,
    "version": str,
    "micropython": (str, type(None)),
    "created_at": str,
    "key_id": str,
    "offset": int,
    "image": dict,  # path, size, sha256
    "frozen": list,  # module, source_sha256
}
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


class NotAnImage(BundleError):
    """The bytes are not a flash image for the chip (wrong magic byte, or another chip's image)."""


# --- the image -----------------------------------------------------------------------------------


def check_image(data: bytes, chip: Chip) -> None:
    """NotAnImage unless `data` starts with an ESP image header for `chip`.

    Header (esptool bin_image.py, ESP32FirmwareImage): byte 0 magic 0xE9, byte 1 segment count
    (at most 16); bytes 8-23 the extended header, its chip id a little-endian 16-bit word at
    bytes 12-13, its last byte (23) the append-digest flag, 0 or 1.
    """
    if len(data) < 24 or data[0] != ESP_IMAGE_MAGIC:
        raise NotAnImage(f"{IMAGE_NAME} is not an ESP flash image (no 0xE9 magic byte at its start)")
    if not 1 <= data[1] <= 16 or data[23] not in (0, 1):
        raise NotAnImage(f"{IMAGE_NAME}: the image header is damaged (segment count or digest flag)")
    chip_id = int.from_bytes(data[12:14], "little")
    if chip_id != chip.image_chip_id:
        raise NotAnImage(
            f"{IMAGE_NAME} is an image for chip id {chip_id}, not for {chip.name} "
            f"(chip id {chip.image_chip_id}): refused"
        )


def _check_placement(offset: int, size: int) -> None:
    if offset % FLASH_SECTOR or offset < 0:
        raise UnknownFormat(f"offset {offset:#x} is not on a 4 KB flash sector boundary")
    if size == 0 or offset + size > MAX_FLASH:
        raise UnknownFormat(f"an image of {size} B at {offset:#x} does not fit in {MAX_FLASH // 2**20} MB")


def frozen_modules(src: Path, chip: Chip) -> list[dict[str, str]]:
    """The modules the chip's freeze manifest freezes (`module("x.py")` lines), each with the
    SHA-256 of its source in `src`."""
    manifest = src / chip.freeze_manifest
    try:
        tree = ast.parse(manifest.read_text(encoding="utf-8"), filename=str(manifest))
    except (OSError, SyntaxError) as exc:
        raise BundleError(f"cannot read the freeze manifest {manifest}: {exc}") from exc
    frozen = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            path = src / node.args[0].value
            try:
                source = path.read_bytes()
            except OSError as exc:
                raise BundleError(f"{manifest} freezes {path.name}, which cannot be read: {exc}") from exc
            frozen.append({"module": path.stem, "source_sha256": hashlib.sha256(source).hexdigest()})
    return sorted(frozen, key=lambda entry: entry["module"])


# --- the bundle ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageBundle:
    """A full-image bundle as read: the manifest (parsed and its exact bytes), signature, image."""

    manifest: dict[str, Any]
    manifest_bytes: bytes
    signature: bytes
    image: bytes | None  # None only from read_image_bundle, when firmware.bin is absent

    @property
    def chip(self) -> Chip:
        return CHIPS[self.manifest["chip"]]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def offset(self) -> int:
        return int(self.manifest["offset"])

    @property
    def sha256(self) -> str:
        return str(self.manifest["image"]["sha256"])


def image_manifest(
    image: bytes,
    chip: Chip,
    *,
    version: str,
    release_key_id: str,
    created_at: datetime,
    offset: int | None = None,
    micropython: str | None = None,
    frozen: list[dict[str, str]] | None = None,
) -> bytes:
    """The manifest's exact bytes for `image` on `chip`."""
    if not _VERSION.match(version):
        raise BundleError(f"version {version!r}: letters, digits and . _ + - only, at most 64")
    offset = chip.offset if offset is None else offset
    _check_placement(offset, len(image))
    check_image(image, chip)
    manifest = {
        "format": IMAGE_BUNDLE_FORMAT,
        "chip": chip.name,
        "board": chip.micropython_board,
        "version": version,
        "micropython": micropython,
        "created_at": created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "key_id": release_key_id,
        "offset": offset,
        "image": {"path": IMAGE_NAME, "size": len(image), "sha256": hashlib.sha256(image).hexdigest()},
        "frozen": frozen or [],
    }
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def build_image_bundle(
    image_path: Path,
    *,
    chip: str,
    version: str,
    private_key: Ed25519PrivateKey,
    out_dir: Path,
    offset: int | None = None,
    micropython: str | None = None,
    src: Path = FIRMWARE_SRC,
    created_at: datetime | None = None,
) -> Path:
    """Check and sign the image at `image_path`; returns `<out_dir>/image-<chip>-<version>.zip`."""
    if chip not in CHIPS:
        raise BundleError(f"unknown chip {chip!r}; known: {', '.join(CHIPS)}")
    try:
        image = image_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read the image {image_path}: {exc.strerror}") from exc
    manifest_bytes = image_manifest(
        image,
        CHIPS[chip],
        version=version,
        release_key_id=key_id(private_key.public_key()),
        created_at=created_at or datetime.now(UTC),
        offset=offset,
        micropython=micropython,
        frozen=frozen_modules(src, CHIPS[chip]),
    )
    return write_signed_bundle(
        out_dir / f"image-{chip}-{version}.zip", manifest_bytes, private_key, {IMAGE_NAME: image}
    )


# --- reading and verifying ----------------------------------------------------------------------


def _check_manifest(manifest: Any) -> None:
    check_manifest_fields(
        manifest,
        expected_format=IMAGE_BUNDLE_FORMAT,
        fields=IMAGE_MANIFEST_FIELDS,
        other_kind="not a full-image bundle (an application bundle is flashed with `firmware flash`)",
    )
    if manifest["chip"] not in CHIPS:
        raise UnknownFormat(f"manifest.json: chip {manifest['chip']!r} is not one this tool writes")
    entry = manifest["image"]
    if not (
        entry.get("path") == IMAGE_NAME
        and isinstance(entry.get("size"), int)
        and isinstance(entry.get("sha256"), str)
    ):
        raise UnknownFormat(f"manifest.json: image must name {IMAGE_NAME} with its size and sha256")
    _check_placement(manifest["offset"], entry["size"])


def read_image_bundle(data: bytes) -> ImageBundle:
    """Parse a full-image bundle WITHOUT trusting it; write only `verify_image_bundle`'s."""
    manifest, manifest_bytes, signature, files = read_signed_zip(
        data,
        max_bytes=MAX_FLASH + 1024 * 1024,
        check_manifest=_check_manifest,
        expected_sha256=lambda manifest, path: manifest["image"]["sha256"] if path == IMAGE_NAME else None,
    )
    image = files.get(IMAGE_NAME)
    return ImageBundle(manifest=manifest, manifest_bytes=manifest_bytes, signature=signature, image=image)


def verify_image_bundle(data: bytes, public_key: Ed25519PublicKey) -> ImageBundle:
    """The bundle, if `public_key` signed exactly this manifest and the image is the manifest's.

    Order: format, key, signature, image, so the message names the first thing wrong.
    """
    bundle = read_image_bundle(data)
    check_release_signature(bundle.manifest, bundle.manifest_bytes, bundle.signature, public_key)
    if bundle.image is None:
        raise MissingFile(IMAGE_NAME)
    actual = hashlib.sha256(bundle.image).hexdigest()
    if actual != bundle.sha256 or len(bundle.image) != bundle.manifest["image"]["size"]:
        raise FileHashMismatch(IMAGE_NAME, bundle.sha256, actual)
    check_image(bundle.image, bundle.chip)  # signed as an image for this chip: still one
    return bundle
