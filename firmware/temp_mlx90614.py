"""Driver for the Melexis MLX90614 infrared thermometer on SMBus (I2C, 100 kHz).

The part answers at 0x5A. A RAM word is read with the SMBus "read word" protocol, which is
`readfrom_mem_into` with a repeated start:

    S  addr+W  command  Sr  addr+R  LSB  MSB  PEC  P

The command is the RAM address (opcode 000x_xxxx): 0x06 ambient Ta, 0x07 object Tobj1. A
linearised temperature word is raw * 0.02 K; its bit 15 is the part's error flag (the value is
invalid). PEC is CRC-8 (polynomial x^8 + x^2 + x + 1 = 0x07, initial value 0) over every byte
on the wire except the PEC itself: addr+W, command, addr+R, LSB, MSB. A PEC mismatch is line
noise: the read is repeated; a part that keeps failing is reported, never a wrong value.

Temperatures are exact integers in centi-degrees Celsius: raw * 0.02 K = raw * 2 centikelvin,
minus 27315. No float is involved, so the value sent is the part's own reading. The board's
MLX90614 has PWM output disabled in its EEPROM (PWMCTRL), so it starts in SMBus mode.
"""

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


# An underscored const() is folded into the code and takes no RAM on the board.
_ADDRESS = const(0x5A)
_RAM_TA = const(0x06)
_RAM_TOBJ1 = const(0x07)

# measure() results
OK = const(0)
NOT_FOUND = const(1)  # NACK: no part answers at the address
FAULT = const(2)  # PEC wrong on every attempt, or the part's error flag is set
AMBIENT_OUT_OF_RANGE = const(3)  # the sensor's own temperature is outside its accurate range

_ERROR_FLAG = const(0x8000)
_ZERO_CELSIUS_CK = const(27315)  # 273.15 K in centikelvin
# Ambient range (centi-degC) in which this board's readings are trusted.
_AMBIENT_MIN = const(0)
_AMBIENT_MAX = const(5000)


def pec_update(crc, byte):
    """One byte of the SMBus PEC (CRC-8, poly 0x07, MSB first)."""
    crc ^= byte
    for _ in range(8):
        crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def centi_celsius(raw):
    """Linearised RAM word (0.02 K units, error flag clear) -> exact centi-degrees Celsius."""
    return raw * 2 - _ZERO_CELSIUS_CK


class Mlx90614:
    """`measure()` reads Tobj1 and Ta; the results land in `ambient` and `object` (centi-degC)."""

    def __init__(self, i2c, address=_ADDRESS, attempts=3):
        self._i2c = i2c
        self._address = address
        self._attempts = attempts
        self._buf = bytearray(3)  # LSB, MSB, PEC
        self._word = 0
        self.ambient = 0
        self.object = 0
        self.pec_errors = 0
        self.nacks = 0

    def measure(self):
        """Read Tobj1 then Ta -> OK, NOT_FOUND, FAULT or AMBIENT_OUT_OF_RANGE."""
        status = self._read_word(_RAM_TOBJ1)
        if status != OK:
            return status
        object_raw = self._word
        status = self._read_word(_RAM_TA)
        if status != OK:
            return status
        ambient_raw = self._word
        if ambient_raw & _ERROR_FLAG or object_raw & _ERROR_FLAG:
            return FAULT
        self.ambient = centi_celsius(ambient_raw)
        self.object = centi_celsius(object_raw)
        if not _AMBIENT_MIN <= self.ambient <= _AMBIENT_MAX:
            return AMBIENT_OUT_OF_RANGE
        return OK

    def _read_word(self, command):
        """Read one RAM word into self._word, repeating on NACK or PEC mismatch."""
        buf = self._buf
        address = self._address
        failure = FAULT
        for _ in range(self._attempts):
            try:
                self._i2c.readfrom_mem_into(address, command, buf)
            except OSError:
                self.nacks += 1
                failure = NOT_FOUND
                continue
            crc = pec_update(0, address << 1)
            crc = pec_update(crc, command)
            crc = pec_update(crc, (address << 1) | 1)
            crc = pec_update(crc, buf[0])
            crc = pec_update(crc, buf[1])
            if crc == buf[2]:
                self._word = buf[0] | (buf[1] << 8)
                return OK
            self.pec_errors += 1
            failure = FAULT
        return failure
