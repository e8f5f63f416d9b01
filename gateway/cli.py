"""`kiosk-gateway`: provision and run a gateway."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import typer

from gateway.config import load_config
from gateway.errors import GatewayError
from gateway.keys import PUBLIC_KEY_FILE, create_keys

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
