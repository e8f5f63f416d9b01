"""IEEE 11073-20601 SFLOAT (16-bit) and FLOAT (32-bit) encoders, written from the standard's tables.

Both are ``mantissa × 10**exponent``, two's complement, exponent in the high bits:

=========  ======  ===============  ================  ==========================================
Format     Bits    Exponent         Mantissa          Special values (exponent 0)
=========  ======  ===============  ================  ==========================================
SFLOAT     16      15..12: −8..7    11..0: ±2045      NaN 0x07FF, NRes 0x0800, +INF 0x07FE,
                                                      −INF 0x0802, reserved 0x0801
FLOAT      32      31..24: −128..127  23..0: ±8388605  NaN 0x007FFFFF, NRes 0x00800000,
                                                      +INF 0x007FFFFE, −INF 0x00800002,
                                                      reserved 0x00800001
=========  ======  ===============  ================  ==========================================

The five mantissas next to the ends of the range (+2046, +2047, −2048, −2047, −2046 for SFLOAT) are
the special values, so a number's mantissa is at most ±2045 (±8388605 for FLOAT).

Numbers are encoded exactly or not at all: ``Decimal("36.6")`` becomes mantissa 366, exponent −1; a
value that needs more digits than the mantissa holds raises `ValueError` rather than being rounded
(a simulated device should send what the test asked for, or fail loudly). The exponent of the given
decimal is kept when it fits, so ``Decimal("5.50")`` is sent as 550e−2, as a device showing two
decimals would.

This module is deliberately independent of ``gateway.ble``: it is the other half of a cross-check.
"""

from __future__ import annotations

import enum
from decimal import Decimal
from typing import Final

__all__ = [
    "FLOAT_SPECIAL_BITS",
    "SFLOAT_SPECIAL_BITS",
    "Number",
    "Special",
    "encode_float",
    "encode_sfloat",
    "float_bits",
    "sfloat_bits",
    "to_decimal",
]


class Special(enum.Enum):
    """The IEEE 11073-20601 special values: a field that is present but carries no number."""

    NAN = "NaN"  # not a number: the device could not measure
    NRES = "NRes"  # not at this resolution
    POSITIVE_INFINITY = "+INF"
    NEGATIVE_INFINITY = "-INF"
    RESERVED = "reserved"  # reserved for future use


SFLOAT_SPECIAL_BITS: Final[dict[Special, int]] = {
    Special.NAN: 0x07FF,
    Special.NRES: 0x0800,
    Special.POSITIVE_INFINITY: 0x07FE,
    Special.NEGATIVE_INFINITY: 0x0802,
    Special.RESERVED: 0x0801,
}
FLOAT_SPECIAL_BITS: Final[dict[Special, int]] = {
    Special.NAN: 0x007FFFFF,
    Special.NRES: 0x00800000,
    Special.POSITIVE_INFINITY: 0x007FFFFE,
    Special.NEGATIVE_INFINITY: 0x00800002,
    Special.RESERVED: 0x00800001,
}

Number = int | float | str | Decimal


def to_decimal(value: Number) -> Decimal:
    """An exact decimal; a float goes through its shortest repr (36.6 -> Decimal("36.6"))."""
    if isinstance(value, bool):
        raise TypeError("a bool is not a measurement value")
    result = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not result.is_finite():
        raise ValueError(f"{value!r} is not a finite number: pass a Special instead")
    return result


def _mantissa_exponent(
    value: Number, *, mantissa_max: int, exponent_min: int, exponent_max: int, exponent: int | None
) -> tuple[int, int]:
    """(mantissa, exponent) with value == mantissa × 10**exponent exactly, within the given ranges."""
    number = to_decimal(value)
    sign, digits, own_exponent = number.as_tuple()
    assert isinstance(own_exponent, int)  # finite
    coefficient = int("".join(map(str, digits)) or "0")
    if coefficient == 0:
        return 0, (0 if exponent is None else exponent)
    if sign:
        coefficient = -coefficient
    # Candidates: the caller's exponent only, else the decimal's own exponent first, then larger
    # exponents (dropping trailing zeros), then smaller ones (adding zeros) -- all exact.
    if exponent is not None:
        candidates = [exponent]
    else:
        start = min(max(own_exponent, exponent_min), exponent_max)
        candidates = [*range(start, exponent_max + 1), *range(start - 1, exponent_min - 1, -1)]
    for e in candidates:
        shift = own_exponent - e
        if shift >= 0:
            mantissa = coefficient * 10**shift
        else:
            mantissa, remainder = divmod(abs(coefficient), 10**-shift)
            if remainder:
                continue
            mantissa = -mantissa if coefficient < 0 else mantissa
        if abs(mantissa) <= mantissa_max and exponent_min <= e <= exponent_max:
            return mantissa, e
    raise ValueError(
        f"{number} cannot be sent exactly as mantissa (±{mantissa_max}) × 10**exponent "
        f"({exponent_min}..{exponent_max})" + ("" if exponent is None else f" with exponent {exponent}")
    )


def sfloat_bits(value: Number | Special, *, exponent: int | None = None) -> int:
    """The 16-bit SFLOAT word for a number (exact) or a special value."""
    if isinstance(value, Special):
        return SFLOAT_SPECIAL_BITS[value]
    mantissa, e = _mantissa_exponent(
        value, mantissa_max=2045, exponent_min=-8, exponent_max=7, exponent=exponent
    )
    return ((e & 0x0F) << 12) | (mantissa & 0x0FFF)


def float_bits(value: Number | Special, *, exponent: int | None = None) -> int:
    """The 32-bit FLOAT word for a number (exact) or a special value."""
    if isinstance(value, Special):
        return FLOAT_SPECIAL_BITS[value]
    mantissa, e = _mantissa_exponent(
        value, mantissa_max=(1 << 23) - 3, exponent_min=-128, exponent_max=127, exponent=exponent
    )
    return ((e & 0xFF) << 24) | (mantissa & 0x00FFFFFF)


def encode_sfloat(value: Number | Special, *, exponent: int | None = None) -> bytes:
    """SFLOAT as it goes on the air: 2 bytes, little-endian."""
    return sfloat_bits(value, exponent=exponent).to_bytes(2, "little")


def encode_float(value: Number | Special, *, exponent: int | None = None) -> bytes:
    """FLOAT as it goes on the air: 4 bytes, little-endian."""
    return float_bits(value, exponent=exponent).to_bytes(4, "little")
