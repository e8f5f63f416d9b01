"""Register-level model of the Maxim MAX30102 pulse oximeter, with a simulated fingertip.

Why a register model: the SpO2 driver is only trustworthy if it is tested against what the
part does on its bus, not against a convenient fake. This model follows the datasheet
(19-7740): the register map, power-on values, the 32-sample FIFO with its write and read
pointers and overflow counter, the read pointer advancing on the first byte of each sample,
FIFO_DATA not advancing the register pointer, interrupt flags cleared by reading
INT_STATUS_1 (PPG_RDY also by reading the FIFO), the INT pin low while an enabled flag is set,
sample rates, pulse widths (ADC resolution, left-justified data), ADC full-scale ranges, LED
currents of 0.2 mA per step, RESET, SHDN and the die-temperature conversion.

The fingertip is a photoplethysmogram built from the resident's truth: IR and red photocurrents
proportional to each LED's current, each dipping with every heartbeat by its perfusion
fraction. Red dips by R times the IR dip, with R taken from the same empirical curve the
firmware uses (SpO2 = 110 - 25 R), so a test checks the firmware's pipeline end to end; the
curve itself must be calibrated on real probes. With no finger the photodiode sees only light
scattered by the cover glass.

Time: the part samples on its own clock. `time_scale` > 1 runs that clock faster than the
wall clock, so a 5 s window passes in less time in CI; the waveform is a function of the sample
index and the configured rate, so the data are exactly what a real part would produce. If the
host stops reading (a test holds the board lock), samples keep coming due and the FIFO
overflows on the next tick, as it would on a board.
"""

from __future__ import annotations

import contextlib
import math
import random
from contextlib import AbstractContextManager
from dataclasses import dataclass

from simulators.bus_server import Chip, SimulatedBoard

ADDRESS = 0x57
PART_ID = 0x15
REV_ID = 0x03

REG_INT_STATUS_1 = 0x00
REG_INT_STATUS_2 = 0x01
REG_INT_ENABLE_1 = 0x02
REG_INT_ENABLE_2 = 0x03
REG_FIFO_WR_PTR = 0x04
REG_OVF_COUNTER = 0x05
REG_FIFO_RD_PTR = 0x06
REG_FIFO_DATA = 0x07
REG_FIFO_CONFIG = 0x08
REG_MODE_CONFIG = 0x09
REG_SPO2_CONFIG = 0x0A
REG_LED1_PA = 0x0C
REG_LED2_PA = 0x0D
REG_MULTI_LED_1 = 0x11
REG_MULTI_LED_2 = 0x12
REG_TEMP_INT = 0x1F
REG_TEMP_FRAC = 0x20
REG_TEMP_CONFIG = 0x21
REG_REV_ID = 0xFE
REG_PART_ID = 0xFF

INT_A_FULL = 0x80
INT_PPG_RDY = 0x40
INT_ALC_OVF = 0x20
INT_PWR_RDY = 0x01
INT_DIE_TEMP_RDY = 0x02

MODE_SHDN = 0x80
MODE_RESET = 0x40
MODE_HR = 0b010
MODE_SPO2 = 0b011
MODE_MULTI_LED = 0b111

FIFO_DEPTH = 32
SAMPLE_RATES = (50, 100, 200, 400, 800, 1000, 1600, 3200)  # SPO2_SR[2:0]
RESOLUTION_BITS = (15, 16, 17, 18)  # LED_PW[1:0]: 69, 118, 215, 411 us
ADC_RANGES_NA = (2048, 4096, 8192, 16384)  # SPO2_ADC_RGE[1:0]
LED_MA_PER_STEP = 0.2
FULL_SCALE = (1 << 18) - 1
TEMP_CONVERSION_S = 0.029

_WRITABLE = {
    REG_INT_ENABLE_1: 0xE0,
    REG_INT_ENABLE_2: 0x02,
    REG_FIFO_CONFIG: 0xFF,
    REG_SPO2_CONFIG: 0x7F,
    REG_LED1_PA: 0xFF,
    REG_LED2_PA: 0xFF,
    REG_MULTI_LED_1: 0x77,
    REG_MULTI_LED_2: 0x77,
    REG_TEMP_CONFIG: 0x01,
}


