"""`kiosk-gateway run`: the gateway service, started without the technician's tools.

The service process is the one that must fit a Raspberry Pi's memory budget with a week's
backlog (80 MB, `benchmarks/bench_offline.py`), so `kiosk-gateway run` (and `python -m
gateway run`) loads only this command, not the firmware, provisioning and device tools that
the full command line (`gateway/cli.py`) brings in: about 5 MB less resident memory.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import typer

from gateway.config import load_config
from gateway.errors import GatewayError


def run(config: Path = typer.Option(..., "--config", "-c", help="Gateway TOML configuration.")) -> None:
    """Run the gateway service until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(levelname)s %(name)s: %(message)s")
    from gateway.service import run_gateway

    try:
        asyncio.run(run_gateway(load_config(config)))
    except GatewayError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


service_app = typer.Typer(add_completion=False, no_args_is_help=True)
service_app.command("run")(run)


@service_app.callback()
def _service() -> None:
    """Kiosk gateway service (the full command line is `kiosk-gateway --help`)."""
