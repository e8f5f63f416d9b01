"""TI ADS1292R ECG analog front end, modelled at the level of its SPI commands and registers.

Why a chip model and not a sample generator: the ECG firmware (firmware/ecg_ads1292r.py) must
meet the part as it is on the board. The model therefore keeps the datasheet's behaviour that
firmware gets wrong in practice:

- it powers up in RDATAC mode, where RREG/WREG are ignored until SDATAC;
- commands are single bytes, RREG/WREG take a second byte (count - 1) and the data follow in the
  same chip-select frame; raising CS resets the serial interface;
- in RDATAC mode every conversion makes a 72-bit frame (24 status bits
  ``1100 + LOFF_STAT[4:0] + GPIO[1:0] + 13 zeros``, then CH1 and CH2 as 24-bit two's complement,
  MSB first) and pulls DRDY low; DRDY returns high on the first SCLK of the read;
- a frame not read before the next conversion is overwritten: that sample is lost, and counted;
- lead-off comparators report only when powered (CONFIG2.PDB_LOFF_COMP) and sensed (LOFF_SENS,
  RLD_SENS.RLD_LOFF_SENS); an electrode off saturates its channel;
- codes follow the PGA gain (CHnSET[6:4]) and the reference (CONFIG2.VREF_4V: 2.42 V or 4.033 V).

Conversions follow the data rate (CONFIG1.DR, 125 SPS x 2^DR) on a fixed time grid from START.
Each grid slot has a sample index (slot 0 is the first conversion after the first START). A slot
is either converted or skipped: skipped on purpose (`drop_samples`) or while DRDY is stalled.
Firmware sees skipped slots as longer DRDY gaps.

With `grace_s` = 0 the model is the datasheet's part: a frame not read by the next slot is
overwritten (lost, counted), and when this simulator's own ticker falls more than a period
behind, the slots it missed are skipped (counted as ``late``: a limit of the simulation).
On the unix port, though, the firmware's "interrupt" runs only when its process is scheduled,
and a busy CI host can hold it off for several milliseconds, which a board's interrupt
controller never does. With `grace_s` > 0 the part waits up to that long for a frame to be read
before converting the next slot (conversions then catch up, one per tick, keeping their slot
indices), so host stalls shorten no recording; frames read after their successor's slot time
are still counted (``late_reads``: a real part would have lost them) and a frame unread for
longer than the grace is lost as before.

The signal is a synthetic ECG per resident (P-QRS-T complexes as sums of Gaussians, lead I and
lead II amplitudes in microvolts, respiration baseline wander, small noise), so tests can compare
what the firmware streamed with what the chip converted, sample by sample.

Board wiring defaults match firmware/ecg_app.py: SPI bus 1, CS on pin 5, DRDY on pin 4.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import multiprocessing
import os
import random
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

from simulators.bus_server import Chip, SimulatedBoard

# SPI opcodes (datasheet, "SPI Command Definitions").
WAKEUP = 0x02
STANDBY = 0x04
RESET = 0x06
START = 0x08
STOP = 0x0A
RDATAC = 0x10
SDATAC = 0x11
RDATA = 0x12
OFFSETCAL = 0x1A
RREG = 0x20
WREG = 0x40

# Registers.
REG_ID = 0x00
REG_CONFIG1 = 0x01
REG_CONFIG2 = 0x02
REG_LOFF = 0x03
REG_CH1SET = 0x04
REG_CH2SET = 0x05
REG_RLD_SENS = 0x06
REG_LOFF_SENS = 0x07
REG_LOFF_STAT = 0x08
REG_RESP1 = 0x09
REG_RESP2 = 0x0A
REG_GPIO = 0x0B
REGISTER_COUNT = 12

ID_ADS1292R = 0x73  # REV_ID 011, bit 4 set, DEV_ID 11
ID_ADS1292 = 0x53  # the same die without respiration: a wrong part for our board

# Values after power-up or RESET (datasheet register map).
RESET_VALUES = bytes((ID_ADS1292R, 0x02, 0x80, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x0C))

CONFIG1_DR_MASK = 0x07
CONFIG2_PDB_LOFF_COMP = 0x40
CONFIG2_VREF_4V = 0x10
CHSET_PD = 0x80
CHSET_GAIN_SHIFT = 4
CHSET_MUX_MASK = 0x0F
MUX_NORMAL = 0x0
MUX_SHORTED = 0x1
RLD_SENS_LOFF = 0x10
LOFF_STAT_CLK_DIV = 0x40  # the only writable bit of LOFF_STAT

# LOFF_STAT bits (also their positions in LOFF_SENS for the four inputs).
IN1P_OFF = 0x01
IN1N_OFF = 0x02
IN2P_OFF = 0x04
IN2N_OFF = 0x08
RLD_OFF = 0x10

GAINS = {0: 6, 1: 1, 2: 2, 3: 3, 4: 4, 5: 8, 6: 12}
VREF_V = 2.42
VREF_4V_V = 4.033
CODE_MAX = 0x7FFFFF
CODE_MIN = -0x800000
SETTLE_PERIODS = 4  # first DRDY after START: the digital filter settles first

# Electrodes of the 3-lead + right-leg-drive set on this board: CH1 = IN1P - IN1N = LA - RA
# (lead I), CH2 = IN2P - IN2N = LL - RA (lead II); RA goes to both negative inputs.
ELECTRODE_BITS = {"LA": IN1P_OFF, "RA": IN1N_OFF | IN2N_OFF, "LL": IN2P_OFF, "RL": RLD_OFF}
MAINS_HZ = 50.0  # China's grid: what an unbiased (RL off) body picks up


def resolution_uv(gain: int = 6, vref_v: float = VREF_V) -> float:
    """Microvolts per code: full scale is +/-VREF/gain over 2^23 codes."""
    return vref_v / gain / 2**23 * 1e6


# --- the signal -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wave:
    """One Gaussian component of the P-QRS-T complex, centred relative to the R peak."""

    offset_s: float
    width_s: float
    lead_i_uv: float
    lead_ii_uv: float
    scales_with_qt: bool = False  # the T wave moves with the RR interval (Bazett)


# Typical adult complex: R about 1.2 mV in lead II, PR 160 ms, QRS 90 ms, QT about 400 ms at
# 70 bpm. Lead I is smaller with a normal axis (+60 degrees).
SINUS_COMPLEX = (
    Wave(-0.170, 0.022, 50.0, 150.0),  # P
    Wave(-0.030, 0.008, -40.0, -110.0),  # Q
    Wave(0.000, 0.010, 650.0, 1200.0),  # R
    Wave(0.032, 0.010, -110.0, -260.0),  # S
    Wave(0.270, 0.050, 160.0, 320.0, scales_with_qt=True),  # T
)


@dataclass(frozen=True, slots=True)
class EcgResident:
    """Rhythm of one simulated resident."""

    name: str
    heart_rate_bpm: float
    rr_variability: float  # standard deviation of RR as a fraction of the mean RR
    p_waves: bool = True
    fibrillation_uv: float = 0.0  # atrial fibrillation: chaotic f-waves instead of P waves
    seed: int = 1


RESIDENTS = {
    "normal-sinus": EcgResident("normal-sinus", heart_rate_bpm=70.0, rr_variability=0.03, seed=70),
    "atrial-fibrillation": EcgResident(
        "atrial-fibrillation",
        heart_rate_bpm=96.0,
        rr_variability=0.22,
        p_waves=False,
        fibrillation_uv=45.0,
        seed=96,
    ),
    "bradycardia": EcgResident("bradycardia", heart_rate_bpm=48.0, rr_variability=0.04, seed=48),
}


def _noise(seed: int, index: int) -> float:
    """Deterministic noise in about [-1, 1] (a sum of uniforms: roughly Gaussian, sd 0.5)."""
    value = (index * 0x9E3779B97F4A7C15 + seed * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    total = 0.0
    for _ in range(3):
        value ^= value >> 31
        value = (value * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        total += (value >> 11) / float(1 << 53)
    return (total - 1.5) / 0.75


class EcgSignal:
    """Lead I and lead II of one resident in microvolts, as a pure function of time."""

    def __init__(self, resident: EcgResident) -> None:
        self.resident = resident
        self._rng = random.Random(resident.seed)
        self._beats: list[float] = [0.4]  # R-peak times in seconds
        self._rr: list[float] = []

    def _next_rr(self) -> float:
        mean = 60.0 / self.resident.heart_rate_bpm
        rr = self._rng.gauss(mean, mean * self.resident.rr_variability)
        return min(max(rr, 0.33), 1.8)

    def _extend(self, until_s: float) -> None:
        while self._beats[-1] < until_s:
            rr = self._next_rr()
            self._rr.append(rr)
            self._beats.append(self._beats[-1] + rr)

    def rr_intervals(self, until_s: float) -> list[float]:
        """RR intervals (s) of the beats up to until_s: what an analysis should find."""
        self._extend(until_s)
        return [rr for rr, beat in zip(self._rr, self._beats[1:], strict=False) if beat <= until_s]

    def microvolts(self, t: float) -> tuple[float, float]:
        self._extend(t + 2.0)
        resident = self.resident
        lead_i = lead_ii = 0.0
        index = bisect.bisect_right(self._beats, t)
        for beat in range(max(index - 2, 0), min(index + 2, len(self._beats))):
            r_peak = self._beats[beat]
            rr = self._rr[beat - 1] if beat > 0 else 60.0 / resident.heart_rate_bpm
            for wave in SINUS_COMPLEX:
                if wave.offset_s < -0.1 and not resident.p_waves:
                    continue
                offset = wave.offset_s * math.sqrt(rr) if wave.scales_with_qt else wave.offset_s
                x = (t - r_peak - offset) / wave.width_s
                if -6.0 < x < 6.0:
                    weight = math.exp(-0.5 * x * x)
                    lead_i += wave.lead_i_uv * weight
                    lead_ii += wave.lead_ii_uv * weight
        # Respiration moves the baseline (0.25 Hz, tens of microvolts).
        breath = math.sin(2 * math.pi * 0.25 * t)
        lead_i += 25.0 * breath
        lead_ii += 40.0 * breath
        if resident.fibrillation_uv:
            f_wave = resident.fibrillation_uv * (
                math.sin(2 * math.pi * 6.1 * t) * 0.6 + math.sin(2 * math.pi * 7.7 * t + 1.3) * 0.4
            )
            lead_i += 0.5 * f_wave
            lead_ii += f_wave
        return lead_i, lead_ii


# --- the part -----------------------------------------------------------------------------------


@dataclass
class AdsCounters:
    produced: int = 0  # conversions made (each pulsed DRDY)
    read: int = 0  # frames the firmware clocked out completely
    lost: int = 0  # frames overwritten by the next conversion before being read
    dropped: int = 0  # slots skipped on purpose (drop_samples)
    stalled: int = 0  # slots that passed while DRDY was stalled
    late: int = 0  # slots skipped because the simulator's ticker ran more than a period late
    late_reads: int = 0  # frames read after the next slot's time: lost on a real part
    drdy_lag_max_s: float = 0.0  # worst delay of a DRDY edge behind its slot time (the simulator's)
    read_latency_max_s: float = 0.0  # worst time from DRDY to the frame's last byte (the firmware's)


@dataclass
class AdsSnapshot:
    """A consistent copy of what the chip did, for tests to compare against."""

    counters: AdsCounters
    samples: dict[int, tuple[int, int, int]]  # slot index -> (LOFF_STAT bits, ch1 code, ch2 code)
    lost: list[int]
    skipped: dict[int, str]  # slots not converted -> "dropped", "stalled" or "late"
    registers: bytes


_IDLE = 0
_RREG_COUNT = 1
_WREG_COUNT = 2
_WREG_DATA = 3
_IGNORE = 4  # RREG/WREG in RDATAC mode: the part ignores the command and its bytes


class Ads1292r(Chip):
    """The ADS1292R on `spi_bus` with `chip_select`; DRDY is driven on `drdy_pin`."""

    def __init__(
        self,
        *,
        resident: EcgResident = RESIDENTS["normal-sinus"],
        spi_bus: int = 1,
        chip_select: int = 5,
        drdy_pin: int = 4,
        device_id: int = ID_ADS1292R,  # a wrong part (e.g. ID_ADS1292), a dead bus (0x00)
        present: bool = True,  # False: MISO is not driven (no part, or a broken wire): reads 0xFF
        grace_s: float = 0.0,  # > 0: wait this long for an unread frame before the next conversion
        record_limit: int = 150_000,  # slots remembered for snapshot() (5 minutes at 500 SPS)
    ) -> None:
        self.resident = resident
        self.spi_bus: int | None = spi_bus
        self.chip_select: int | None = chip_select
        self.drdy_pin = drdy_pin
        self.device_id = device_id
        self.present = present
        self.grace_s = grace_s
        self.record_limit = record_limit
        self.counters = AdsCounters()
        self.signal = EcgSignal(resident)
        self.regs = bytearray(RESET_VALUES)
        self.regs[REG_ID] = device_id
        self._rdatac = True  # power-up default
        self._running = False
        self._epoch: float | None = None  # time of slot 0
        self._phase_t0 = 0.0  # time of the first conversion of the current run
        self._phase_slot0 = 0
        self._last_slot = -1
        self._frame = bytearray(9)
        self._frame_ready = False
        self._frame_read = True
        self._frame_slot = -1
        self._frame_t = 0.0
        self._frame_pos = 0
        self._out = bytearray()  # RREG / RDATA bytes waiting to be clocked out
        self._state = _IDLE
        self._addr = 0
        self._left = 0
        self._electrodes_off: frozenset[str] = frozenset()
        self._stalled = False
        self._drop = 0
        self._samples: dict[int, tuple[int, int, int]] = {}
        self._lost: list[int] = []
        self._skipped: dict[int, str] = {}

    # faults and observation (called by tests; thread-safe against the bus) -------------------
    def set_electrodes_off(self, *names: str) -> None:
        """Detach electrodes ("RA", "LA", "LL", "RL"); no names: all attached again."""
        unknown = set(names) - ELECTRODE_BITS.keys()
        if unknown:
            raise ValueError(f"unknown electrodes {sorted(unknown)}; known: {sorted(ELECTRODE_BITS)}")
        with self.board.lock:
            self._electrodes_off = frozenset(names)

    def set_present(self, present: bool) -> None:
        """Break (or mend) the MISO wire: the part runs on, DRDY too, the MCU reads 0xFF."""
        with self.board.lock:
            self.present = present

    def set_stalled(self, stalled: bool) -> None:
        """Stop (or resume) conversions and DRDY without any command: a stuck clock or a brown-out."""
        with self.board.lock:
            self._stalled = stalled

    def drop_samples(self, count: int) -> None:
        """Skip the next `count` conversions: DRDY stays quiet for that long (a gap on purpose)."""
        with self.board.lock:
            self._drop += count

    def set_grace(self, grace_s: float) -> None:
        """Change the grace from now on: 0 makes the part the datasheet's for a stretch of a test."""
        if grace_s < 0:
            raise ValueError(f"grace must be >= 0 s, got {grace_s}")
        with self.board.lock:
            self.grace_s = grace_s

    def snapshot(self) -> AdsSnapshot:
        with self.board.lock:
            return AdsSnapshot(
                counters=replace(self.counters),
                samples=dict(self._samples),
                lost=list(self._lost),
                skipped=dict(self._skipped),
                registers=bytes(self.regs),
            )

    # configuration as the part sees it ---------------------------------------------------------
    @property
    def sample_rate_hz(self) -> int:
        return 125 << min(self.regs[REG_CONFIG1] & CONFIG1_DR_MASK, 6)

    def _vref(self) -> float:
        return VREF_4V_V if self.regs[REG_CONFIG2] & CONFIG2_VREF_4V else VREF_V

    def _lead_off_bits(self) -> int:
        if not self.regs[REG_CONFIG2] & CONFIG2_PDB_LOFF_COMP:
            return 0  # comparators powered down: no lead-off status
        bits = 0
        for name in self._electrodes_off:
            bits |= ELECTRODE_BITS[name]
        sensed = self.regs[REG_LOFF_SENS] & 0x0F
        if self.regs[REG_RLD_SENS] & RLD_SENS_LOFF:
            sensed |= RLD_OFF
        return bits & sensed

    def _code(self, register: int, microvolts: float, electrode_off: bool) -> int:
        setting = self.regs[register]
        if setting & CHSET_PD:
            return 0  # powered-down channels read 0, in their place in the frame
        mux = setting & CHSET_MUX_MASK
        if mux == MUX_SHORTED:
            microvolts = 0.0
        elif mux != MUX_NORMAL:
            return 0  # test signal, temperature and supply inputs are not modelled
        elif electrode_off:
            return CODE_MAX  # DC lead-off current pulls the open input to the rail
        gain = GAINS.get((setting >> CHSET_GAIN_SHIFT) & 0x07, 6)
        code = round(microvolts * 1e-6 * gain / self._vref() * 2**23)
        return min(max(code, CODE_MIN), CODE_MAX)

    # conversions ---------------------------------------------------------------------------
    def _start(self, now: float) -> None:
        period = 1.0 / self.sample_rate_hz
        self._phase_t0 = now + SETTLE_PERIODS * period
        if self._epoch is None:
            self._epoch = self._phase_t0
        self._phase_slot0 = round((self._phase_t0 - self._epoch) / period)
        self._last_slot = self._phase_slot0 - 1
        self._running = True

    def _slot_time(self, slot: int) -> float:
        return self._phase_t0 + (slot - self._phase_slot0) / self.sample_rate_hz

    def tick(self, now: float) -> None:
        if not self._running or now < self._phase_t0:
            return
        period = 1.0 / self.sample_rate_hz
        due = self._phase_slot0 + int((now - self._phase_t0) / period)
        if due <= self._last_slot:
            return
        if self.grace_s > 0:
            self._catch_up(now, due, period)
            return
        for slot in range(self._last_slot + 1, due):  # passed while this ticker was not running
            if self._stalled:
                self.counters.stalled += 1
                self._remember(self._skipped, slot, "stalled")
            else:
                self.counters.late += 1
                self._remember(self._skipped, slot, "late")
        self._last_slot = due
        if self._skip(due):
            return
        self._convert(due, due * period)  # the signal is a function of the slot, not of jitter

    def _catch_up(self, now: float, due: int, period: float) -> None:
        """Grace mode: slots in order, at most one conversion per tick, none over an unread frame."""
        while self._last_slot < due:
            slot = self._last_slot + 1
            if self._stalled or self._drop:
                self._last_slot = slot
                self._skip(slot)
                continue
            unread = self._frame_ready and not self._frame_read
            if unread and now < self._slot_time(slot) + self.grace_s:
                return  # the firmware is late: wait for its read
            self._last_slot = slot
            self._convert(slot, slot * period)
            return

    def _skip(self, slot: int) -> bool:
        """Skip `slot` when DRDY is stalled or a drop was asked for; True when skipped."""
        if self._stalled:
            self.counters.stalled += 1
            self._remember(self._skipped, slot, "stalled")
            return True
        if self._drop:
            self._drop -= 1
            self.counters.dropped += 1
            self._remember(self._skipped, slot, "dropped")
            return True
        return False

    def _remember(self, record: dict[int, Any], slot: int, value: Any) -> None:
        record[slot] = value
        if len(record) > self.record_limit:
            del record[next(iter(record))]  # the oldest: a long demo run stays small

    def _convert(self, slot: int, t: float) -> None:
        if self._frame_ready and not self._frame_read:
            self.counters.lost += 1
            self._lost.append(self._frame_slot)
            if len(self._lost) > self.record_limit:
                del self._lost[0]
        loff = self._lead_off_bits()
        lead_i, lead_ii = self.signal.microvolts(t)
        noise_i = 6.0 * _noise(self.resident.seed, 2 * slot)
        noise_ii = 6.0 * _noise(self.resident.seed, 2 * slot + 1)
        lead_i += noise_i
        lead_ii += noise_ii
        if "RL" in self._electrodes_off:
            hum = 1500.0 * math.sin(2 * math.pi * MAINS_HZ * t)
            lead_i += hum
            lead_ii += hum
        ch1 = self._code(REG_CH1SET, lead_i, bool(loff & (IN1P_OFF | IN1N_OFF)))
        ch2 = self._code(REG_CH2SET, lead_ii, bool(loff & (IN2P_OFF | IN2N_OFF)))
        gpio = self.regs[REG_GPIO] & 0x03
        status = 0xC00000 | (loff << 15) | (gpio << 13)
        self._frame[0:3] = status.to_bytes(3, "big")
        self._frame[3:6] = (ch1 & 0xFFFFFF).to_bytes(3, "big")
        self._frame[6:9] = (ch2 & 0xFFFFFF).to_bytes(3, "big")
        self._frame_ready = True
        self._frame_read = False
        self._frame_slot = slot
        self._frame_t = time.monotonic()
        lag = self._frame_t - self._slot_time(slot)
        self.counters.drdy_lag_max_s = max(self.counters.drdy_lag_max_s, lag)
        self._frame_pos = 0
        self._remember(self._samples, slot, (loff, ch1, ch2))
        self.counters.produced += 1
        # DRDY falls. If the last frame was never read DRDY is still low: the part pulses it high
        # just before the new data, so the firmware sees a falling edge either way.
        if self.board.pins.get(self.drdy_pin, 1):
            self.board.drive_pin(self.drdy_pin, 0)
        else:
            self.board.pulse_pin(self.drdy_pin)

    def _release_drdy(self) -> None:
        # DRDY returns high on the first SCLK of the read. Firmware triggers on falling edges only,
        # so this rising edge is not sent as an event (the bus would report every change).
        self.board.pins[self.drdy_pin] = 1

    # SPI -----------------------------------------------------------------------------------
    def attach(self, board: SimulatedBoard) -> None:
        super().attach(board)
        board.drive_pin(self.drdy_pin, 1)

    def pin_written(self, pin: int, value: int) -> None:
        if pin != self.chip_select:
            return
        if value:  # CS high resets the serial interface
            self._state = _IDLE
            self._out = bytearray()
        else:
            self._frame_pos = 0

    def spi_transfer(self, data: bytes) -> bytes:
        dout = bytes(self._clock(byte) for byte in data)
        return dout if self.present else b"\xff" * len(data)  # MISO not driven: it floats high

    def _clock(self, din: int) -> int:
        """One byte on the wire: DOUT shifts out what was ready, then DIN is decoded."""
        if self._out:
            dout = self._out.pop(0)
        elif self._rdatac and self._frame_ready:
            dout = self._frame[self._frame_pos % 9]  # past the end the frame is read again
            if self._frame_pos == 0:
                self._release_drdy()
            self._frame_pos += 1
            if self._frame_pos == 9 and not self._frame_read:
                self._frame_read = True
                self.counters.read += 1
                read_at = time.monotonic()
                latency = read_at - self._frame_t
                self.counters.read_latency_max_s = max(self.counters.read_latency_max_s, latency)
                if read_at > self._slot_time(self._frame_slot + 1):
                    self.counters.late_reads += 1
        else:
            dout = 0x00
        self._decode(din)
        return dout

    def _decode(self, din: int) -> None:
        state = self._state
        if state == _RREG_COUNT:
            count = (din & 0x1F) + 1
            self._out.extend(self._read_register(self._addr + i) for i in range(count))
            self._state = _IDLE
        elif state == _WREG_COUNT:
            self._left = (din & 0x1F) + 1
            self._state = _WREG_DATA
        elif state == _WREG_DATA:
            self._write_register(self._addr, din)
            self._addr += 1
            self._left -= 1
            if not self._left:
                self._state = _IDLE
        elif state == _IGNORE:
            self._state = _IDLE  # the count byte of an ignored RREG/WREG
        else:
            self._command(din)

    def _command(self, opcode: int) -> None:
        now = time.monotonic()
        if opcode & 0xE0 in (RREG, WREG):
            self._addr = opcode & 0x1F
            if self._rdatac:
                self._state = _IGNORE
            else:
                self._state = _RREG_COUNT if opcode & 0xE0 == RREG else _WREG_COUNT
        elif opcode == RESET:
            self.regs[:] = RESET_VALUES
            self.regs[REG_ID] = self.device_id
            self._rdatac = True
            self._running = False
            self._frame_ready = False
            self._frame_read = True
        elif opcode == START:
            self._start(now)
        elif opcode in (STOP, STANDBY):
            self._running = False
        elif opcode == WAKEUP:
            pass
        elif opcode == RDATAC:
            self._rdatac = True
        elif opcode == SDATAC:
            self._rdatac = False
        elif opcode == RDATA and self._frame_ready:
            self._out.extend(self._frame)
            self._release_drdy()
            if not self._frame_read:
                self._frame_read = True
                self.counters.read += 1
        # 0x00 (DIN held low while reading) and OFFSETCAL need nothing here

    def _read_register(self, address: int) -> int:
        if address >= REGISTER_COUNT:
            return 0x00
        if address == REG_LOFF_STAT:
            return (self.regs[REG_LOFF_STAT] & LOFF_STAT_CLK_DIV) | self._lead_off_bits()
        return self.regs[address]

    def _write_register(self, address: int, value: int) -> None:
        if address >= REGISTER_COUNT or address == REG_ID:
            return  # read-only
        if address == REG_LOFF_STAT:
            value &= LOFF_STAT_CLK_DIV
        self.regs[address] = value


