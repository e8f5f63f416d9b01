"""gateway.ble.common: the parse error, Date Time, the field kinds and the one layout reader.

Vectors are written by hand (little-endian, Bluetooth Core Specification Vol 3 Part G 3.3.3.1); the
package-wide checks at the end hold every layout table and every parser to the same rules. The helpers
`date_time_bytes`, `date_times` and `assert_parses_or_raises` are used by the other test_ble_* files.
"""

from __future__ import annotations

import dataclasses
import enum
from datetime import datetime
from decimal import Decimal, localcontext
from typing import Any

import pytest
from hypothesis import strategies as st

from gateway.ble import glucose, health, plx
from gateway.ble.common import (
    FIELD_SIZE,
    BleParseError,
    Bound,
    DateTime,
    FieldKind,
    FieldSpec,
    decode_enum,
    exact_decimal,
    read_date_time,
    read_layout,
    reject_trailing,
    shift_decimal,
)
from gateway.ble.ieee11073 import NoValue, NoValueReason
from gateway.errors import GatewayError

# --------------------------------------------------------------------------- helpers for the other files


def date_time_bytes(value: DateTime) -> bytes:
    """Test-local Date Time 0x2A08 encoder: year u16 little-endian, then month, day, hours, minutes, seconds
    one byte each."""
    parts = (value.month, value.day, value.hours, value.minutes, value.seconds)
    return value.year.to_bytes(2, "little") + bytes(parts)


# Any Date Time the wire can carry, including "unknown" zeros and out-of-range parts.
date_times = st.builds(
    DateTime,
    st.integers(0, 0xFFFF),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
)


def _leaves(value: Any) -> list[Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [leaf for f in dataclasses.fields(value) for leaf in _leaves(getattr(value, f.name))]
    if isinstance(value, tuple):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def assert_parses_or_raises(parser: Any, payload: bytes) -> None:
    """The fuzz property: a result with no float and no non-finite Decimal anywhere, or `BleParseError`."""
    try:
        result = parser(payload)
    except BleParseError as error:
        assert error.characteristic and error.field
        assert error.characteristic in str(error) and repr(error.field) in str(error)
        return
    for leaf in _leaves(result):
        assert not isinstance(leaf, float)
        assert not isinstance(leaf, Decimal) or leaf.is_finite()


# --------------------------------------------------------------------------- the error


def test_parse_error_names_characteristic_and_field() -> None:
    error = BleParseError("Glucose Measurement 0x2A18", "sequence_number", "truncated")
    assert str(error) == "Glucose Measurement 0x2A18: field 'sequence_number': truncated"
    assert (error.characteristic, error.field, error.problem) == (
        "Glucose Measurement 0x2A18",
        "sequence_number",
        "truncated",
    )
    assert isinstance(error, ValueError) and isinstance(error, GatewayError)


def test_one_set_of_shared_names_for_the_whole_package() -> None:
    # Re-exported under the old import paths, but one class each.
    assert glucose.BleParseError is plx.BleParseError is health.BleParseError is BleParseError
    assert glucose.DateTime is plx.DateTime is health.DateTime is DateTime
    assert glucose.Bound is Bound
    assert glucose.NoValue is plx.NoValue is NoValue
    assert health.FieldKind is FieldKind and health.FieldSpec is FieldSpec


# --------------------------------------------------------------------------- Date Time 0x2A08


def test_date_time_vector() -> None:
    # year u16 0x07E8 = 2024, month 3, day 15, hours 8, minutes 30, seconds 5
    value = read_date_time(bytes.fromhex("e807 03 0f 08 1e 05"))
    assert value == DateTime(2024, 3, 15, 8, 30, 5)
    assert value.to_datetime() == datetime(2024, 3, 15, 8, 30, 5)


@pytest.mark.parametrize(
    "wire",
    [
        "0000 03 0f 08 1e 05",  # year 0: not known
        "e807 00 0f 08 1e 05",  # month 0: not known
        "e807 03 00 08 1e 05",  # day 0: not known
        "e807 02 1e 08 1e 05",  # 30 February
        "e807 03 0f 18 1e 05",  # hour 24
    ],
)
def test_unknown_or_impossible_date_time_has_no_datetime(wire: str) -> None:
    assert read_date_time(bytes.fromhex(wire)).to_datetime() is None


def test_date_time_encoder_matches_the_vector() -> None:
    assert date_time_bytes(DateTime(2024, 3, 15, 8, 30, 5)) == bytes.fromhex("e807 03 0f 08 1e 05")


# --------------------------------------------------------------------------- exact decimals


def test_exact_decimal_keeps_the_exponent_whatever_the_context() -> None:
    with localcontext() as context:
        context.prec = 1
        value = exact_decimal(70795, -3)
        shifted = shift_decimal(Decimal("1234E-5"), 5)
    assert (str(value), str(shifted)) == ("70.795", "1234")


def test_shift_decimal_moves_the_exponent_only() -> None:
    assert shift_decimal(Decimal("95E-5"), 5).as_tuple() == Decimal("95").as_tuple()
    assert shift_decimal(Decimal("-5.3E-3"), 3).as_tuple() == Decimal("-5.3").as_tuple()
    with pytest.raises(ValueError):
        shift_decimal(Decimal("NaN"), 1)


# --------------------------------------------------------------------------- the layout reader


def test_field_sizes() -> None:
    assert (
        {kind: kind.size for kind in FieldKind}
        == dict(FIELD_SIZE)
        == {
            FieldKind.U8: 1,
            FieldKind.U16: 2,
            FieldKind.S16: 2,
            FieldKind.U24: 3,
            FieldKind.SFLOAT: 2,
            FieldKind.FLOAT: 4,
            FieldKind.DATE_TIME: 7,
        }
    )


def test_each_kind_is_little_endian() -> None:
    kinds = ("U8", "U16", "S16", "U24", "SFLOAT", "FLOAT", "DATE_TIME")
    layout = tuple(FieldSpec(name, FieldKind[name]) for name in kinds)
    payload = bytes.fromhex(
        "fe"  # U8 254
        "3412"  # U16 0x1234
        "feff"  # S16 0xFFFE = -2
        "563412"  # U24 0x123456
        "6ef1"  # SFLOAT 0xF16E: exponent -1, mantissa 366 -> 36.6
        "6e0100ff"  # FLOAT 0xFF00016E: exponent -1, mantissa 366 -> 36.6
        "e80703 0f081e05"  # Date Time 2024-03-15 08:30:05
    )
    fields, end = read_layout("test", payload, layout)
    assert fields == {
        "U8": 254,
        "U16": 0x1234,
        "S16": -2,
        "U24": 0x123456,
        "SFLOAT": Decimal("36.6"),
        "FLOAT": Decimal("36.6"),
        "DATE_TIME": DateTime(2024, 3, 15, 8, 30, 5),
    }
    assert end == len(payload)


TOY = (
    FieldSpec("flags", FieldKind.U8),
    FieldSpec("narrow", FieldKind.U8, flag=0x01, when_set=False),
    FieldSpec("wide", FieldKind.U16, flag=0x01),
    FieldSpec("extra", FieldKind.U8, flag=0x02),
    FieldSpec("rest", FieldKind.U16, flag=0x04, repeated=True),
)


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ("00 07", {"flags": 0, "narrow": 7}),  # bit0 clear: the u8 alternative
        ("01 0701", {"flags": 1, "wide": 0x0107}),  # bit0 set: the u16 alternative
        ("02 07 09", {"flags": 2, "narrow": 7, "extra": 9}),
        ("04 07", {"flags": 4, "narrow": 7, "rest": ()}),  # repeated field with no item
        ("07 0701 09 0100 0200", {"flags": 7, "wide": 0x0107, "extra": 9, "rest": (1, 2)}),
    ],
)
def test_read_layout_follows_the_flags(wire: str, expected: dict[str, Any]) -> None:
    payload = bytes.fromhex(wire)
    assert read_layout("toy", payload, TOY) == (expected, len(payload))


