"""`kiosk-gateway provision`: a new gateway in one command, for the technician.

    kiosk-gateway provision gw-village-01 --bridge https://bridge.example.org --site "Village clinic" \\
        --data-dir /var/lib/kiosk-gateway --config /etc/kiosk-gateway/gateway.toml

1. the gateway's keys, as `kiosk-gateway init` makes them, and its MQTT TLS key and certificate
   request, as `kiosk-gateway tls-request` does, all in a staging folder inside the data directory;
2. its enrolment at the bridge over HTTP (`POST /fleet/gateways`, with a technician's token from
   `KIOSK_BRIDGE_TOKEN` or asked for): the bridge registers the signing key and, if it holds the
   community's CA, signs the TLS request and sends back the certificate and the CA's;
3. only then the files move into the data directory and the configuration is written (checked by
   loading it as the gateway will).

Nothing is written when the bridge cannot be reached or refuses (token, role, an id enrolled
before, a bad request): the staging folder is removed. A data directory or configuration that is
already there is refused unless `--force`, which keeps the old files beside the new ones
(`NAME.replaced-STAMP`), never deletes them: an old `gateway.db` may hold readings not synced yet.

Exit status: 0 provisioned; 1 refused (by the bridge or because the gateway is provisioned
already); 2 the bridge did not answer, or answered what this command does not understand.
"""

from __future__ import annotations

import enum
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gateway.config import load_config
from gateway.errors import GatewayError
from gateway.keys import (
    BRIDGE_ACK_KEY_FILE,
    PUBLIC_KEY_FILE,
    SIGNING_KEY_FILE,
    STORAGE_KEY_FILE,
    TLS_CA_FILE,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    TLS_REQUEST_FILE,
    create_keys,
    create_tls_request,
)

__all__ = ["GatewayKind", "ProvisionError", "Provisioned", "provision", "provision_command"]

GATEWAY_DB = "gateway.db"
# What provisioning writes, and what shows a data directory belongs to a gateway already.
_KEY_FILES = (SIGNING_KEY_FILE, STORAGE_KEY_FILE, PUBLIC_KEY_FILE, TLS_KEY_FILE, TLS_REQUEST_FILE)
_STATE_FILES = (
    *_KEY_FILES,
    TLS_CERT_FILE,
    TLS_CA_FILE,
    BRIDGE_ACK_KEY_FILE,
    GATEWAY_DB,
    f"{GATEWAY_DB}-wal",
    f"{GATEWAY_DB}-shm",
)
_GATEWAY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # as gateway/config.py and the bridge's CA take it


class GatewayKind(enum.StrEnum):
    kiosk = "kiosk"
    vehicle = "vehicle"


