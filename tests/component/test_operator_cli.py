"""`kiosk-gateway operator add / reset-pin`: on a real operators file, refusals are exit status 1."""

from __future__ import annotations

import asyncio
from pathlib import Path

from typer.testing import CliRunner

from gateway.cli import app
from gateway.config import KioskUiConfig
from gateway.operators import OPERATORS_DB, OperatorError, Operators


def sign_in(data_dir: Path, operator_id: str, pin: str) -> str:
    async def attempt() -> str:
        operators = await Operators.open(data_dir / OPERATORS_DB, KioskUiConfig())
        try:
            _, operator = await operators.sign_in(operator_id, pin)
            return operator.id
        except OperatorError as exc:
            return f"refused: {exc}"
        finally:
            await operators.close()

    return asyncio.run(attempt())


def test_add_then_reset_pin_and_refusals(tmp_path: Path) -> None:
    runner = CliRunner()
    add = ["operator", "add", "doctor-wang", "--name", "王医生", "--role", "doctor", "--pin-stdin"]
    added = runner.invoke(app, [*add, "--data-dir", str(tmp_path)], input="246810\n")
    assert added.exit_code == 0, added.output
    assert sign_in(tmp_path, "doctor-wang", "246810") == "doctor-wang"

    again = runner.invoke(app, [*add, "--data-dir", str(tmp_path)], input="135791\n")
    assert again.exit_code == 1 and "error:" in again.output  # the id is taken

    reset = ["operator", "reset-pin", "doctor-wang", "--pin-stdin", "--data-dir", str(tmp_path)]
    assert runner.invoke(app, reset, input="975310\n").exit_code == 0
    assert sign_in(tmp_path, "doctor-wang", "975310") == "doctor-wang"
    assert sign_in(tmp_path, "doctor-wang", "246810").startswith("refused")

    unknown = ["operator", "reset-pin", "nobody", "--pin-stdin", "--data-dir", str(tmp_path)]
    assert runner.invoke(app, unknown, input="975310\n").exit_code == 1
