"""`kiosk-bridge`: enrol gateways, make API tokens and run the bridge (MQTT consumer + HTTP API)."""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import typer
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_bridge import ack_key as ack_keys
from cloud_bridge import auth, broker_acl, broker_control, fhir_post, pki, store
from cloud_bridge.alert_rules import AlertRulesError, load_rule_texts
from cloud_bridge.db import is_postgres_url
from cloud_bridge.referral_routes import DEFAULT_ROUTES, ReferralRoutesError, check_rules, load_routes

app = typer.Typer(help="Cloud bridge: verify, store and map kiosk readings to FHIR R4.", no_args_is_help=True)

DB_OPTION = typer.Option(
    "bridge.db",
    "--db",
    help="The bridge's store: a SQLite file (default), or postgresql://user@host/dbname for PostgreSQL.",
)


APPLY_TO_OPTION = typer.Option(
    None,
    "--apply-to",
    metavar="HOST:PORT",
    help="A running Mosquitto with the dynamic-security plugin: change its rules now, over the plugin's "
    "control topic, without a restart (with --tls-cert, --tls-key and --ca-file).",
)
TLS_CERT_OPTION = typer.Option(
    None,
    "--tls-cert",
    help="With --apply-to: the certificate of the plugin's admin (its name is granted the admin role: "
    "`acl --admin-identity`).",
)
TLS_KEY_OPTION = typer.Option(None, "--tls-key", help="With --apply-to: the admin certificate's key.")
CA_FILE_OPTION = typer.Option(
    None, "--ca-file", help="With --apply-to: the CA certificate that signed the broker's (ca.crt)."
)
TIMEOUT_OPTION = typer.Option(
    10.0, "--timeout", min=0.1, help="With --apply-to: seconds to wait for each answer."
)
DRY_RUN_OPTION = typer.Option(
    False, "--dry-run", help="With --apply-to: print what would change on the broker, change nothing."
)


RevocationReason = enum.StrEnum(  # type: ignore[misc]
    "RevocationReason", [(name, name) for name in pki.REVOCATION_REASONS]
)


class GatewayKind(enum.StrEnum):
    kiosk = "kiosk"
    vehicle = "vehicle"


