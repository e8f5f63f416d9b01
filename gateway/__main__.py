"""`kiosk-gateway` and `python -m gateway`: `run` alone loads only the service; every other
command loads the full command line (gateway/cli.py)."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["run"]:
        from gateway.run_command import service_app

        service_app()
    else:
        from gateway.cli import main as full_command_line

        full_command_line()


if __name__ == "__main__":
    main()
