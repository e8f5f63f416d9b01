"""Bluetooth SIG health measurements: hand-built spec vectors compared whole, errors, and properties.

Byte comments follow the characteristic layouts in gateway/ble/health.py (Blood Pressure 0x2A35,
Temperature 0x2A1C, Weight 0x2A9D, Heart Rate 0x2A37); all multi-byte fields are little-endian.
"""

from __future__ import annotations

import contextlib
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
    with contextlib.suppress(BleParseError):
        parser(payload)


def test_one_parse_error_class_for_the_whole_package() -> None:
    from gateway.ble import glucose

    assert BleParseError is glucose.BleParseError
    assert issubclass(BleParseError, ValueError)
