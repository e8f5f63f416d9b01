"""`kiosk-gateway firmware ...`: the technician's commands for signed firmware bundles.

    kiosk-gateway firmware keygen --out release-keys/            (once, on the release machine)
    kiosk-gateway firmware build bp_app --target esp32 --key release-keys/release-signing.pem
    kiosk-gateway firmware verify bp_app-0.1.0-esp32.zip --public-key release-signing.pub.pem
    kiosk-gateway firmware flash bp_app-0.1.0-esp32.zip --device /dev/ttyUSB0 --public-key ...
    kiosk-gateway firmware rollback --device /dev/ttyUSB0 --public-key ...

Exit status: 0 done; 1 refused (the bundle is not trusted, or the request makes no sense);
2 the board or the build failed (mpremote's or the compiler's words are printed).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from firmware.build import TARGETS, BuildError
from gateway.firmware_bundle import (
    FIRMWARE_SRC,
    BundleError,
    build_bundle,
    create_release_keys,
    key_id,
    load_private_key,
    load_public_key,
    verify_bundle,
)
from gateway.flash import BoardConnection, FlashError, flash, rollback

__all__ = ["firmware_app"]

firmware_app = typer.Typer(
    help="Signed firmware bundles for the peripheral boards: build, verify, flash, roll back.",
    no_args_is_help=True,
)

PUBLIC_KEY_OPTION = typer.Option(
    ...,
    "--public-key",
    envvar="KIOSK_RELEASE_PUBLIC_KEY",
    help="The release public key (PEM) bundles must be signed with.",
)
DEVICE_OPTION = typer.Option(
    ...,
    "--device",
    "-d",
    help="What `mpremote connect` takes: /dev/ttyUSB0, /dev/ttyACM0, socket://HOST:PORT.",
)

_console = Console()
_errors = Console(stderr=True)


def _fail(message: str, code: int) -> typer.Exit:
    _errors.print(escape(message), highlight=False, soft_wrap=True)
    return typer.Exit(code)


@firmware_app.command()
def keygen(
    out: Path = typer.Option(..., "--out", help="Directory for the release key pair."),
) -> None:
    """Create the release signing key (0600) and its public key; refuses to overwrite."""
    try:
        private_path, public_path = create_release_keys(out)
    except FileExistsError as exc:
        raise _fail(f"a release key already exists: {exc.filename}", 1) from exc
    public = load_public_key(public_path)
    typer.echo(f"release key {key_id(public)}: private {private_path} (keep it off the gateways)")
    typer.echo(f"give {public_path} to the gateways and technicians")


@firmware_app.command()
def build(
    app_name: str = typer.Argument(..., metavar="APP", help="Board application, e.g. bp_app."),
    target: str = typer.Option(..., "--target", help=f"One of: {', '.join(TARGETS)}."),
    key: Path = typer.Option(..., "--key", help="The release private key (PEM)."),
    out: Path = typer.Option(Path("build/bundles"), "--out", help="Directory for the bundle."),
    src: Path = typer.Option(FIRMWARE_SRC, "--src", help="Firmware sources."),
) -> None:
    """Compile APP's modules with mpy-cross and write one signed bundle."""
    try:
        private_key = load_private_key(key)
        path = build_bundle(app_name, target=target, private_key=private_key, out_dir=out, src=src)
    except BundleError as exc:
        raise _fail(f"error: {exc}", 1) from exc
    except BuildError as exc:
        raise _fail(f"firmware build failed: {exc}", 2) from exc
    bundle = verify_bundle(path.read_bytes(), private_key.public_key())
    typer.echo(
        f"{path}: {bundle.app} {bundle.version} for {bundle.target}, {len(bundle.files)} files, "
        f"signed by release key {bundle.manifest['key_id']}"
    )


@firmware_app.command()
def verify(
    bundle_path: Path = typer.Argument(..., metavar="BUNDLE"),
    public_key: Path = PUBLIC_KEY_OPTION,
) -> None:
    """Check a bundle's signature and every file; say what is wrong if anything is."""
    try:
        bundle = verify_bundle(bundle_path.read_bytes(), load_public_key(public_key))
    except OSError as exc:
        raise _fail(f"cannot read {bundle_path}: {exc.strerror}", 1) from exc
    except BundleError as exc:
        raise _fail(f"refused: {bundle_path}: {exc}", 1) from exc
    typer.echo(
        f"ok: {bundle_path}: {bundle.app} {bundle.version} ({bundle.manifest['model']}) for "
        f"{bundle.target}, built {bundle.manifest['created_at']}, {len(bundle.files)} files, "
        f"signed by release key {bundle.manifest['key_id']}"
    )
    for entry in bundle.file_entries:
        typer.echo(f"  {entry['path']:<20} {entry['size']:>7} B  sha256 {entry['sha256']}")


@firmware_app.command("flash")
def flash_command(
    bundle_path: Path = typer.Argument(..., metavar="BUNDLE"),
    device: str = DEVICE_OPTION,
    public_key: Path = PUBLIC_KEY_OPTION,
) -> None:
    """Verify the bundle, copy it to the board (the old version kept in prev/), check it there."""
    try:
        data = bundle_path.read_bytes()
        key = load_public_key(public_key)
    except OSError as exc:
        raise _fail(f"cannot read {bundle_path}: {exc.strerror}", 1) from exc
    except BundleError as exc:
        raise _fail(f"error: {exc}", 1) from exc
    board = BoardConnection(device)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=_console
    ) as progress:
        task = progress.add_task(f"copying to {escape(device)}", total=None)
        try:
            result = flash(
                data,
                key,
                board,
                on_total=lambda total: progress.update(task, total=total),
                on_copied=lambda name: progress.update(task, advance=1, description=f"copied {escape(name)}"),
            )
        except BundleError as exc:
            raise _fail(f"refused, the board was not touched: {bundle_path}: {exc}", 1) from exc
        except FlashError as exc:
            raise _fail(f"flash failed: {exc}", 2) from exc
    kept = (
        f"version {result.previous_version} kept in prev/"
        if result.previous_version
        else "no signed version was installed before (files it replaced are kept in prev/)"
    )
    typer.echo(
        f"flashed {result.app} {result.version} to {device}: {result.files} files, {result.bytes} B, "
        f"every SHA-256 checked on the board; {kept}"
    )
    typer.echo(f"reset the board to start it: mpremote connect {device} reset")


@firmware_app.command("rollback")
def rollback_command(device: str = DEVICE_OPTION, public_key: Path = PUBLIC_KEY_OPTION) -> None:
    """Put back the version kept in prev/ (the current one takes its place), then check it."""
    try:
        key = load_public_key(public_key)
    except BundleError as exc:
        raise _fail(f"error: {exc}", 1) from exc
    try:
        result = rollback(BoardConnection(device), key)
    except FlashError as exc:
        raise _fail(f"rollback failed: {exc}", 2) from exc
    restored = result.version or "files without a manifest (set up by hand; not checked)"
    typer.echo(
        f"rolled back {device} from {result.rolled_back_from or 'an unrecorded version'} to {restored}; "
        f"reset the board to start it"
    )
