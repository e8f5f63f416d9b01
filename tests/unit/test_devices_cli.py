"""`kiosk-gateway devices list/show/validate` on the real profile directory and on bad files."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from gateway.cli import app

PROFILES = str(Path(__file__).resolve().parents[2] / "device_profiles")
runner = CliRunner()


def test_list_names_every_model() -> None:
    result = runner.invoke(app, ["devices", "list", "--profiles", PROFILES], terminal_width=200)
    assert result.exit_code == 0, result.output
    for model in ("KX-BP100", "KX-GLU100", "KX-ECG200", "KX-VS300", "KX-WS200"):
        assert model in result.output


def test_show_gives_units_ranges_and_codes() -> None:
    result = runner.invoke(app, ["devices", "show", "KX-BP100", "--profiles", PROFILES], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "mm[Hg]" in result.output
    assert "40 .. 300" in result.output
    assert "8480-6" in result.output


def test_show_unknown_model_fails_with_the_known_ones() -> None:
    result = runner.invoke(app, ["devices", "show", "KX-NOPE", "--profiles", PROFILES])
    assert result.exit_code == 1
    assert "KX-BP100" in result.output


def test_validate_passes_the_registry() -> None:
    result = runner.invoke(app, ["devices", "validate", "--profiles", PROFILES])
    assert result.exit_code == 0, result.output
    assert result.output.count("ok: ") == len(list(Path(PROFILES).glob("*.toml")))


def test_validate_names_the_bad_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'model = "X"\nvendor = "v"\nname = "n"\ntransport = "uart"\nprotocol = "p"\n[kinds.bp]\nfields = 3\n'
    )
    result = runner.invoke(app, ["devices", "validate", str(bad)])
    assert result.exit_code == 1
    assert f"invalid: {bad}" in result.output
    assert "kinds.bp.fields" in result.output
