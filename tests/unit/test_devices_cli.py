"""`kiosk-gateway devices list/show/validate` on the real profile directory and on bad files."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from gateway.cli import app

PROFILES = str(Path(__file__).resolve().parents[2] / "device_profiles")
MODELS = (
    "KX-BP100",
    "KX-GLU100",
    "KX-ECG200",
    "KX-VS300",
    "KX-WS200",
    "UA-651BLE",
    "Accu-Chek Guide",
    "Nonin 3230",
    "UT-201BLE",
    "UC-352BLE",
    "Polar H10",
)
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["devices", *args], env={"COLUMNS": "240"})  # Rich reads the width here


def test_list_names_every_model_with_transport_protocol_and_connection() -> None:
    result = invoke("list", "--profiles", PROFILES)
    assert result.exit_code == 0, result.output
    for model in MODELS:
        assert model in result.output
    for protocol in ("kiosk-link/1", "ble-bls", "ble-gls", "ble-hts", "ble-plxs", "ble-wss", "ble-hrs"):
        assert protocol in result.output
    assert "0x1810 'A&D_UA-651*', bond" in result.output
    assert "0x180D 'Polar H10*', no bond" in result.output
    assert "firmware bp 0.1.0" in result.output
    assert "alert rules: region CN" in result.output
    assert "11 rules" in result.output


def test_show_gives_units_ranges_policy_and_codes() -> None:
    result = invoke("show", "KX-BP100", "--profiles", PROFILES)
    assert result.exit_code == 0, result.output
    assert "mm[Hg]" in result.output
    assert "40 .. 300" in result.output
    assert "8480-6" in result.output
    assert "refuse" in result.output
    assert "transport uart, protocol kiosk-link/1" in result.output
    assert "Bluetooth" not in result.output


def test_show_ble_device_gives_uuids_pairing_and_alert_rules() -> None:
    result = invoke("show", "Accu-Chek Guide", "--profiles", PROFILES)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "transport ble, protocol ble-gls (Bluetooth Glucose Service)" in out
    assert "0x1808  00001808-0000-1000-8000-00805f9b34fb" in out
    assert "0x2A18  00002a18-0000-1000-8000-00805f9b34fb" in out
    assert "0x2A52  00002a52-0000-1000-8000-00805f9b34fb" in out
    assert "0x2A34  00002a34-0000-1000-8000-00805f9b34fb" in out
    assert "starts with 'meter+'" in out
    assert "yes (downloaded through the RACP)" in out
    assert "mmol/L or mg/dL" in out
    assert "glucose: alert rules, region CN" in out
    for rule in (
        "hypoglycaemia_level2",
        "hypoglycaemia_level1",
        "severe_hyperglycaemia",
        "fasting_hyperglycaemia",
    ):
        assert rule in out
    assert "glucose >= 7.0 mmol/L" in out
    assert "hypertension" not in out  # only the rules of the model's kinds


def test_show_flag_policy_and_bp_rules() -> None:
    nonin = invoke("show", "Nonin 3230", "--profiles", PROFILES)
    assert nonin.exit_code == 0, nonin.output
    assert "flag and keep" in nonin.output
    assert "spo2_severe" in nonin.output and "bradycardia" in nonin.output
    cuff = invoke("show", "UA-651BLE", "--profiles", PROFILES)
    assert "systolic >= 180 mm[Hg] or diastolic >= 110 mm[Hg]" in cuff.output
    assert "bond before reading │ yes" in cuff.output


def test_show_prints_ucum_brackets_as_written(tmp_path: Path) -> None:
    shutil.copytree(PROFILES, tmp_path / "p")
    path = tmp_path / "p" / "ut-201ble.toml"
    path.write_text(path.read_text().replace('unit = "Cel"', 'unit = "Cel"\nother_units = ["[degF]"]'))
    result = invoke("show", "UT-201BLE", "--profiles", str(tmp_path / "p"))
    assert result.exit_code == 0, result.output
    assert "Cel or [degF]" in result.output  # not eaten as Rich markup


def test_show_unknown_model_fails_with_the_known_ones() -> None:
    result = invoke("show", "KX-NOPE", "--profiles", PROFILES)
    assert result.exit_code == 1
    assert "KX-BP100" in result.output


def test_unknown_region_fails_with_the_known_ones() -> None:
    result = invoke("list", "--profiles", PROFILES, "--region", "XX")
    assert result.exit_code == 1
    assert "no alert rules for region 'XX' (regions: CN)" in result.output


def test_validate_passes_the_registry_and_the_rules() -> None:
    result = invoke("validate", "--profiles", PROFILES)
    assert result.exit_code == 0, result.output
    profiles = list(Path(PROFILES).glob("*.toml"))
    rules = list((Path(PROFILES) / "alert_rules").glob("*.toml"))
    assert result.output.count("ok: ") == len(profiles) + len(rules) == 12
    assert "(UA-651BLE, ble ble-bls)" in result.output
    assert "cn.toml (alert rules, region CN, 11 rules)" in result.output


def test_validate_names_the_bad_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'model = "X"\nvendor = "v"\nname = "n"\ntransport = "uart"\nprotocol = "p"\n[kinds.bp]\nfields = 3\n'
    )
    result = invoke("validate", str(bad))
    assert result.exit_code == 1
    assert f"invalid: {bad}" in result.output
    assert "kinds.bp.fields" in result.output
    assert "protocol: Input should be 'kiosk-link/1'" in result.output


def test_validate_checks_the_alert_rules_too(tmp_path: Path) -> None:
    shutil.copytree(PROFILES, tmp_path / "p")
    rules = tmp_path / "p" / "alert_rules" / "cn.toml"
    rules.write_text(rules.read_text().replace('unit = "mmol/L"', 'unit = "mg/dl"', 1))
    result = invoke("validate", "--profiles", str(tmp_path / "p"))
    assert result.exit_code == 1
    assert f"invalid: {rules}: rules.2.when.0.unit: 'mg/dl' does not measure glucose" in result.output
    assert result.output.count("ok: ") == 11  # every device profile still passes
    single = invoke("validate", str(rules))
    assert single.exit_code == 1 and f"invalid: {rules}" in single.output


def test_validate_needs_alert_rules(tmp_path: Path) -> None:
    shutil.copytree(PROFILES, tmp_path / "p")
    shutil.rmtree(tmp_path / "p" / "alert_rules")
    result = invoke("validate", "--profiles", str(tmp_path / "p"))
    assert result.exit_code == 1
    assert "no alert rule files" in result.output
