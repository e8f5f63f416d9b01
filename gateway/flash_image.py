"""Write a signed full-image bundle to an ESP32 with esptool, and check it on the board.

`flash_image` does, in this order:

1. verifies the bundle against the release public key (`verify_image_bundle`); a bundle that
   fails is refused before the port is opened;
2. checks that the port exists (a device path; a `socket://` URL is checked by connecting);
3. runs the venv's `esptool` as a subprocess (as `gateway/flash.py` runs mpremote):

       esptool --chip esp32 --port PORT --baud B --before default-reset --after hard-reset
               --no-stub --connect-attempts N
               write-flash --flash-mode keep --flash-freq keep --flash-size keep OFFSET firmware.bin

   esptool resets the board into its ROM's download mode (DTR/RTS, as on every ESP32 dev
   board's USB-serial adapter), erases and writes the region, then has the ROM compute the
   MD5 of the written region and compares it with the image's (esptool 5 always verifies;
   the `--verify` flag of esptool 3 is gone). `keep` leaves the image's header bytes as built.
   Then it resets the board into the new firmware (`--after hard-reset`);
4. reports success only if esptool exited 0 AND said the hash was verified.

`--no-stub`: esptool talks to the ROM loader itself instead of first uploading its flasher
stub. Slower (no compression: about a minute for MicroPython's 1.6 MB at 460800 Bd), but it is
the path CI runs against `simulators/esp_rom.py`, which does not execute the stub's Xtensa
code, so what runs in the field is what is tested.

Failures are exceptions with a technician's words, never a stack trace: `PortNotFound` (no
such port, or another program holds it), `BoardNotAnswering` (the port opened but no ROM
answered: not in download mode, wrong cable, or esptool ran out of time), `VerifyMismatch`
(the flash does not hold the image: flash again before trusting the board), and
`EsptoolFailed` for anything else esptool refused (its own words: a chip that is not an ESP32,
an image larger than the flash...).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.errors import GatewayError
from gateway.firmware_image import IMAGE_NAME, ImageBundle, verify_image_bundle

__all__ = [
    "BoardNotAnswering",
    "EspPort",
    "EsptoolFailed",
    "ImageFlashError",
    "ImageFlashResult",
    "PortNotFound",
    "VerifyMismatch",
    "esptool_command",
    "find_esptool",
    "flash_image",
]

DEFAULT_BAUD = 460800


class ImageFlashError(GatewayError):
    """esptool could not put the image on the board, or could not show that it is there."""

    def __init__(self, device: str, message: str, esptool_output: str = "") -> None:
        super().__init__(f"{device}: {message}")
        self.device = device
        self.esptool_output = esptool_output


class PortNotFound(ImageFlashError):
    """The serial port does not exist, or another program holds it."""


class BoardNotAnswering(ImageFlashError):
    """The port opened, but no ROM bootloader answered esptool (or it stopped answering)."""


class VerifyMismatch(ImageFlashError):
    """The flash read back (as an MD5 computed by the ROM) is not the image that was sent."""


class EsptoolFailed(ImageFlashError):
    """esptool stopped for another reason; the message carries its words."""


def find_esptool() -> str:
    beside = Path(sys.executable).with_name("esptool")
    found = str(beside) if beside.exists() else shutil.which("esptool")
    if not found:
        raise EsptoolFailed("esptool", "esptool not found: pip install esptool (a dependency of kiosk-edge)")
    return found


@dataclass(frozen=True)
class EspPort:
    """One board as esptool reaches it: `/dev/ttyUSB0`, or `socket://HOST:PORT`."""

    device: str
    baud: int = DEFAULT_BAUD
    esptool: str = ""
    connect_attempts: int = 7  # esptool's default; each tries a reset and five syncs
    timeout_s: float = 900.0  # a whole 4 MB flash at 115200 Bd takes about 6 minutes


def esptool_command(port: EspPort, bundle: ImageBundle, image_path: Path) -> list[str]:
    """The esptool command line that writes `bundle`'s image (saved at `image_path`) to `port`."""
    return [
        port.esptool or find_esptool(),
        "--chip",
        bundle.chip.name,
        "--port",
        port.device,
        "--baud",
        str(port.baud),
        "--before",
        "default-reset",
        "--after",
        "hard-reset",
        "--no-stub",
        "--connect-attempts",
        str(port.connect_attempts),
        "write-flash",
        "--flash-mode",
        "keep",
        "--flash-freq",
        "keep",
        "--flash-size",
        "keep",
        f"{bundle.offset:#x}",
        str(image_path),
    ]


@dataclass(frozen=True)
class ImageFlashResult:
    chip: str
    version: str
    device: str
    offset: int
    bytes: int
    sha256: str
    seconds: float


