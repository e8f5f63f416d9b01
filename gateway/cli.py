"""`kiosk-gateway`: provision and run a gateway."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from gateway.config import load_config
from gateway.errors import GatewayError, ProfileError
from gateway.keys import PUBLIC_KEY_FILE, create_keys
from gateway.profiles import DeviceProfile, load_profile, load_profiles

app = typer.Typer(help="Kiosk gateway: ingest, store and sync readings.", no_args_is_help=True)


@app.command()
def init(data_dir: Path = typer.Option(..., help="Directory for keys and the outbox database.")) -> None:
    """Create the gateway's signing key and storage key (refuses to overwrite existing keys)."""
    try:
        create_keys(data_dir)
    except FileExistsError as exc:
        typer.echo(f"keys already exist in {data_dir}: {exc.filename}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"keys created; enrol {data_dir / PUBLIC_KEY_FILE} with the bridge")


@app.command()
def run(config: Path = typer.Option(..., "--config", "-c", help="Gateway TOML configuration.")) -> None:
    """Run the gateway service until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(levelname)s %(name)s: %(message)s")
    from gateway.service import run_gateway

    try:
        asyncio.run(run_gateway(load_config(config)))
    except GatewayError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


devices = typer.Typer(help="Device profiles: the models this gateway accepts.", no_args_is_help=True)
app.add_typer(devices, name="devices")

PROFILES_OPTION = typer.Option(Path("device_profiles"), "--profiles", help="Device profile directory.")


def _load_or_exit(profiles_dir: Path) -> dict[str, DeviceProfile]:
    try:
        return load_profiles(profiles_dir)
    except ProfileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@devices.command("list")
def list_devices(profiles_dir: Path = PROFILES_OPTION) -> None:
    """One line per model: vendor, transport, protocol, what it measures."""
    table = Table("model", "vendor", "transport", "protocol", "measures", "firmware")
    for profile in _load_or_exit(profiles_dir).values():
        firmware = f"{profile.firmware.image} {profile.firmware.version}" if profile.firmware else "-"
        table.add_row(
            profile.model,
            profile.vendor,
            profile.transport,
            profile.protocol,
            ", ".join(profile.kinds),
            firmware,
        )
    Console().print(table)


@devices.command("show")
def show_device(model: str, profiles_dir: Path = PROFILES_OPTION) -> None:
    """Every field of one model: unit, plausible range, LOINC and MDC codes; ECG waveform."""
    profiles = _load_or_exit(profiles_dir)
    if model not in profiles:
        typer.echo(f"no profile for model {model!r}; known: {', '.join(sorted(profiles))}", err=True)
        raise typer.Exit(1)
    profile = profiles[model]
    console = Console()
    console.print(f"[bold]{profile.model}[/] — {profile.name} ({profile.vendor})")
    console.print(f"transport {profile.transport}, protocol {profile.protocol}")
    for kind, spec in profile.kinds.items():
        table = Table(
            "field",
            "unit",
            "plausible range",
            "LOINC",
            "MDC",
            title=f"{kind} (required: {', '.join(spec.required) or '-'})",
        )
        for name, field in spec.fields.items():
            table.add_row(
                name,
                field.unit,
                f"{field.range[0]} .. {field.range[1]}",
                field.loinc or "-",
                field.mdc or "-",
            )
        console.print(table)
        if spec.waveform:
            wave = spec.waveform
            leads = ", ".join(wave.leads)
            console.print(
                f"  waveform: {wave.sample_rate_hz} Hz, {wave.resolution_uv} µV per count, leads {leads}"
            )


@devices.command("validate")
def validate_devices(
    paths: list[Path] = typer.Argument(None, help="Profile files (default: the whole directory)."),
    profiles_dir: Path = PROFILES_OPTION,
) -> None:
    """Check profile files; every problem names its file and field. Exit 1 if any is invalid."""
    files = paths or sorted(profiles_dir.glob("*.toml"))
    failed = 0
    for path in files:
        try:
            profile = load_profile(path)
        except ProfileError as exc:
            failed += 1
            typer.echo(f"invalid: {exc}", err=True)
            continue
        typer.echo(f"ok: {path} ({profile.model})")
    if not paths:
        _load_or_exit(profiles_dir)  # also the registry checks: no duplicate model
    if failed:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