def test_read_layout_from_an_offset_leaves_trailing_bytes_to_the_caller() -> None:
    payload = bytes.fromhex("aa bb 02 07 09 ff")  # two header bytes, then the toy value, then one more
    assert read_layout("toy", payload, TOY, offset=2) == ({"flags": 2, "narrow": 7, "extra": 9}, 5)
    with pytest.raises(BleParseError, match="1 unexpected bytes") as caught:
        reject_trailing("toy", payload, 5)
    assert caught.value.field == "end"
    reject_trailing("toy", payload, 6)


@pytest.mark.parametrize(
    ("wire", "field", "problem"),
    [
        ("", "flags", "truncated: needs 1 byte(s) at offset 0, 0 left"),
        ("01 07", "wide", "truncated: needs 2 byte(s) at offset 1, 1 left"),
        ("06 07 09 0100 02", "rest", "3 bytes left, not a multiple of 2"),
    ],
)
def test_read_layout_names_the_field_it_cannot_read(wire: str, field: str, problem: str) -> None:
    with pytest.raises(BleParseError) as caught:
        read_layout("Toy 0xFFFF", bytes.fromhex(wire), TOY)
    assert (caught.value.characteristic, caught.value.field, caught.value.problem) == (
        "Toy 0xFFFF",
        field,
        problem,
    )


class _Colour(enum.IntEnum):
    RED = 1


def test_decode_enum() -> None:
    assert decode_enum("toy", "colour", _Colour, 1) is _Colour.RED
    with pytest.raises(BleParseError, match="reserved or unknown value 0x02") as caught:
        decode_enum("toy", "colour", _Colour, 2)
    assert caught.value.field == "colour"


def test_bound_keeps_comparator_and_limit() -> None:
    assert Bound(">", Decimal("600")) != Bound("<", Decimal("600"))
    assert Bound(">", None).limit is None
    assert NoValue(NoValueReason.NAN) != NoValue(NoValueReason.NRES)


# --------------------------------------------------------------------------- every layout in the package

LAYOUTS = {
    f"{module.__name__}.{name}": getattr(module, name)
    for module in (glucose, plx, health)
    for name in dir(module)
    if name.endswith("_LAYOUT")
}


def test_the_layouts_are_found() -> None:
    assert len(LAYOUTS) == 10


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_layout_is_well_formed(name: str) -> None:
    layout: tuple[FieldSpec, ...] = LAYOUTS[name]
    assert all(isinstance(spec, FieldSpec) for spec in layout)
    if any(spec.flag for spec in layout):
        assert layout[0] == FieldSpec("flags", FieldKind.U8)  # flags first, read before any flagged field
    assert all(spec.flag & 0xFF == spec.flag for spec in layout)  # a bit of the u8 flags field
    assert all(not spec.repeated for spec in layout[:-1])  # a repeated field takes the rest: last only
    names = [spec.name for spec in layout]
    for duplicate in {n for n in names if names.count(n) > 1}:
        # The only repeated name is a pair of alternatives chosen by one flag bit (Heart Rate u8/u16).
        first, second = (spec for spec in layout if spec.name == duplicate)
        assert first.flag == second.flag != 0 and first.when_set != second.when_set
