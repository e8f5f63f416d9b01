"""`kiosk-gateway firmware bundle-image | verify-image | flash-image`: full images with esptool.

    kiosk-gateway firmware bundle-image firmware.bin --chip esp32 --version 1.24.1-kiosk.1 \\
        --micropython v1.24.1 --key release-keys/release-signing.pem --out build/bundles
    kiosk-gateway firmware verify-image build/bundles/image-esp32-1.24.1-kiosk.1.zip --public-key ...
    kiosk-gateway firmware flash-image build/bundles/image-esp32-1.24.1-kiosk.1.zip \\
        --device /dev/ttyUSB0 --public-key release-signing.pub.pem

Registered on the `firmware` group by `register(firmware_app)` (gateway/tech_cli.py). Exit
status as the other firmware commands: 0 done; 1 refused (the bundle is not trusted, or the
request makes no sense; the board was not touched); 2 the board or esptool failed.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from gateway.firmware_bundle import FIRMWARE_SRC, BundleError, load_private_key, load_public_key
from gateway.firmware_image import CHIPS, ImageBundle, build_image_bundle, verify_image_bundle
from gateway.flash_image import DEFAULT_BAUD, EspPort, ImageFlashError, flash_image

__all__ = ["register"]

_console = Console()
_errors = Console(stderr=True)


def _fail(message: str, code: int) -> typer.Exit:
    _errors.print(escape(message), highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _offset(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not a number (e.g. 0x1000)") from exc


def _describe(bundle: ImageBundle) -> str:
    micropython = (
        f" on MicroPython {bundle.manifest['micropython']}" if bundle.manifest["micropython"] else ""
    )
    return (
        f"{bundle.chip.name} image {bundle.version}{micropython} ({bundle.manifest['board']}), "
        f"{bundle.manifest['image']['size']} B at {bundle.offset:#x}, "
        f"{len(bundle.manifest['frozen'])} frozen modules, built {bundle.manifest['created_at']}, "
        f"signed by release key {bundle.manifest['key_id']}"
    )


def bundle_image_command(
    image: Path = typer.Argument(..., metavar="FIRMWARE_BIN", help="MicroPython's build output."),
    chip: str = typer.Option("esp32", "--chip", help=f"One of: {', '.join(CHIPS)}."),
    version: str = typer.Option(..., "--version", help="This image's version, e.g. 1.24.1-kiosk.1."),
    key: Path = typer.Option(..., "--key", help="The release private key (PEM)."),
    out: Path = typer.Option(Path("build/bundles"), "--out", help="Directory for the bundle."),
    offset: str | None = typer.Option(
        None, "--offset", help="Flash offset (default: the chip's, 0x1000 on an ESP32)."
    ),
    micropython: str | None = typer.Option(
        None, "--micropython", help="MicroPython's version the image was built from (recorded)."
    ),
    src: Path = typer.Option(FIRMWARE_SRC, "--src", help="Firmware sources (the freeze manifest)."),
) -> None:
    """Sign a full flash image (MicroPython with the kiosk modules frozen in) as one bundle."""
    try:
        private_key = load_private_key(key)
        path = build_image_bundle(
            image,
            chip=chip,
            version=version,
            private_key=private_key,
            out_dir=out,
            offset=_offset(offset),
            micropython=micropython,
            src=src,
        )
    except BundleError as exc:
        raise _fail(f"error: {exc}", 1) from exc
    bundle = verify_image_bundle(path.read_bytes(), private_key.public_key())
    typer.echo(f"{path}: {_describe(bundle)}")


def verify_image_command(
    bundle_path: Path = typer.Argument(..., metavar="BUNDLE"),
    public_key: Path = typer.Option(
        ..., "--public-key", envvar="KIOSK_RELEASE_PUBLIC_KEY", help="The release public key (PEM)."
    ),
) -> None:
    """Check a full-image bundle's signature and image; say what is wrong if anything is."""
    try:
        bundle = verify_image_bundle(bundle_path.read_bytes(), load_public_key(public_key))
    except OSError as exc:
        raise _fail(f"cannot read {bundle_path}: {exc.strerror}", 1) from exc
    except BundleError as exc:
        raise _fail(f"refused: {bundle_path}: {exc}", 1) from exc
    typer.echo(f"ok: {bundle_path}: {_describe(bundle)}")
    typer.echo(f"  {bundle.manifest['image']['path']}  sha256 {bundle.sha256}")
    for entry in bundle.manifest["frozen"]:
        typer.echo(f"  frozen {entry['module']:<16} source sha256 {entry['source_sha256']}")


def flash_image_command(
    bundle_path: Path = typer.Argument(..., metavar="BUNDLE"),
    device: str = typer.Option(
        ..., "--device", "-d", help="The board's serial port: /dev/ttyUSB0, /dev/ttyACM0, socket://HOST:PORT."
    ),
    public_key: Path = typer.Option(
        ..., "--public-key", envvar="KIOSK_RELEASE_PUBLIC_KEY", help="The release public key (PEM)."
    ),
    baud: int = typer.Option(
        DEFAULT_BAUD, "--baud", help="Baud rate while writing (115200 if the cable is long)."
    ),
    connect_attempts: int = typer.Option(
        7, "--connect-attempts", help="Times esptool tries to reach the ROM."
    ),
) -> None:
    """Verify a full-image bundle, then write it with esptool (ROM loader) and check it on the board.

    Rewrites MicroPython and the frozen kiosk modules; esptool then resets the board into them.
    Only the sectors the image covers are erased: on ESP32_GENERIC's 4 MB layout the filesystem
    partition starts at 0x200000, past MicroPython's image, so main.py on the board stays.
    """
    try:
        data = bundle_path.read_bytes()
        key = load_public_key(public_key)
    except OSError as exc:
        raise _fail(f"cannot read {bundle_path}: {exc.strerror}", 1) from exc
    except BundleError as exc:
        raise _fail(f"error: {exc}", 1) from exc
    port = EspPort(device, baud=baud, connect_attempts=connect_attempts)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_console,
    ) as progress:
        task = progress.add_task(f"checking {escape(bundle_path.name)}", total=None)

        def trusted(bundle: ImageBundle) -> None:
            progress.console.print(f"trusted: {escape(_describe(bundle))}", highlight=False)
            progress.console.print(f"writing it to {escape(device)} with esptool", highlight=False)
            progress.update(task, total=len(bundle.image or b""), description="opening the port")

        try:
            result = flash_image(
                data,
                key,
                port,
                on_bundle=trusted,
                on_stage=lambda stage: progress.update(task, description=stage),
                on_written=lambda done: progress.update(task, completed=done),
            )
        except BundleError as exc:
            raise _fail(f"refused, the board was not touched: {bundle_path}: {exc}", 1) from exc
        except ImageFlashError as exc:
            raise _fail(f"flash-image failed: {exc}", 2) from exc
    typer.echo(
        f"wrote {result.chip} image {result.version} to {device}: {result.bytes} B at {result.offset:#x} "
        f"in {result.seconds:.1f} s; esptool verified the flash (MD5 computed on the board); "
        f"image sha256 {result.sha256[:16]}…; the board was reset to start it"
    )


def register(firmware_app: typer.Typer) -> None:
    """Add the full-image commands to the `firmware` command group."""
    firmware_app.command("bundle-image")(bundle_image_command)
    firmware_app.command("verify-image")(verify_image_command)
    firmware_app.command("flash-image")(flash_image_command)