@app.command()
def enrol(
    gateway_id: str = typer.Argument(..., help="Gateway id, as in the gateway's configuration."),
    public_key: Path = typer.Option(..., help="The gateway's Ed25519 public key (PEM)."),
    site: str = typer.Option("", help="Village clinic or vehicle the gateway serves."),
    kind: GatewayKind = typer.Option(
        GatewayKind.kiosk, help="Village-clinic kiosk or mobile clinic vehicle."
    ),
    db: str = DB_OPTION,
) -> None:
    """Register a gateway's signing key so its batches are accepted."""
    conn = store.connect(db)
    try:
        store.enrol_gateway(
            conn,
            gateway_id,
            public_key.read_text(),
            site=site,
            kind=kind.value,
            now_ms=time.time_ns() // 1_000_000,
        )
    except conn.IntegrityError as exc:
        typer.echo(f"gateway {gateway_id} is already enrolled", err=True)
        raise typer.Exit(1) from exc
    except ValueError as exc:
        typer.echo(f"cannot enrol {gateway_id}: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        conn.close()
    typer.echo(f"enrolled {gateway_id}")


@app.command()
def revoke(
    gateway_id: str,
    db: str = DB_OPTION,
    ca_dir: Path | None = typer.Option(
        None,
        "--ca-dir",
        help="The community's CA: also revoke the gateway's TLS certificates and rewrite the revocation "
        "list (ca.crl), so the broker refuses the gateway's connection once it reloads the list (SIGHUP).",
    ),
    reason: RevocationReason = typer.Option(
        "key-compromise", help="With --ca-dir: the reason the revocation list gives."
    ),
    apply_to: str | None = APPLY_TO_OPTION,
    tls_cert: Path | None = TLS_CERT_OPTION,
    tls_key: Path | None = TLS_KEY_OPTION,
    ca_file: Path | None = CA_FILE_OPTION,
    timeout: float = TIMEOUT_OPTION,
) -> None:
    """Refuse every further batch from a gateway (lost or stolen device); with --ca-dir, its TLS
    connection to the broker too; with --apply-to, every right on the running broker at once
    (its connection is cut; it may reconnect, and is refused every publish and subscribe)."""
    broker = _broker_target(apply_to, tls_cert, tls_key, ca_file)
    if ca_dir is not None:
        _check_ca(ca_dir)  # a wrong --ca-dir changes nothing
    conn = store.connect(db)
    try:
        revoked = store.revoke_gateway(conn, gateway_id)
    finally:
        conn.close()
    if revoked:
        typer.echo(f"revoked {gateway_id}")
    else:
        typer.echo(f"no gateway {gateway_id}", err=True)
    if ca_dir is not None:  # also when the registry never heard of it: a certificate may exist
        try:
            count = pki.revoke_identity(ca_dir, gateway_id, reason=pki.REVOCATION_REASONS[reason.value])
        except pki.PkiError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        _say_revoked(gateway_id, count)
        _write_crl(ca_dir, pki.CRL_DAYS)
    if broker is not None:  # also when the registry never heard of it: the broker may still know it
        _apply(
            broker,
            timeout,
            lambda admin: broker_control.revoke(admin, gateway_id),
            retry="the registry refuses its batches already; take its broker rights with `kiosk-bridge acl "
            "--format dynsec --apply-to ...` (or this command again) once the broker answers",
        )
    if not revoked:
        raise typer.Exit(1)


@app.command("gateways")
def list_gateways(db: str = DB_OPTION) -> None:
    """List enrolled gateways with their last stored sequence."""
    conn = store.connect(db)
    try:
        rows = store.list_gateways(conn)
    finally:
        conn.close()
    for row in rows:
        typer.echo("  ".join(f"{key}={value}" for key, value in row.items()))


@app.command()
def run(
    db: str = DB_OPTION,
    mqtt_host: str = typer.Option("127.0.0.1"),
    mqtt_port: int = typer.Option(1883),
    http_host: str = typer.Option("127.0.0.1"),
    http_port: int = typer.Option(8800),
    mqtt_ca: Path | None = typer.Option(
        None, help="CA certificate: MQTT over TLS (with --mqtt-cert/--mqtt-key)."
    ),
    mqtt_cert: Path | None = typer.Option(None, help="The bridge's client certificate."),
    mqtt_key: Path | None = typer.Option(None, help="Its key."),
    fhir_base_url: str | None = typer.Option(
        None, help="The health community's FHIR server to post into (default: the embedded store)."
    ),
    fhir_token: str | None = typer.Option(
        None,
        envvar="KIOSK_BRIDGE_FHIR_TOKEN",
        show_default=False,
        help="Bearer token for --fhir-base-url (another bridge: a token with role 'bridge'). Prefer the "
        "environment variable: an option shows in ps.",
    ),
    ca_dir: Path | None = typer.Option(
        None,
        "--ca-dir",
        help="The community's CA (kiosk-bridge ca init): gateways enrolled over the API "
        "(kiosk-gateway provision) get their TLS certificate signed.",
    ),
    alert_rules: Path | None = typer.Option(
        None,
        help="The region's alert rules (device_profiles/alert_rules/cn.toml): alerts become Flag + Task.",
    ),
    referral_routes: Path | None = typer.Option(
        None,
        show_default=False,
        help="The region's referral routing (teams, and which team gets each rule's referral per site). "
        "Default with --alert-rules: device_profiles/referral_routes/cn.toml of this checkout.",
    ),
    worker: str | None = typer.Option(
        None,
        help="Run as one of several bridge workers under this unique name (MQTT client id "
        "kiosk-bridge-NAME): MQTT v5 shared subscription $share/GROUP/kiosk/+/up, so the broker "
        "spreads batches over the workers. Workers need PostgreSQL (--db postgresql://...): several "
        "processes writing one SQLite file is not supported. Give each worker its own --http-port.",
    ),
    share_group: str = typer.Option("bridge", help="With --worker: the shared-subscription group."),
    session_expiry: int = typer.Option(
        30,
        help="With --worker: seconds the broker keeps a disconnected worker's session and queue "
        "(a worker restarted within it under the same name gets them).",
    ),
    fhir_stage: FhirStageMode = typer.Option(
        "inline",
        help="inline: each batch is stored and mapped to FHIR before its ack. separate: the batch is "
        "stored and acked, and a second process writes the FHIR resources behind it (a backlog "
        "drains faster, on another core; the record lags during the drain). See "
        "cloud_bridge/fhir_stage.py.",
    ),
    ack_key: Path | None = typer.Option(
        None,
        "--ack-key",
        show_default=False,
        help="The key the bridge signs its acks with (Ed25519, 0600; gateways enrolled over the API get "
        "its public half). Default: bridge-ack.key beside the SQLite file (the working directory for "
        "PostgreSQL), made on the first run. Workers do not make one: give every worker the same file "
        "(kiosk-bridge ack-key init).",
    ),
) -> None:
    """Consume gateway batches and serve the FHIR API until interrupted."""
    import uvicorn

    from cloud_bridge.api import create_app
    from cloud_bridge.consumer import BridgeConsumer

    if worker is not None and not is_postgres_url(db):
        typer.echo(
            "error: --worker needs a PostgreSQL store (--db postgresql://...); several bridge "
            "processes writing one SQLite file is not supported",
            err=True,
        )
        raise typer.Exit(2)
    if worker is not None and (not worker or not share_group or any(c in share_group for c in "/+#")):
        typer.echo("error: --worker needs a name, and --share-group may not hold '/', '+' or '#'", err=True)
        raise typer.Exit(2)
    name = "bridge" if worker is None else f"bridge-{worker}"
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    store.connect(db).close()
    tls_files = (mqtt_ca, mqtt_cert, mqtt_key)
    if any(tls_files) and not all(tls_files):
        typer.echo("error: MQTT over TLS needs --mqtt-ca, --mqtt-cert and --mqtt-key together", err=True)
        raise typer.Exit(2)
    tls = (mqtt_ca, mqtt_cert, mqtt_key) if mqtt_ca and mqtt_cert and mqtt_key else None
    if ca_dir is not None:
        try:
            pki.ca_certificate_pem(ca_dir)
        except pki.PkiError as exc:
            typer.echo(f"error: --ca-dir: {exc}", err=True)
            raise typer.Exit(2) from exc
    if referral_routes is None and alert_rules is not None:
        referral_routes = DEFAULT_ROUTES
    routes = None
    try:  # a file the bridge cannot use stops it here, named with its field, not at the first alert
        rules = load_rule_texts(alert_rules) if alert_rules is not None else None
        if referral_routes is not None:
            routes = load_routes(referral_routes)
            if rules is not None:
                severities = {rule.id: rule.severity for rule in rules.values()}
                check_rules(routes, severities, where=str(referral_routes))
    except (AlertRulesError, ReferralRoutesError) as exc:
        typer.echo(f"error: {exc}", err=True)
        if referral_routes == DEFAULT_ROUTES and not DEFAULT_ROUTES.is_file():  # an installed bridge
            typer.echo("with --alert-rules, give the routing file: --referral-routes FILE", err=True)
        raise typer.Exit(2) from exc
    ack_key = ack_key if ack_key is not None else _default_ack_key(db)
    try:
        if worker is None:
            signing_key, made = ack_keys.load_or_create_ack_key(ack_key)
        else:  # a key of its own would make its acks worthless to the gateways
            signing_key, made = ack_keys.load_ack_key(ack_key), False
    except ack_keys.AckKeyError as exc:
        typer.echo(f"error: --ack-key: {exc}", err=True)
        raise typer.Exit(2) from exc
    if made:
        logging.getLogger(__name__).warning(
            "bridge: made the ack key %s; gateways enrolled from now on get its public half "
            "(kiosk-bridge ack-key show), keep a copy with the database's backups",
            ack_key,
        )
    consumer = BridgeConsumer(
        db,
        host=mqtt_host,
        port=mqtt_port,
        tls=tls,
        fhir_base_url=fhir_base_url,
        fhir_token=fhir_token,
        alert_rules=alert_rules,
        referral_routes=referral_routes,
        worker=worker,
        share_group=share_group,
        session_expiry_s=session_expiry,
        map_fhir=fhir_stage is FhirStageMode.inline,
        ack_key=signing_key,
    )
    stage = None
    if fhir_stage is FhirStageMode.separate:
        stage = _StageSupervisor(db, fhir_base_url is not None, alert_rules, referral_routes)
        stage.start()
    consumer.start()
    try:
        uvicorn.run(
            create_app(
                db,
                metrics=consumer.metrics,
                ca_dir=ca_dir,
                referral_routes=routes,
                ack_public_pem=ack_keys.public_pem(signing_key),
            ),
            host=http_host,
            port=http_port,
            log_level="warning",
        )
    finally:
        consumer.stop()
        if stage is not None:
            stage.stop()


def _default_ack_key(db: str) -> Path:
    return ack_keys.DEFAULT_PATH if is_postgres_url(db) else Path(db).with_name(ack_keys.DEFAULT_PATH.name)


ack_key_commands = typer.Typer(help="The key the bridge signs its acks with.", no_args_is_help=True)
app.add_typer(ack_key_commands, name="ack-key")
ACK_KEY_OPTION = typer.Option(ack_keys.DEFAULT_PATH, "--path", help="The key file (0600).")


def _ack_key_or_exit(open_key: Callable[[Path], Ed25519PrivateKey], path: Path) -> Ed25519PrivateKey:
    """`open_key(path)`, or its reason on stderr and exit status 1."""
    try:
        return open_key(path)
    except ack_keys.AckKeyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@ack_key_commands.command("init")
def ack_key_init(path: Path = ACK_KEY_OPTION) -> None:
    """Make the bridge's ack key (once per bridge: every worker gets a copy of this file)."""
    key = _ack_key_or_exit(ack_keys.create_ack_key, path)
    typer.echo(f"made {path}; its public half (give it to gateways provisioned by hand):")
    typer.echo(ack_keys.public_pem(key), nl=False)


@ack_key_commands.command("show")
def ack_key_show(path: Path = ACK_KEY_OPTION) -> None:
    """Print the public half, for a gateway's sync.bridge_ack_key_file."""
    typer.echo(ack_keys.public_pem(_ack_key_or_exit(ack_keys.load_ack_key, path)), nl=False)


class FhirStageMode(enum.StrEnum):
    inline = "inline"
    separate = "separate"


class _StageSupervisor:
    """The FHIR stage as a child process (another core), started again should it die."""

    def __init__(self, db: str, post_to_remote: bool, alert_rules: Path | None, routes: Path | None) -> None:
        self._args = (db, post_to_remote, alert_rules, routes)
        self._context = multiprocessing.get_context("spawn")  # no threads of this process inherited
        self._process: multiprocessing.process.BaseProcess | None = None
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._keep_running, name="fhir-stage-watch", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._watch.start()

    def _spawn(self) -> None:
        from cloud_bridge.fhir_stage import run_stage_process

        self._process = self._context.Process(
            target=run_stage_process, args=self._args, name="kiosk-bridge-fhir", daemon=True
        )
        self._process.start()

    def _keep_running(self) -> None:
        while not self._stop.wait(1.0):
            if self._process is not None and not self._process.is_alive():
                logging.getLogger(__name__).error(
                    "bridge: FHIR stage exited (code %s); starting it again", self._process.exitcode
                )
                self._spawn()

    def stop(self) -> None:
        self._stop.set()
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join(10)


@app.command("acl")
def acl(
    db: str = DB_OPTION,
    out: Path | None = typer.Option(
        None,
        help="The file to write: Mosquitto's acl_file, or the dynamic-security plugin's config file "
        "(read when the broker starts). Needed unless --apply-to is given.",
    ),
    bridge_user: list[str] = typer.Option(
        [],
        "--bridge-user",
        "--bridge-identity",
        show_default=False,
        help="A bridge certificate's name (its CN, the broker's user name): it reads every gateway's "
        "batches and writes every ack. Repeat it for one certificate per worker. Default: "
        f"{broker_acl.BRIDGE_IDENTITY}.",
    ),
    rules_format: broker_acl.RulesFormat = typer.Option(
        broker_acl.RulesFormat.acl_file,
        "--format",
        help="acl-file: Mosquitto's acl_file (subscriptions are not checked: any certificate from the "
        "CA can join the workers' shared subscription). dynsec: the dynamic-security plugin's JSON "
        "file, which checks subscriptions too (deploy this one).",
    ),
    share_group: list[str] = typer.Option(
        [],
        "--share-group",
        show_default=False,
        help="With --format dynsec: a workers' shared-subscription group (`run --share-group`) the "
        f"bridge identities may subscribe in. Repeatable. Default: {broker_acl.SHARE_GROUP}.",
    ),
    admin_identity: str | None = typer.Option(
        None,
        "--admin-identity",
        help="With --format dynsec: the certificate name (CN) the file makes the plugin's admin, so "
        "--apply-to can change the running broker's rules. Default with --apply-to: --tls-cert's name.",
    ),
    apply_to: str | None = APPLY_TO_OPTION,
    tls_cert: Path | None = TLS_CERT_OPTION,
    tls_key: Path | None = TLS_KEY_OPTION,
    ca_file: Path | None = CA_FILE_OPTION,
    timeout: float = TIMEOUT_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
) -> None:
    """Write the broker's access rules from the registry (each gateway its own topics only), or,
    with --apply-to, bring a running broker's rules in step with it (only what differs)."""
    identities = bridge_user or [broker_acl.BRIDGE_IDENTITY]
    dynsec = rules_format is broker_acl.RulesFormat.dynsec
    if share_group and not dynsec:
        typer.echo("error: --share-group is for --format dynsec (an acl_file has no rules for it)", err=True)
        raise typer.Exit(2)
    if (admin_identity is not None or apply_to is not None) and not dynsec:
        typer.echo("error: --admin-identity and --apply-to are for --format dynsec", err=True)
        raise typer.Exit(2)
    if out is None and apply_to is None:
        typer.echo("error: give --out FILE, --apply-to HOST:PORT, or both", err=True)
        raise typer.Exit(2)
    broker = _broker_target(apply_to, tls_cert, tls_key, ca_file)
    if broker is not None:
        if admin_identity is not None and admin_identity != broker.admin:
            typer.echo(
                f"error: --admin-identity {admin_identity} differs from --tls-cert's name {broker.admin}",
                err=True,
            )
            raise typer.Exit(2)
        admin_identity = broker.admin
    conn = store.connect(db)
    try:
        gateway_ids = broker_acl.active_gateway_ids(conn)
    finally:
        conn.close()
    rules: broker_acl.DynsecConfig = {}
    try:
        if dynsec:
            groups = share_group or [broker_acl.SHARE_GROUP]
            rules = broker_acl.dynsec_config(gateway_ids, identities, groups, admin_identity)
            text = json.dumps(rules, indent=2) + "\n"
        else:
            text = broker_acl.render_acl(gateway_ids, identities)
    except broker_acl.AclError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    left_out = [gateway_id for gateway_id in gateway_ids if not broker_acl.is_certificate_name(gateway_id)]
    for gateway_id in left_out:
        typer.echo(f"left out gateway {gateway_id!r}: not a certificate name, it cannot connect", err=True)
    bridges = ", ".join(dict.fromkeys(identities))
    summary = f"rules for {len(gateway_ids) - len(left_out)} gateway(s) and bridge {bridges}"
    if out is not None:
        partial = out.with_suffix(out.suffix + ".new")
        partial.write_text(text)
        partial.replace(out)  # the broker never reads half a file
        if broker is not None:
            apply = "the running broker gets them below"
        elif dynsec:
            apply = (
                "restart the broker to apply (a SIGHUP does not reload the plugin's file), or use --apply-to"
            )
        else:
            apply = "send the broker SIGHUP to apply"
        typer.echo(f"{out}: {summary}; {apply}")
    if broker is not None:
        typer.echo(f"{broker.where}: {summary}")
        _apply(
            broker,
            timeout,
            lambda admin: broker_control.sync(admin, rules, dry_run=dry_run),
            dry_run=dry_run,
            retry="fix the cause and run the command again: it sends only what still differs",
        )


class BrokerTarget(NamedTuple):
    """A running broker to change, and the plugin admin's TLS files and certificate name."""

    host: str
    port: int
    tls: broker_control.AdminTls
    admin: str

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def _broker_target(
    apply_to: str | None, tls_cert: Path | None, tls_key: Path | None, ca_file: Path | None
) -> BrokerTarget | None:
    """HOST:PORT and the admin's TLS files, checked before anything changes; None without --apply-to."""
    if apply_to is None:
        if tls_cert or tls_key or ca_file:
            typer.echo("error: --tls-cert, --tls-key and --ca-file go with --apply-to HOST:PORT", err=True)
            raise typer.Exit(2)
        return None
    host, _, port = apply_to.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:8883
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        typer.echo(f"error: --apply-to {apply_to}: give HOST:PORT, e.g. broker.example.org:8883", err=True)
        raise typer.Exit(2)
    if tls_cert is None or tls_key is None or ca_file is None:
        typer.echo(
            "error: --apply-to needs --tls-cert, --tls-key and --ca-file (the plugin's admin)", err=True
        )
        raise typer.Exit(2)
    tls = broker_control.AdminTls(ca_file=ca_file, cert_file=tls_cert, key_file=tls_key)
    try:
        admin = broker_control.certificate_name(tls_cert)
    except broker_control.BrokerControlError as exc:
        typer.echo(f"error: --tls-cert {exc}", err=True)
        raise typer.Exit(2) from exc
    return BrokerTarget(host, int(port), tls, admin)


def _apply(
    broker: BrokerTarget,
    timeout: float,
    change: Callable[[broker_control.DynsecAdmin], list[broker_control.Command]],
    *,
    dry_run: bool = False,
    retry: str,
) -> None:
    """Run `change` as the plugin's admin and print each command it sent; `retry` says what to do
    when the broker cannot be reached or refuses a command."""
    try:
        with broker_control.DynsecAdmin(broker.host, broker.port, broker.tls, timeout=timeout) as admin:
            commands = change(admin)
    except broker_control.BrokerControlError as exc:
        typer.echo(f"error: {broker.where}: {exc}", err=True)
        if isinstance(exc, broker_control.CommandError):
            typer.echo("the commands before that one were applied", err=True)
        typer.echo(retry, err=True)
        raise typer.Exit(1) from exc
    verb = "would " if dry_run else ""
    for command in commands:
        typer.echo(f"{broker.where}: {verb}{broker_control.describe(command)}")
    if not commands:
        typer.echo(f"{broker.where}: the broker holds these rules already, nothing to change")
    else:
        done = "not applied (--dry-run)" if dry_run else "applied"
        typer.echo(f"{broker.where}: {len(commands)} change(s) {done}")


posts = typer.Typer(help="Readings queued for the health community's FHIR server.", no_args_is_help=True)
app.add_typer(posts, name="fhir-posts")


@posts.command("list")
def list_posts(db: str = DB_OPTION) -> None:
    """How many are pending, posted and dead, and each dead letter with the server's answer."""
    conn = store.connect(db)
    try:
        typer.echo(" ".join(f"{state} {count}" for state, count in fhir_post.counts(conn).items()))
        for dead in fhir_post.dead_letters(conn):
            typer.echo(f"dead: {dead.gateway_id} seq {dead.seq}, HTTP {dead.status}: {dead.answer}")
    finally:
        conn.close()


@posts.command("replay")
def replay_posts(
    db: str = DB_OPTION,
    gateway_id: str | None = typer.Option(None, "--gateway", help="Only this gateway's."),
    seq: int | None = typer.Option(None, help="Only this reading (with --gateway)."),
) -> None:
    """Put dead letters back in the queue (after the cause is fixed); a running bridge posts them."""
    conn = store.connect(db)
    try:
        count = fhir_post.replay(conn, gateway_id, seq)
    finally:
        conn.close()
    typer.echo(f"{count} dead letter(s) queued again")


ca = typer.Typer(help="The health community's CA for MQTT over TLS.", no_args_is_help=True)
app.add_typer(ca, name="ca")
CA_DIR_OPTION = typer.Option(
    Path("ca"), "--ca-dir", help="Directory of ca.crt, ca.key (0600), ca.crl and the register issued.json."
)


@ca.command("init")
def ca_init(ca_dir: Path = CA_DIR_OPTION, name: str = typer.Option("Kiosk health community CA")) -> None:
    """Make the CA once (refuses to overwrite one)."""
    try:
        cert = pki.create_ca(ca_dir, name)
    except pki.PkiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"CA certificate: {cert} (give it to the broker and to every gateway)")
    typer.echo(f"revocation list: {cert.parent / pki.CA_CRL} (the broker's crlfile)")


