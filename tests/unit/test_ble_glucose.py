"""Glucose Measurement 0x2A18 and RACP 0x2A52: vectors built by hand from the GLS specification tables.

Each vector is written field by field, with the table row it comes from; the whole decoded result is
compared with ==. Multi-byte fields are little-endian; SFLOAT = 4-bit exponent (high) + 12-bit mantissa.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from gateway.ble import glucose as g
from gateway.ble.glucose import (
    BleParseError,
    Bound,
    DateTime,
    GlucoseConcentration,
    GlucoseMeasurement,
    GlucoseSampleLocation,
    GlucoseSampleType,
    GlucoseSensorStatus,
    NoValue,
    RacpNumberOfRecords,
    RacpOpCode,
    RacpResponse,
    RacpResponseCode,
    encode_abort,
    encode_report_number_of_records,
    encode_report_records_greater_or_equal,
    parse_glucose_measurement,
    parse_racp_response,
)

# Base Time 2024-03-15 08:30:05: year u16 0x07E8, month 3, day 15, hours 8, minutes 30, seconds 5.
BASE_TIME = bytes.fromhex("e807 03 0f 08 1e 05")
BASE = DateTime(2024, 3, 15, 8, 30, 5)

# Full kg/L vector, every optional field present.
KG_PER_L_FULL = (
    # flags: bit0 time offset | bit1 concentration+type/location | bit3 status; bit2 = 0: kg/L
    bytes.fromhex("0b")
    + bytes.fromhex("0100")  # sequence number u16 = 1
    + BASE_TIME
    + bytes.fromhex("f6ff")  # time offset s16 = -10 minutes
    + bytes.fromhex("5fb0")  # SFLOAT 0xB05F: exponent 0xB = -5, mantissa 0x05F = 95 -> 95e-5 kg/L
    + bytes.fromhex("12")  # low nibble type 2 = capillary plasma, high nibble location 1 = finger
    + bytes.fromhex("0000")  # sensor status annunciation: no bits
)


def test_kg_per_l_full_vector() -> None:
    assert parse_glucose_measurement(KG_PER_L_FULL) == GlucoseMeasurement(
        sequence_number=1,
        base_time=BASE,
        time_offset_minutes=-10,
        concentration=GlucoseConcentration(
            si_value=Decimal("95e-5"), si_unit="kg/L", value=Decimal(95), unit="mg/dL"
        ),
        sample_type=GlucoseSampleType.CAPILLARY_PLASMA,
        sample_location=GlucoseSampleLocation.FINGER,
        sensor_status=GlucoseSensorStatus(0),
        context_follows=False,
    )


def test_mol_per_l_vector_converts_to_mmol_per_l_exactly() -> None:
    payload = (
        bytes.fromhex("06")  # flags: bit1 concentration present | bit2 units mol/L
        + bytes.fromhex("0201")  # sequence number 0x0102 = 258
        + BASE_TIME
        + bytes.fromhex("35c0")  # SFLOAT 0xC035: exponent 0xC = -4, mantissa 0x035 = 53 -> 53e-4 mol/L
        + bytes.fromhex("21")  # low nibble type 1 = capillary whole blood, high nibble 2 = AST
    )
    assert parse_glucose_measurement(payload) == GlucoseMeasurement(
        sequence_number=258,
        base_time=BASE,
        concentration=GlucoseConcentration(
            si_value=Decimal("0.0053"), si_unit="mol/L", value=Decimal("5.3"), unit="mmol/L"
        ),
        sample_type=GlucoseSampleType.CAPILLARY_WHOLE_BLOOD,
        sample_location=GlucoseSampleLocation.ALTERNATE_SITE_TEST,
    )


def test_minimal_vector_has_no_optional_fields() -> None:
    payload = bytes.fromhex("00") + bytes.fromhex("ffff") + BASE_TIME  # flags 0, sequence 65535
    assert parse_glucose_measurement(payload) == GlucoseMeasurement(sequence_number=65535, base_time=BASE)


def test_context_information_follows_flag() -> None:
    payload = bytes.fromhex("10") + bytes.fromhex("0500") + BASE_TIME  # flags bit4 context follows
    assert parse_glucose_measurement(payload) == GlucoseMeasurement(
        sequence_number=5, base_time=BASE, context_follows=True
    )


def test_nibble_order_low_is_type_high_is_location() -> None:
    # Bytes whose nibbles decode differently as type and as location: the low nibble is the type.
    def with_byte(b: int) -> GlucoseMeasurement:
        return parse_glucose_measurement(bytes([0x02, 0, 0]) + BASE_TIME + bytes.fromhex("5fb0") + bytes([b]))

    first = with_byte(0xF4)  # type 4 venous plasma, location 15 not available
    assert (first.sample_type, first.sample_location) == (
        GlucoseSampleType.VENOUS_PLASMA,
        GlucoseSampleLocation.NOT_AVAILABLE,
    )
    second = with_byte(0x4A)  # type 10 control solution, location 4 control solution
    assert (second.sample_type, second.sample_location) == (
        GlucoseSampleType.CONTROL_SOLUTION,
        GlucoseSampleLocation.CONTROL_SOLUTION,
    )


@pytest.mark.parametrize(
    ("byte", "field"),
    [(0x10, "type"), (0x1B, "type"), (0x01, "sample_location"), (0xE1, "sample_location")],
)
def test_reserved_type_or_location_is_rejected(byte: int, field: str) -> None:
    payload = bytes([0x02, 0, 0]) + BASE_TIME + bytes.fromhex("5fb0") + bytes([byte])
    with pytest.raises(BleParseError) as caught:
        parse_glucose_measurement(payload)
    assert caught.value.field == field


def _with_status(units_flag: int, sfloat: bytes, status: int) -> bytes:
    # flags: bit1 concentration | bit3 status | units; sequence 7; type 1 / location 1 (0x11)
    return (
        bytes([0x0A | units_flag, 0x07, 0x00])
        + BASE_TIME
        + sfloat
        + bytes([0x11])
        + status.to_bytes(2, "little")
    )


def test_result_higher_than_device_can_process_is_a_bound() -> None:
    # SFLOAT 0xB258: exponent -5, mantissa 0x258 = 600 -> 600e-5 kg/L = 600 mg/dL; status bit5 (0x0020)
    result = parse_glucose_measurement(_with_status(0x00, bytes.fromhex("58b2"), 0x0020))
    assert result == GlucoseMeasurement(
        sequence_number=7,
        base_time=BASE,
        concentration=GlucoseConcentration(
            si_value=Bound(">", Decimal("600e-5")),
            si_unit="kg/L",
            value=Bound(">", Decimal(600)),
            unit="mg/dL",
        ),
        sample_type=GlucoseSampleType.CAPILLARY_WHOLE_BLOOD,
        sample_location=GlucoseSampleLocation.FINGER,
        sensor_status=GlucoseSensorStatus.RESULT_HIGHER_THAN_DEVICE_CAN_PROCESS,
    )


def test_result_lower_than_device_can_process_is_a_bound() -> None:
    # SFLOAT 0xC00B: exponent -4, mantissa 11 -> 11e-4 mol/L = 1.1 mmol/L; status bit6 (0x0040); mol/L
    result = parse_glucose_measurement(_with_status(0x04, bytes.fromhex("0bc0"), 0x0040))
    assert result.concentration == GlucoseConcentration(
        si_value=Bound("<", Decimal("0.0011")),
        si_unit="mol/L",
        value=Bound("<", Decimal("1.1")),
        unit="mmol/L",
    )


def test_out_of_range_with_a_special_value_is_a_bound_without_limit() -> None:
    # SFLOAT 0x07FF NaN; status bit5 "higher than device can process"
    result = parse_glucose_measurement(_with_status(0x00, bytes.fromhex("ff07"), 0x0020))
    assert result.concentration == GlucoseConcentration(
        si_value=Bound(">", None), si_unit="kg/L", value=Bound(">", None), unit="mg/dL"
    )


def test_both_higher_and_lower_is_no_value() -> None:
    result = parse_glucose_measurement(_with_status(0x00, bytes.fromhex("58b2"), 0x0060))
    reason = NoValue("result both higher and lower than device can process")
    assert result.concentration == GlucoseConcentration(
        si_value=reason, si_unit="kg/L", value=reason, unit="mg/dL"
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(0x07FF, "NaN"), (0x0800, "NRes"), (0x07FE, "+INF"), (0x0802, "-INF"), (0x0801, "reserved")],
)
def test_special_concentration_is_never_a_number(raw: int, reason: str) -> None:
    result = parse_glucose_measurement(_with_status(0x00, raw.to_bytes(2, "little"), 0x0000))
    assert result.concentration == GlucoseConcentration(
        si_value=NoValue(reason), si_unit="kg/L", value=NoValue(reason), unit="mg/dL"
    )


@pytest.mark.parametrize(
    ("bit", "name"),
    [
        (0, "DEVICE_BATTERY_LOW"),
        (1, "SENSOR_MALFUNCTION"),
        (2, "SAMPLE_SIZE_INSUFFICIENT"),
        (3, "STRIP_INSERTION_ERROR"),
        (4, "STRIP_TYPE_INCORRECT"),
        (5, "RESULT_HIGHER_THAN_DEVICE_CAN_PROCESS"),
        (6, "RESULT_LOWER_THAN_DEVICE_CAN_PROCESS"),
        (7, "TEMPERATURE_TOO_HIGH"),
        (8, "TEMPERATURE_TOO_LOW"),
        (9, "READ_INTERRUPTED"),
        (10, "GENERAL_DEVICE_FAULT"),
        (11, "TIME_FAULT"),
    ],
)
def test_each_sensor_status_bit_is_named(bit: int, name: str) -> None:
    result = parse_glucose_measurement(_with_status(0x00, bytes.fromhex("5fb0"), 1 << bit))
    assert result.sensor_status == GlucoseSensorStatus[name]


def test_sensor_status_keeps_reserved_bits_and_combinations() -> None:
    status = 0x1000 | 0x0001 | 0x0800  # reserved bit 12, battery low, time fault
    result = parse_glucose_measurement(_with_status(0x00, bytes.fromhex("5fb0"), status))
    assert result.sensor_status == (
        GlucoseSensorStatus.DEVICE_BATTERY_LOW | GlucoseSensorStatus.TIME_FAULT | GlucoseSensorStatus(0x1000)
    )
    assert int(result.sensor_status) == status


# Offsets in KG_PER_L_FULL (17 bytes): flags 0, sequence 1-2, base time 3-9, time offset 10-11,
# concentration 12-13, type/location 14, status 15-16.
TRUNCATIONS = (
    [(0, "flags")]
    + [(n, "sequence_number") for n in (1, 2)]
    + [(n, "base_time") for n in range(3, 10)]
    + [(n, "time_offset") for n in (10, 11)]
    + [(n, "concentration") for n in (12, 13)]
    + [(14, "type_sample_location")]
    + [(n, "sensor_status") for n in (15, 16)]
)


@pytest.mark.parametrize(("length", "field"), TRUNCATIONS)
def test_truncated_measurement_names_the_missing_field(length: int, field: str) -> None:
    with pytest.raises(BleParseError) as caught:
        parse_glucose_measurement(KG_PER_L_FULL[:length])
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == field
    assert field in str(caught.value) and "0x2A18" in str(caught.value)


def test_every_truncation_is_covered() -> None:
    assert [length for length, _ in TRUNCATIONS] == list(range(len(KG_PER_L_FULL)))


def test_base_time_to_datetime() -> None:
    assert BASE.to_datetime() == datetime(2024, 3, 15, 8, 30, 5)
    assert DateTime(0, 0, 0, 0, 0, 0).to_datetime() is None  # year/month/day 0 = not known


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0x0000, Decimal(0)),
        (0x0061, Decimal(97)),  # exponent 0, mantissa 97
        (0xF023, Decimal("3.5")),  # exponent -1, mantissa 35
        (0x0FFF, Decimal(-1)),  # mantissa 0xFFF = -1 (12-bit two's complement)
        # A special mantissa is special whatever the exponent (gateway.ble.ieee11073): a NaN
        # must never reach the record as 20470.
        (0x17FF, NoValue("NaN")),
        (0x8001, Decimal("1e-8")),  # exponent 0x8 = -8
        (0x07FF, NoValue("NaN")),
        (0x0800, NoValue("NRes")),
        (0x07FE, NoValue("+INF")),
        (0x0802, NoValue("-INF")),
        (0x0801, NoValue("reserved")),
    ],
)
def test_private_sfloat(raw: int, expected: Decimal | NoValue) -> None:
    assert g._sfloat(raw) == expected


# --------------------------------------------------------------------------- RACP 0x2A52


def test_encode_report_records_greater_or_equal() -> None:
    # op code 0x01 report stored records, operator 0x03 >=, filter type 0x01 sequence number, u16 0x0102
    assert encode_report_records_greater_or_equal(0x0102) == bytes.fromhex("01 03 01 0201")


def test_encode_report_number_of_records() -> None:
    assert encode_report_number_of_records() == bytes.fromhex("04 01")  # op 0x04, operator 0x01 all records
    assert encode_report_number_of_records(greater_or_equal=9) == bytes.fromhex("04 03 01 0900")


def test_encode_abort() -> None:
    assert encode_abort() == bytes.fromhex("03 00")  # op 0x03 abort operation, operator 0x00 Null


@pytest.mark.parametrize("sequence", [-1, 0x10000])
def test_sequence_must_fit_u16(sequence: int) -> None:
    with pytest.raises(ValueError):
        encode_report_records_greater_or_equal(sequence)
    with pytest.raises(ValueError):
        encode_report_number_of_records(greater_or_equal=sequence)


def test_number_of_records_response() -> None:
    # op 0x05 number of stored records response, operator 0x00 Null, operand u16 0x012C = 300
    assert parse_racp_response(bytes.fromhex("05 00 2c01")) == RacpNumberOfRecords(300)


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (0x01, RacpResponseCode.SUCCESS),
        (0x02, RacpResponseCode.OP_CODE_NOT_SUPPORTED),
        (0x03, RacpResponseCode.INVALID_OPERATOR),
        (0x04, RacpResponseCode.OPERATOR_NOT_SUPPORTED),
        (0x05, RacpResponseCode.INVALID_OPERAND),
        (0x06, RacpResponseCode.NO_RECORDS_FOUND),
        (0x07, RacpResponseCode.ABORT_UNSUCCESSFUL),
        (0x08, RacpResponseCode.PROCEDURE_NOT_COMPLETED),
        (0x09, RacpResponseCode.OPERAND_NOT_SUPPORTED),
    ],
)
def test_every_response_code(value: int, code: RacpResponseCode) -> None:
    # op 0x06 response code, operator 0x00 Null, request op code 0x01, response code value
    assert parse_racp_response(bytes([0x06, 0x00, 0x01, value])) == RacpResponse(
        RacpOpCode.REPORT_STORED_RECORDS, code
    )


def test_response_to_abort() -> None:
    assert parse_racp_response(bytes.fromhex("06 00 03 01")) == RacpResponse(
        RacpOpCode.ABORT_OPERATION, RacpResponseCode.SUCCESS
    )


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ("", "op_code"),
        ("05", "operator"),
        ("05 00 2c", "number_of_records"),
        ("06 00", "request_op_code"),
        ("06 00 01", "response_code_value"),
        ("06 00 01 0a", "response_code_value"),  # 0x0A reserved
        ("06 00 7f 01", "request_op_code"),  # unknown request op code
        ("01 01", "op_code"),  # a request, not a response
    ],
)
def test_bad_racp_response_names_the_field(payload: str, field: str) -> None:
    with pytest.raises(BleParseError) as caught:
        parse_racp_response(bytes.fromhex(payload))
    assert caught.value.field == field