@dataclass(frozen=True, slots=True)
class Fingertip:
    """What the probe sees of one resident's fingertip (the truth the test compares against)."""

    spo2: float  # % functional saturation
    pulse: float  # beats per minute
    perfusion_index: float = 2.0  # IR pulsatile swing as % of IR DC
    ir_na_per_ma: float = 260.0  # IR photocurrent per mA of IR LED current
    red_na_per_ma: float = 195.0  # red photocurrent per mA of red LED current

    @property
    def ratio(self) -> float:
        """R = (AC_red/DC_red) / (AC_ir/DC_ir) that the empirical curve maps to this SpO2."""
        return (110.0 - self.spo2) / 25.0


NORMAL = Fingertip(spo2=98, pulse=72)
HYPOXAEMIC = Fingertip(spo2=88, pulse=110, perfusion_index=1.6)
LOW_PERFUSION = Fingertip(spo2=97, pulse=84, perfusion_index=0.15)  # cold hands, shock
NO_PULSE = Fingertip(spo2=97, pulse=72, perfusion_index=0.0)  # an object, not a perfused finger

COVER_GLASS_NA_PER_MA = 2.0  # light scattered back with no finger


def pulse_shape(phase: float) -> float:
    """Arterial blood volume over one beat, 0..1: quick systolic rise, slow fall, dicrotic wave."""
    if phase < 0.15:
        return math.sin(math.pi * phase / 0.3) ** 2
    tail = math.exp(-0.85 / 0.25)
    decay = (math.exp(-(phase - 0.15) / 0.25) - tail) / (1 - tail)
    dicrotic = 0.12 * math.exp(-(((phase - 0.45) / 0.05) ** 2))
    return decay + dicrotic