@ca.command("issue")
def ca_issue(
    identity: str,
    out_dir: Path = typer.Option(..., help="Where <identity>.crt and .key go."),
    server_name: list[str] = typer.Option([], help="For the broker: its DNS name or IP (repeat)."),
    ca_dir: Path = CA_DIR_OPTION,
) -> None:
    """A key and certificate for the broker (with --server-name) or the bridge's MQTT client."""
    try:
        issued = pki.issue(ca_dir, identity, out_dir, server_names=tuple(server_name))
    except pki.PkiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"certificate {issued.cert}, key {issued.key}")


@ca.command("sign")
def ca_sign(
    gateway_id: str,
    request: Path = typer.Option(..., help="The gateway's mqtt-tls.csr."),
    out: Path = typer.Option(..., help="Where the certificate goes (the gateway's mqtt-tls.crt)."),
    ca_dir: Path = CA_DIR_OPTION,
) -> None:
    """Sign an enrolling gateway's certificate request; refused unless it names that gateway."""
    try:
        pki.sign_request(ca_dir, request.read_bytes(), out, expected_identity=gateway_id)
    except (OSError, pki.PkiError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"certificate for {gateway_id}: {out}")


@ca.command("revoke")
def ca_revoke(
    identity: str | None = typer.Argument(
        None, help="Revoke every unexpired certificate issued to this name (a gateway or a bridge worker)."
    ),
    serial: str | None = typer.Option(
        None,
        help="Revoke this one certificate instead (hexadecimal, as `openssl x509 -noout -serial` shows): "
        "the way for a certificate issued before the CA kept its register.",
    ),
    reason: RevocationReason = typer.Option("key-compromise", help="The reason the revocation list gives."),
    days: int = typer.Option(pki.CRL_DAYS, min=1, help="The rewritten list's validity in days."),
    ca_dir: Path = CA_DIR_OPTION,
) -> None:
    """Revoke certificates and rewrite the revocation list (a gateway: prefer `kiosk-bridge revoke GW
    --ca-dir DIR`, which refuses its batches too)."""
    if (identity is None) == (serial is None):
        typer.echo("error: give a name or --serial, not both", err=True)
        raise typer.Exit(2)
    flag = pki.REVOCATION_REASONS[reason.value]
    try:
        if identity is not None:
            _say_revoked(identity, pki.revoke_identity(ca_dir, identity, reason=flag))
        elif pki.revoke_serial(ca_dir, pki.parse_serial(serial or ""), reason=flag):
            typer.echo(f"revoked certificate {serial}")
        else:
            typer.echo(f"certificate {serial} was revoked already")
    except pki.PkiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    _write_crl(ca_dir, days)


