"""IEEE 11073-20601 SFLOAT and FLOAT: exact decimals, special values as `NoValue`, never a float.

Both formats are ``mantissa × 10**exponent`` with a signed exponent and a signed mantissa:

=========  ======  ========  ========  =============================================
Format     Bits    Exponent  Mantissa  Special values (mantissa, exponent ignored)
=========  ======  ========  ========  =============================================
SFLOAT     16      15..12    11..0     0x7FF NaN, 0x800 NRes, 0x7FE +INF,
                                       0x802 −INF, 0x801 reserved
FLOAT      32      31..24    23..0     0x7FFFFF NaN, 0x800000 NRes, 0x7FFFFE +INF,
                                       0x800002 −INF, 0x800001 reserved
=========  ======  ========  ========  =============================================

The exponent is kept, so ``0xF16E`` decodes to ``Decimal("36.6")`` (not ``36.60000001``) and
``0xF014`` to ``Decimal("2.0")``: the precision the device reported survives.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal

__all__ = [
    "FLOAT_SPECIALS",
    "SFLOAT_SPECIALS",
    "NoValue",
    "NoValueReason",
    "decode_float",
    "decode_sfloat",
]


class NoValueReason(enum.StrEnum):
    """Why a field carries no number."""

    NAN = "NaN"
    NRES = "NRes"
    POSITIVE_INFINITY = "+INF"
    NEGATIVE_INFINITY = "-INF"
    RESERVED = "reserved"
    MEASUREMENT_UNSUCCESSFUL = "measurement unsuccessful"  # Weight Scale: weight 0xFFFF
    CONTRADICTORY_RANGE = "result both higher and lower than device can process"  # Glucose status


@dataclass(frozen=True, slots=True)
class NoValue:
    """A special value: the device sent a field, but it is not a number."""

    reason: NoValueReason


# Mantissa (as the unsigned bit pattern) -> special value.
SFLOAT_SPECIALS: dict[int, NoValue] = {
    0x07FF: NoValue(NoValueReason.NAN),
    0x0800: NoValue(NoValueReason.NRES),
    0x07FE: NoValue(NoValueReason.POSITIVE_INFINITY),
    0x0802: NoValue(NoValueReason.NEGATIVE_INFINITY),
    0x0801: NoValue(NoValueReason.RESERVED),
}
FLOAT_SPECIALS: dict[int, NoValue] = {
    0x007FFFFF: NoValue(NoValueReason.NAN),
    0x00800000: NoValue(NoValueReason.NRES),
    0x007FFFFE: NoValue(NoValueReason.POSITIVE_INFINITY),
    0x00800002: NoValue(NoValueReason.NEGATIVE_INFINITY),
    0x00800001: NoValue(NoValueReason.RESERVED),
}


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def _decode(
    raw: int, exponent_bits: int, mantissa_bits: int, specials: dict[int, NoValue]
) -> Decimal | NoValue:
    total = exponent_bits + mantissa_bits
    if not 0 <= raw < (1 << total):
        raise ValueError(f"{raw:#x} does not fit in {total} bits")
    mantissa_raw = raw & ((1 << mantissa_bits) - 1)
    special = specials.get(mantissa_raw)
    if special is not None:
        return special
    exponent = _signed(raw >> mantissa_bits, exponent_bits)
    mantissa = _signed(mantissa_raw, mantissa_bits)
    # Built from a string, so it is exact whatever the caller's decimal context.
    return Decimal(f"{mantissa}E{exponent}")


def decode_sfloat(raw: int) -> Decimal | NoValue:
    """Decode a 16-bit SFLOAT given as an unsigned int (already read little-endian)."""
    return _decode(raw, 4, 12, SFLOAT_SPECIALS)


def decode_float(raw: int) -> Decimal | NoValue:
    """Decode a 32-bit FLOAT given as an unsigned int (already read little-endian)."""
    return _decode(raw, 8, 24, FLOAT_SPECIALS)
