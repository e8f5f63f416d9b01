"""HX711 24-bit load-cell ADC on a bathroom-scale platform: what firmware/weight_hx711.py clocks.

The model follows the datasheet's serial interface (Avia Semiconductor HX711, "Serial
Interface" and "Power down"):

- A conversion completes `rate_hz` times a second (10 SPS, RATE pin low). DOUT is high until one
  is ready, then low. The output register does not change while a word is being shifted out.
- Each PD_SCK rising edge puts the next bit on DOUT, most significant first; after 24 bits the
  25th rising edge drives DOUT high. 25/26/27 pulses select channel A gain 128 / channel B gain
  32 / channel A gain 64 for the next conversion.
- PD_SCK high for longer than the power-down threshold powers the chip down (DOUT high); PD_SCK
  low again resets it to channel A gain 128, and the first result comes after `settling_s`
  (400 ms at 10 SPS). The datasheet's threshold is 60 us; here every pin write is a socket round
  trip of about 0.1 ms, so the threshold is stretched to `power_down_after_s` (50 ms) -- an
  ordinary read never trips it, a deliberate reset (PD_SCK held high) does.
- Inputs beyond full scale saturate at 0x7FFFFF / 0x800000.

The platform: four half-bridge cells, 1 mV/V at 200 kg on ~4.3 V excitation, gain 128, which
is about 10 740 counts per kg on top of a zero offset (dead load + bridge imbalance), with
~20 counts of noise (the part's ~50 nV input noise at 10 SPS). A resident steps on (the load
wobbles while they settle, then sways a few tens of grams), keeps shifting from foot to foot
(`moving`: the load alternates +- `move_kg` from one word the firmware reads to the next -- a
resident rocking at half the rate the board samples, tied to the reads rather than the clock so
that the median of an even window is the weight exactly, whatever the timing), or steps off.

Faults: DOUT stuck high (chip unpowered or its DOUT line open: never ready), DOUT stuck low
(line shorted to ground), and the input saturated high or low (an open load-cell wire).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import Literal

from simulators.bus_server import Chip

Fault = Literal["stuck_high", "stuck_low", "saturated_high", "saturated_low"]

RAW_MAX = 0x7FFFFF
RAW_MIN = -0x800000
_GAIN_BY_PULSES = {25: ("A", 128), 26: ("B", 32), 27: ("A", 64)}


@dataclass
class Hx711(Chip):
    sck_pin: int = 5
    dout_pin: int = 4
    rate_hz: float = 10.0
    settling_s: float = 0.4
    power_down_after_s: float = 0.05
    counts_per_kg: float = 10_740.0
    zero_counts: int = 84_000
    noise_counts: float = 20.0
    sway_kg: float = 0.02
    settle_s: float = 0.3
    move_kg: float = 1.5
    seed: int = 7
    # What tests observe.
    conversions: int = 0
    resets: int = 0
    reads: int = 0
    fault: Fault | None = None
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._weight_kg = 0.0
        self._moving = False
        self._on_at = 0.0
        self._next_conversion: float | None = None
        self._data = 0
        self._ready = False
        self._pulses = 0
        self._input = _GAIN_BY_PULSES[25]
        self._sck_high_since: float | None = None
        self._powered_down = False

    # what a resident does -------------------------------------------------------------------
    def step_on(self, kg: float, *, moving: bool = False) -> None:
        with self._guard():
            self._weight_kg = kg
            self._moving = moving
            self._on_at = time.monotonic()

    def step_off(self) -> None:
        with self._guard():
            self._weight_kg = 0.0
            self._moving = False

    def set_fault(self, fault: Fault | None) -> None:
        with self._guard():
            self.fault = fault
            if fault in ("stuck_high", "stuck_low") and getattr(self, "board", None) is not None:
                self._dout(1)  # forced to the stuck level

    def _guard(self) -> contextlib.AbstractContextManager[object]:
        """The bus lock once on a board (ticks and pin writes run under it); nothing before."""
        board = getattr(self, "board", None)
        return board.lock if board is not None else contextlib.nullcontext()

    # the part ---------------------------------------------------------------------------------
    def _dout(self, level: int) -> None:
        if self.fault == "stuck_high":
            level = 1
        elif self.fault == "stuck_low":
            level = 0
        self.board.drive_pin(self.dout_pin, level)

    def _load_kg(self, now: float) -> float:
        if self._weight_kg == 0.0:
            return 0.0
        if self._moving:  # alternates between the words the firmware reads (see the docstring)
            return self._weight_kg + (self.move_kg if self.reads % 2 else -self.move_kg)
        since = now - self._on_at
        if since < self.settle_s:  # the platform rocks while the resident finds their balance
            decay = 1.0 - since / self.settle_s
            return self._weight_kg * (1.0 + 0.2 * decay * math.sin(2 * math.pi * 3.0 * since))
        return self._weight_kg + self.sway_kg * math.sin(2 * math.pi * 0.7 * since)

    def _convert(self, now: float) -> None:
        if 0 < self._pulses < 25:
            return  # a word is being shifted out: the output register holds still
        if self._pulses:
            self._input = _GAIN_BY_PULSES[min(self._pulses, 27)]
            self._pulses = 0
        channel, gain = self._input
        if channel == "B":
            counts = self._rng.gauss(0.0, self.noise_counts)  # nothing wired to channel B
        else:
            bridge = self.zero_counts + self._load_kg(now) * self.counts_per_kg
            counts = bridge * gain / 128 + self._rng.gauss(0.0, self.noise_counts)
        value = max(RAW_MIN, min(RAW_MAX, round(counts)))
        if self.fault == "saturated_high":
            value = RAW_MAX
        elif self.fault == "saturated_low":
            value = RAW_MIN
        self._data = value & 0xFFFFFF
        self._ready = True
        self.conversions += 1
        self._dout(0)

    def tick(self, now: float) -> None:
        if self._next_conversion is None:  # power-on reset: first result after settling
            self._next_conversion = now + self.settling_s
        high_since = self._sck_high_since
        if high_since is not None and not self._powered_down and now - high_since > self.power_down_after_s:
            self._powered_down = True
            self._ready = False
            self._pulses = 0
            self._dout(1)
        if self._powered_down:
            return
        if now >= self._next_conversion:
            self._next_conversion = max(self._next_conversion + 1.0 / self.rate_hz, now)
            self._convert(now)

    def pin_written(self, pin: int, value: int) -> None:
        if pin != self.sck_pin:
            return
        now = time.monotonic()
        if not value:
            self._sck_high_since = None
            if self._powered_down:  # wake up reset: channel A gain 128, settle again
                self._powered_down = False
                self._input = _GAIN_BY_PULSES[25]
                self._pulses = 0
                self._next_conversion = now + self.settling_s
                self.resets += 1
            return
        if self._sck_high_since is None:
            self._sck_high_since = now
        if self._powered_down or not (self._ready or self._pulses):
            return  # no word to shift out
        self._pulses += 1
        if self._pulses <= 24:
            self._dout((self._data >> (24 - self._pulses)) & 1)
        elif self._pulses == 25:
            self._ready = False
            self.reads += 1
            self._dout(1)