@ca.command("crl")
def ca_crl(
    days: int = typer.Option(pki.CRL_DAYS, min=1, help="Valid for this many days: rewrite it before then."),
    ca_dir: Path = CA_DIR_OPTION,
) -> None:
    """(Re)write the revocation list, ca.crl (the broker's crlfile), signed by the CA."""
    _check_ca(ca_dir)
    _write_crl(ca_dir, days)


@ca.command("certificates")
def ca_certificates(ca_dir: Path = CA_DIR_OPTION) -> None:
    """Every certificate the CA issued: serial, name, expiry and whether valid, expired or revoked."""
    _check_ca(ca_dir)
    try:
        certificates = pki.issued_certificates(ca_dir)
        complete = pki.register_is_complete(ca_dir)
        started = pki.register_started(ca_dir)
    except pki.PkiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if not complete:
        typer.echo(
            f"certificates issued before {started:%Y-%m-%d %H:%M} UTC are not listed (the register began "
            "then): revoke one of those with `kiosk-bridge ca revoke --serial SERIAL`",
            err=True,
        )
    now = dt.datetime.now(dt.UTC)
    reason_names = {flag: name for name, flag in pki.REVOCATION_REASONS.items()}
    for cert in certificates:
        name = cert.identity or "(issued before the register)"
        until = "-" if cert.not_after is None else f"{cert.not_after:%Y-%m-%d}"
        state = cert.state(now)
        if cert.revoked_at is not None:
            why = "unspecified" if cert.reason is None else reason_names.get(cert.reason, cert.reason.value)
            state = f"revoked {cert.revoked_at:%Y-%m-%d %H:%M} UTC ({why})"
        typer.echo(f"{cert.serial_hex}  {name}  until {until}  {state}")