# esptool's own lines (esptool 5.x cmds.py write_flash, __init__.py prepare_esp_object): the
# stage each one starts, for a progress display. Only words, so another esptool wording costs
# a stage name, never a wrong result: success needs exit status 0 and _VERIFIED.
_STAGES = (
    ("Connecting", "connecting"),
    ("Connected to", "connected"),
    ("Changing baud rate", "changing baud rate"),
    ("Erasing flash", "erasing"),
    ("Writing at", "writing"),
    ("Verifying written data", "verifying"),
    ("Hard resetting", "resetting the board"),
)
_WRITING_AT = re.compile(r"Writing at 0x([0-9a-fA-F]+)")
_VERIFIED = "Hash of data verified."
_FATAL = re.compile(r"A fatal error occurred: (.*)")
_ERRNO = re.compile(r"\[Errno \d+\] [^)\n]*")
_MD5 = re.compile(r"(Input|Flash) MD5: ([0-9a-f]{32})")


def _run_esptool(
    command: list[str],
    port: EspPort,
    offset: int,
    on_stage: Callable[[str], None] | None,
    on_written: Callable[[int], None] | None,
) -> tuple[int, str, bool]:
    """Run esptool, report stages and bytes written as its lines come; (status, output, timed out)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # lines as they happen, for progress
    try:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env
        )
    except OSError as exc:
        raise EsptoolFailed(port.device, f"cannot run esptool: {exc}") from exc
    assert process.stdout is not None
    watchdog = threading.Timer(port.timeout_s, process.kill)  # a board that stops answering mid-way
    watchdog.start()
    lines: list[str] = []
    try:
        for line in process.stdout:
            lines.append(line)
            text = line.strip()
            for prefix, stage in _STAGES:
                if text.startswith(prefix) and on_stage is not None:
                    on_stage(stage)
            match = _WRITING_AT.search(text)
            if match and on_written is not None:
                # "Writing at ADDRESS": the address after the bytes written so far.
                on_written(max(0, int(match.group(1), 16) - offset))
        status = process.wait()
    finally:
        timed_out = not watchdog.is_alive() and process.returncode != 0
        watchdog.cancel()
    return status, "".join(lines), timed_out


def _failure(port: EspPort, status: int, output: str) -> ImageFlashError:
    """The exception that says in a technician's words why esptool stopped."""
    fatal = _FATAL.search(output)
    said = fatal.group(1).strip() if fatal else (output.strip().splitlines() or [f"exit status {status}"])[-1]
    if "Could not open" in said:
        errno = _ERRNO.search(output)
        return PortNotFound(
            port.device,
            "cannot open the serial port: it does not exist, or another program holds it"
            + (f" ({errno.group(0).strip()})" if errno else ""),
            output,
        )
    if "Failed to connect" in said or "stopped responding" in said:
        return BoardNotAnswering(
            port.device,
            "the board does not answer esptool: it is not in download mode (hold BOOT, press "
            "EN/RESET, release BOOT, and try again), or the cable carries power only "
            f"(esptool: {said})",
            output,
        )
    if "MD5 of file does not match" in said or "written flash region is empty" in said:
        md5 = dict(_MD5.findall(output))
        sums = f" (sent MD5 {md5['Input']}, flash MD5 {md5['Flash']})" if len(md5) == 2 else ""
        return VerifyMismatch(
            port.device,
            f"verification failed: the flash does not hold the image that was sent{sums}; "
            "the board may not start: flash it again",
            output,
        )
    return EsptoolFailed(port.device, f"esptool failed: {said}", output)


def flash_image(
    bundle_data: bytes,
    public_key: Ed25519PublicKey,
    port: EspPort,
    *,
    on_bundle: Callable[[ImageBundle], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_written: Callable[[int], None] | None = None,
) -> ImageFlashResult:
    """Verify the bundle, write its image with esptool, and return what was written.

    `on_bundle(bundle)` is called once the bundle is trusted (before the port is touched),
    `on_stage(name)` as esptool moves on (connecting, erasing, writing, verifying...),
    `on_written(n)` with the bytes written so far.
    """
    bundle = verify_image_bundle(bundle_data, public_key)  # refuses before any contact with the board
    assert bundle.image is not None
    if on_bundle is not None:
        on_bundle(bundle)
    if "://" not in port.device and not os.path.exists(port.device):
        raise PortNotFound(port.device, "no such serial port (is the board plugged in? see `ls /dev/tty*`)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kiosk-image-") as staging:
        image_path = Path(staging) / IMAGE_NAME
        image_path.write_bytes(bundle.image)
        command = esptool_command(port, bundle, image_path)
        status, output, timed_out = _run_esptool(command, port, bundle.offset, on_stage, on_written)
    if timed_out:
        raise BoardNotAnswering(port.device, f"esptool did not finish in {port.timeout_s:.0f} s", output)
    if status != 0:
        raise _failure(port, status, output)
    if _VERIFIED not in output:
        raise VerifyMismatch(
            port.device, "esptool finished but did not report the written data verified: not trusted", output
        )
    return ImageFlashResult(
        chip=bundle.chip.name,
        version=bundle.version,
        device=port.device,
        offset=bundle.offset,
        bytes=len(bundle.image),
        sha256=bundle.sha256,
        seconds=time.monotonic() - started,
    )
