"""Glucose Measurement 0x2A18 and RACP 0x2A52: vectors built by hand from the GLS specification tables.

Each vector is written field by field, with the table row it comes from; the whole decoded result is
compared with ==. Multi-byte fields are little-endian; SFLOAT = 4-bit exponent (high) + 12-bit mantissa.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
from tests.unit.test_ble_common import assert_parses_or_raises, date_time_bytes, date_times
from tests.unit.test_ble_ieee11073 import sfloats

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
    ("raw", "si", "mg_dl"),
    [
        (0xB05F, "0.00095", "95"),  # exponent 0xB = -5, mantissa 95: 95e-5 kg/L = 95 mg/dL
        (0x0000, "0", "0E+5"),  # zero, with the precision the device stated (±0.5 kg/L)
        (0xF023, "3.5", "3.5E+5"),  # exponent -1, mantissa 35
        (0x0FFF, "-1", "-1E+5"),  # exponent 0, mantissa 0xFFF = -1 (12-bit two's complement)
        (0x8001, "1E-8", "0.001"),  # exponent 0x8 = -8, mantissa 1
    ],
)
def test_concentration_is_the_sfloat_converted_exactly(raw: int, si: str, mg_dl: str) -> None:
    result = parse_glucose_measurement(_with_status(0x00, raw.to_bytes(2, "little"), 0x0000))
    assert result.concentration is not None
    assert (str(result.concentration.si_value), str(result.concentration.value)) == (si, mg_dl)


@pytest.mark.parametrize(("raw", "reason"), [(0x17FF, "NaN"), (0xF7FF, "NaN"), (0x1800, "NRes")])
def test_special_mantissa_with_an_exponent_is_still_no_value(raw: int, reason: str) -> None:
    # A special mantissa is special whatever the exponent (gateway.ble.ieee11073): a NaN must never
    # reach the record as 20470 mg/dL.
    result = parse_glucose_measurement(_with_status(0x00, raw.to_bytes(2, "little"), 0x0000))
    assert result.concentration is not None
    assert (result.concentration.si_value, result.concentration.value) == (NoValue(reason), NoValue(reason))


def test_conversion_is_exact_whatever_the_decimal_context() -> None:
    # SFLOAT 0xB4D2: exponent -5, mantissa 0x4D2 = 1234 -> 1234e-5 kg/L = 1234 mg/dL. A caller running
    # with a 2-digit decimal context once got 1.2E+3 (Decimal.scaleb rounds to the context precision).
    with localcontext() as context:
        context.prec = 2
        result = parse_glucose_measurement(_with_status(0x00, bytes.fromhex("d2b4"), 0x0000))
    assert result.concentration is not None
    assert str(result.concentration.value) == "1234"


@pytest.mark.parametrize(
    ("base", "offset", "expected"),
    [
        (BASE, None, datetime(2024, 3, 15, 8, 30, 5)),
        (BASE, -10, datetime(2024, 3, 15, 8, 20, 5)),
        (DateTime(2024, 12, 31, 23, 50, 0), 20, datetime(2025, 1, 1, 0, 10, 0)),  # across the new year
        (DateTime(0, 0, 0, 8, 30, 5), 5, None),  # base date not known
    ],
)
def test_user_facing_time_is_base_time_plus_offset(
    base: DateTime, offset: int | None, expected: datetime | None
) -> None:
    measurement = GlucoseMeasurement(sequence_number=1, base_time=base, time_offset_minutes=offset)
    assert measurement.user_facing_time() == expected


# --------------------------------------------------------------------------- every layout flag combination

# Each value below is written from the GLS / GSS Glucose Measurement table, in wire order:
#   flags u8 | sequence number u16 | base time (Date Time, 7) | time offset s16 (bit0)
#   | concentration SFLOAT + type/location u8 (bit1; unit by bit2) | sensor status u16 (bit3)
# Field bytes used:  sequence "0201" = 0x0102 = 258;  base time "e807 03 0f 08 1e 05" = 2024-03-15 08:30:05;
#   offset "f6ff" = -10 min;  kg/L "5fb0" = SFLOAT 0xB05F = 95e-5 kg/L = 95 mg/dL;
#   mol/L "35c0" = SFLOAT 0xC035 = 53e-4 mol/L = 5.3 mmol/L;  type/location "21" = type 1 (capillary whole
#   blood, low nibble), location 2 (AST, high nibble);  status "0100" = 0x0001 device battery low.
# Bit4 (context information follows) adds no field here.
GLUCOSE_VECTORS = [
    "00 | 0201 | e807 03 0f 08 1e 05",
    "01 | 0201 | e807 03 0f 08 1e 05 | f6ff",
    "02 | 0201 | e807 03 0f 08 1e 05 |      | 5fb0 21",
    "03 | 0201 | e807 03 0f 08 1e 05 | f6ff | 5fb0 21",
    "08 | 0201 | e807 03 0f 08 1e 05 |      |         | 0100",
    "09 | 0201 | e807 03 0f 08 1e 05 | f6ff |         | 0100",
    "0a | 0201 | e807 03 0f 08 1e 05 |      | 5fb0 21 | 0100",
    "0b | 0201 | e807 03 0f 08 1e 05 | f6ff | 5fb0 21 | 0100",
    # units bit2 = mol/L, and context bit4, on the same layouts:
    "04 | 0201 | e807 03 0f 08 1e 05",
    "06 | 0201 | e807 03 0f 08 1e 05 |      | 35c0 21",
    "0f | 0201 | e807 03 0f 08 1e 05 | f6ff | 35c0 21 | 0100",
    "10 | 0201 | e807 03 0f 08 1e 05",
    "1b | 0201 | e807 03 0f 08 1e 05 | f6ff | 5fb0 21 | 0100",
    "16 | 0201 | e807 03 0f 08 1e 05 |      | 35c0 21",
]


def _wire(vector: str) -> bytes:
    return bytes.fromhex(vector.replace("|", ""))


def _expected_glucose(flags: int) -> GlucoseMeasurement:
    concentration = None
    if flags & 0x02:
        concentration = (
            GlucoseConcentration(
                si_value=Decimal("53e-4"), si_unit="mol/L", value=Decimal("5.3"), unit="mmol/L"
            )
            if flags & 0x04
            else GlucoseConcentration(
                si_value=Decimal("95e-5"), si_unit="kg/L", value=Decimal(95), unit="mg/dL"
            )
        )
    return GlucoseMeasurement(
        sequence_number=258,
        base_time=BASE,
        time_offset_minutes=-10 if flags & 0x01 else None,
        concentration=concentration,
        sample_type=GlucoseSampleType.CAPILLARY_WHOLE_BLOOD if flags & 0x02 else None,
        sample_location=GlucoseSampleLocation.ALTERNATE_SITE_TEST if flags & 0x02 else None,
        sensor_status=GlucoseSensorStatus.DEVICE_BATTERY_LOW if flags & 0x08 else None,
        context_follows=bool(flags & 0x10),
    )


@pytest.mark.parametrize("vector", GLUCOSE_VECTORS)
def test_glucose_layout_vectors(vector: str) -> None:
    payload = _wire(vector)
    assert parse_glucose_measurement(payload) == _expected_glucose(payload[0])


def test_glucose_vectors_cover_every_layout() -> None:
    # Bits 0, 1 and 3 add fields: all 8 combinations, and each unit with a concentration.
    flags = [_wire(vector)[0] for vector in GLUCOSE_VECTORS]
    assert {f & 0x0B for f in flags} == {0x00, 0x01, 0x02, 0x03, 0x08, 0x09, 0x0A, 0x0B}
    assert {f & 0x06 for f in flags} >= {0x02, 0x06}


def test_trailing_bytes_are_ignored() -> None:
    payload = _wire(GLUCOSE_VECTORS[0]) + b"\x00\x01"
    assert parse_glucose_measurement(payload) == _expected_glucose(0x00)


# --------------------------------------------------------------------------- properties


@given(
    sequence=st.integers(0, 0xFFFF),
    base=date_times,
    offset=st.none() | st.integers(-0x8000, 0x7FFF),
    reading=st.none()
    | st.tuples(
        sfloats(), st.booleans(), st.sampled_from(GlucoseSampleType), st.sampled_from(GlucoseSampleLocation)
    ),
    # Bits 5 and 6 (beyond the device range) turn the value into a Bound: covered by the vectors above.
    status=st.none() | st.integers(0, 0xFFFF).map(lambda bits: bits & ~0x0060),
    context=st.booleans(),
)
def test_measurement_round_trip(sequence, base, offset, reading, status, context) -> None:
    flags = (
        (0x01 if offset is not None else 0)
        | (0x02 if reading is not None else 0)
        | (0x04 if reading is not None and reading[1] else 0)
        | (0x08 if status is not None else 0)
        | (0x10 if context else 0)
    )
    payload = bytes([flags]) + sequence.to_bytes(2, "little") + date_time_bytes(base)
    if offset is not None:
        payload += offset.to_bytes(2, "little", signed=True)
    concentration = sample_type = location = None
    if reading is not None:
        (wire, si), mol, sample_type, location = reading
        payload += wire + bytes([sample_type | location << 4])
        si_unit, unit, power = ("mol/L", "mmol/L", 3) if mol else ("kg/L", "mg/dL", 5)
        value = si if isinstance(si, NoValue) else si.scaleb(power)
        concentration = GlucoseConcentration(si_value=si, si_unit=si_unit, value=value, unit=unit)
    if status is not None:
        payload += status.to_bytes(2, "little")
    assert parse_glucose_measurement(payload) == GlucoseMeasurement(
        sequence_number=sequence,
        base_time=base,
        time_offset_minutes=offset,
        concentration=concentration,
        sample_type=sample_type,
        sample_location=location,
        sensor_status=None if status is None else GlucoseSensorStatus(status),
        context_follows=context,
    )


@given(st.integers(0, 0xFFFF))
def test_number_of_records_round_trip(count: int) -> None:
    assert parse_racp_response(bytes([0x05, 0x00]) + count.to_bytes(2, "little")) == RacpNumberOfRecords(
        count
    )


@given(st.sampled_from(RacpOpCode), st.sampled_from(RacpResponseCode))
def test_response_code_round_trip(request: RacpOpCode, code: RacpResponseCode) -> None:
    assert parse_racp_response(bytes([0x06, 0x00, request, code])) == RacpResponse(request, code)


@pytest.mark.parametrize("parser", [parse_glucose_measurement, parse_racp_response])
@given(payload=st.binary(max_size=40))
def test_any_bytes_decode_or_raise_ble_parse_error(parser, payload: bytes) -> None:
    assert_parses_or_raises(parser, payload)


# --------------------------------------------------------------------------- RACP 0x2A52


def test_encode_report_records_greater_or_equal() -> None:
    # op code 0x01 report stored records, operator 0x03 >=, filter type 0x01 sequence number, u16 0x0102
    assert encode_report_records_greater_or_equal(0x0102) == bytes.fromhex("01 03 01 0201")
    assert encode_report_records_greater_or_equal(0) == bytes.fromhex("01 03 01 0000")
    assert encode_report_records_greater_or_equal(0xFFFF) == bytes.fromhex("01 03 01 ffff")


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


@pytest.mark.parametrize(
    ("wire", "count"),
    [
        ("05 00 2c01", 300),  # op 0x05 number of stored records response, operator 0x00 Null, u16 0x012C
        ("05 00 0000", 0),  # an empty meter
        ("05 00 ffff", 65535),  # the most a u16 operand can say
    ],
)
def test_number_of_records_response(wire: str, count: int) -> None:
    assert parse_racp_response(bytes.fromhex(wire)) == RacpNumberOfRecords(count)


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        # op 0x06 response code, operator Null, request op code 0x01 report stored records, 0x06 no records
        ("06 00 01 06", RacpResponse(RacpOpCode.REPORT_STORED_RECORDS, RacpResponseCode.NO_RECORDS_FOUND)),
        # request 0x04 report number of stored records, 0x04 operator not supported
        (
            "06 00 04 04",
            RacpResponse(RacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS, RacpResponseCode.OPERATOR_NOT_SUPPORTED),
        ),
        # request 0x03 abort operation, 0x07 abort unsuccessful
        ("06 00 03 07", RacpResponse(RacpOpCode.ABORT_OPERATION, RacpResponseCode.ABORT_UNSUCCESSFUL)),
    ],
)
def test_response_code_vectors(wire: str, expected: RacpResponse) -> None:
    assert parse_racp_response(bytes.fromhex(wire)) == expected


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