class Max30102Chip(Chip):
    """The part on the I2C bus at 0x57; its INT output drives board pin `int_pin`."""

    def __init__(
        self,
        *,
        int_pin: int | None = None,
        part_id: int = PART_ID,
        time_scale: float = 1.0,
        noise_counts: float = 3.0,
        seed: int = 30102,
        die_temperature: float = 31.25,
    ) -> None:
        self.i2c_address: int | None = ADDRESS
        self.int_pin = int_pin
        self.part_id = part_id
        self.time_scale = time_scale
        self.noise_counts = noise_counts
        self.die_temperature = die_temperature
        self.finger: Fingertip | None = None
        self.samples_pushed = 0
        self.samples_lost = 0
        self._rng = random.Random(seed)
        self._int_level = 1
        self.regs = bytearray(256)
        self._fifo: list[bytes] = []  # 32 slots, each one sample's bytes
        self._wr = 0  # FIFO_WR_PTR
        self._rd = 0  # FIFO_RD_PTR
        self._count = 0  # samples waiting (WR == RD means empty or full: the part knows which)
        self._ovf = 0  # OVF_COUNTER
        self._power_on()

    # --- faults and the resident -----------------------------------------------------------
    def place_finger(self, finger: Fingertip) -> None:
        with self._locked():
            self.finger = finger
            self._finger_at = self._sample_index

    def remove_finger(self) -> None:
        with self._locked():
            self.finger = None

    def unplug(self) -> None:
        """The part stops answering (a loose connector): every transaction is NACKed."""
        with self._locked():
            self.i2c_address = None

    def plug_in(self) -> None:
        """Connector back: the part powers up again with its power-on register values."""
        with self._locked():
            self.i2c_address = ADDRESS
            self._power_on()
            self._update_int()

    def _locked(self) -> AbstractContextManager[object]:
        """The board's bus lock (a test thread must not race the bus), or nothing before attach."""
        board = getattr(self, "board", None)
        return contextlib.nullcontext() if board is None else board.lock

    # --- power-on state ----------------------------------------------------------------------
    def _power_on(self) -> None:
        self.regs = bytearray(256)
        self.regs[REG_REV_ID] = REV_ID
        self.regs[REG_PART_ID] = self.part_id & 0xFF
        self.regs[REG_INT_STATUS_1] = INT_PWR_RDY
        self._reset_fifo()
        self._pointer = 0
        self._byte_in_sample = 0
        self._current = b""
        self._sample_index = 0
        self._finger_at = 0
        self._next_due: float | None = None
        self._temp_due: float | None = None

    def _soft_reset(self) -> None:
        """MODE_CONFIG.RESET: every register to its power-on value; PWR_RDY is not set by it."""
        self.regs[0x00:0xFE] = bytes(0xFE)
        self._reset_fifo()
        self._next_due = None
        self._temp_due = None

    def _reset_fifo(self) -> None:
        self._fifo = [bytes(6)] * FIFO_DEPTH
        self._wr = 0
        self._rd = 0
        self._count = 0
        self._ovf = 0

    # --- configuration decoded ------------------------------------------------------------
    @property
    def mode(self) -> int:
        return self.regs[REG_MODE_CONFIG] & 0x07

    @property
    def sampling(self) -> bool:
        return not self.regs[REG_MODE_CONFIG] & MODE_SHDN and self.mode in (
            MODE_HR,
            MODE_SPO2,
            MODE_MULTI_LED,
        )

    @property
    def fifo_rate(self) -> float:
        """Samples per second into the FIFO: SPO2_SR divided by the SMP_AVE averaging."""
        rate = SAMPLE_RATES[(self.regs[REG_SPO2_CONFIG] >> 2) & 0x07]
        return rate / (1 << min((self.regs[REG_FIFO_CONFIG] >> 5) & 0x07, 5))

    @property
    def bytes_per_sample(self) -> int:
        return 3 if self.mode == MODE_HR else 6

    def _counts(self, nanoamps: float) -> int:
        config = self.regs[REG_SPO2_CONFIG]
        lsb_na = ADC_RANGES_NA[(config >> 5) & 0x03] / (1 << 18)
        bits = RESOLUTION_BITS[config & 0x03]
        value = round(nanoamps / lsb_na + self._rng.gauss(0.0, self.noise_counts))
        value = max(0, min(FULL_SCALE, value))
        return value & ~((1 << (18 - bits)) - 1)  # left-justified: unused low bits read 0

    # --- the sample stream -----------------------------------------------------------------
    def _photocurrents(self, index: int) -> tuple[float, float]:
        red_ma = self.regs[REG_LED1_PA] * LED_MA_PER_STEP
        ir_ma = self.regs[REG_LED2_PA] * LED_MA_PER_STEP
        finger = self.finger
        glass_red = COVER_GLASS_NA_PER_MA * red_ma
        glass_ir = COVER_GLASS_NA_PER_MA * ir_ma
        if finger is None:
            return glass_red, glass_ir
        seconds = index / self.fifo_rate
        phase = (seconds * finger.pulse / 60.0) % 1.0
        volume = pulse_shape(phase)
        dip_ir = finger.perfusion_index / 100.0
        dip_red = dip_ir * finger.ratio
        red = finger.red_na_per_ma * red_ma * (1.0 - dip_red * volume)
        ir = finger.ir_na_per_ma * ir_ma * (1.0 - dip_ir * volume)
        # The fingertip settles onto the glass over 0.2 s.
        settle = min(1.0, (index - self._finger_at) / (0.2 * self.fifo_rate))
        return glass_red + settle * (red - glass_red), glass_ir + settle * (ir - glass_ir)

    def _push_sample(self) -> None:
        red_na, ir_na = self._photocurrents(self._sample_index)
        self._sample_index += 1
        red, ir = self._counts(red_na), self._counts(ir_na)
        if self.mode == MODE_HR:
            sample = red.to_bytes(3, "big")
        else:
            sample = red.to_bytes(3, "big") + ir.to_bytes(3, "big")
        self.regs[REG_INT_STATUS_1] |= INT_PPG_RDY
        if self._count == FIFO_DEPTH:
            if self.regs[REG_FIFO_CONFIG] & 0x10:  # FIFO_ROLLOVER_EN: overwrite the oldest
                self._rd = (self._rd + 1) % FIFO_DEPTH
                self._count -= 1
            else:
                self._ovf = min(self._ovf + 1, 0x1F)
                self.samples_lost += 1
                self._a_full_check()
                return
        self._fifo[self._wr] = sample
        self._wr = (self._wr + 1) % FIFO_DEPTH
        self._count += 1
        self.samples_pushed += 1
        self._a_full_check()

    def _a_full_check(self) -> None:
        if self._count >= FIFO_DEPTH - (self.regs[REG_FIFO_CONFIG] & 0x0F):
            self.regs[REG_INT_STATUS_1] |= INT_A_FULL

    @property
    def fifo_count(self) -> int:
        """Samples waiting in the FIFO (0: the firmware has popped everything it had counted)."""
        return self._count

    def tick(self, now: float) -> None:
        if self.i2c_address is None:
            return
        if self.regs[REG_TEMP_CONFIG] & 0x01:
            if self._temp_due is None:
                self._temp_due = now + TEMP_CONVERSION_S
            elif now >= self._temp_due:
                self._finish_temperature()
        if not self.sampling:
            self._next_due = None
            return
        period = 1.0 / (self.fifo_rate * self.time_scale)
        if self._next_due is None:
            self._next_due = now + period
        pushed = 0
        while now >= self._next_due and pushed < 4 * FIFO_DEPTH * 100:
            self._push_sample()
            self._next_due += period
            pushed += 1
        if pushed:
            self._update_int()

    def _finish_temperature(self) -> None:
        whole = math.floor(self.die_temperature)
        self.regs[REG_TEMP_INT] = whole & 0xFF  # two's complement degrees
        self.regs[REG_TEMP_FRAC] = round((self.die_temperature - whole) / 0.0625) & 0x0F
        self.regs[REG_TEMP_CONFIG] &= ~0x01
        self.regs[REG_INT_STATUS_2] |= INT_DIE_TEMP_RDY
        self._temp_due = None
        self._update_int()

    # --- INT pin ---------------------------------------------------------------------------
    def attach(self, board: SimulatedBoard) -> None:
        super().attach(board)
        self._int_level = -1
        self._update_int()

    def _update_int(self) -> None:
        pending = (self.regs[REG_INT_STATUS_1] & (self.regs[REG_INT_ENABLE_1] | INT_PWR_RDY)) or (
            self.regs[REG_INT_STATUS_2] & self.regs[REG_INT_ENABLE_2]
        )
        level = 0 if pending else 1  # open drain, active low
        if level != self._int_level and self.int_pin is not None and hasattr(self, "board"):
            self._int_level = level
            self.board.drive_pin(self.int_pin, level)

    # --- I2C -------------------------------------------------------------------------------
    def i2c_write(self, data: bytes) -> None:
        if not data:
            return
        self._pointer = data[0]
        self._byte_in_sample = 0
        for value in data[1:]:
            self._write_register(self._pointer, value)
            if self._pointer != REG_FIFO_DATA:
                self._pointer = (self._pointer + 1) & 0xFF
        self._update_int()

    def _write_register(self, register: int, value: int) -> None:
        if register == REG_MODE_CONFIG:
            was_sampling = self.sampling
            if value & MODE_RESET:
                self._soft_reset()  # RESET clears itself when done
                return
            self.regs[REG_MODE_CONFIG] = value & 0xC7
            if self.sampling and not was_sampling:
                self._next_due = None
        elif register in (REG_FIFO_WR_PTR, REG_OVF_COUNTER, REG_FIFO_RD_PTR):
            value &= 0x1F
            if register == REG_FIFO_WR_PTR:
                self._wr = value
            elif register == REG_FIFO_RD_PTR:
                self._rd = value
            else:
                self._ovf = value
            self._count = (self._wr - self._rd) % FIFO_DEPTH
        elif register == REG_TEMP_CONFIG:
            self.regs[register] = value & 0x01  # TEMP_EN: the next tick starts the conversion
        elif register in _WRITABLE:
            self.regs[register] = value & _WRITABLE[register]
        # read-only and reserved registers ignore writes

    def i2c_read(self, count: int) -> bytes:
        out = bytearray()
        for _ in range(count):
            register = self._pointer
            if register == REG_FIFO_DATA:
                out.append(self._read_fifo_byte())
                continue
            out.append(self._read_register(register))
            self._pointer = (register + 1) & 0xFF
        self._update_int()
        return bytes(out)

    def _read_register(self, register: int) -> int:
        if register == REG_FIFO_WR_PTR:
            return self._wr
        if register == REG_OVF_COUNTER:
            return self._ovf
        if register == REG_FIFO_RD_PTR:
            return self._rd
        value = self.regs[register]
        if register in (REG_INT_STATUS_1, REG_INT_STATUS_2):
            self.regs[register] = 0  # flags clear on read
        return value

    def _read_fifo_byte(self) -> int:
        if self._byte_in_sample == 0:
            # The read pointer advances on the first byte of each sample.
            if self._count:
                self._current = self._fifo[self._rd]
                self._rd = (self._rd + 1) % FIFO_DEPTH
                self._count -= 1
                self._ovf = 0
            else:
                self._current = bytes(6)  # the datasheet leaves an empty read undefined
            self.regs[REG_INT_STATUS_1] &= ~INT_PPG_RDY
        value = self._current[self._byte_in_sample] if self._byte_in_sample < len(self._current) else 0
        self._byte_in_sample = (self._byte_in_sample + 1) % self.bytes_per_sample
        return value