# --- the part on a board of its own, in a process of its own --------------------------------------

_CHIP_METHODS = frozenset(
    {"set_electrodes_off", "set_present", "set_stalled", "drop_samples", "set_grace", "snapshot"}
)
_BOARD_METHODS = frozenset({"hold_edges"})


def _serve_board(conn: Connection, path: str, realtime: bool, options: dict[str, Any]) -> None:
    granted = False
    if realtime:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
            granted = True
        except (PermissionError, AttributeError, OSError):
            granted = False
    resident = RESIDENTS[options.pop("resident", "normal-sinus")]
    chip = Ads1292r(resident=resident, **options)
    board = SimulatedBoard(path, chips=[chip])
    conn.send(("up", granted))
    try:
        while True:
            try:
                name, args = conn.recv()
            except EOFError:
                return
            if name == "close":
                conn.send(("ok", None))
                return
            target = chip if name in _CHIP_METHODS else board if name in _BOARD_METHODS else None
            if target is None:
                conn.send(("error", f"no such method {name!r}"))
                continue
            conn.send(("ok", getattr(target, name)(*args)))
    finally:
        board.close()


REALTIME_PRIORITY = 20


class AdsBoardProcess:
    """An ADS1292R on a simulated board, served from a process of its own.

    Why: the part gives firmware one sample period (2 ms at 500 SPS) to read each frame. In the
    test's process the model would share the GIL with the serial cable and the test's decoding,
    and the host's scheduler would decide which samples are lost. In a process of its own, at
    real-time priority where the OS allows it (`realtime_granted`), its DRDY timing is the
    part's. Faults and snapshots are forwarded to the model over a pipe.
    """

    def __init__(self, path: str, *, realtime: bool = True, **options: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve_board, args=(child, path, realtime, options), name="ads1292r-board", daemon=True
        )
        self._process.start()
        child.close()
        try:
            if not self._conn.poll(30):
                raise TimeoutError("simulated ADS1292R board did not come up within 30 s")
            _, granted = self._conn.recv()
            self.realtime_granted = bool(granted)
        except (EOFError, TimeoutError) as exc:
            self._process.kill()
            raise RuntimeError(f"simulated ADS1292R board failed to start ({exc!r}); see its stderr") from exc
        self.path = path

    def _call(self, name: str, *args: Any) -> Any:
        self._conn.send((name, args))
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(value)
        return value

    def set_electrodes_off(self, *names: str) -> None:
        self._call("set_electrodes_off", *names)

    def set_present(self, present: bool) -> None:
        self._call("set_present", present)

    def set_stalled(self, stalled: bool) -> None:
        self._call("set_stalled", stalled)

    def drop_samples(self, count: int) -> None:
        self._call("drop_samples", count)

    def set_grace(self, grace_s: float) -> None:
        self._call("set_grace", grace_s)

    def hold_edges(self, seconds: float) -> None:
        """The board delivers no DRDY edge for `seconds` (see SimulatedBoard.hold_edges)."""
        self._call("hold_edges", seconds)

    def snapshot(self) -> AdsSnapshot:
        return self._call("snapshot")  # type: ignore[no-any-return]

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self._call("close")
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
        self._conn.close()