def _check_ca(ca_dir: Path) -> None:
    try:
        pki.ca_certificate_pem(ca_dir)
    except pki.PkiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def _say_revoked(identity: str, count: int) -> None:
    if count:
        typer.echo(f"revoked {count} certificate(s) of {identity}")
    else:
        typer.echo(f"{identity} has no unexpired certificate left to revoke")


def _write_crl(ca_dir: Path, days: int) -> None:
    """Write ca.crl and say what the operator does next."""
    try:
        path = pki.write_crl(ca_dir, days=days)
    except (OSError, pki.PkiError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    crl = x509.load_pem_x509_crl(path.read_bytes())
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    typer.echo(
        f"{path}: revocation list {number}, {len(crl)} revoked, valid until "
        f"{crl.next_update_utc:%Y-%m-%d} UTC; put it in the broker's crlfile and send the broker SIGHUP "
        "(a connection open now stays open: restart the broker to cut it)"
    )


tokens = typer.Typer(
    help="Bearer tokens for the bridge's HTTP API, one per person or service, each with a role.",
    no_args_is_help=True,
)
app.add_typer(tokens, name="token")


Role = enum.StrEnum("Role", [(role, role) for role in auth.ROLES])  # type: ignore[misc]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _local_time(ms: int | None) -> str:
    return "-" if ms is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000))


