"""`kiosk-sim`: simulators and the one-command demo."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Simulated peripherals and the end-to-end demo.", no_args_is_help=True)


@app.command()
def demo(
    workdir: Path | None = typer.Option(None, help="Keep the demo's files here (default: a temp dir)."),
    keep_running: bool = typer.Option(False, help="Leave the services up afterwards, until Ctrl-C."),
) -> None:
    """Run the whole chain on this machine: firmware → gateway → MQTT → bridge → FHIR."""
    from simulators.demo import run_demo

    raise typer.Exit(run_demo(workdir, keep_running=keep_running))


@app.command()
def broker(port: int = 1883, host: str = "127.0.0.1") -> None:
    """Run the embedded MQTT broker (amqtt) used by the demo."""
    import asyncio

    from simulators.embedded_broker import serve

    asyncio.run(serve(host, port))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
