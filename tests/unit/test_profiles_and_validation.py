"""Device profiles load and validate; readings are checked against them with reasons."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from contract.wire import Measurement
from firmware import kiosk_link as link
from gateway.alerts import load_alert_rules
from gateway.errors import ProfileError, RejectedReading
from gateway.profiles import (
    FIELD_UNITS,
    KIND_FIELDS,
    PROTOCOLS,
    UNITS,
    DeviceProfile,
    convert,
    load_profile,
    load_profiles,
)
from gateway.validate import check_link_reading, check_reading, flag_names

PROFILES_DIR = Path(__file__).resolve().parents[2] / "device_profiles"
D = Decimal


@pytest.fixture(scope="module")
def profiles() -> dict[str, DeviceProfile]:
    return load_profiles(PROFILES_DIR)


@pytest.fixture(scope="module")
def bp_profile(profiles):
    return profiles["KX-BP100"]


@pytest.fixture(scope="module")
def cn_rules():
    return load_alert_rules(PROFILES_DIR, "CN")


# --- the registry ----------------------------------------------------------------------------


def test_every_profile_in_the_registry_loads(profiles) -> None:
    files = sorted(PROFILES_DIR.glob("*.toml"))
    assert len(profiles) == len(files) >= 10
    for path in files:
        assert load_profile(path).model in profiles
    for profile in profiles.values():
        for kind, spec in profile.kinds.items():
            assert set(spec.fields) <= set(KIND_FIELDS[kind])
            for name, field in spec.fields.items():
                assert field.range[0] < field.range[1]
                assert field.loinc, f"{profile.model} {kind}.{name} has no LOINC code"
                assert field.mdc, f"{profile.model} {kind}.{name} has no MDC code"


def test_the_registry_covers_every_protocol(profiles) -> None:
    protocols = {profile.protocol for profile in profiles.values()}
    assert protocols == set(PROTOCOLS)
    uart = [p.model for p in profiles.values() if p.transport == "uart"]
    assert sorted(uart) == ["KX-BP100", "KX-ECG200", "KX-GLU100", "KX-VS300", "KX-WS200"]


def test_ble_profiles_carry_normalised_uuids(profiles) -> None:
    gls = profiles["Accu-Chek Guide"].ble
    assert gls is not None
    assert gls.service == "00001808-0000-1000-8000-00805f9b34fb"
    assert gls.measurements == ("00002a18-0000-1000-8000-00805f9b34fb",)
    assert gls.racp == "00002a52-0000-1000-8000-00805f9b34fb"
    assert gls.context == "00002a34-0000-1000-8000-00805f9b34fb"
    assert gls.stored_records is True and gls.bond is True
    assert profiles["Polar H10"].ble.bond is False
    assert profiles["KX-BP100"].ble is None


def test_field_units_are_known_and_convertible() -> None:
    for field, units in FIELD_UNITS.items():
        assert all(unit in UNITS for unit in units), field
        assert len({UNITS[unit].dimension for unit in units}) == 1, field


@pytest.mark.parametrize(
    ("value", "unit", "to_unit", "expected"),
    [
        (D(100), "kPa", "mm[Hg]", Fraction(100) / Fraction("0.1333220")),
        (D("98.6"), "[degF]", "Cel", Fraction(37)),
        (D(-40), "Cel", "[degF]", Fraction(-40)),
        (D("18.0156"), "mg/dL", "mmol/L", Fraction(1)),
        (D(100), "[lb_av]", "kg", Fraction("45.359237")),
        (D(1750), "ms", "s", Fraction("1.75")),
        (D("1.5"), "m", "cm", Fraction(150)),
    ],
)
def test_unit_conversions_are_exact(value, unit, to_unit, expected) -> None:
    assert convert(value, unit, to_unit) == expected


def test_conversion_refuses_different_dimensions() -> None:
    with pytest.raises(ValueError, match="cannot convert kg"):
        convert(D(1), "kg", "mm[Hg]")


# --- broken profiles name their file and field ------------------------------------------------

UART_BP = """
model = "X"
vendor = "v"
name = "n"
transport = "uart"
protocol = "kiosk-link/1"
[kinds.bp]
required = ["systolic"]
[kinds.bp.fields.systolic]
unit = "mm[Hg]"
range = [40, 300]
loinc = "8480-6"
"""

BLE_BP = """
model = "X"
vendor = "v"
name = "n"
transport = "ble"
protocol = "ble-bls"
[ble]
service = "0x1810"
measurements = ["0x2A35"]
bond = true
name_prefix = "X"
[kinds.bp]
required = ["systolic"]
[kinds.bp.fields.systolic]
unit = "mm[Hg]"
range = [40, 300]
"""

BLE_TABLE = '[ble]\nservice = "0x1810"\nmeasurements = ["0x2A35"]\nbond = true\nname_prefix = "X"\n'
BLE_GLS = BLE_BP.replace('protocol = "ble-bls"', 'protocol = "ble-gls"').replace(
    '[kinds.bp]\nrequired = ["systolic"]\n[kinds.bp.fields.systolic]\nunit = "mm[Hg]"\nrange = [40, 300]\n',
    '[kinds.glucose.fields.glucose]\nunit = "mmol/L"\nrange = [1, 30]\n',
)


def _broken(base: str, old: str, new: str) -> str:
    assert old in base, old
    return base.replace(old, new)


BROKEN = [
    pytest.param(
        _broken(
            BLE_BP,
            "[kinds.bp]",
            '[kinds.glucose.fields.glucose]\nunit = "mmol/L"\nrange = [1, 30]\n[kinds.bp]',
        ),
        "kinds: protocol ble-bls carries bp, not glucose",
        id="protocol-kind-mix",
    ),
    pytest.param(
        _broken(
            UART_BP,
            "[kinds.bp]",
            '[kinds.heart_rate.fields.pulse_rate]\nunit = "/min"\nrange = [25, 240]\n[kinds.bp]',
        ),
        "kinds: protocol kiosk-link/1 carries bp, ecg, glucose, spo2, temperature, weight, not heart_rate",
        id="link-cannot-carry-heart-rate",
    ),
    pytest.param(
        _broken(UART_BP, 'transport = "uart"', 'transport = "ble"'),
        "protocol: transport 'ble' needs a ble-* protocol, not 'kiosk-link/1'",
        id="ble-transport-link-protocol",
    ),
    pytest.param(
        _broken(BLE_BP, 'transport = "ble"', 'transport = "uart"'),
        "protocol: transport 'uart' needs kiosk-link/1, not 'ble-bls'",
        id="uart-transport-ble-protocol",
    ),
    pytest.param(
        _broken(BLE_BP, BLE_TABLE, ""),
        "ble: a [ble] table is required for transport 'ble'",
        id="ble-without-ble-table",
    ),
    pytest.param(
        _broken(UART_BP, "[kinds.bp]", BLE_TABLE + "[kinds.bp]"),
        "ble: only transport 'ble' has a [ble] table, this is 'uart'",
        id="uart-with-ble-table",
    ),
    pytest.param(
        _broken(BLE_BP, 'service = "0x1810"', 'service = "0x18100"'),
        "ble.service: not a Bluetooth UUID: '0x18100'",
        id="bad-uuid",
    ),
    pytest.param(
        _broken(BLE_BP, 'service = "0x1810"', "service = 0x1810"),
        "ble.service: not a Bluetooth UUID: 6160",
        id="uuid-as-toml-integer",
    ),
    pytest.param(
        _broken(BLE_BP, '["0x2A35"]', '["00002a35-0000-1000-8000-00805f9b34f"]'),
        "ble.measurements.0: not a Bluetooth UUID",
        id="short-128-bit-uuid",
    ),
    pytest.param(
        _broken(BLE_BP, 'service = "0x1810"', 'service = "0x1808"'),
        "ble.service: protocol ble-bls is the Bluetooth Blood Pressure Service 0x1810, not 0x1808",
        id="service-of-another-protocol",
    ),
    pytest.param(
        _broken(BLE_BP, '["0x2A35"]', '["0x2A35", "0x2A18"]'),
        "ble.measurements: 0x2A18 is not a measurement of ble-bls (known: 0x2A35)",
        id="characteristic-of-another-protocol",
    ),
    pytest.param(
        _broken(
            BLE_GLS,
            'service = "0x1810"\nmeasurements = ["0x2A35"]',
            'service = "0x1808"\nmeasurements = ["0x2A18"]',
        ),
        "ble.racp: protocol ble-gls needs its record access control point 0x2A52",
        id="glucose-without-racp",
    ),
    pytest.param(
        _broken(BLE_BP, "bond = true", 'bond = true\nracp = "0x2A52"'),
        "ble.racp: protocol ble-bls has no record access control point",
        id="racp-on-bp",
    ),
    pytest.param(
        _broken(BLE_BP, "bond = true", 'bond = "yes"'),
        "ble.bond: Input should be a valid boolean",
        id="bond-not-a-boolean",
    ),
    pytest.param(
        _broken(BLE_BP, 'name_prefix = "X"\n', ""),
        "ble.name_prefix: Field required",
        id="ble-without-name-prefix",
    ),
    pytest.param(
        _broken(UART_BP, 'unit = "mm[Hg]"', 'unit = "mmHg"'),
        "kinds.bp.fields.systolic.unit: unit 'mmHg' is not a UCUM unit this gateway knows",
        id="unit-not-ucum",
    ),
    pytest.param(
        _broken(UART_BP, 'unit = "mm[Hg]"', 'unit = "kg"'),
        "kinds.bp.fields.systolic.unit: kg does not measure systolic (use mm[Hg] or kPa)",
        id="unit-of-another-quantity",
    ),
    pytest.param(
        _broken(UART_BP, "range = [40, 300]", "range = [300, 40]"),
        "kinds.bp.fields.systolic: range 300..40 is empty",
        id="reversed-range",
    ),
    pytest.param(
        _broken(UART_BP, "range = [40, 300]", "range = [40, 40]"),
        "kinds.bp.fields.systolic: range 40..40 is empty",
        id="empty-range",
    ),
    pytest.param(
        _broken(UART_BP, "range = [40, 300]", 'range = [40, 300]\ncolour = "red"'),
        "kinds.bp.fields.systolic.colour: Extra inputs are not permitted",
        id="unknown-key",
    ),
    pytest.param(
        _broken(UART_BP, 'vendor = "v"', 'vendor = "v"\nbluetooth = true'),
        "bluetooth: Extra inputs are not permitted",
        id="unknown-top-level-key",
    ),
    pytest.param(
        _broken(UART_BP, "range = [40, 300]", 'range = [40, 300]\nout_of_range = "drop"'),
        "kinds.bp.fields.systolic.out_of_range: Input should be 'refuse' or 'flag'",
        id="unknown-out-of-range-policy",
    ),
    pytest.param(
        _broken(UART_BP, "fields.systolic]", "fields.systolc]").replace('["systolic"]', "[]"),
        "kinds.bp.fields.systolc: not a bp field (known: systolic, diastolic, mean_arterial, pulse_rate)",
        id="unknown-field-name",
    ),
    pytest.param(
        _broken(UART_BP, '"8480-6"', '"8480-5"'),
        "kinds.bp.fields.systolic.loinc: LOINC code '8480-5' has a wrong check digit",
        id="loinc-check-digit",
    ),
    pytest.param(
        _broken(UART_BP, 'protocol = "kiosk-link/1"', 'protocol = "ble-foo"'),
        "protocol: Input should be 'kiosk-link/1', 'ble-bls'",
        id="unknown-protocol",
    ),
    pytest.param(
        _broken(UART_BP, "[kinds.bp]", "[kinds.ecg]\n[kinds.bp]"),
        "kinds.ecg.waveform: ecg needs a waveform table",
        id="ecg-without-waveform",
    ),
]


@pytest.mark.parametrize(("text", "problem"), BROKEN)
def test_broken_profile_names_file_and_field(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: ")
    assert problem in info.value.problem


def test_the_broken_profile_bases_are_valid(tmp_path: Path) -> None:
    for index, text in enumerate((UART_BP, BLE_BP)):
        path = tmp_path / f"ok{index}.toml"
        path.write_text(text)
        load_profile(path)  # so every BROKEN case fails for its own change only


def test_bad_profile_names_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(
        'model = "X"\nvendor = "v"\nname = "n"\ntransport = "usb"\nprotocol = "p"\n'
        '[kinds.bp.fields.systolic]\nunit = "mm[Hg]"\nrange = [300, 40]\n'
    )
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert str(path) in str(info.value)
    assert "transport" in str(info.value)
    assert "protocol" in str(info.value)
    assert "range 300..40 is empty" in str(info.value)


def test_uuid_forms_normalise_to_lower_case_128_bit() -> None:
    base = {
        "model": "X",
        "vendor": "v",
        "name": "n",
        "transport": "ble",
        "protocol": "ble-hrs",
        "kinds": {"heart_rate": {"fields": {"pulse_rate": {"unit": "/min", "range": [25, 240]}}}},
    }
    for service in ("0x180D", "0x180d", "0000180D-0000-1000-8000-00805F9B34FB"):
        ble = {"service": service, "measurements": ["0x2a37"], "bond": False, "name_prefix": "P"}
        profile = DeviceProfile.model_validate({**base, "ble": ble})
        assert profile.ble is not None
        assert profile.ble.service == "0000180d-0000-1000-8000-00805f9b34fb"
        assert profile.ble.measurements == ("00002a37-0000-1000-8000-00805f9b34fb",)


def test_decimals_in_profiles_are_exact(profiles) -> None:
    assert profiles["KX-GLU100"].kinds["glucose"].fields["glucose"].range == (D("1.1"), D("33.3"))


# --- the kiosk link's readings -----------------------------------------------------------------


def test_valid_bp_reading(bp_profile) -> None:
    checked = check_link_reading(
        "bp-1",
        bp_profile,
        link.KIND_BP,
        [(link.FIELD_SYSTOLIC, 1285, -1), (link.FIELD_DIASTOLIC, 82, 0)],
        link.FLAG_IRREGULAR_PULSE,
        None,
    )
    assert checked.kind == "bp"
    assert checked.measurements == (
        Measurement("systolic", Decimal("128.5"), "mm[Hg]"),
        Measurement("diastolic", Decimal(82), "mm[Hg]"),
    )
    assert checked.flags == ("irregular_pulse",)
    assert checked.alerts == () and checked.notes == ()


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ([(1, 320, 0), (2, 80, 0)], "bp.systolic = 320 mm[Hg] outside plausible 40..300"),
        ([(1, 120, 0)], "bp: missing diastolic"),
        ([(1, 120, 0), (2, 80, 0), (99, 1, 0)], "bp: unexpected field code 99"),
        ([(1, 120, 0), (1, 121, 0), (2, 80, 0)], "bp: field systolic sent twice"),
        ([(1, 80, 0), (2, 90, 0)], "bp: systolic 80 not above diastolic 90"),
        ([(1, 90, 0), (2, 90, 0)], "bp: systolic 90 not above diastolic 90"),
    ],
)
def test_invalid_bp_readings_say_why(bp_profile, fields, reason) -> None:
    with pytest.raises(RejectedReading) as info:
        check_link_reading("bp-1", bp_profile, link.KIND_BP, fields, 0, None)
    assert info.value.reason == reason


def test_kind_the_model_does_not_measure(bp_profile) -> None:
    with pytest.raises(RejectedReading, match="does not measure glucose"):
        check_link_reading("bp-1", bp_profile, link.KIND_GLUCOSE, [(link.FIELD_GLUCOSE, 55, -1)], 0, None)
    with pytest.raises(RejectedReading, match="unknown kind code 77"):
        check_link_reading("bp-1", bp_profile, 77, [], 0, None)


def test_flag_names() -> None:
    assert flag_names(link.FLAG_IRREGULAR_PULSE | link.FLAG_CUFF_LOOSE) == ("irregular_pulse", "cuff_loose")


def test_link_alerts_travel_as_flags(bp_profile, cn_rules) -> None:
    checked = check_link_reading(
        "bp-1", bp_profile, link.KIND_BP, [(1, 182, 0), (2, 115, 0)], link.FLAG_CUFF_LOOSE, cn_rules
    )
    assert checked.flags == ("cuff_loose", "alert:hypertensive_crisis")
    assert [alert.rule for alert in checked.alerts] == ["hypertensive_crisis"]
    assert checked.alerts[0].message_en == "BP 182/115 mmHg — hypertensive crisis (grade 3): refer today"


# --- check_reading: ranges refused or flagged --------------------------------------------------


def _bp_profile(policy: str) -> DeviceProfile:
    return DeviceProfile.model_validate(
        {
            "model": "T",
            "vendor": "v",
            "name": "n",
            "transport": "uart",
            "protocol": "kiosk-link/1",
            "kinds": {
                "bp": {
                    "required": ["systolic", "diastolic"],
                    "fields": {
                        "systolic": {"unit": "mm[Hg]", "range": [40, 300], "out_of_range": policy},
                        "diastolic": {"unit": "mm[Hg]", "range": [20, 200]},
                    },
                }
            },
        }
    )


def test_out_of_range_refused_by_default() -> None:
    profile = _bp_profile("refuse")
    with pytest.raises(RejectedReading) as info:
        check_reading("bp-1", profile, "bp", {"systolic": D(301), "diastolic": D(80)})
    assert info.value.reason == "bp.systolic = 301 mm[Hg] outside plausible 40..300"


def test_out_of_range_flagged_is_kept_with_flag_and_note() -> None:
    profile = _bp_profile("flag")
    checked = check_reading(
        "bp-1", profile, "bp", {"systolic": D(301), "diastolic": D(80)}, ["body_movement"]
    )
    assert checked.measurements[0] == Measurement("systolic", D(301), "mm[Hg]")
    assert checked.flags == ("body_movement", "implausible:systolic")
    assert checked.notes == (
        "bp.systolic = 301 mm[Hg] outside plausible 40..300: kept and flagged implausible:systolic",
    )
    # the policy is per field: diastolic still refuses
    with pytest.raises(RejectedReading) as info:
        check_reading("bp-1", profile, "bp", {"systolic": D(250), "diastolic": D(201)})
    assert info.value.reason == "bp.diastolic = 201 mm[Hg] outside plausible 20..200"


@pytest.mark.parametrize("policy", ["refuse", "flag"])
def test_range_ends_are_plausible(policy: str) -> None:
    profile = _bp_profile(policy)
    for systolic in (D(40), D(300)):
        checked = check_reading("bp-1", profile, "bp", {"systolic": systolic, "diastolic": D(20)})
        assert checked.flags == ()


def test_flagged_value_still_raises_its_alert(profiles, cn_rules) -> None:
    checked = check_reading(
        "ox-1",
        profiles["Nonin 3230"],
        "spo2",
        [Measurement("spo2", D(65), "%"), Measurement("pulse_rate", D(88), "/min")],
        (),
        cn_rules,
    )
    assert checked.flags == ("implausible:spo2", "alert:spo2_severe")
    assert checked.notes == ("spo2.spo2 = 65 % outside plausible 70..100: kept and flagged implausible:spo2",)


# --- check_reading: measurements in their own units, absent values ----------------------------


def test_other_unit_is_kept_as_sent_and_ranged_in_the_profile_unit(profiles, cn_rules) -> None:
    meter = profiles["Accu-Chek Guide"]
    checked = check_reading(
        "glu-1", meter, "glucose", [Measurement("glucose", D(127), "mg/dL")], ["fasting"], cn_rules
    )
    assert checked.measurements == (Measurement("glucose", D(127), "mg/dL"),)
    assert checked.flags == ("fasting", "alert:fasting_hyperglycaemia")
    with pytest.raises(RejectedReading) as info:
        check_reading("glu-1", meter, "glucose", [Measurement("glucose", D(610), "mg/dL")])
    assert info.value.reason == "glucose.glucose = 610 mg/dL (= 33.86 mmol/L) outside plausible 0.5..33.4"


def test_unit_the_profile_does_not_accept_is_refused(profiles) -> None:
    cuff = profiles["UA-651BLE"]
    values = [Measurement("systolic", D("16.0"), "kPa"), Measurement("diastolic", D("10.7"), "kPa")]
    with pytest.raises(RejectedReading) as info:
        check_reading("bp-2", cuff, "bp", values)
    assert info.value.reason == "bp.systolic: unit kPa not accepted (profile: mm[Hg])"


def test_absent_value_is_kept_and_noted_not_ranged(profiles) -> None:
    cuff = profiles["UA-651BLE"]
    values = [
        Measurement("systolic", D(121), "mm[Hg]"),
        Measurement("diastolic", D(79), "mm[Hg]"),
        Measurement("mean_arterial", None, "mm[Hg]", "nan"),
    ]
    checked = check_reading("bp-2", cuff, "bp", values)
    assert checked.measurements == tuple(values)
    assert checked.notes == ("bp.mean_arterial: no value (nan)",)
    assert checked.flags == ()


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ([Measurement("systolic", D(121), "mm[Hg]")], "bp: missing diastolic"),
        (
            [Measurement("systolic", D(121), "mm[Hg]"), Measurement("systolic", D(122), "mm[Hg]")],
            "bp: field systolic sent twice",
        ),
        ([Measurement("heart", D(60), "/min")], "bp: unexpected field heart"),
    ],
)
def test_measurement_input_refusals(profiles, values, reason) -> None:
    with pytest.raises(RejectedReading) as info:
        check_reading("bp-2", profiles["UA-651BLE"], "bp", values)
    assert info.value.reason == reason


def test_mapping_input_refuses_unknown_and_non_finite(bp_profile) -> None:
    with pytest.raises(RejectedReading, match="bp: unexpected field glucose"):
        check_reading("bp-1", bp_profile, "bp", {"glucose": D(5)})
    with pytest.raises(RejectedReading) as info:
        check_reading("bp-1", bp_profile, "bp", {"systolic": D("NaN"), "diastolic": D(80)})
    assert info.value.reason == "bp.systolic: Decimal('NaN') is not a finite number"


def test_heart_rate_kind_from_a_strap(profiles, cn_rules) -> None:
    strap = profiles["Polar H10"]
    checked = check_reading(
        "hr-1", strap, "heart_rate", [Measurement("pulse_rate", D(45), "/min")], (), cn_rules
    )
    assert checked.flags == ("alert:bradycardia",)
    assert checked.alerts[0].message_zh == "心率 45 次/分 — 心率过慢（<50 次/分）"


def test_without_rules_no_alerts(bp_profile) -> None:
    checked = check_reading("bp-1", bp_profile, "bp", {"systolic": D(200), "diastolic": D(120)})
    assert checked.alerts == () and checked.flags == ()


def test_device_flags_keep_their_order_once() -> None:
    profile = _bp_profile("refuse")
    checked = check_reading(
        "bp-1",
        profile,
        "bp",
        {"systolic": D(120), "diastolic": D(80)},
        ["cuff_loose", "body_movement", "cuff_loose"],
    )
    assert checked.flags == ("cuff_loose", "body_movement")