class ProvisionError(GatewayError):
    """Provisioning stopped; the message says why and `exit_code` how (1 refused, 2 no answer)."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class Provisioned:
    gateway_id: str
    data_dir: Path
    config: Path
    enrolled_by: str
    tls_signed: bool  # the bridge's CA signed the request: MQTT over TLS is configured
    mqtt: tuple[str, int]
    replaced: tuple[Path, ...] = field(default=())  # old files kept aside (--force)


def provision(
    gateway_id: str,
    *,
    bridge_url: str,
    token: str,
    data_dir: Path,
    config: Path,
    site: str = "",
    kind: GatewayKind = GatewayKind.kiosk,
    mqtt_host: str | None = None,
    mqtt_port: int | None = None,
    profiles_dir: Path = Path("/opt/kiosk-gateway/device_profiles"),
    serial: tuple[str, ...] = (),
    force: bool = False,
    timeout_s: float = 15.0,
) -> Provisioned:
    """Keys, enrolment, configuration; see the module docstring. Raises ProvisionError."""
    if not _GATEWAY_ID.match(gateway_id):
        raise ProvisionError(f"gateway id {gateway_id!r}: 1-64 letters, digits, '_', '.' or '-'")
    serial_ports = [_serial_port(spec) for spec in serial]
    bridge_url = bridge_url.rstrip("/")
    if urlsplit(bridge_url).scheme not in ("http", "https") or not urlsplit(bridge_url).hostname:
        raise ProvisionError(
            f"--bridge {bridge_url!r}: expected the bridge's URL, e.g. https://bridge.example.org"
        )
    data_dir, config = data_dir.absolute(), config.absolute()
    present = [data_dir / name for name in _STATE_FILES if (data_dir / name).exists()]
    present += [config] if config.exists() else []
    if present and not force:
        raise ProvisionError(
            f"already provisioned: {', '.join(str(p) for p in present)} exist. Each gateway is provisioned "
            "once; to start this one again as a new gateway use --force (the old files are kept as "
            "NAME.replaced-STAMP) and a new gateway id"
        )
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        config.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(config.parent, os.W_OK):
            raise PermissionError(f"{config.parent} is not writable")
        staging = Path(tempfile.mkdtemp(prefix=".provision-", dir=data_dir))
    except OSError as exc:
        raise ProvisionError(f"cannot write the gateway's files: {exc}") from exc

    enrolled = False
    try:
        public_pem = create_keys(staging).decode()
        request_pem = create_tls_request(staging, gateway_id).read_text()
        answer = _enrol(
            bridge_url,
            token,
            {
                "gateway_id": gateway_id,
                "site": site,
                "kind": kind.value,
                "public_key_pem": public_pem,
                "tls_request_pem": request_pem,
            },
            timeout_s,
        )
        enrolled = True
        certificate, ca_certificate = answer.get("tls_certificate_pem"), answer.get("ca_certificate_pem")
        tls_signed = bool(certificate and ca_certificate)
        if tls_signed:
            (staging / TLS_CERT_FILE).write_text(str(certificate))
            (staging / TLS_CA_FILE).write_text(str(ca_certificate))
        ack_key = answer.get("bridge_ack_key_pem")
        if ack_key:  # the bridge signs its acks: from now on the gateway believes no other
            (staging / BRIDGE_ACK_KEY_FILE).write_text(str(ack_key))
        host = mqtt_host or str(urlsplit(bridge_url).hostname)
        port = mqtt_port or (8883 if tls_signed else 1883)
        staged_config = staging / "gateway.toml"
        staged_config.write_text(
            render_config(
                gateway_id=gateway_id,
                site=site,
                data_dir=data_dir,
                profiles_dir=profiles_dir,
                serial_ports=serial_ports,
                mqtt=(host, port),
                tls_signed=tls_signed,
                bridge_ack_key=bool(ack_key),
                provenance=f"enrolled at {bridge_url} by {answer.get('enrolled_by', '?')}",
            )
        )
        load_config(staged_config)  # as the gateway will read it
        replaced = _install(staging, data_dir, staged_config, config, present)
    except (OSError, GatewayError) as exc:
        if not enrolled:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, ProvisionError):
                raise
            raise ProvisionError(f"cannot write the gateway's files: {exc}") from exc
        raise ProvisionError(  # the bridge has the key now: keep it, say where
            f"{gateway_id} is enrolled at the bridge, but its files could not be put in place ({exc}); "
            f"its keys are in {staging}: move them into {data_dir} by hand, or ask the bridge operator "
            "to revoke the gateway and provision again with a new id"
        ) from exc
    shutil.rmtree(staging, ignore_errors=True)
    return Provisioned(
        gateway_id=gateway_id,
        data_dir=data_dir,
        config=config,
        enrolled_by=str(answer.get("enrolled_by", "")),
        tls_signed=tls_signed,
        mqtt=(host, port),
        replaced=replaced,
    )


def _serial_port(spec: str) -> tuple[str, int]:
    path, _, baud = spec.partition("@")
    if not path or (baud and not baud.isdigit()):
        raise ProvisionError(f"--serial {spec!r}: expected PATH or PATH@BAUD, e.g. /dev/ttyUSB1@921600")
    return path, int(baud) if baud else 115200


def _enrol(bridge_url: str, token: str, body: dict[str, str], timeout_s: float) -> dict[str, object]:
    url = f"{bridge_url}/fleet/gateways"
    import httpx  # here, not at the top: `kiosk-gateway run` loads this module and never posts

    try:
        response = httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise ProvisionError(
            f"the bridge at {bridge_url} does not answer ({type(exc).__name__}: {exc}); nothing was written",
            exit_code=2,
        ) from exc
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    detail = answer.get("detail") if isinstance(answer, dict) else None
    gateway_id = body["gateway_id"]
    if response.status_code == 201 and isinstance(answer, dict):
        return answer
    if response.status_code == 401:
        raise ProvisionError(f"the bridge refused the token: {detail or 'unauthorized'}")
    if response.status_code == 403:
        raise ProvisionError(f"the bridge refused: {detail or 'forbidden'}")
    if response.status_code == 409:
        raise ProvisionError(
            f"gateway {gateway_id} is already enrolled at the bridge: a gateway id is used once, choose "
            "a new one (kiosk-bridge gateways lists them)"
        )
    if response.status_code in (400, 422):
        words = detail if isinstance(detail, str) else json.dumps(detail)
        raise ProvisionError(f"the bridge refused the enrolment: {words}")
    raise ProvisionError(
        f"unexpected answer from {url}: HTTP {response.status_code} {response.text[:200]!r} "
        "(is this the bridge's API?)",
        exit_code=2,
    )


def _install(
    staging: Path, data_dir: Path, staged_config: Path, config: Path, present: list[Path]
) -> tuple[Path, ...]:
    """Keep what was there aside, then move the new files in (renames within one file system)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    replaced = []
    for old in present:
        # gateway.db-wal must stay paired with gateway.db: gateway.db.replaced-S-wal
        name = old.name
        base = GATEWAY_DB if name.startswith(GATEWAY_DB) and old.parent == data_dir else name
        aside = old.with_name(f"{base}.replaced-{stamp}{name[len(base) :]}")
        old.rename(aside)
        replaced.append(aside)
    for path in staging.iterdir():
        if path != staged_config:
            path.replace(data_dir / path.name)
    shutil.move(staged_config, config)  # the configuration may live on another file system
    return tuple(replaced)


