"""IEEE 11073-20601 SFLOAT/FLOAT: spec vectors compared whole, every special value, and properties."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.ble.ieee11073 import NoValue, NoValueReason, decode_float, decode_sfloat

# (raw, expected value, expected text). The text pins the exponent: Decimal("2.0") == Decimal("2"),
# but a device that reports 2.0 must not turn into 2.
SFLOAT_VECTORS = [
    # HL7 PHD IG "Mder FLOATs and SFLOATs" SFLOAT table (exponent = top nibble, mantissa = low 12 bits):
    (0x0002, Decimal("2"), "2"),  # e=0, m=2
    (0xF014, Decimal("2.0"), "2.0"),  # e=0xF=-1, m=0x014=20
    (0xE0C8, Decimal("2.00"), "2.00"),  # e=0xE=-2, m=0x0C8=200
    (0x1002, Decimal("2E+1"), "2E+1"),  # e=1, m=2 -> 20, one significant digit
    (0x2002, Decimal("2E+2"), "2E+2"),  # e=2, m=2 -> 200
    (0x00C8, Decimal("200"), "200"),  # e=0, m=200
    (0x04D2, Decimal("1234"), "1234"),  # e=0, m=0x4D2=1234
    (0x0B2E, Decimal("-1234"), "-1234"),  # e=0, m=0xB2E = 2862-4096 = -1234
    # Built by hand:
    (0xF16E, Decimal("36.6"), "36.6"),  # e=-1, m=0x16E=366: a body temperature keeps one decimal
    (0x0480, Decimal("1152"), "1152"),  # e=0, m=0x480=1152 (12-bit mantissa, sign bit 0x800 clear)
    (0x0000, Decimal("0"), "0"),  # zero
    (0x87FD, Decimal("2.045E-5"), "0.00002045"),  # e=0x8=-8, m=0x7FD=2045: largest non-special mantissa
    (0x7803, Decimal("-2.045E+10"), "-2.045E+10"),  # e=7, m=0x803=-2045: most negative ordinary mantissa
]

FLOAT_VECTORS = [
    # HL7 PHD IG FLOAT table (exponent = top byte, mantissa = low 24 bits):
    (0x00000002, Decimal("2"), "2"),
    (0xFF000014, Decimal("2.0"), "2.0"),  # e=0xFF=-1, m=20
    (0xFE0000C8, Decimal("2.00"), "2.00"),  # e=-2, m=200
    (0x01000002, Decimal("2E+1"), "2E+1"),  # e=1, m=2
    (0x000004D2, Decimal("1234"), "1234"),
    (0x00FFFB2E, Decimal("-1234"), "-1234"),  # m=0xFFFB2E = 16775982-16777216
    # Built by hand:
    (0xFF00016E, Decimal("36.6"), "36.6"),  # e=-1, m=0x16E=366
    (0xFE000E4A, Decimal("36.58"), "36.58"),  # e=-2, m=0xE4A=3658
    (0x807FFFFD, Decimal("8388605E-128"), "8.388605E-122"),  # e=0x80=-128, m=0x7FFFFD: extremes
]

SFLOAT_SPECIAL_VECTORS = [
    (0x07FF, NoValue(NoValueReason.NAN)),
    (0x0800, NoValue(NoValueReason.NRES)),
    (0x07FE, NoValue(NoValueReason.POSITIVE_INFINITY)),
    (0x0802, NoValue(NoValueReason.NEGATIVE_INFINITY)),
    (0x0801, NoValue(NoValueReason.RESERVED)),
    # The special mantissas are not numbers with any exponent either (see module docstring).
    (0xF7FF, NoValue(NoValueReason.NAN)),
    (0x1800, NoValue(NoValueReason.NRES)),
]

FLOAT_SPECIAL_VECTORS = [
    (0x007FFFFF, NoValue(NoValueReason.NAN)),
    (0x00800000, NoValue(NoValueReason.NRES)),
    (0x007FFFFE, NoValue(NoValueReason.POSITIVE_INFINITY)),
    (0x00800002, NoValue(NoValueReason.NEGATIVE_INFINITY)),
    (0x00800001, NoValue(NoValueReason.RESERVED)),
    (0xFF7FFFFF, NoValue(NoValueReason.NAN)),
]


@pytest.mark.parametrize(("raw", "value", "text"), SFLOAT_VECTORS)
def test_sfloat_vectors(raw: int, value: Decimal, text: str) -> None:
    result = decode_sfloat(raw)
    assert (result, str(result)) == (value, text)


@pytest.mark.parametrize(("raw", "value", "text"), FLOAT_VECTORS)
def test_float_vectors(raw: int, value: Decimal, text: str) -> None:
    result = decode_float(raw)
    assert (result, str(result)) == (value, text)


@pytest.mark.parametrize(("raw", "expected"), SFLOAT_SPECIAL_VECTORS)
def test_sfloat_special_values(raw: int, expected: NoValue) -> None:
    assert decode_sfloat(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), FLOAT_SPECIAL_VECTORS)
def test_float_special_values(raw: int, expected: NoValue) -> None:
    assert decode_float(raw) == expected


@pytest.mark.parametrize(
    ("decoder", "raw"), [(decode_sfloat, 0x10000), (decode_sfloat, -1), (decode_float, 1 << 32)]
)
def test_out_of_range_raw_is_rejected(decoder, raw: int) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        decoder(raw)


@given(st.integers(0, 0xFFFF))
def test_any_sfloat_is_a_decimal_or_no_value(raw: int) -> None:
    result = decode_sfloat(raw)
    assert isinstance(result, NoValue) or (isinstance(result, Decimal) and result.is_finite())
    assert isinstance(result, NoValue) == ((raw & 0x0FFF) in {0x07FF, 0x0800, 0x07FE, 0x0802, 0x0801})


@given(st.integers(0, 0xFFFFFFFF))
def test_any_float_is_a_decimal_or_no_value(raw: int) -> None:
    result = decode_float(raw)
    assert isinstance(result, NoValue) or (isinstance(result, Decimal) and result.is_finite())


@given(st.integers(-2045, 2045), st.integers(-8, 7))
def test_sfloat_round_trip_keeps_exponent(mantissa: int, exponent: int) -> None:
    raw = ((exponent & 0xF) << 12) | (mantissa & 0x0FFF)
    result = decode_sfloat(raw)
    assert isinstance(result, Decimal)
    assert result == mantissa * Decimal(10) ** exponent
    assert result.as_tuple().exponent == exponent


@given(st.integers(-(2**23) + 3, 2**23 - 3), st.integers(-128, 127))
def test_float_round_trip_keeps_exponent(mantissa: int, exponent: int) -> None:
    raw = ((exponent & 0xFF) << 24) | (mantissa & 0xFFFFFF)
    result = decode_float(raw)
    assert isinstance(result, Decimal)
    assert result.as_tuple() == Decimal(f"{mantissa}E{exponent}").as_tuple()
    assert result.as_tuple().exponent == exponent


# --------------------------------------------------------------------------- test-local encoders
# The parser round-trip properties in the other test_ble_* files encode their generated values with these;
# the code under test never uses them. They are checked here against the hand-written vectors above.


def sfloat_bytes(mantissa: int, exponent: int) -> bytes:
    """SFLOAT on the wire: 4-bit exponent over a 12-bit mantissa (both two's complement), little-endian."""
    return (((exponent & 0xF) << 12) | (mantissa & 0x0FFF)).to_bytes(2, "little")


def float_bytes(mantissa: int, exponent: int) -> bytes:
    """FLOAT on the wire: 8-bit exponent over a 24-bit mantissa (both two's complement), little-endian."""
    return (((exponent & 0xFF) << 24) | (mantissa & 0xFFFFFF)).to_bytes(4, "little")


SFLOAT_SPECIAL_WIRE = [(raw.to_bytes(2, "little"), value) for raw, value in SFLOAT_SPECIAL_VECTORS[:5]]
FLOAT_SPECIAL_WIRE = [(raw.to_bytes(4, "little"), value) for raw, value in FLOAT_SPECIAL_VECTORS[:5]]


def sfloats() -> st.SearchStrategy[tuple[bytes, Decimal | NoValue]]:
    """(wire bytes, the value they stand for): every ordinary mantissa and exponent, or a special value."""
    numbers = st.builds(
        lambda m, e: (sfloat_bytes(m, e), Decimal(m).scaleb(e)), st.integers(-2045, 2045), st.integers(-8, 7)
    )
    return numbers | st.sampled_from(SFLOAT_SPECIAL_WIRE)


def floats() -> st.SearchStrategy[tuple[bytes, Decimal | NoValue]]:
    numbers = st.builds(
        lambda m, e: (float_bytes(m, e), Decimal(m).scaleb(e)),
        st.integers(-(2**23) + 3, 2**23 - 3),
        st.integers(-128, 127),
    )
    return numbers | st.sampled_from(FLOAT_SPECIAL_WIRE)


@pytest.mark.parametrize(
    ("mantissa", "exponent", "raw"),
    [
        (2, 0, 0x0002),
        (20, -1, 0xF014),
        (200, -2, 0xE0C8),
        (2, 1, 0x1002),
        (-1234, 0, 0x0B2E),
        (366, -1, 0xF16E),
    ],
)
def test_sfloat_encoder_matches_the_spec_table(mantissa: int, exponent: int, raw: int) -> None:
    assert sfloat_bytes(mantissa, exponent) == raw.to_bytes(2, "little")


@pytest.mark.parametrize(
    ("mantissa", "exponent", "raw"),
    [(2, 0, 0x00000002), (20, -1, 0xFF000014), (200, -2, 0xFE0000C8), (-1234, 0, 0x00FFFB2E)],
)
def test_float_encoder_matches_the_spec_table(mantissa: int, exponent: int, raw: int) -> None:
    assert float_bytes(mantissa, exponent) == raw.to_bytes(4, "little")
