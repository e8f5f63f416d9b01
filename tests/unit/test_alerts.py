"""Alert rules: the CN file loads, each rule triggers exactly at its threshold, units convert exactly."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from contract.wire import Measurement
from gateway.alerts import (
    KNOWN_FLAGS,
    AlertRules,
    available_regions,
    evaluate,
    load_alert_rules,
    load_rules_file,
)
from gateway.config import GatewayConfig
from gateway.errors import ProfileError
from gateway.profiles import KIND_FIELDS

PROFILES_DIR = Path(__file__).resolve().parents[2] / "device_profiles"
D = Decimal


@pytest.fixture(scope="module")
def cn() -> AlertRules:
    return load_alert_rules(PROFILES_DIR, "CN")


def rules_of(alerts) -> list[str]:
    return [alert.rule for alert in alerts]


def bp(systolic, diastolic, unit="mm[Hg]") -> list[Measurement]:
    return [Measurement("systolic", D(systolic), unit), Measurement("diastolic", D(diastolic), unit)]


def glucose(value, unit="mmol/L") -> list[Measurement]:
    return [Measurement("glucose", D(value), unit)]


# --- the CN file --------------------------------------------------------------------------------


def test_cn_is_the_default_region_and_has_its_file(cn: AlertRules) -> None:
    assert GatewayConfig(gateway_id="gw", data_dir=Path("/tmp")).alert_region == "CN"
    assert "CN" in available_regions(PROFILES_DIR)
    assert cn.region == "CN"
    assert load_alert_rules(PROFILES_DIR, "cn") == cn  # the region is not case-sensitive
    expected = {
        "hypertension",
        "hypertensive_crisis",
        "fasting_hyperglycaemia",
        "severe_hyperglycaemia",
        "hypoglycaemia_level1",
        "hypoglycaemia_level2",
        "spo2_low",
        "spo2_severe",
        "fever",
        "bradycardia",
        "tachycardia",
    }
    assert {rule.id for rule in cn.rules} == expected
    for rule in cn.rules:
        assert rule.source and rule.message.zh and rule.message.en and rule.referral.zh and rule.referral.en


def test_every_cn_rule_triggers_exactly_at_its_threshold(cn: AlertRules) -> None:
    """Each condition alone (no superseding), at its threshold and one step beyond it."""
    checked = 0
    for rule in cn.rules:
        alone = cn.model_copy(update={"rules": (rule.model_copy(update={"supersedes": ()}),)})
        for condition in rule.when:
            kind = next(k for k in rule.kinds if condition.field in KIND_FIELDS[k])
            step = D("0.01")
            inside = {"<": -step, "<=": D(0), ">=": D(0), ">": step}[condition.op]
            outside = {"<": D(0), "<=": step, ">=": -step, ">": D(0)}[condition.op]
            for delta, fires in ((inside, True), (outside, False)):
                value = condition.threshold + delta
                reading = [Measurement(condition.field, value, condition.unit)]
                alerts = evaluate(alone, kind, reading, rule.requires_flags)
                assert rules_of(alerts) == ([rule.id] if fires else []), (rule.id, condition.field, value)
                checked += 1
    assert checked == 2 * sum(len(rule.when) for rule in cn.rules) >= 26


# --- blood pressure -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("systolic", "diastolic", "expected"),
    [
        (139, 89, []),
        (140, 89, ["hypertension"]),
        (139, 90, ["hypertension"]),
        (140, 90, ["hypertension"]),
        (179, 109, ["hypertension"]),
        (180, 109, ["hypertensive_crisis"]),
        (179, 110, ["hypertensive_crisis"]),
        (180, 110, ["hypertensive_crisis"]),
        (182, 115, ["hypertensive_crisis"]),
        ("139.9", "89.9", []),
    ],
)
def test_bp_thresholds(cn: AlertRules, systolic, diastolic, expected) -> None:
    assert rules_of(evaluate(cn, "bp", bp(systolic, diastolic))) == expected


def test_crisis_message_in_both_languages(cn: AlertRules) -> None:
    (alert,) = evaluate(cn, "bp", bp(182, 115))
    assert alert.severity == "urgent"
    assert alert.flag == "alert:hypertensive_crisis"
    assert (alert.field, alert.value, alert.unit) == ("systolic", D(182), "mm[Hg]")
    assert alert.message_en == "BP 182/115 mmHg — hypertensive crisis (grade 3): refer today"
    assert alert.message_zh == "血压 182/115 mmHg — 高血压危象（3级高血压）：请当日转诊"
    assert "紧急转诊" in alert.referral_zh and "refer urgently" in alert.referral_en


def test_bp_in_kpa_is_converted(cn: AlertRules) -> None:
    # 18.67 kPa = 140.04 mmHg; 18.66 kPa = 139.96 mmHg (1 mmHg = 0.1333220 kPa, UCUM)
    assert rules_of(evaluate(cn, "bp", bp("18.67", "10.0", "kPa"))) == ["hypertension"]
    assert rules_of(evaluate(cn, "bp", bp("18.66", "11.9", "kPa"))) == []
    assert rules_of(evaluate(cn, "bp", bp("24.0", "14.7", "kPa"))) == ["hypertensive_crisis"]  # 180.0/110.3


def test_most_severe_first(cn: AlertRules) -> None:
    reading = [*bp(150, 95), Measurement("pulse_rate", D(130), "/min")]
    alerts = evaluate(cn, "bp", reading)
    assert rules_of(alerts) == ["hypertension", "tachycardia"]
    reading = [Measurement("pulse_rate", D(130), "/min"), *bp(185, 95)]
    assert [a.severity for a in evaluate(cn, "bp", reading)] == ["urgent", "warn"]


# --- glucose --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "flags", "expected"),
    [
        ("3.9", [], []),
        ("3.89", [], ["hypoglycaemia_level1"]),
        ("3.0", [], ["hypoglycaemia_level1"]),
        ("2.99", [], ["hypoglycaemia_level2"]),
        ("1.1", ["below_range"], ["hypoglycaemia_level2"]),
        ("6.99", ["fasting"], []),
        ("7.0", [], []),  # the fasting rule needs the fasting flag
        ("11.0", ["after_meal"], []),
        ("7.0", ["fasting"], ["fasting_hyperglycaemia"]),
        ("16.69", [], []),
        ("16.7", [], ["severe_hyperglycaemia"]),
        ("16.7", ["fasting"], ["severe_hyperglycaemia"]),  # supersedes the fasting rule
    ],
)
def test_glucose_thresholds(cn: AlertRules, value, flags, expected) -> None:
    assert rules_of(evaluate(cn, "glucose", glucose(value), flags)) == expected


@pytest.mark.parametrize(
    ("mg_dl", "flags", "expected"),
    [
        ("126", ["fasting"], []),  # 6.994 mmol/L
        ("127", ["fasting"], ["fasting_hyperglycaemia"]),  # 7.049 mmol/L
        ("126.1092", ["fasting"], ["fasting_hyperglycaemia"]),  # exactly 7.0 x 18.0156
        ("126.1091", ["fasting"], []),
        ("70.26084", [], []),  # exactly 3.9 mmol/L: not below it
        ("70.26083", [], ["hypoglycaemia_level1"]),
        ("70", [], ["hypoglycaemia_level1"]),  # 3.886 mmol/L
        ("54", [], ["hypoglycaemia_level2"]),  # 2.997 mmol/L
        ("54.0468", [], ["hypoglycaemia_level1"]),  # exactly 3.0 mmol/L
        ("301", [], ["severe_hyperglycaemia"]),  # 16.708 mmol/L
    ],
)
def test_glucose_in_mg_dl_is_converted_exactly(cn: AlertRules, mg_dl, flags, expected) -> None:
    alerts = evaluate(cn, "glucose", glucose(mg_dl, "mg/dL"), flags)
    assert rules_of(alerts) == expected
    for alert in alerts:
        assert alert.unit == "mg/dL" and alert.value == D(mg_dl)
        assert alert.message_en.startswith(("Glucose " + mg_dl + " mg/dL", "Fasting glucose " + mg_dl))


def test_control_solution_never_alerts(cn: AlertRules) -> None:
    assert evaluate(cn, "glucose", glucose("2.0"), ["control_solution"]) == ()


def test_absent_values_never_alert(cn: AlertRules) -> None:
    reading = [Measurement("systolic", None, "mm[Hg]", "nan"), Measurement("diastolic", D(95), "mm[Hg]")]
    (alert,) = evaluate(cn, "bp", reading)
    assert alert.rule == "hypertension" and alert.field == "diastolic"
    assert alert.message_en.startswith("BP ?/95 mmHg")  # the value that is not there reads "?"
    assert evaluate(cn, "glucose", [Measurement("glucose", None, "mmol/L", "nres")]) == ()


# --- oxygen, temperature, heart rate -----------------------------------------------------------


@pytest.mark.parametrize(
    ("spo2", "expected"),
    [("94", []), ("93.9", ["spo2_low"]), ("90", ["spo2_low"]), ("89", ["spo2_severe"])],
)
def test_spo2_thresholds(cn: AlertRules, spo2, expected) -> None:
    reading = [Measurement("spo2", D(spo2), "%"), Measurement("pulse_rate", D(80), "/min")]
    assert rules_of(evaluate(cn, "spo2", reading)) == expected


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        ("37.2", "Cel", []),
        ("37.29", "Cel", []),
        ("37.3", "Cel", ["fever"]),
        ("99.14", "[degF]", ["fever"]),  # exactly 37.3 °C
        ("99.13", "[degF]", []),
    ],
)
def test_fever_threshold(cn: AlertRules, value, unit, expected) -> None:
    reading = [Measurement("body_temperature", D(value), unit)]
    assert rules_of(evaluate(cn, "temperature", reading)) == expected


@pytest.mark.parametrize(
    ("kind", "rate", "expected"),
    [
        ("bp", 50, []),
        ("bp", 49, ["bradycardia"]),
        ("spo2", 120, []),
        ("spo2", 121, ["tachycardia"]),
        ("heart_rate", 49, ["bradycardia"]),
        ("heart_rate", 121, ["tachycardia"]),
        ("heart_rate", 80, []),
    ],
)
def test_heart_rate_thresholds_for_every_kind_with_a_rate(cn: AlertRules, kind, rate, expected) -> None:
    reading = [Measurement("pulse_rate", D(rate), "/min")]
    assert rules_of(evaluate(cn, kind, reading)) == expected


def test_kinds_without_rules_raise_nothing(cn: AlertRules) -> None:
    assert evaluate(cn, "weight", [Measurement("body_weight", D(250), "kg")]) == ()
    assert evaluate(cn, "ecg", []) == ()


# --- the mechanism: another region, per-unit thresholds, broken files ------------------------

OTHER_REGION = """
region = "XX"
name = "a test region"
[[rules]]
id = "raised_fasting"
kinds = ["glucose"]
severity = "info"
when = [{ field = "glucose", op = ">=", threshold = 7.0, unit = "mmol/L", also = { "mg/dL" = 126 } }]
requires_flags = ["fasting"]
message.zh = "空腹血糖 {glucose} {unit}"
message.en = "Fasting glucose {glucose} {unit}"
referral.zh = "复查"
referral.en = "recheck"
source = "test"
"""


def test_a_second_region_is_a_second_file(tmp_path: Path) -> None:
    (tmp_path / "alert_rules").mkdir()
    (tmp_path / "alert_rules" / "xx.toml").write_text(OTHER_REGION)
    rules = load_alert_rules(tmp_path, "XX")
    assert available_regions(tmp_path) == ["XX"]
    # a threshold stated per unit is used as written: 126 mg/dL triggers although it is 6.994 mmol/L
    (alert,) = evaluate(rules, "glucose", glucose("126", "mg/dL"), ["fasting"])
    assert (alert.rule, alert.severity, alert.message_en) == (
        "raised_fasting",
        "info",
        "Fasting glucose 126 mg/dL",
    )
    assert evaluate(rules, "glucose", glucose("125.9", "mg/dL"), ["fasting"]) == ()
    assert rules_of(evaluate(rules, "glucose", glucose("7.0"), ["fasting"])) == ["raised_fasting"]
    with pytest.raises(ProfileError) as info:
        load_alert_rules(tmp_path, "CN")
    assert "no alert rules for region 'CN' (regions: XX)" in str(info.value)


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (
            'field = "glucose", op',
            'field = "systolic", op',
            "rules.0.when.0.field: 'systolic' is not a field of glucose",
        ),
        (
            'unit = "mmol/L"',
            'unit = "mmHg"',
            "rules.0.when.0.unit: 'mmHg' does not measure glucose (use mmol/L or mg/dL)",
        ),
        ('op = ">="', 'op = "=>"', "rules.0.when.0.op: Input should be '<', '<=', '>=' or '>'"),
        (
            'severity = "info"',
            'severity = "high"',
            "rules.0.severity: Input should be 'info', 'warn' or 'urgent'",
        ),
        (
            '"Fasting glucose {glucose} {unit}"',
            '"Fasting glucose {glucos}"',
            "rules.0.message.en: unknown placeholder {glucos}",
        ),
        (
            'requires_flags = ["fasting"]',
            'requires_flags = ["fastng"]',
            "rules.0.requires_flags: unknown flag fastng",
        ),
        ('requires_flags = ["fasting"]', 'supersedes = ["nothing"]', "rules.0.supersedes: no rule nothing"),
        (
            'kinds = ["glucose"]',
            'kinds = ["glucose", "bp"]',
            "rules.0.kinds: no condition looks at a field of bp",
        ),
        ('source = "test"', 'source = "test"\nurl = "x"', "rules.0.url: Extra inputs are not permitted"),
        ('source = "test"\n', "", "rules.0.source: Field required"),
        ('region = "XX"', 'region = "YY"', "region: file of region 'YY' must be named yy.toml"),
        (
            'source = "test"',
            'source = "test"\n' + OTHER_REGION.split("\n", 3)[3],
            "rules: id raised_fasting used twice",
        ),
    ],
)
def test_broken_rule_file_names_file_and_field(tmp_path: Path, old: str, new: str, problem: str) -> None:
    assert old in OTHER_REGION
    path = tmp_path / "xx.toml"
    path.write_text(OTHER_REGION.replace(old, new))
    with pytest.raises(ProfileError) as info:
        load_rules_file(path)
    assert info.value.path == str(path)
    assert problem in info.value.problem


def test_known_flags_include_what_the_rules_use(cn: AlertRules) -> None:
    assert {"fasting", "control_solution"} <= KNOWN_FLAGS
    assert set(cn.skip_flags) | {flag for rule in cn.rules for flag in rule.requires_flags} <= KNOWN_FLAGS
