"""Register-level model of the Melexis MLX90614 infrared thermometer on SMBus.

Why: the temperature driver must be tested against the part's real bus behaviour, including
the faults a kiosk meets (a loose sensor cable, line noise corrupting a word, a part reporting
an internal error, a kiosk left in the sun). The model follows the datasheet: slave address
0x5A; SMBus read word (command, repeated start, LSB, MSB, PEC); command opcodes 000x_xxxx for
RAM and 001x_xxxx for EEPROM; RAM 0x06 Ta and 0x07/0x08 Tobj1/Tobj2 as unsigned words of
0.02 K with bit 15 the error flag; PEC a CRC-8 with polynomial x^8 + x^2 + x + 1 over every byte
on the wire (address + W, command, address + R, LSB, MSB).

The PEC here is computed from a 256-entry table, independently of the firmware's bitwise
loop, so a mistake in one does not hide in the other.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from simulators.bus_server import Chip

ADDRESS = 0x5A
RAM_RAW_IR1 = 0x04
RAM_RAW_IR2 = 0x05
RAM_TA = 0x06
RAM_TOBJ1 = 0x07
RAM_TOBJ2 = 0x08
EEPROM_SMBUS_ADDRESS = 0x0E
ERROR_FLAG = 0x8000

Fault = Literal["nack", "bad_pec", "bad_pec_once", "error_flag"]


def _crc8_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) if crc & 0x80 else crc << 1
        table.append(crc & 0xFF)
    return tuple(table)


_CRC8 = _crc8_table()


def pec(data: bytes) -> int:
    """SMBus packet error code (CRC-8, poly 0x07, init 0) of the bytes on the wire."""
    crc = 0
    for byte in data:
        crc = _CRC8[crc ^ byte]
    return crc


def raw_from_celsius(celsius: float) -> int:
    """The linearised RAM word for a temperature: (T + 273.15) / 0.02, rounded half up."""
    kelvin = Decimal(str(celsius)) + Decimal("273.15")
    return int((kelvin / Decimal("0.02")).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@dataclass(frozen=True, slots=True)
class BodyTemperature:
    """A resident's temperature as the thermometer's field of view sees it (°C)."""

    celsius: float


NORMAL = BodyTemperature(36.6)
FEVER = BodyTemperature(38.7)


class Mlx90614Chip(Chip):
    """The part at 0x5A. Set `target` (a resident or None), `ambient_celsius` and `fault`."""

    def __init__(self, *, ambient_celsius: float = 25.0, empty_scene_celsius: float = 24.0) -> None:
        self.i2c_address: int | None = ADDRESS
        self.ambient_celsius = ambient_celsius
        self.empty_scene_celsius = empty_scene_celsius  # what it sees with nobody in front
        self.target: BodyTemperature | None = None
        self.fault: Fault | None = None
        self.eeprom = [0] * 32
        self.eeprom[EEPROM_SMBUS_ADDRESS] = ADDRESS
        self.reads = 0
        self._command = 0

    def set_fault(self, fault: Fault | None) -> None:
        with self._locked():
            self.fault = fault
            self.i2c_address = None if fault == "nack" else ADDRESS

    def aim_at(self, target: BodyTemperature | None) -> None:
        with self._locked():
            self.target = target

    def _locked(self) -> AbstractContextManager[object]:
        board = getattr(self, "board", None)
        return contextlib.nullcontext() if board is None else board.lock

    @property
    def object_raw(self) -> int:
        celsius = self.empty_scene_celsius if self.target is None else self.target.celsius
        return raw_from_celsius(celsius)

    @property
    def ambient_raw(self) -> int:
        return raw_from_celsius(self.ambient_celsius)

    def _word(self, command: int) -> int:
        opcode, address = command & 0xE0, command & 0x1F
        if opcode == 0x20:
            return self.eeprom[address]
        if opcode != 0x00:
            return 0xFFFF  # unsupported opcode: the part would NACK; the driver never sends it
        if address == RAM_TA:
            return self.ambient_raw
        if address in (RAM_TOBJ1, RAM_TOBJ2):
            raw = self.object_raw
            return raw | ERROR_FLAG if self.fault == "error_flag" else raw
        return 0

    def i2c_write(self, data: bytes) -> None:
        if data:
            self._command = data[0]  # a write word (EEPROM) is not modelled: writes are ignored

    def i2c_read(self, count: int) -> bytes:
        self.reads += 1
        word = self._word(self._command)
        lsb, msb = word & 0xFF, word >> 8
        code = pec(bytes((ADDRESS << 1, self._command, (ADDRESS << 1) | 1, lsb, msb)))
        if self.fault in ("bad_pec", "bad_pec_once"):
            # Line noise flips a data bit after the part computed its PEC: a driver that skips
            # the PEC check would report 0.16 K off.
            lsb ^= 0x08
            if self.fault == "bad_pec_once":
                self.fault = None
        return bytes((lsb, msb, code, 0xFF, 0xFF, 0xFF))[:count].ljust(count, b"\xff")
