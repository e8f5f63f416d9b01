"""`kiosk-gateway`: provision and run a gateway."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gateway.alerts import ALERT_RULES_DIR, AlertRules, available_regions, load_alert_rules, load_rules_file
from gateway.ble_ingest import FoundDevice, find_devices
from gateway.config import KioskUiConfig, load_config
from gateway.errors import GatewayError, ProfileError
from gateway.keys import PUBLIC_KEY_FILE, create_keys, create_tls_request
from gateway.operators import OPERATORS_DB, OperatorError, Operators
from gateway.profiles import PROTOCOLS, DeviceProfile, load_profile, load_profiles, short_uuid
from gateway.provision import provision_command
from gateway.run_command import run
from gateway.tech_cli import firmware_app
from gateway.transports.ble import BleakCentral, BleUnavailable

T = TypeVar("T")

app = typer.Typer(help="Kiosk gateway: ingest, store and sync readings.", no_args_is_help=True)
app.add_typer(firmware_app, name="firmware")
app.command("provision")(provision_command)  # keys + TLS request + enrolment + gateway.toml


@app.command()
def init(data_dir: Path = typer.Option(..., help="Directory for keys and the outbox database.")) -> None:
    """Create the gateway's signing key and storage key (refuses to overwrite existing keys)."""
    try:
        create_keys(data_dir)
    except FileExistsError as exc:
        typer.echo(f"keys already exist in {data_dir}: {exc.filename}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"keys created; enrol {data_dir / PUBLIC_KEY_FILE} with the bridge")


@app.command("tls-request")
def tls_request(
    gateway_id: str,
    data_dir: Path = typer.Option(..., help="The gateway's data directory (keys live there)."),
) -> None:
    """Make the MQTT TLS key (kept here, 0600) and a certificate request for the community's CA."""
    try:
        request = create_tls_request(data_dir, gateway_id)
    except FileExistsError as exc:
        typer.echo(f"a TLS key already exists in {data_dir}: {exc.filename}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"request {request}: have the bridge sign it (kiosk-bridge ca sign {gateway_id} ...)")


app.command("run")(run)  # also `kiosk-gateway run`, which loads only gateway/run_command.py


devices = typer.Typer(help="Device profiles: the models this gateway accepts.", no_args_is_help=True)
app.add_typer(devices, name="devices")

PROFILES_OPTION = typer.Option(Path("device_profiles"), "--profiles", help="Device profile directory.")
REGION_OPTION = typer.Option(
    "CN",
    "--region",
    help="Alert-rule region: <profiles>/alert_rules/<region>.toml (the gateway's alert_region).",
)


def _load_or_exit(profiles_dir: Path) -> dict[str, DeviceProfile]:
    try:
        return load_profiles(profiles_dir)
    except ProfileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def _rules_or_exit(profiles_dir: Path, region: str) -> AlertRules:
    try:
        return load_alert_rules(profiles_dir, region)
    except ProfileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def _add_row(table: Table, *cells: str) -> None:
    """Cells are data, not Rich markup: "[degF]" and "[lb_av]" must print as written."""
    table.add_row(*(escape(cell) for cell in cells))


def _connection(profile: DeviceProfile) -> str:
    if profile.ble is not None:
        ble = profile.ble
        bond = "bond" if ble.bond else "no bond"
        return f"{short_uuid(ble.service)} '{ble.name_prefix}*', {bond}"
    return f"firmware {profile.firmware.image} {profile.firmware.version}" if profile.firmware else "-"


@devices.command("list")
def list_devices(profiles_dir: Path = PROFILES_OPTION, region: str = REGION_OPTION) -> None:
    """One line per model: vendor, transport, protocol, what it measures, how it connects."""
    profiles = _load_or_exit(profiles_dir)
    rules = _rules_or_exit(profiles_dir, region)
    table = Table("model", "vendor", "transport", "protocol", "measures", "connection")
    for profile in profiles.values():
        _add_row(
            table,
            profile.model,
            profile.vendor,
            profile.transport,
            profile.protocol,
            ", ".join(profile.kinds),
            _connection(profile),
        )
    console = Console()
    console.print(table)
    console.print(escape(f"alert rules: region {rules.region} ({rules.name}), {len(rules.rules)} rules"))


@devices.command("show")
def show_device(model: str, profiles_dir: Path = PROFILES_OPTION, region: str = REGION_OPTION) -> None:
    """Everything about one model: connection, fields (unit, plausible range and what happens
    outside it, LOINC and MDC codes), ECG waveform, and the alert rules of the region."""
    profiles = _load_or_exit(profiles_dir)
    if model not in profiles:
        typer.echo(f"no profile for model {model!r}; known: {', '.join(sorted(profiles))}", err=True)
        raise typer.Exit(1)
    rules = _rules_or_exit(profiles_dir, region)
    profile = profiles[model]
    console = Console()
    console.print(f"[bold]{escape(profile.model)}[/] — {escape(profile.name)} ({escape(profile.vendor)})")
    protocol = PROTOCOLS[profile.protocol]
    console.print(escape(f"transport {profile.transport}, protocol {profile.protocol} ({protocol.title})"))
    if profile.firmware:
        console.print(escape(f"firmware image {profile.firmware.image} {profile.firmware.version}"))
    if profile.ble:
        ble = profile.ble
        table = Table("BLE", "value", title="Bluetooth")
        _add_row(table, "service", f"{short_uuid(ble.service)}  {ble.service}")
        for uuid in ble.measurements:
            _add_row(table, "measurement", f"{short_uuid(uuid)}  {uuid}")
        if ble.racp:
            _add_row(table, "record access (RACP)", f"{short_uuid(ble.racp)}  {ble.racp}")
        if ble.context:
            _add_row(table, "measurement context", f"{short_uuid(ble.context)}  {ble.context}")
        _add_row(table, "advertised name", f"starts with '{ble.name_prefix}'")
        _add_row(table, "bond before reading", "yes" if ble.bond else "no")
        _add_row(table, "stored records", "yes (downloaded through the RACP)" if ble.stored_records else "no")
        console.print(table)
    for kind, spec in profile.kinds.items():
        table = Table(
            "field",
            "unit",
            "plausible range",
            "out of range",
            "LOINC",
            "MDC",
            title=f"{kind} (required: {', '.join(spec.required) or '-'})",
        )
        for name, field in spec.fields.items():
            _add_row(
                table,
                name,
                " or ".join(field.units),
                f"{field.range[0]} .. {field.range[1]} {field.unit}",
                "flag and keep" if field.out_of_range == "flag" else "refuse",
                field.loinc or "-",
                field.mdc or "-",
            )
        console.print(table)
        if spec.waveform:
            wave = spec.waveform
            leads = ", ".join(wave.leads)
            console.print(
                escape(
                    f"  waveform: {wave.sample_rate_hz} Hz, {wave.resolution_uv} µV per count, leads {leads}"
                )
            )
        kind_rules = rules.for_kind(kind)
        if kind_rules:
            table = Table(
                "rule",
                "severity",
                "when",
                "only with flags",
                "message",
                title=f"{kind}: alert rules, region {rules.region}",
            )
            for rule in kind_rules:
                _add_row(
                    table,
                    rule.id,
                    rule.severity,
                    " or ".join(condition.describe() for condition in rule.when),
                    ", ".join(rule.requires_flags) or "-",
                    rule.message.en,
                )
            console.print(table)


@devices.command("validate")
def validate_devices(
    paths: list[Path] = typer.Argument(
        None, help="Profile or alert-rule files (default: the whole directory)."
    ),
    profiles_dir: Path = PROFILES_OPTION,
) -> None:
    """Check profile and alert-rule files; every problem names its file and field. Exit 1 if any is invalid.

    A file in an alert_rules folder is read as a region's alert rules, any other as a device profile.
    """
    files = paths or [
        *sorted(profiles_dir.glob("*.toml")),
        *sorted((profiles_dir / ALERT_RULES_DIR).glob("*.toml")),
    ]
    failed = 0
    for path in files:
        try:
            if path.parent.name == ALERT_RULES_DIR:
                rules = load_rules_file(path)
                typer.echo(f"ok: {path} (alert rules, region {rules.region}, {len(rules.rules)} rules)")
            else:
                profile = load_profile(path)
                typer.echo(f"ok: {path} ({profile.model}, {profile.transport} {profile.protocol})")
        except ProfileError as exc:
            failed += 1
            typer.echo(f"invalid: {exc}", err=True)
    if not paths:
        _load_or_exit(profiles_dir)  # also the registry checks: no duplicate model
        if not available_regions(profiles_dir):
            typer.echo(f"invalid: {profiles_dir / ALERT_RULES_DIR}: no alert rule files", err=True)
            failed += 1
    if failed:
        raise typer.Exit(1)


def peripheral_rows(status: dict[str, object]) -> list[list[str]]:
    """One row per peripheral of the status API: link, device, model, firmware, state, frames,
    CRC errors, resent, battery, last error. Works for serial boards and Bluetooth devices alike."""
    rows = []
    for item in status.get("peripherals", []):  # type: ignore[union-attr]
        assert isinstance(item, dict)
        device = item.get("device") or {}
        counters = item.get("counters") or {}
        if item.get("transport") == "ble":
            link_name, state = f"ble {item.get('address')}", "connected" if item.get("connected") else "away"
            frames, crc, resent = (
                counters.get("notifications", 0),
                counters.get("parse_errors", 0),
                counters.get("duplicates", 0),
            )
        else:
            link_name, state = f"serial {item.get('port')}", "up" if device else "no hello"
            frames, crc, resent = (
                counters.get("frames", 0),
                counters.get("corrupt_frames", 0),
                counters.get("duplicates", 0),
            )
        battery = item.get("battery_percent")
        firmware = str(device.get("firmware", "-"))
        update = item.get("firmware_update")  # the last update over the link (gateway/link_update.py)
        if isinstance(update, dict):
            firmware += f" (update to {update['to_version']}: {str(update['state']).replace('_', ' ')})"
        rows.append(
            [
                link_name,
                str(device.get("id", "-")),
                str(device.get("model", "-")),
                firmware,
                state,
                str(frames),
                str(crc),
                str(resent),
                "mains" if battery == 255 else ("-" if battery is None else f"{battery}%"),
                str(item.get("last_device_error") or item.get("last_error") or ""),
            ]
        )
    return rows


@app.command("peripherals")
def peripherals(
    api: str = typer.Option("http://127.0.0.1:8700", help="The gateway's local API."),
) -> None:
    """The boards and Bluetooth devices this gateway reads: model, firmware, link quality, battery."""
    import httpx

    try:
        status = httpx.get(f"{api.rstrip('/')}/api/status", timeout=5).raise_for_status().json()
    except httpx.HTTPError as exc:
        typer.echo(f"error: the gateway at {api} does not answer: {exc}", err=True)
        raise typer.Exit(2) from exc
    table = Table(
        "link",
        "device",
        "model",
        "firmware",
        "state",
        "frames",
        "CRC errors",
        "resent",
        "battery",
        "last error",
    )
    for row in peripheral_rows(status):
        _add_row(table, *row)
    Console().print(table)


ble = typer.Typer(help="Bluetooth health devices near the gateway.", no_args_is_help=True)
app.add_typer(ble, name="ble")


def print_found(found: list[FoundDevice]) -> None:
    """What a scan found, and the lines to paste into gateway.toml for the devices it knows."""
    for device in found:
        ad = device.advertisement
        rssi = f"{ad.rssi} dBm" if ad.rssi is not None else "rssi ?"
        model = device.profile.model if device.profile else "no matching profile"
        typer.echo(f"{ad.address}  {ad.name or '(no name)'}  {rssi}  -> {model}")
    known = [d for d in found if d.profile is not None]
    if known:
        typer.echo("\n# for gateway.toml:")
        for device in known:
            assert device.profile is not None
            address, model = device.advertisement.address, device.profile.model
            typer.echo(f'[[ble.devices]]\naddress = "{address}"\nmodel = "{model}"')
    elif not found:
        typer.echo("no health device advertising: most advertise for a minute after a button press")


@ble.command("scan")
def scan(
    profiles_dir: Path = PROFILES_OPTION,
    timeout_s: float = typer.Option(10.0, "--timeout", help="Seconds to listen."),
    adapter: str | None = typer.Option(None, help="Bluetooth adapter, e.g. hci0."),
) -> None:
    """Find health devices advertising nearby and match them to device profiles."""
    profiles = _load_or_exit(profiles_dir)
    try:
        found = asyncio.run(find_devices(BleakCentral(adapter), profiles, timeout_s))
    except BleUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    print_found(found)


operator = typer.Typer(help="Operators of the kiosk screen: doctors and crew, their PINs, the audit log.")
app.add_typer(operator, name="operator")

CONFIG_OPTION = typer.Option(None, "--config", "-c", help="Gateway TOML configuration (its data_dir).")
DATA_DIR_OPTION = typer.Option(None, "--data-dir", help="The gateway's data directory (instead of -c).")


def _operators_file(config: Path | None, data_dir: Path | None) -> tuple[Path, KioskUiConfig]:
    """operators.sqlite in the gateway's data directory, and the session policy of its config."""
    if config is not None:
        try:
            loaded = load_config(config)
        except GatewayError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        return loaded.data_dir / OPERATORS_DB, loaded.ui
    if data_dir is None:
        typer.echo("error: give --config or --data-dir", err=True)
        raise typer.Exit(2)
    return data_dir / OPERATORS_DB, KioskUiConfig()


def _read_pin(pin_stdin: bool) -> str:
    if pin_stdin:
        return sys.stdin.readline().strip()
    return str(typer.prompt("PIN (6-12 digits)", hide_input=True, confirmation_prompt=True)).strip()


async def _with_operators(path: Path, policy: KioskUiConfig, job: Callable[[Operators], Awaitable[T]]) -> T:
    path.parent.mkdir(parents=True, exist_ok=True)
    operators = await Operators.open(path, policy)
    try:
        return await job(operators)
    finally:
        await operators.close()


def _operators_job(config: Path | None, data_dir: Path | None, job: Callable[[Operators], Awaitable[T]]) -> T:
    """Run `job` on the operators file; a refusal (unknown id, bad PIN...) is exit status 1."""
    path, policy = _operators_file(config, data_dir)
    try:
        return asyncio.run(_with_operators(path, policy, job))
    except OperatorError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def _local_time(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


@operator.command("add")
def operator_add(
    operator_id: str = typer.Argument(..., metavar="ID", help="Staff id the operator signs in with."),
    name: str = typer.Option(..., help="Name shown on the screen."),
    role: str = typer.Option(..., help="doctor or crew."),
    pin_stdin: bool = typer.Option(False, "--pin-stdin", help="Read the PIN from one line of stdin."),
    config: Path | None = CONFIG_OPTION,
    data_dir: Path | None = DATA_DIR_OPTION,
) -> None:
    """Add an operator; the PIN (6-12 digits) is asked for, or read from stdin, never an argument."""
    pin = _read_pin(pin_stdin)
    added = _operators_job(config, data_dir, lambda ops: ops.add(operator_id, name, role, pin))
    typer.echo(f"operator {added.id} ({added.role}) added")


@operator.command("reset-pin")
def operator_reset_pin(
    operator_id: str = typer.Argument(..., metavar="ID"),
    pin_stdin: bool = typer.Option(False, "--pin-stdin", help="Read the PIN from one line of stdin."),
    config: Path | None = CONFIG_OPTION,
    data_dir: Path | None = DATA_DIR_OPTION,
) -> None:
    """Give an operator a new PIN: lifts a lock-out and ends their open sessions."""
    pin = _read_pin(pin_stdin)
    _operators_job(config, data_dir, lambda ops: ops.set_pin(operator_id, pin))
    typer.echo(f"operator {operator_id}: new PIN set")


@operator.command("list")
def operator_list(config: Path | None = CONFIG_OPTION, data_dir: Path | None = DATA_DIR_OPTION) -> None:
    """Every operator: id, name, role, and whether locked out."""
    path, policy = _operators_file(config, data_dir)
    rows = asyncio.run(_with_operators(path, policy, lambda ops: ops.roster()))
    table = Table("id", "name", "role", "locked until")
    for item, locked_until in rows:
        _add_row(table, item.id, item.name, item.role, _local_time(locked_until) if locked_until else "-")
    Console().print(table)


@operator.command("audit")
def operator_audit(
    limit: int = typer.Option(50, help="How many lines, newest first."),
    config: Path | None = CONFIG_OPTION,
    data_dir: Path | None = DATA_DIR_OPTION,
) -> None:
    """Who signed in, checked in and viewed which resident (masked), newest first."""
    path, policy = _operators_file(config, data_dir)
    rows = asyncio.run(_with_operators(path, policy, lambda ops: ops.audit_rows(limit)))
    table = Table("time", "operator", "action", "resident", "detail")
    for row in rows:
        who, resident = row.operator_id or "-", row.resident_masked or "-"
        _add_row(table, _local_time(row.at_ms), who, row.action, resident, row.detail or "")
    Console().print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