@tokens.command("add")
def token_add(
    name: str = typer.Argument(
        ..., help="Who holds it (a person or a service): shown as who worked a referral."
    ),
    role: Role = typer.Option(..., help="What it may do: see README, Tokens and roles."),
    expires_in_days: int = typer.Option(
        365, min=1, max=3650, help="Refused after this many days: make a new one before then."
    ),
    no_expiry: bool = typer.Option(
        False, "--no-expiry", help="Valid until revoked (for a service account such as another bridge)."
    ),
    db: str = DB_OPTION,
) -> None:
    """Make a token and print it, once: the bridge keeps only its SHA-256."""
    now_ms = _now_ms()
    expires_at_ms = None if no_expiry else now_ms + expires_in_days * 86_400_000
    conn = store.connect(db)
    try:
        token = auth.add_token(conn, name, role.value, now_ms=now_ms, expires_at_ms=expires_at_ms)
    except auth.TokenError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        conn.close()
    until = "until revoked" if expires_at_ms is None else f"until {_local_time(expires_at_ms)}"
    typer.echo(f"token for {name.strip()} (role {role.value}, {until}), shown this once:", err=True)
    typer.echo(token)


@tokens.command("list")
def token_list(db: str = DB_OPTION) -> None:
    """Every token: name, role, made, whether live, revoked or expired (no secret)."""
    conn = store.connect(db)
    try:
        rows = auth.list_tokens(conn)
    finally:
        conn.close()
    now_ms = _now_ms()
    for row in rows:
        state = row.state(now_ms)
        if state == "revoked":
            state = f"revoked {_local_time(row.revoked_at_ms)}"
        elif state == "expired":
            state = f"expired {_local_time(row.expires_at_ms)}"
        elif row.expires_at_ms is not None:
            state = f"live until {_local_time(row.expires_at_ms)}"
        typer.echo(f"{row.name}  role={row.role}  made {_local_time(row.created_at_ms)}  {state}")


