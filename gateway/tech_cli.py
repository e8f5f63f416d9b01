"""`kiosk-gateway firmware ...`: the technician's commands for signed firmware bundles.

    kiosk-gateway firmware keygen --out release-keys/            (once, on the release machine)
    kiosk-gateway firmware build bp_app --target esp32 --key release-keys/release-signing.pem
    kiosk-gateway firmware verify bp_app-0.1.0-esp32.zip --public-key release-signing.pub.pem
    kiosk-gateway firmware flash bp_app-0.1.0-esp32.zip --device /dev/ttyUSB0 --public-key ...
    kiosk-gateway firmware rollback --device /dev/ttyUSB0 --public-key ...
    kiosk-gateway firmware update-over-link bp_app-0.2.0-esp32.zip --device bp-0001

Exit status: 0 done; 1 refused (the bundle is not trusted, or the request makes no sense);
2 the board or the build failed (mpremote's or the compiler's words are printed), or an update
over the link did not take (rolled back, or the board stopped answering).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)

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


_STATE_WORDS = {
    "offering": "offering",
    "transferring": "sending",
    "committing": "checking on the board",
    "rebooting": "waiting for its hello",
}


@firmware_app.command("update-over-link")
def update_over_link(
    bundle_path: Path = typer.Argument(..., metavar="BUNDLE"),
    device: str = typer.Option(
        ..., "--device", "-d", help="The board's id (as in its hello, e.g. bp-0001) or its serial port."
    ),
    api: str = typer.Option("http://127.0.0.1:8700", "--api", help="The running gateway's local API."),
    public_key: Path | None = typer.Option(
        None,
        "--public-key",
        envvar="KIOSK_RELEASE_PUBLIC_KEY",
        help="Check the bundle here first too; the gateway always checks it with its own release key.",
    ),
    give_up_after: float = typer.Option(
        30.0, "--give-up-after", help="Seconds without an answer from the board before the transfer stops."
    ),
    confirm_timeout: float = typer.Option(
        180.0, "--confirm-timeout", help="Seconds after the commit to wait for the board's hello."
    ),
) -> None:
    """Update a board in a kiosk through the running gateway, over the kiosk link (no USB cable).

    The gateway checks the bundle against its release key before sending anything, sends it in
    chunks the board stages and hashes, and waits for the board's hello with the new version; a
    version that never says hello is rolled back by the board. Sent again after a cut, the same
    bundle resumes where it stopped.
    """
    import httpx

    try:
        data = bundle_path.read_bytes()
        if public_key is not None:
            verify_bundle(data, load_public_key(public_key))
    except OSError as exc:
        raise _fail(f"cannot read {bundle_path}: {exc.strerror}", 1) from exc
    except BundleError as exc:
        raise _fail(f"refused, nothing was sent: {bundle_path}: {exc}", 1) from exc
    base = api.rstrip("/")
    try:
        answer = httpx.post(
            f"{base}/api/firmware/updates",
            params={"device": device, "stall_timeout_s": give_up_after, "confirm_timeout_s": confirm_timeout},
            content=data,
            headers={"Content-Type": "application/zip"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise _fail(f"the gateway at {api} does not answer: {exc}", 2) from exc
    if answer.status_code != 202:
        body = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else {}
        raise _fail(f"refused: {body.get('message') or answer.text}", 1)
    status = answer.json()
    status = _follow(base, status, give_up_after + confirm_timeout + 30)
    if status["state"] == "updated":
        resumed = (
            f"; {status['resumed_bytes']} B were already on the board from an earlier try"
            if status["resumed_bytes"]
            else ""
        )
        typer.echo(
            f"updated {status['device_id']} from {status['from_version']} to {status['to_version']} "
            f"over {status['port']}: {status['total_bytes']} B, every SHA-256 checked on the board{resumed}"
        )
        return
    raise _fail(f"update {status['state'].replace('_', ' ')}: {status['detail']}", 2)


def _follow(base: str, status: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Poll the gateway until the update is over, with a progress bar of the bytes on the board."""
    import httpx

    from gateway.link_update import FINAL_STATES

    deadline = time.monotonic() + timeout_s
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=_console,
    ) as progress:
        task = progress.add_task(f"{escape(status['device_id'])}: offering", total=status["total_bytes"])
        while status["state"] not in FINAL_STATES:
            if time.monotonic() > deadline:
                raise _fail("the gateway never said how the update ended; see its log", 2)
            time.sleep(0.2)
            try:
                views = httpx.get(f"{base}/api/firmware/updates", timeout=5).raise_for_status().json()
            except httpx.HTTPError:
                continue  # the gateway is busy or restarting: keep asking until the deadline
            mine = [v for v in views if v["update_id"] == status["update_id"] and v["port"] == status["port"]]
            if mine:
                status = mine[0]
            words = _STATE_WORDS.get(status["state"], status["state"])
            progress.update(
                task, completed=status["sent_bytes"], description=f"{escape(status['device_id'])}: {words}"
            )
    return status


# Full flash images written with esptool (gateway/flash_image_cli.py): bundle-, verify-, flash-image.
from gateway.flash_image_cli import register as _register_image_commands  # noqa: E402

_register_image_commands(firmware_app)