def _toml(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string


def render_config(
    *,
    gateway_id: str,
    site: str,
    data_dir: Path,
    profiles_dir: Path,
    serial_ports: list[tuple[str, int]],
    mqtt: tuple[str, int],
    tls_signed: bool,
    provenance: str,
    bridge_ack_key: bool = False,
) -> str:
    """The gateway's TOML configuration (deploy/gateway.example.toml, with this gateway's values)."""
    lines = [
        f"# Written by kiosk-gateway provision on {time.strftime('%Y-%m-%d %H:%M')}: {gateway_id}"
        + (f" ({site})" if site else "")
        + f", {provenance}.",
        "# Every key: docs/operators.md. Edit it, then: systemctl restart kiosk-gateway",
        "",
        f"gateway_id = {_toml(gateway_id)}",
        f"data_dir = {_toml(str(data_dir))}",
        f"profiles_dir = {_toml(str(profiles_dir))}",
        'alert_region = "CN"',
        'clock_quality = "ntp"',
        "retention_days = 30",
        "",
    ]
    if not serial_ports:
        lines += ["# One [[serial]] table per peripheral board, e.g.:", "# [[serial]]",
                  '# path = "/dev/ttyUSB0"', "# baudrate = 115200", ""]  # fmt: skip
    for path, baudrate in serial_ports:
        lines += ["[[serial]]", f"path = {_toml(path)}", f"baudrate = {baudrate}", ""]
    host, port = mqtt
    lines += ["[mqtt]", f"host = {_toml(host)}", f"port = {port}", ""]
    tls = [
        "[mqtt.tls]",
        f"ca_file = {_toml(str(data_dir / TLS_CA_FILE))}",
        f"cert_file = {_toml(str(data_dir / TLS_CERT_FILE))}",
        f"key_file = {_toml(str(data_dir / TLS_KEY_FILE))}",
    ]
    if tls_signed:
        lines += tls
    else:
        lines += [
            f"# The bridge has no CA, so {TLS_REQUEST_FILE} was not signed: once the community's CA",
            f"# has signed it (kiosk-bridge ca sign {gateway_id} --request {TLS_REQUEST_FILE}",
            f"# --out {TLS_CERT_FILE}) and {TLS_CA_FILE} is beside it, set port = 8883 and uncomment:",
            *(f"# {line}" for line in tls),
        ]
    if bridge_ack_key:
        lines += [
            "",
            "[sync]",
            "# Acks count only when signed with the bridge's key (given at enrolment).",
            f"bridge_ack_key_file = {_toml(str(data_dir / BRIDGE_ACK_KEY_FILE))}",
        ]
    else:
        lines += ["", "# The bridge gave no ack key: acks are believed on the broker's word alone."]
    lines += [
        "",
        "[api]",
        "# The kiosk's local API: keep it on loopback.",
        'host = "127.0.0.1"',
        "port = 8700",
        "",
    ]
    return "\n".join(lines)


_console = Console()
_errors = Console(stderr=True)


def provision_command(
    gateway_id: str = typer.Argument(..., help="The new gateway's id (used once: never reuse one)."),
    bridge: str = typer.Option(
        ..., "--bridge", help="The bridge's HTTP API, e.g. https://bridge.example.org"
    ),
    token: str = typer.Option(
        ...,
        envvar="KIOSK_BRIDGE_TOKEN",
        prompt="technician token",
        hide_input=True,
        show_default=False,
        help="A bridge token with role technician (kiosk-bridge token add): from KIOSK_BRIDGE_TOKEN, "
        "or asked for.",
    ),
    site: str = typer.Option("", help="Village clinic or vehicle the gateway serves."),
    kind: GatewayKind = typer.Option(
        GatewayKind.kiosk, help="Village-clinic kiosk or mobile clinic vehicle."
    ),
    data_dir: Path = typer.Option(Path("/var/lib/kiosk-gateway"), help="Where the keys and gateway.db live."),
    config: Path = typer.Option(
        Path("/etc/kiosk-gateway/gateway.toml"), "--config", "-c", help="The configuration to write."
    ),
    mqtt_host: str | None = typer.Option(None, help="The broker (default: the bridge's host)."),
    mqtt_port: int | None = typer.Option(None, help="Default 8883 with a signed certificate, else 1883."),
    profiles_dir: Path = typer.Option(Path("/opt/kiosk-gateway/device_profiles"), help="Device profiles."),
    serial: list[str] = typer.Option([], help="A board's port, PATH or PATH@BAUD (repeat per board)."),
    force: bool = typer.Option(False, help="Provision over existing files (kept as NAME.replaced-STAMP)."),
) -> None:
    """Make a new gateway's keys and TLS request, enrol it at the bridge, write its configuration."""
    try:
        with _console.status(f"provisioning {escape(gateway_id)} at {escape(bridge)} …"):
            done = provision(
                gateway_id,
                bridge_url=bridge,
                token=token.strip(),
                data_dir=data_dir,
                config=config,
                site=site,
                kind=kind,
                mqtt_host=mqtt_host,
                mqtt_port=mqtt_port,
                profiles_dir=profiles_dir,
                serial=tuple(serial),
                force=force,
            )
    except ProvisionError as exc:
        _errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from exc
    table = Table("", "", show_header=False, box=None)
    table.add_row("gateway", escape(f"{done.gateway_id} ({kind.value}{', ' + site if site else ''})"))
    table.add_row("enrolled by", escape(done.enrolled_by))
    table.add_row(
        "keys", escape(f"{done.data_dir} ({SIGNING_KEY_FILE}, {STORAGE_KEY_FILE}, {TLS_KEY_FILE}: 0600)")
    )
    table.add_row(
        "MQTT",
        escape(f"{done.mqtt[0]}:{done.mqtt[1]}, ")
        + (
            "TLS with the community CA's certificate"
            if done.tls_signed
            else "[yellow]plain: the bridge has no CA[/]"
        ),
    )
    table.add_row("configuration", escape(str(done.config)))
    for old in done.replaced:
        table.add_row("kept aside", escape(str(old)))
    _console.print(f"[bold green]✓[/] provisioned {escape(done.gateway_id)}")
    _console.print(table)
    _console.print(
        "next: add the boards' [[serial]] ports if not given, start the gateway "
        "(systemctl restart kiosk-gateway); the bridge operator regenerates the broker's ACL "
        "(kiosk-bridge acl) so the gateway may publish",
        markup=False,
        highlight=False,
    )
