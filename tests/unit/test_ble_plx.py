"""PLX Spot-check 0x2A5E and Continuous 0x2A5F: vectors built by hand from the PLXS specification tables.

Each vector is written field by field in wire order; the whole decoded result is compared with ==.
SFLOAT = 4-bit exponent (high) + 12-bit mantissa, little-endian on the wire.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.ble.glucose import BleParseError, DateTime, NoValue
from gateway.ble.plx import (
    PlxContinuous,
    PlxDeviceAndSensorStatus,
    PlxMeasurementStatus,
    PlxSpotCheck,
    Quantity,
    SpO2PulseRate,
    parse_plx_continuous,
    parse_plx_spot_check,
)
from tests.unit.test_ble_common import assert_parses_or_raises, date_time_bytes, date_times
from tests.unit.test_ble_ieee11073 import sfloats

SPO2_97 = bytes.fromhex("6100")  # SFLOAT 0x0061: exponent 0, mantissa 97
PR_72 = bytes.fromhex("4800")  # SFLOAT 0x0048: 72
SPO2_96 = bytes.fromhex("6000")  # 96
PR_75 = bytes.fromhex("4b00")  # 75
SPO2_95 = bytes.fromhex("5f00")  # 95
PR_80 = bytes.fromhex("5000")  # 80
PAI_3_5 = bytes.fromhex("23f0")  # SFLOAT 0xF023: exponent -1, mantissa 35 -> 3.5 %
TIMESTAMP = bytes.fromhex("e807 03 0f 08 1e 05")  # Date Time 2024-03-15 08:30:05
MEAS_STATUS = bytes.fromhex("8020")  # u16 0x2080: bit7 validated data | bit13 measurement unavailable
DEVICE_STATUS = bytes.fromhex("2080 00")  # u24 0x008020: bit5 low perfusion | bit15 sensor disconnected


def q(value: str, unit: str) -> Quantity:
    return Quantity(Decimal(value), unit)  # type: ignore[arg-type]


STATUS = PlxMeasurementStatus.VALIDATED_DATA | PlxMeasurementStatus.MEASUREMENT_UNAVAILABLE
DEVICE = PlxDeviceAndSensorStatus.LOW_PERFUSION_DETECTED | PlxDeviceAndSensorStatus.SENSOR_DISCONNECTED

# Spot-check: flags, SpO2, PR, timestamp, measurement status, device and sensor status, PAI.
SPOT_FULL = bytes.fromhex("1f") + SPO2_97 + PR_72 + TIMESTAMP + MEAS_STATUS + DEVICE_STATUS + PAI_3_5


def test_spot_check_minimal() -> None:
    payload = bytes.fromhex("00") + SPO2_97 + PR_72  # flags: nothing optional
    assert parse_plx_spot_check(payload) == PlxSpotCheck(spo2=q("97", "%"), pulse_rate=q("72", "/min"))


def test_spot_check_full_with_device_clock_not_set() -> None:
    # flags 0x1F: bit0 timestamp | bit1 measurement status | bit2 device+sensor status | bit3 PAI
    #             | bit4 device clock is not set
    assert parse_plx_spot_check(SPOT_FULL) == PlxSpotCheck(
        spo2=q("97", "%"),
        pulse_rate=q("72", "/min"),
        timestamp=DateTime(2024, 3, 15, 8, 30, 5),
        measurement_status=STATUS,
        device_and_sensor_status=DEVICE,
        pulse_amplitude_index=q("3.5", "%"),
        device_clock_not_set=True,
    )


def test_spot_check_timestamp_without_clock_flag() -> None:
    payload = bytes.fromhex("01") + SPO2_97 + PR_72 + TIMESTAMP  # flags bit0 only
    assert parse_plx_spot_check(payload) == PlxSpotCheck(
        spo2=q("97", "%"), pulse_rate=q("72", "/min"), timestamp=DateTime(2024, 3, 15, 8, 30, 5)
    )


def test_spot_check_clock_not_set_alone() -> None:
    payload = bytes.fromhex("10") + SPO2_97 + PR_72  # flags bit4 only: no field follows
    assert parse_plx_spot_check(payload) == PlxSpotCheck(
        spo2=q("97", "%"), pulse_rate=q("72", "/min"), device_clock_not_set=True
    )


def test_spot_check_pai_without_statuses() -> None:
    payload = bytes.fromhex("08") + SPO2_97 + PR_72 + PAI_3_5  # flags bit3: PAI right after PR
    assert parse_plx_spot_check(payload) == PlxSpotCheck(
        spo2=q("97", "%"), pulse_rate=q("72", "/min"), pulse_amplitude_index=q("3.5", "%")
    )


def test_special_values_are_never_numbers() -> None:
    payload = bytes.fromhex("00") + bytes.fromhex("ff07") + bytes.fromhex("0008")  # SpO2 NaN, PR NRes
    assert parse_plx_spot_check(payload) == PlxSpotCheck(
        spo2=Quantity(NoValue("NaN"), "%"), pulse_rate=Quantity(NoValue("NRes"), "/min")
    )


@pytest.mark.parametrize("bit", range(5, 16))
def test_each_measurement_status_bit_is_named(bit: int) -> None:
    payload = bytes.fromhex("02") + SPO2_97 + PR_72 + (1 << bit).to_bytes(2, "little")
    status = parse_plx_spot_check(payload).measurement_status
    assert status is not None and status.name is not None and int(status) == 1 << bit


@pytest.mark.parametrize("bit", range(16))
def test_each_device_and_sensor_status_bit_is_named(bit: int) -> None:
    payload = bytes.fromhex("04") + SPO2_97 + PR_72 + (1 << bit).to_bytes(3, "little")
    status = parse_plx_spot_check(payload).device_and_sensor_status
    assert status is not None and status.name is not None and int(status) == 1 << bit


def test_status_names_follow_the_spec_table() -> None:
    assert [m.name for m in PlxMeasurementStatus] == [
        "MEASUREMENT_ONGOING",
        "EARLY_ESTIMATED_DATA",
        "VALIDATED_DATA",
        "FULLY_QUALIFIED_DATA",
        "DATA_FROM_MEASUREMENT_STORAGE",
        "DATA_FOR_DEMONSTRATION",
        "DATA_FOR_TESTING",
        "CALIBRATION_ONGOING",
        "MEASUREMENT_UNAVAILABLE",
        "QUESTIONABLE_MEASUREMENT_DETECTED",
        "INVALID_MEASUREMENT_DETECTED",
    ]
    assert PlxMeasurementStatus.MEASUREMENT_ONGOING == 1 << 5
    assert [m.name for m in PlxDeviceAndSensorStatus] == [
        "EXTENDED_DISPLAY_UPDATE_ONGOING",
        "EQUIPMENT_MALFUNCTION_DETECTED",
        "SIGNAL_PROCESSING_IRREGULARITY_DETECTED",
        "INADEQUATE_SIGNAL_DETECTED",
        "POOR_SIGNAL_DETECTED",
        "LOW_PERFUSION_DETECTED",
        "ERRATIC_SIGNAL_DETECTED",
        "NONPULSATILE_SIGNAL_DETECTED",
        "QUESTIONABLE_PULSE_DETECTED",
        "SIGNAL_ANALYSIS_ONGOING",
        "SENSOR_INTERFERENCE_DETECTED",
        "SENSOR_UNCONNECTED_TO_USER",
        "UNKNOWN_SENSOR_CONNECTED",
        "SENSOR_DISPLACED",
        "SENSOR_MALFUNCTIONING",
        "SENSOR_DISCONNECTED",
    ]


def test_device_status_keeps_reserved_high_byte() -> None:
    payload = bytes.fromhex("04") + SPO2_97 + PR_72 + bytes.fromhex("0100 80")  # u24 0x800001
    status = parse_plx_spot_check(payload).device_and_sensor_status
    assert status == PlxDeviceAndSensorStatus.EXTENDED_DISPLAY_UPDATE_ONGOING | PlxDeviceAndSensorStatus(
        0x800000
    )


# Offsets in SPOT_FULL (19 bytes): flags 0, SpO2 1-2, PR 3-4, timestamp 5-11, measurement status 12-13,
# device and sensor status 14-16, PAI 17-18.
SPOT_TRUNCATIONS = (
    [(0, "flags")]
    + [(n, "spo2") for n in (1, 2)]
    + [(n, "pulse_rate") for n in (3, 4)]
    + [(n, "timestamp") for n in range(5, 12)]
    + [(n, "measurement_status") for n in (12, 13)]
    + [(n, "device_and_sensor_status") for n in (14, 15, 16)]
    + [(n, "pulse_amplitude_index") for n in (17, 18)]
)


def test_every_spot_truncation_is_covered() -> None:
    assert [length for length, _ in SPOT_TRUNCATIONS] == list(range(len(SPOT_FULL)))


@pytest.mark.parametrize(("length", "field"), SPOT_TRUNCATIONS)
def test_truncated_spot_check_names_the_field(length: int, field: str) -> None:
    with pytest.raises(BleParseError) as caught:
        parse_plx_spot_check(SPOT_FULL[:length])
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == field and "0x2A5E" in str(caught.value)


# Continuous: flags, normal SpO2+PR, fast SpO2+PR, slow SpO2+PR, measurement status, device status, PAI.
CONT_FULL = (
    bytes.fromhex("1f")  # bit0 fast | bit1 slow | bit2 measurement status | bit3 device status | bit4 PAI
    + SPO2_97
    + PR_72  # SpO2PR-Normal
    + SPO2_96
    + PR_75  # SpO2PR-Fast
    + SPO2_95
    + PR_80  # SpO2PR-Slow
    + MEAS_STATUS
    + DEVICE_STATUS
    + PAI_3_5
)

NORMAL = SpO2PulseRate(spo2=q("97", "%"), pulse_rate=q("72", "/min"))


def test_continuous_minimal() -> None:
    assert parse_plx_continuous(bytes.fromhex("00") + SPO2_97 + PR_72) == PlxContinuous(normal=NORMAL)


def test_continuous_full() -> None:
    assert parse_plx_continuous(CONT_FULL) == PlxContinuous(
        normal=NORMAL,
        fast=SpO2PulseRate(spo2=q("96", "%"), pulse_rate=q("75", "/min")),
        slow=SpO2PulseRate(spo2=q("95", "%"), pulse_rate=q("80", "/min")),
        measurement_status=STATUS,
        device_and_sensor_status=DEVICE,
        pulse_amplitude_index=q("3.5", "%"),
        device_clock_not_set=False,
    )


def test_continuous_slow_only_follows_normal() -> None:
    payload = bytes.fromhex("02") + SPO2_97 + PR_72 + SPO2_95 + PR_80  # flags bit1: slow, no fast
    assert parse_plx_continuous(payload) == PlxContinuous(
        normal=NORMAL, slow=SpO2PulseRate(spo2=q("95", "%"), pulse_rate=q("80", "/min"))
    )


def test_continuous_device_status_and_pai_only() -> None:
    payload = bytes.fromhex("18") + SPO2_97 + PR_72 + DEVICE_STATUS + PAI_3_5  # flags bit3 | bit4
    assert parse_plx_continuous(payload) == PlxContinuous(
        normal=NORMAL, device_and_sensor_status=DEVICE, pulse_amplitude_index=q("3.5", "%")
    )


# Offsets in CONT_FULL (20 bytes): flags 0, normal 1-4, fast 5-8, slow 9-12, measurement status 13-14,
# device status 15-17, PAI 18-19.
CONT_TRUNCATIONS = (
    [(0, "flags")]
    + [(n, "spo2_normal") for n in (1, 2)]
    + [(n, "pulse_rate_normal") for n in (3, 4)]
    + [(n, "spo2_fast") for n in (5, 6)]
    + [(n, "pulse_rate_fast") for n in (7, 8)]
    + [(n, "spo2_slow") for n in (9, 10)]
    + [(n, "pulse_rate_slow") for n in (11, 12)]
    + [(n, "measurement_status") for n in (13, 14)]
    + [(n, "device_and_sensor_status") for n in (15, 16, 17)]
    + [(n, "pulse_amplitude_index") for n in (18, 19)]
)


def test_every_continuous_truncation_is_covered() -> None:
    assert [length for length, _ in CONT_TRUNCATIONS] == list(range(len(CONT_FULL)))


@pytest.mark.parametrize(("length", "field"), CONT_TRUNCATIONS)
def test_truncated_continuous_names_the_field(length: int, field: str) -> None:
    with pytest.raises(BleParseError) as caught:
        parse_plx_continuous(CONT_FULL[:length])
    assert caught.value.field == field and "0x2A5F" in str(caught.value)


# --------------------------------------------------------------------------- every layout flag combination


def _wire(vector: str) -> bytes:
    return bytes.fromhex(vector.replace("|", ""))


# From the PLXS / GSS PLX Spot-check Measurement table, in wire order:
#   flags u8 | SpO2 SFLOAT, PR SFLOAT | timestamp Date Time (bit0) | measurement status u16 (bit1)
#   | device and sensor status u24 (bit2) | pulse amplitude index SFLOAT (bit3);  bit4 = device clock not set
# Field bytes used: "6100" SpO2 97 %, "4800" PR 72 /min (SFLOAT exponent 0), "e807 03 0f 08 1e 05"
# 2024-03-15 08:30:05, "8020" = 0x2080 (bit7 validated, bit13 unavailable), "2080 00" = 0x008020 (bit5 low
# perfusion, bit15 sensor disconnected), "23f0" = SFLOAT 0xF023 = 3.5 %.
SPOT_VECTORS = [
    "00 | 6100 4800",
    "01 | 6100 4800 | e807 03 0f 08 1e 05",
    "02 | 6100 4800 |                     | 8020",
    "03 | 6100 4800 | e807 03 0f 08 1e 05 | 8020",
    "04 | 6100 4800 |                     |      | 2080 00",
    "05 | 6100 4800 | e807 03 0f 08 1e 05 |      | 2080 00",
    "06 | 6100 4800 |                     | 8020 | 2080 00",
    "07 | 6100 4800 | e807 03 0f 08 1e 05 | 8020 | 2080 00",
    "08 | 6100 4800 |                     |      |         | 23f0",
    "09 | 6100 4800 | e807 03 0f 08 1e 05 |      |         | 23f0",
    "0a | 6100 4800 |                     | 8020 |         | 23f0",
    "0b | 6100 4800 | e807 03 0f 08 1e 05 | 8020 |         | 23f0",
    "0c | 6100 4800 |                     |      | 2080 00 | 23f0",
    "0d | 6100 4800 | e807 03 0f 08 1e 05 |      | 2080 00 | 23f0",
    "0e | 6100 4800 |                     | 8020 | 2080 00 | 23f0",
    "0f | 6100 4800 | e807 03 0f 08 1e 05 | 8020 | 2080 00 | 23f0",
    # bit4 "device clock is not set" adds no field:
    "10 | 6100 4800",
    "11 | 6100 4800 | e807 03 0f 08 1e 05",
    "1e | 6100 4800 |                     | 8020 | 2080 00 | 23f0",
    "1f | 6100 4800 | e807 03 0f 08 1e 05 | 8020 | 2080 00 | 23f0",
]


def _expected_spot(flags: int) -> PlxSpotCheck:
    return PlxSpotCheck(
        spo2=q("97", "%"),
        pulse_rate=q("72", "/min"),
        timestamp=DateTime(2024, 3, 15, 8, 30, 5) if flags & 0x01 else None,
        measurement_status=STATUS if flags & 0x02 else None,
        device_and_sensor_status=DEVICE if flags & 0x04 else None,
        pulse_amplitude_index=q("3.5", "%") if flags & 0x08 else None,
        device_clock_not_set=bool(flags & 0x10),
    )


@pytest.mark.parametrize("vector", SPOT_VECTORS)
def test_spot_check_layout_vectors(vector: str) -> None:
    payload = _wire(vector)
    assert parse_plx_spot_check(payload) == _expected_spot(payload[0])


# From the PLX Continuous Measurement table, in wire order:
#   flags u8 | SpO2PR-Normal | SpO2PR-Fast (bit0) | SpO2PR-Slow (bit1) | measurement status u16 (bit2)
#   | device and sensor status u24 (bit3) | pulse amplitude index SFLOAT (bit4)
# Each SpO2PR is SpO2 SFLOAT then PR SFLOAT: normal "6100 4800" = 97 % / 72, fast "6000 4b00" = 96 % / 75,
# slow "5f00 5000" = 95 % / 80; the statuses and PAI bytes are those of the spot-check vectors.
CONTINUOUS_VECTORS = [
    "00 | 6100 4800",
    "01 | 6100 4800 | 6000 4b00",
    "02 | 6100 4800 |           | 5f00 5000",
    "03 | 6100 4800 | 6000 4b00 | 5f00 5000",
    "04 | 6100 4800 |           |           | 8020",
    "05 | 6100 4800 | 6000 4b00 |           | 8020",
    "06 | 6100 4800 |           | 5f00 5000 | 8020",
    "07 | 6100 4800 | 6000 4b00 | 5f00 5000 | 8020",
    "08 | 6100 4800 |           |           |      | 2080 00",
    "09 | 6100 4800 | 6000 4b00 |           |      | 2080 00",
    "0a | 6100 4800 |           | 5f00 5000 |      | 2080 00",
    "0b | 6100 4800 | 6000 4b00 | 5f00 5000 |      | 2080 00",
    "0c | 6100 4800 |           |           | 8020 | 2080 00",
    "0d | 6100 4800 | 6000 4b00 |           | 8020 | 2080 00",
    "0e | 6100 4800 |           | 5f00 5000 | 8020 | 2080 00",
    "0f | 6100 4800 | 6000 4b00 | 5f00 5000 | 8020 | 2080 00",
    "10 | 6100 4800 |           |           |      |         | 23f0",
    "11 | 6100 4800 | 6000 4b00 |           |      |         | 23f0",
    "12 | 6100 4800 |           | 5f00 5000 |      |         | 23f0",
    "13 | 6100 4800 | 6000 4b00 | 5f00 5000 |      |         | 23f0",
    "14 | 6100 4800 |           |           | 8020 |         | 23f0",
    "15 | 6100 4800 | 6000 4b00 |           | 8020 |         | 23f0",
    "16 | 6100 4800 |           | 5f00 5000 | 8020 |         | 23f0",
    "17 | 6100 4800 | 6000 4b00 | 5f00 5000 | 8020 |         | 23f0",
    "18 | 6100 4800 |           |           |      | 2080 00 | 23f0",
    "19 | 6100 4800 | 6000 4b00 |           |      | 2080 00 | 23f0",
    "1a | 6100 4800 |           | 5f00 5000 |      | 2080 00 | 23f0",
    "1b | 6100 4800 | 6000 4b00 | 5f00 5000 |      | 2080 00 | 23f0",
    "1c | 6100 4800 |           |           | 8020 | 2080 00 | 23f0",
    "1d | 6100 4800 | 6000 4b00 |           | 8020 | 2080 00 | 23f0",
    "1e | 6100 4800 |           | 5f00 5000 | 8020 | 2080 00 | 23f0",
    "1f | 6100 4800 | 6000 4b00 | 5f00 5000 | 8020 | 2080 00 | 23f0",
]


def _expected_continuous(flags: int) -> PlxContinuous:
    return PlxContinuous(
        normal=NORMAL,
        fast=SpO2PulseRate(spo2=q("96", "%"), pulse_rate=q("75", "/min")) if flags & 0x01 else None,
        slow=SpO2PulseRate(spo2=q("95", "%"), pulse_rate=q("80", "/min")) if flags & 0x02 else None,
        measurement_status=STATUS if flags & 0x04 else None,
        device_and_sensor_status=DEVICE if flags & 0x08 else None,
        pulse_amplitude_index=q("3.5", "%") if flags & 0x10 else None,
    )


@pytest.mark.parametrize("vector", CONTINUOUS_VECTORS)
def test_continuous_layout_vectors(vector: str) -> None:
    payload = _wire(vector)
    assert parse_plx_continuous(payload) == _expected_continuous(payload[0])


def test_vectors_cover_every_layout() -> None:
    spot = {_wire(vector)[0] for vector in SPOT_VECTORS}
    assert {flags & 0x0F for flags in spot} == set(range(16)) and {flags & 0x10 for flags in spot} == {
        0,
        0x10,
    }
    assert sorted(_wire(vector)[0] for vector in CONTINUOUS_VECTORS) == list(range(32))


def test_trailing_bytes_are_ignored() -> None:
    assert parse_plx_spot_check(SPOT_FULL + b"\x00") == parse_plx_spot_check(SPOT_FULL)
    assert parse_plx_continuous(CONT_FULL + b"\x00") == parse_plx_continuous(CONT_FULL)


# --------------------------------------------------------------------------- properties

_statuses = st.none() | st.integers(0, 0xFFFF)
_device_statuses = st.none() | st.integers(0, 0xFFFFFF)


def _quantity(value: Decimal | NoValue, unit: str) -> Quantity:
    return Quantity(value, unit)  # type: ignore[arg-type]


@given(
    spo2=sfloats(),
    pulse=sfloats(),
    timestamp=st.none() | date_times,
    measurement=_statuses,
    device=_device_statuses,
    pai=st.none() | sfloats(),
    clock_not_set=st.booleans(),
)
def test_spot_check_round_trip(spo2, pulse, timestamp, measurement, device, pai, clock_not_set) -> None:
    flags = (
        (0x01 if timestamp is not None else 0)
        | (0x02 if measurement is not None else 0)
        | (0x04 if device is not None else 0)
        | (0x08 if pai is not None else 0)
        | (0x10 if clock_not_set else 0)
    )
    payload = bytes([flags]) + spo2[0] + pulse[0]
    payload += date_time_bytes(timestamp) if timestamp is not None else b""
    payload += measurement.to_bytes(2, "little") if measurement is not None else b""
    payload += device.to_bytes(3, "little") if device is not None else b""
    payload += pai[0] if pai is not None else b""
    assert parse_plx_spot_check(payload) == PlxSpotCheck(
        spo2=_quantity(spo2[1], "%"),
        pulse_rate=_quantity(pulse[1], "/min"),
        timestamp=timestamp,
        measurement_status=None if measurement is None else PlxMeasurementStatus(measurement),
        device_and_sensor_status=None if device is None else PlxDeviceAndSensorStatus(device),
        pulse_amplitude_index=None if pai is None else _quantity(pai[1], "%"),
        device_clock_not_set=clock_not_set,
    )


_pairs = st.tuples(sfloats(), sfloats())


def _pair(pair: tuple[tuple[bytes, Decimal | NoValue], tuple[bytes, Decimal | NoValue]]) -> SpO2PulseRate:
    return SpO2PulseRate(spo2=_quantity(pair[0][1], "%"), pulse_rate=_quantity(pair[1][1], "/min"))


@given(
    normal=_pairs,
    fast=st.none() | _pairs,
    slow=st.none() | _pairs,
    measurement=_statuses,
    device=_device_statuses,
    pai=st.none() | sfloats(),
)
def test_continuous_round_trip(normal, fast, slow, measurement, device, pai) -> None:
    flags = (
        (0x01 if fast is not None else 0)
        | (0x02 if slow is not None else 0)
        | (0x04 if measurement is not None else 0)
        | (0x08 if device is not None else 0)
        | (0x10 if pai is not None else 0)
    )
    payload = bytes([flags])
    for pair in (normal, fast, slow):
        payload += pair[0][0] + pair[1][0] if pair is not None else b""
    payload += measurement.to_bytes(2, "little") if measurement is not None else b""
    payload += device.to_bytes(3, "little") if device is not None else b""
    payload += pai[0] if pai is not None else b""
    assert parse_plx_continuous(payload) == PlxContinuous(
        normal=_pair(normal),
        fast=None if fast is None else _pair(fast),
        slow=None if slow is None else _pair(slow),
        measurement_status=None if measurement is None else PlxMeasurementStatus(measurement),
        device_and_sensor_status=None if device is None else PlxDeviceAndSensorStatus(device),
        pulse_amplitude_index=None if pai is None else _quantity(pai[1], "%"),
    )


@pytest.mark.parametrize("parser", [parse_plx_spot_check, parse_plx_continuous])
@given(payload=st.binary(max_size=40))
def test_any_bytes_decode_or_raise_ble_parse_error(parser, payload: bytes) -> None:
    assert_parses_or_raises(parser, payload)
