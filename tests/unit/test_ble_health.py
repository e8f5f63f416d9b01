"""Bluetooth SIG health measurements: hand-built spec vectors compared whole, errors, and properties.

Byte comments follow the characteristic layouts in gateway/ble/health.py (Blood Pressure 0x2A35,
Temperature 0x2A1C, Weight 0x2A9D, Heart Rate 0x2A37); all multi-byte fields are little-endian.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.ble.health import (
    BleParseError,
    BloodPressureMeasurement,
    BloodPressureStatus,
    DateTime,
    HeartRateMeasurement,
    PulseRateRange,
    SensorContact,
    TemperatureMeasurement,
    TemperatureType,
    WeightMeasurement,
    parse_blood_pressure,
    parse_heart_rate,
    parse_temperature,
    parse_weight,
)
from gateway.ble.ieee11073 import NoValue, NoValueReason
from tests.unit.test_ble_common import assert_parses_or_raises, date_time_bytes, date_times
from tests.unit.test_ble_ieee11073 import floats, sfloats

# Date Time 0x2A08: year u16 0x07E8 = 2024, month 3, day 15, 08:30:05.
STAMP_BYTES = bytes([0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x05])
STAMP = DateTime(2024, 3, 15, 8, 30, 5)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# ---------------------------------------------------------------------------------------------
# Blood pressure 0x2A35


def test_blood_pressure_minimal_mmhg() -> None:
    payload = h(
        "00"  # flags: mmHg, no time stamp, no pulse, no user, no status
        "7800"  # systolic SFLOAT 0x0078 = 120
        "5000"  # diastolic SFLOAT 0x0050 = 80
        "5D00"  # MAP SFLOAT 0x005D = 93
    )
    assert parse_blood_pressure(payload) == BloodPressureMeasurement(
        systolic=Decimal("120"), diastolic=Decimal("80"), mean_arterial_pressure=Decimal("93"), unit="mm[Hg]"
    )


BP_FULL_KPA = (
    h(
        "1F"  # flags: bit0 kPa, bit1 time stamp, bit2 pulse, bit3 user id, bit4 status
        "A0F0"  # systolic SFLOAT 0xF0A0: e=-1, m=160 -> 16.0
        "6BF0"  # diastolic SFLOAT 0xF06B: e=-1, m=107 -> 10.7
        "7DF0"  # MAP SFLOAT 0xF07D: e=-1, m=125 -> 12.5
    )
    + STAMP_BYTES
    + h(
        "4800"  # pulse rate SFLOAT 0x0048 = 72
        "02"  # user id 2
        "3800"  # status 0x0038: bits 3-4 = 3 (reserved range), bit 5 improper position
    )
)


def test_blood_pressure_kpa_with_every_optional_field() -> None:
    result = parse_blood_pressure(BP_FULL_KPA)
    assert result == BloodPressureMeasurement(
        systolic=Decimal("16.0"),
        diastolic=Decimal("10.7"),
        mean_arterial_pressure=Decimal("12.5"),
        unit="kPa",
        time_stamp=STAMP,
        pulse_rate=Decimal("72"),
        user_id=2,
        status=BloodPressureStatus(
            body_movement=False,
            cuff_too_loose=False,
            irregular_pulse=False,
            pulse_rate_range=PulseRateRange.RESERVED,
            improper_position=True,
            raw=0x0038,
        ),
    )
    assert str(result.systolic) == "16.0"
    assert result.time_stamp is not None
    assert result.time_stamp.to_datetime() == datetime(2024, 3, 15, 8, 30, 5)


@pytest.mark.parametrize(
    ("status_bytes", "expected"),
    [
        # bits 0-2 set: body movement, cuff too loose, irregular pulse; range 0 = within
        ("0700", BloodPressureStatus(True, True, True, PulseRateRange.WITHIN_RANGE, False, 0x07)),
        # bits 3-4 = 01: pulse rate exceeds upper limit
        ("0800", BloodPressureStatus(False, False, False, PulseRateRange.EXCEEDS_UPPER_LIMIT, False, 0x08)),
        # bits 3-4 = 10: pulse rate below lower limit
        ("1000", BloodPressureStatus(False, False, False, PulseRateRange.BELOW_LOWER_LIMIT, False, 0x10)),
        # bit 5 only: improper measurement position
        ("2000", BloodPressureStatus(False, False, False, PulseRateRange.WITHIN_RANGE, True, 0x20)),
        # reserved bit 15 is kept in raw and changes nothing else
        ("0080", BloodPressureStatus(False, False, False, PulseRateRange.WITHIN_RANGE, False, 0x8000)),
    ],
)
def test_blood_pressure_status_bits(status_bytes: str, expected: BloodPressureStatus) -> None:
    # flags 0x10 (status only, mmHg); 120/80, MAP 93
    payload = h("10780050005D00" + status_bytes)
    assert parse_blood_pressure(payload) == BloodPressureMeasurement(
        systolic=Decimal("120"),
        diastolic=Decimal("80"),
        mean_arterial_pressure=Decimal("93"),
        unit="mm[Hg]",
        status=expected,
    )


def test_blood_pressure_special_values_are_not_numbers() -> None:
    payload = h(
        "04"  # flags: mmHg, pulse rate present
        "7800"  # systolic 120
        "5000"  # diastolic 80
        "0008"  # MAP SFLOAT 0x0800 = NRes (cuff did not compute it)
        "FF07"  # pulse rate SFLOAT 0x07FF = NaN
    )
    assert parse_blood_pressure(payload) == BloodPressureMeasurement(
        systolic=Decimal("120"),
        diastolic=Decimal("80"),
        mean_arterial_pressure=NoValue(NoValueReason.NRES),
        unit="mm[Hg]",
        pulse_rate=NoValue(NoValueReason.NAN),
    )


@pytest.mark.parametrize(
    ("length", "field"),
    [
        (0, "flags"),
        (1, "systolic"),
        (2, "systolic"),
        (4, "diastolic"),
        (6, "mean_arterial_pressure"),
        (7, "time_stamp"),
        (13, "time_stamp"),
        (14, "pulse_rate"),
        (16, "user_id"),
        (17, "measurement_status"),
        (18, "measurement_status"),
    ],
)
def test_blood_pressure_truncated_names_the_missing_field(length: int, field: str) -> None:
    with pytest.raises(BleParseError) as caught:
        parse_blood_pressure(BP_FULL_KPA[:length])
    assert (caught.value.characteristic, caught.value.field) == ("blood pressure measurement", field)
    assert isinstance(caught.value, ValueError)


def test_blood_pressure_trailing_bytes_are_inconsistent() -> None:
    with pytest.raises(BleParseError, match="1 unexpected bytes") as caught:
        parse_blood_pressure(BP_FULL_KPA + b"\x00")
    assert caught.value.field == "end"


# ---------------------------------------------------------------------------------------------
# Temperature 0x2A1C


def test_temperature_celsius_minimal() -> None:
    payload = h(
        "00"  # flags: Celsius, no time stamp, no type
        "6E0100FF"  # FLOAT 0xFF00016E: e=-1, m=366 -> 36.6
    )
    result = parse_temperature(payload)
    assert result == TemperatureMeasurement(temperature=Decimal("36.6"), unit="Cel")
    assert str(result.temperature) == "36.6"


def test_temperature_fahrenheit_with_time_stamp_and_type() -> None:
    payload = (
        h(
            "07"  # flags: bit0 Fahrenheit, bit1 time stamp, bit2 type
            "DA0300FF"  # FLOAT 0xFF0003DA: e=-1, m=986 -> 98.6
        )
        + STAMP_BYTES
        + h("09")  # temperature type 9 = Tympanum (ear drum)
    )
    assert parse_temperature(payload) == TemperatureMeasurement(
        temperature=Decimal("98.6"),
        unit="[degF]",
        time_stamp=STAMP,
        temperature_type=TemperatureType.TYMPANUM,
    )


@pytest.mark.parametrize(
    ("code", "expected"),
    [("01", TemperatureType.ARMPIT), ("06", TemperatureType.MOUTH), ("00", 0), ("0A", 10)],
)
def test_temperature_type_codes(code: str, expected: TemperatureType | int) -> None:
    # flags 0x04 (type only); FLOAT 0xFE000E4A: e=-2, m=3658 -> 36.58; then the type code
    result = parse_temperature(h("044A0E00FE" + code))
    assert result == TemperatureMeasurement(
        temperature=Decimal("36.58"), unit="Cel", temperature_type=expected
    )
    assert type(result.temperature_type) is type(expected)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("FFFF7F00", NoValueReason.NAN),  # 0x007FFFFF
        ("00008000", NoValueReason.NRES),  # 0x00800000
        ("FEFF7F00", NoValueReason.POSITIVE_INFINITY),  # 0x007FFFFE
        ("02008000", NoValueReason.NEGATIVE_INFINITY),  # 0x00800002
        ("01008000", NoValueReason.RESERVED),  # 0x00800001
    ],
)
def test_temperature_special_values(raw: str, reason: NoValueReason) -> None:
    assert parse_temperature(h("00" + raw)) == TemperatureMeasurement(temperature=NoValue(reason), unit="Cel")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ("", "flags"),
        ("00 6E0100", "temperature"),
        ("02 6E0100FF E807", "time_stamp"),
        ("04 6E0100FF", "temperature_type"),
    ],
)
def test_temperature_truncated(payload: str, field: str) -> None:
    with pytest.raises(BleParseError) as caught:
        parse_temperature(h(payload))
    assert caught.value.field == field


# ---------------------------------------------------------------------------------------------
# Weight 0x2A9D


def test_weight_si_minimal() -> None:
    payload = h(
        "00"  # flags: SI, nothing optional
        "B036"  # weight u16 0x36B0 = 14000 × 0.005 kg = 70.000 kg
    )
    result = parse_weight(payload)
    assert result == WeightMeasurement(weight=Decimal("70.000"), unit="kg")
    assert str(result.weight) == "70.000"


def test_weight_si_with_every_optional_field() -> None:
    payload = (
        h(
            "0E"  # flags: SI, bit1 time stamp, bit2 user id, bit3 BMI and height
            "4F37"  # weight 0x374F = 14159 × 0.005 = 70.795 kg
        )
        + STAMP_BYTES
        + h(
            "01"  # user id 1
            "E500"  # BMI 0x00E5 = 229 × 0.1 = 22.9 kg/m2
            "D606"  # height 0x06D6 = 1750 × 0.001 = 1.750 m
        )
    )
    assert parse_weight(payload) == WeightMeasurement(
        weight=Decimal("70.795"),
        unit="kg",
        time_stamp=STAMP,
        user_id=1,
        bmi=Decimal("22.9"),
        height=Decimal("1.750"),
        height_unit="m",
    )


def test_weight_imperial_with_bmi_and_height() -> None:
    payload = h(
        "09"  # flags: bit0 imperial, bit3 BMI and height
        "483C"  # weight 0x3C48 = 15432 × 0.01 lb = 154.32 lb
        "E500"  # BMI 229 × 0.1 = 22.9 kg/m2 (BMI has no imperial form)
        "B102"  # height 0x02B1 = 689 × 0.1 in = 68.9 in
    )
    assert parse_weight(payload) == WeightMeasurement(
        weight=Decimal("154.32"),
        unit="[lb_av]",
        bmi=Decimal("22.9"),
        height=Decimal("68.9"),
        height_unit="[in_i]",
    )


def test_weight_unsuccessful_measurement() -> None:
    # flags 0x00; weight 0xFFFF = "measurement unsuccessful" in the Weight Scale spec
    assert parse_weight(h("00FFFF")) == WeightMeasurement(
        weight=NoValue(NoValueReason.MEASUREMENT_UNSUCCESSFUL), unit="kg"
    )


@pytest.mark.parametrize(
    ("payload", "field"),
    [("00B0", "weight"), ("04B036", "user_id"), ("08B036E5", "bmi"), ("08B036E500", "height")],
)
def test_weight_truncated(payload: str, field: str) -> None:
    with pytest.raises(BleParseError) as caught:
        parse_weight(h(payload))
    assert caught.value.field == field


# ---------------------------------------------------------------------------------------------
# Heart rate 0x2A37


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        # flags 0x00: u8 value, contact not supported; 0x48 = 72
        ("0048", HeartRateMeasurement(heart_rate=72, sensor_contact=SensorContact.NOT_SUPPORTED)),
        # flags 0x02: bits1-2 = 01, also "not supported"
        ("0248", HeartRateMeasurement(heart_rate=72, sensor_contact=SensorContact.NOT_SUPPORTED)),
        # flags 0x04: bits1-2 = 10, supported but not detected
        ("044B", HeartRateMeasurement(heart_rate=75, sensor_contact=SensorContact.NOT_DETECTED)),
        # flags 0x06: bits1-2 = 11, detected
        ("064B", HeartRateMeasurement(heart_rate=75, sensor_contact=SensorContact.DETECTED)),
    ],
)
def test_heart_rate_u8_and_sensor_contact(payload: str, expected: HeartRateMeasurement) -> None:
    assert parse_heart_rate(h(payload)) == expected


def test_heart_rate_u16_with_energy_and_rr_intervals() -> None:
    payload = h(
        "1F"  # flags: bit0 u16, bits1-2 = 11 contact detected, bit3 energy, bit4 RR
        "2C01"  # heart rate u16 0x012C = 300
        "2301"  # energy expended u16 0x0123 = 291 kJ
        "0004"  # RR 0x0400 = 1024/1024 s = 1 s
        "3303"  # RR 0x0333 = 819/1024 s = 0.7998046875 s
    )
    result = parse_heart_rate(payload)
    assert result == HeartRateMeasurement(
        heart_rate=300,
        sensor_contact=SensorContact.DETECTED,
        energy_expended=291,
        rr_intervals_1024=(1024, 819),
    )
    assert result.rr_intervals == (Decimal("1"), Decimal("0.7998046875"))


def test_heart_rate_u8_with_rr_only() -> None:
    # flags 0x10: u8, RR present; 0x3C = 60 bpm; RR 0x0200 = 512/1024 = 0.5 s
    result = parse_heart_rate(h("103C0002"))
    assert result == HeartRateMeasurement(
        heart_rate=60, sensor_contact=SensorContact.NOT_SUPPORTED, rr_intervals_1024=(512,)
    )
    assert result.rr_intervals == (Decimal("0.5"),)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ("", "flags"),
        ("00", "heart_rate"),
        ("012C", "heart_rate"),  # u16 flag set, one byte
        ("0848", "energy_expended"),
        ("10480004 33", "rr_intervals"),  # odd number of RR bytes
        ("0048 00", "end"),  # trailing byte without the RR flag
    ],
)
def test_heart_rate_truncated_or_inconsistent(payload: str, field: str) -> None:
    with pytest.raises(BleParseError) as caught:
        parse_heart_rate(h(payload))
    assert caught.value.field == field


@given(
    st.booleans(),
    st.integers(0, 3),
    st.none() | st.integers(0, 0xFFFF),
    st.none() | st.lists(st.integers(0, 0xFFFF), max_size=9),
    st.data(),
)
def test_heart_rate_round_trip(wide, contact, energy, rr, data) -> None:
    value = data.draw(st.integers(0, 0xFFFF if wide else 0xFF))
    flags = (
        (0x01 if wide else 0)
        | (contact << 1)
        | (0x08 if energy is not None else 0)
        | (0x10 if rr is not None else 0)
    )
    payload = bytes([flags]) + value.to_bytes(2 if wide else 1, "little")
    if energy is not None:
        payload += energy.to_bytes(2, "little")
    for interval in rr or ():
        payload += interval.to_bytes(2, "little")
    result = parse_heart_rate(payload)
    assert result == HeartRateMeasurement(
        heart_rate=value,
        sensor_contact=SensorContact(contact) if contact >= 2 else SensorContact.NOT_SUPPORTED,
        energy_expended=energy,
        rr_intervals_1024=tuple(rr or ()),
    )
    assert all(seconds * 1024 == raw for seconds, raw in zip(result.rr_intervals, rr or (), strict=True))


@pytest.mark.parametrize("parser", [parse_blood_pressure, parse_temperature, parse_weight, parse_heart_rate])
@given(payload=st.binary(max_size=40))
def test_any_bytes_decode_or_raise_ble_parse_error(parser, payload: bytes) -> None:
    assert_parses_or_raises(parser, payload)


def test_one_parse_error_class_for_the_whole_package() -> None:
    from gateway.ble import glucose

    assert BleParseError is glucose.BleParseError
    assert issubclass(BleParseError, ValueError)


# ---------------------------------------------------------------------------------------------
# Every layout flag combination, written from the GSS tables (values separated by "|" in wire order)


def _wire(vector: str) -> bytes:
    return bytes.fromhex(vector.replace("|", ""))


TS = "e807 03 0f 08 1e 05"  # Date Time 2024-03-15 08:30:05 (= STAMP_BYTES), for reading the tables below

# Blood Pressure Measurement 0x2A35: flags | systolic, diastolic, MAP (SFLOAT) | time stamp (bit1)
#   | pulse rate SFLOAT (bit2) | user id u8 (bit3) | measurement status u16 (bit4); bit0 = kPa.
# mmHg "7800 5000 5d00" = 120 / 80 / 93 (exponent 0); kPa "a0f0 6bf0 7df0" = SFLOAT 0xF0A0, 0xF06B, 0xF07D
# = 16.0 / 10.7 / 12.5 (exponent -1); pulse "4800" = 72; user "03"; status "0500" = 0x0005 (bit0 body
# movement, bit2 irregular pulse). All 32 flag values:
BP_VECTORS = [
    "00 | 7800 5000 5d00",
    "01 | a0f0 6bf0 7df0",
    "02 | 7800 5000 5d00 | e807 03 0f 08 1e 05",
    "03 | a0f0 6bf0 7df0 | e807 03 0f 08 1e 05",
    "04 | 7800 5000 5d00 |                     | 4800",
    "05 | a0f0 6bf0 7df0 |                     | 4800",
    "06 | 7800 5000 5d00 | e807 03 0f 08 1e 05 | 4800",
    "07 | a0f0 6bf0 7df0 | e807 03 0f 08 1e 05 | 4800",
    "08 | 7800 5000 5d00 |                     |      | 03",
    "09 | a0f0 6bf0 7df0 |                     |      | 03",
    "0a | 7800 5000 5d00 | e807 03 0f 08 1e 05 |      | 03",
    "0b | a0f0 6bf0 7df0 | e807 03 0f 08 1e 05 |      | 03",
    "0c | 7800 5000 5d00 |                     | 4800 | 03",
    "0d | a0f0 6bf0 7df0 |                     | 4800 | 03",
    "0e | 7800 5000 5d00 | e807 03 0f 08 1e 05 | 4800 | 03",
    "0f | a0f0 6bf0 7df0 | e807 03 0f 08 1e 05 | 4800 | 03",
    "10 | 7800 5000 5d00 |                     |      |    | 0500",
    "11 | a0f0 6bf0 7df0 |                     |      |    | 0500",
    "12 | 7800 5000 5d00 | e807 03 0f 08 1e 05 |      |    | 0500",
    "13 | a0f0 6bf0 7df0 | e807 03 0f 08 1e 05 |      |    | 0500",
    "14 | 7800 5000 5d00 |                     | 4800 |    | 0500",
    "15 | a0f0 6bf0 7df0 |                     | 4800 |    | 0500",
    "16 | 7800 5000 5d00 | e807 03 0f 08 1e 05 | 4800 |    | 0500",
    "17 | a0f0 6bf0 7df0 | e807 03 0f 08 1e 05 | 4800 |    | 0500",
    "18 | 7800 5000 5d00 |                     |      | 03 | 0500",
    "19 | a0f0 6bf0 7df0 |                     |      | 03 | 0500",
    "1a | 7800 5000 5d00 | e807 03 0f 08 1e 05 |      | 03 | 0500",
    "1b | a0f0 6bf0 7df0 | e807 03 0f 08 1e 05 |      | 03 | 0500",
    "1c | 7800 5000 5d00 |                     | 4800 | 03 | 0500",
    "1d | a0f0 6bf0 7df0 |                     | 4800 | 03 | 0500",
    "1e | 7800 5000 5d00 | e807 03 0f 08 1e 05 | 4800 | 03 | 0500",
    "1f | a0f0 6bf0 7df0 | e807 03 0f 08 1e 05 | 4800 | 03 | 0500",
]


def _expected_bp(flags: int) -> BloodPressureMeasurement:
    kpa = bool(flags & 0x01)
    return BloodPressureMeasurement(
        systolic=Decimal("16.0") if kpa else Decimal("120"),
        diastolic=Decimal("10.7") if kpa else Decimal("80"),
        mean_arterial_pressure=Decimal("12.5") if kpa else Decimal("93"),
        unit="kPa" if kpa else "mm[Hg]",
        time_stamp=STAMP if flags & 0x02 else None,
        pulse_rate=Decimal("72") if flags & 0x04 else None,
        user_id=3 if flags & 0x08 else None,
        status=(
            BloodPressureStatus(True, False, True, PulseRateRange.WITHIN_RANGE, False, 0x0005)
            if flags & 0x10
            else None
        ),
    )


@pytest.mark.parametrize("vector", BP_VECTORS)
def test_blood_pressure_layout_vectors(vector: str) -> None:
    payload = _wire(vector)
    result = parse_blood_pressure(payload)
    assert result == _expected_bp(payload[0])
    assert str(result.systolic) == ("16.0" if payload[0] & 0x01 else "120")  # the exponent is kept


# Temperature Measurement 0x2A1C: flags | temperature FLOAT | time stamp (bit1) | temperature type u8
# (bit2); bit0 = Fahrenheit. "6e0100ff" = FLOAT 0xFF00016E = 36.6 (Cel); "da0300ff" = 0xFF0003DA = 98.6
# ([degF]); type "06" = mouth.
TEMPERATURE_VECTORS = [
    "00 | 6e0100ff",
    "01 | da0300ff",
    "02 | 6e0100ff | e807 03 0f 08 1e 05",
    "03 | da0300ff | e807 03 0f 08 1e 05",
    "04 | 6e0100ff |                     | 06",
    "05 | da0300ff |                     | 06",
    "06 | 6e0100ff | e807 03 0f 08 1e 05 | 06",
    "07 | da0300ff | e807 03 0f 08 1e 05 | 06",
]


@pytest.mark.parametrize("vector", TEMPERATURE_VECTORS)
def test_temperature_layout_vectors(vector: str) -> None:
    flags = _wire(vector)[0]
    fahrenheit = bool(flags & 0x01)
    assert parse_temperature(_wire(vector)) == TemperatureMeasurement(
        temperature=Decimal("98.6") if fahrenheit else Decimal("36.6"),
        unit="[degF]" if fahrenheit else "Cel",
        time_stamp=STAMP if flags & 0x02 else None,
        temperature_type=TemperatureType.MOUTH if flags & 0x04 else None,
    )


# Weight Measurement 0x2A9D: flags | weight u16 | time stamp (bit1) | user id u8 (bit2) | BMI u16, height
# u16 (bit3); bit0 = imperial. SI: weight "4f37" = 14159 × 0.005 kg = 70.795 kg, height "d606" = 1750 ×
# 0.001 m = 1.750 m; imperial: weight "483c" = 15432 × 0.01 lb = 154.32 lb, height "b102" = 689 × 0.1 in
# = 68.9 in; BMI "e500" = 229 × 0.1 = 22.9 kg/m2 in both; user "01".
WEIGHT_VECTORS = [
    "00 | 4f37",
    "01 | 483c",
    "02 | 4f37 | e807 03 0f 08 1e 05",
    "03 | 483c | e807 03 0f 08 1e 05",
    "04 | 4f37 |                     | 01",
    "05 | 483c |                     | 01",
    "06 | 4f37 | e807 03 0f 08 1e 05 | 01",
    "07 | 483c | e807 03 0f 08 1e 05 | 01",
    "08 | 4f37 |                     |    | e500 d606",
    "09 | 483c |                     |    | e500 b102",
    "0a | 4f37 | e807 03 0f 08 1e 05 |    | e500 d606",
    "0b | 483c | e807 03 0f 08 1e 05 |    | e500 b102",
    "0c | 4f37 |                     | 01 | e500 d606",
    "0d | 483c |                     | 01 | e500 b102",
    "0e | 4f37 | e807 03 0f 08 1e 05 | 01 | e500 d606",
    "0f | 483c | e807 03 0f 08 1e 05 | 01 | e500 b102",
]


@pytest.mark.parametrize("vector", WEIGHT_VECTORS)
def test_weight_layout_vectors(vector: str) -> None:
    flags = _wire(vector)[0]
    imperial, has_bmi = bool(flags & 0x01), bool(flags & 0x08)
    result = parse_weight(_wire(vector))
    assert result == WeightMeasurement(
        weight=Decimal("154.32") if imperial else Decimal("70.795"),
        unit="[lb_av]" if imperial else "kg",
        time_stamp=STAMP if flags & 0x02 else None,
        user_id=1 if flags & 0x04 else None,
        bmi=Decimal("22.9") if has_bmi else None,
        height=(Decimal("68.9") if imperial else Decimal("1.750")) if has_bmi else None,
        height_unit=("[in_i]" if imperial else "m") if has_bmi else None,
    )
    assert result.height is None or str(result.height) in {"68.9", "1.750"}  # resolution kept


# Heart Rate Measurement 0x2A37: flags | heart rate u8 (bit0 clear) or u16 (bit0 set) | energy expended
# u16 kJ (bit3) | RR intervals u16 1/1024 s, to the end (bit4); bits 1-2 sensor contact (no field).
# u8 "48" = 72; u16 "2c01" = 300; energy "2301" = 291 kJ; RR "0004 3303" = 1024, 819 (1 s, 0.7998046875 s).
HEART_RATE_VECTORS = [
    "00 | 48",  # contact bits 00: not supported
    "03 | 2c01",  # contact bits 01: not supported
    "0c | 48   | 2301",  # contact bits 10: not detected
    "0f | 2c01 | 2301",  # contact bits 11: detected
    "10 | 48   |      | 0004 3303",
    "13 | 2c01 |      | 0004 3303",
    "1c | 48   | 2301 | 0004 3303",
    "1f | 2c01 | 2301 | 0004 3303",
]
_CONTACT = {
    0: SensorContact.NOT_SUPPORTED,
    1: SensorContact.NOT_SUPPORTED,
    2: SensorContact.NOT_DETECTED,
    3: SensorContact.DETECTED,
}


@pytest.mark.parametrize("vector", HEART_RATE_VECTORS)
def test_heart_rate_layout_vectors(vector: str) -> None:
    flags = _wire(vector)[0]
    assert parse_heart_rate(_wire(vector)) == HeartRateMeasurement(
        heart_rate=300 if flags & 0x01 else 72,
        sensor_contact=_CONTACT[(flags >> 1) & 0x03],
        energy_expended=291 if flags & 0x08 else None,
        rr_intervals_1024=(1024, 819) if flags & 0x10 else (),
    )


def test_vectors_cover_every_layout() -> None:
    assert sorted(_wire(v)[0] for v in BP_VECTORS) == list(range(32))
    assert sorted(_wire(v)[0] for v in TEMPERATURE_VECTORS) == list(range(8))
    assert sorted(_wire(v)[0] for v in WEIGHT_VECTORS) == list(range(16))
    heart = [_wire(v)[0] for v in HEART_RATE_VECTORS]
    assert {f & 0x19 for f in heart} == {0x00, 0x01, 0x08, 0x09, 0x10, 0x11, 0x18, 0x19}
    assert {(f >> 1) & 0x03 for f in heart} == {0, 1, 2, 3}


# ---------------------------------------------------------------------------------------------
# Round trips through test-local encoders


@given(
    kpa=st.booleans(),
    pressures=st.tuples(sfloats(), sfloats(), sfloats()),
    stamp=st.none() | date_times,
    pulse=st.none() | sfloats(),
    user=st.none() | st.integers(0, 0xFF),
    status=st.none() | st.integers(0, 0xFFFF),
)
def test_blood_pressure_round_trip(kpa, pressures, stamp, pulse, user, status) -> None:
    flags = (
        (0x01 if kpa else 0)
        | (0x02 if stamp is not None else 0)
        | (0x04 if pulse is not None else 0)
        | (0x08 if user is not None else 0)
        | (0x10 if status is not None else 0)
    )
    payload = bytes([flags]) + b"".join(wire for wire, _ in pressures)
    payload += date_time_bytes(stamp) if stamp is not None else b""
    payload += pulse[0] if pulse is not None else b""
    payload += bytes([user]) if user is not None else b""
    payload += status.to_bytes(2, "little") if status is not None else b""
    (_, systolic), (_, diastolic), (_, mean) = pressures
    assert parse_blood_pressure(payload) == BloodPressureMeasurement(
        systolic=systolic,
        diastolic=diastolic,
        mean_arterial_pressure=mean,
        unit="kPa" if kpa else "mm[Hg]",
        time_stamp=stamp,
        pulse_rate=None if pulse is None else pulse[1],
        user_id=user,
        status=None
        if status is None
        else BloodPressureStatus(
            body_movement=bool(status & 0x01),
            cuff_too_loose=bool(status & 0x02),
            irregular_pulse=bool(status & 0x04),
            pulse_rate_range=PulseRateRange((status >> 3) & 0x03),
            improper_position=bool(status & 0x20),
            raw=status,
        ),
    )


@given(
    fahrenheit=st.booleans(),
    temperature=floats(),
    stamp=st.none() | date_times,
    code=st.none() | st.integers(0, 0xFF),
)
def test_temperature_round_trip(fahrenheit, temperature, stamp, code) -> None:
    flags = (
        (0x01 if fahrenheit else 0) | (0x02 if stamp is not None else 0) | (0x04 if code is not None else 0)
    )
    payload = bytes([flags]) + temperature[0]
    payload += date_time_bytes(stamp) if stamp is not None else b""
    payload += bytes([code]) if code is not None else b""
    result = parse_temperature(payload)
    assert result == TemperatureMeasurement(
        temperature=temperature[1],
        unit="[degF]" if fahrenheit else "Cel",
        time_stamp=stamp,
        temperature_type=code if code is None or not 1 <= code <= 9 else TemperatureType(code),
    )


@given(
    imperial=st.booleans(),
    weight=st.integers(0, 0xFFFF),
    stamp=st.none() | date_times,
    user=st.none() | st.integers(0, 0xFF),
    bmi_height=st.none() | st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
)
def test_weight_round_trip(imperial, weight, stamp, user, bmi_height) -> None:
    flags = (
        (0x01 if imperial else 0)
        | (0x02 if stamp is not None else 0)
        | (0x04 if user is not None else 0)
        | (0x08 if bmi_height is not None else 0)
    )
    payload = bytes([flags]) + weight.to_bytes(2, "little")
    payload += date_time_bytes(stamp) if stamp is not None else b""
    payload += bytes([user]) if user is not None else b""
    if bmi_height is not None:
        payload += bmi_height[0].to_bytes(2, "little") + bmi_height[1].to_bytes(2, "little")
    # Resolutions from the Weight Scale table: 0.005 kg or 0.01 lb; BMI 0.1; height 0.001 m or 0.1 in.
    expected_weight = Decimal(weight).scaleb(-2) if imperial else (Decimal(weight) * 5).scaleb(-3)
    assert parse_weight(payload) == WeightMeasurement(
        weight=NoValue(NoValueReason.MEASUREMENT_UNSUCCESSFUL) if weight == 0xFFFF else expected_weight,
        unit="[lb_av]" if imperial else "kg",
        time_stamp=stamp,
        user_id=user,
        bmi=None if bmi_height is None else Decimal(bmi_height[0]).scaleb(-1),
        height=None if bmi_height is None else Decimal(bmi_height[1]).scaleb(-1 if imperial else -3),
        height_unit=None if bmi_height is None else ("[in_i]" if imperial else "m"),
    )