@tokens.command("revoke")
def token_revoke(name: str, db: str = DB_OPTION) -> None:
    """Refuse NAME's token from the next request on (the name can then get a new one)."""
    conn = store.connect(db)
    try:
        revoked = auth.revoke_token(conn, name, now_ms=_now_ms())
    finally:
        conn.close()
    if not revoked:
        typer.echo(f"no live token for {name}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked the token of {name}")


@app.command("migrate")
def migrate_store(
    source: Path = typer.Option(
        ..., "--from", help="The bridge's SQLite file (stop the bridge first: the file must not be open)."
    ),
    target: str = typer.Option(
        ...,
        "--to",
        help="An empty PostgreSQL database: postgresql://user@host/dbname (password from ~/.pgpass or "
        "PGPASSWORD). The bridge's tables are created in it.",
    ),
) -> None:
    """Move a SQLite store into PostgreSQL (to run several workers): copy, verify, one commit."""
    from rich.console import Console
    from rich.table import Table

    from cloud_bridge import migrate

    if not is_postgres_url(target):
        typer.echo("error: --to must be a postgresql:// URL", err=True)
        raise typer.Exit(2)
    console = Console(stderr=True)
    try:
        source_db = migrate.open_source(source)
        try:
            target_db = migrate.open_target(target)
            try:
                report = migrate.migrate(
                    source_db,
                    target_db,
                    on_table=lambda done: console.print(f"{done.table}: {done.rows:,} row(s), verified"),
                )
            finally:
                target_db.close()
        finally:
            source_db.close()
    except migrate.MigrationError as exc:
        typer.echo(f"error: {exc}", err=True)
        typer.echo("no row was committed to the target: fix the cause and run the command again", err=True)
        raise typer.Exit(1) from exc
    table = Table(title=f"{source} → PostgreSQL")
    table.add_column("table")
    table.add_column("rows copied", justify="right")
    table.add_column("next id", justify="right")
    for copied in report.tables:
        table.add_row(copied.table, f"{copied.rows:,}", "" if copied.next_id is None else str(copied.next_id))
    table.add_section()
    table.add_row("total", f"{report.rows:,}", "")
    Console().print(table)
    typer.echo(
        f"{report.rows:,} rows copied and verified in {report.seconds:.1f} s; run the bridge with --db URL"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
