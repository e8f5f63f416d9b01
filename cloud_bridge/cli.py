"""`kiosk-bridge`: enrol gateways and run the bridge (MQTT consumer + FHIR API)."""

from __future__ import annotations

import enum
import logging
import sqlite3
import time
from pathlib import Path

import typer

from cloud_bridge import store

app = typer.Typer(help="Cloud bridge: verify, store and map kiosk readings to FHIR R4.", no_args_is_help=True)

DB_OPTION = typer.Option(Path("bridge.db"), "--db", help="Bridge SQLite database.")


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
    db: Path = DB_OPTION,
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
    except sqlite3.IntegrityError as exc:
        typer.echo(f"gateway {gateway_id} is already enrolled", err=True)
        raise typer.Exit(1) from exc
    except ValueError as exc:
        typer.echo(f"cannot enrol {gateway_id}: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"enrolled {gateway_id}")


@app.command()
def revoke(gateway_id: str, db: Path = DB_OPTION) -> None:
    """Refuse every further batch from a gateway (lost or stolen device)."""
    if not store.revoke_gateway(store.connect(db), gateway_id):
        typer.echo(f"no gateway {gateway_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {gateway_id}")


@app.command("gateways")
def list_gateways(db: Path = DB_OPTION) -> None:
    """List enrolled gateways with their last stored sequence."""
    for row in store.list_gateways(store.connect(db)):
        typer.echo("  ".join(f"{key}={value}" for key, value in row.items()))


@app.command()
def run(
    db: Path = DB_OPTION,
    mqtt_host: str = typer.Option("127.0.0.1"),
    mqtt_port: int = typer.Option(1883),
    http_host: str = typer.Option("127.0.0.1"),
    http_port: int = typer.Option(8800),
) -> None:
    """Consume gateway batches and serve the FHIR API until interrupted."""
    import uvicorn

    from cloud_bridge.api import create_app
    from cloud_bridge.consumer import BridgeConsumer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s bridge %(levelname)s %(name)s: %(message)s")
    store.connect(db).close()
    consumer = BridgeConsumer(db, host=mqtt_host, port=mqtt_port)
    consumer.start()
    try:
        uvicorn.run(
            create_app(str(db), metrics=consumer.metrics), host=http_host, port=http_port, log_level="warning"
        )
    finally:
        consumer.stop()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
