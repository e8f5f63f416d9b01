"""HX711 24-bit load-cell ADC, bit-banged on two pins, and the scale built on it.

The HX711 (Avia Semiconductor) has no registers; two pins do everything (datasheet, "Serial
Interface"):

- DOUT is high while a conversion runs and falls when a result is ready (10 per second with
  RATE low).
- The host then gives 25 to 27 pulses on PD_SCK. Each rising edge shifts one bit out on DOUT,
  most significant first: 24 bits, two's complement. The 25th rising edge pulls DOUT high again.
  The pulse count picks the input of the next conversion: 25 channel A gain 128 (ours),
  26 channel B gain 32, 27 channel A gain 64. PD_SCK high time must stay within 0.2-50 us.
- PD_SCK held high for more than 60 us powers the chip down; back low, it resets to channel A
  gain 128 and its first result comes after the settling time (400 ms at 10 SPS). `reset`
  does that at boot, so the chip starts in a known state whatever ran before.
- An input beyond full scale (+-20 mV at gain 128, 5 V supply) reads 0x7FFFFF or 0x800000.

On a board, an interrupt that stretched PD_SCK high past 60 us in the middle of `read` would
power the chip down mid-word; a board that runs other interrupt work should read with IRQs
disabled (machine.disable_irq, not in the HAL yet).

`Scale` turns counts into weight: calibration (counts per 0.1 kg) and the factory zero come from
a small config (`parse_config`, `DEFAULTS`); a ring of the last `window` samples (1 s at 10 SPS)
gives the median and a stability check (all samples within `stable_band_100g`); zeroing is
bounded to `zero_range_100g` around the factory zero, so a resident standing on the platform at
boot is not tared away. Every fault is reported once when it begins (`update` returns
UPDATE_FAULT, code in `fault`): DOUT never falling (FAULT_TIMEOUT), DOUT not released after the
25th pulse (FAULT_STUCK_LOW: line shorted), the load above capacity for `overload_samples`
samples or the ADC saturated high (FAULT_OVERLOAD), saturated low (FAULT_SATURATED_LOW: an open
load-cell wire). Weights are integers in 0.1 kg; nothing is allocated per sample.
"""

import time

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


RAW_MAX = const(0x7FFFFF)
RAW_MIN = const(-0x800000)

UPDATE_NONE = const(0)
UPDATE_SAMPLE = const(1)
UPDATE_FAULT = const(2)

FAULT_TIMEOUT = const(1)
FAULT_STUCK_LOW = const(2)
FAULT_OVERLOAD = const(3)
FAULT_SATURATED_LOW = const(4)

_RECHECK_MS = const(150)  # look at DOUT even without an edge (a missed IRQ costs at most this)
_MAX_WINDOW = const(32)

# Factory calibration of the KX-WS200 platform: four 50 kg half-bridge cells as one bridge,
# 1 mV/V at 200 kg on the HX711's ~4.3 V excitation, gain 128 -> about 1074 counts per 0.1 kg.
DEFAULTS = {
    "counts_per_100g": 1074,
    "zero_counts": 84000,  # platform dead load and bridge offset
    "capacity_100g": 2000,  # 200.0 kg
    "zero_range_100g": 50,  # zeroing allowed within 5.0 kg of the factory zero
    "window": 10,  # samples in the median and the stability check (1 s at 10 SPS)
    "stable_band_100g": 2,  # stable: every sample in the window within 0.2 kg
    "overload_samples": 3,
    "timeout_ms": 1000,  # no result for this long: the HX711 is not converting
    "min_load_100g": 20,  # weigh only above 2.0 kg
    "off_load_100g": 10,  # below 1.0 kg the resident has stepped off
    "zero_track_100g": 5,  # an idle platform within 0.5 kg is re-zeroed
    "unstable_after_ms": 5000,  # a resident who never settles is weighed with FLAG_UNSTABLE
}


def parse_config(text, base=None):
    """'name = integer' lines (# comments) over DEFAULTS -> dict; ValueError names the bad line."""
    config = dict(DEFAULTS if base is None else base)
    for number, line in enumerate(text.split("\n")):
        line = line.split("#")[0].strip()
        if not line:
            continue
        parts = line.split("=")
        name = parts[0].strip()
        if len(parts) != 2 or name not in DEFAULTS:
            raise ValueError("line %d: unknown setting %r" % (number + 1, line))
        try:
            config[name] = int(parts[1].strip())
        except ValueError:
            raise ValueError("line %d: %s is not an integer" % (number + 1, name))
    if config["counts_per_100g"] <= 0 or not 1 <= config["window"] <= _MAX_WINDOW:
        raise ValueError("counts_per_100g must be positive and window 1..%d" % _MAX_WINDOW)
    return config


class Hx711:
    """The two-wire interface. `sck` is an output Pin, `dout` an input Pin."""

    def __init__(self, sck, dout):
        self._sck = sck
        self._dout = dout
        sck.value(0)
        self.flagged = True  # set by the DOUT falling-edge IRQ; confirmed by reading DOUT
        self.released = True  # DOUT went high after the 25th pulse, as it must
        dout.irq(self._on_edge, dout.IRQ_FALLING)

    def _on_edge(self, pin):
        self.flagged = True  # IRQ context: only note it

    def reset(self, hold_ms=1):
        """Power down (PD_SCK high > 60 us) and up: channel A, gain 128, settling starts."""
        self._sck.value(1)
        time.sleep_ms(hold_ms)
        self._sck.value(0)

    def ready(self):
        self.flagged = False
        return self._dout.value() == 0

    def read(self):
        """Clock out one result (call when ready()); 25 pulses select channel A gain 128 next."""
        sck = self._sck
        dout = self._dout
        value = 0
        for _ in range(24):
            sck.value(1)
            sck.value(0)
            value = (value << 1) | dout.value()
        sck.value(1)
        sck.value(0)
        self.released = dout.value() == 1
        if value & 0x800000:
            value -= 0x1000000
        return value


class Scale:
    def __init__(self, adc, config):
        self._adc = adc
        self.counts_per_100g = config["counts_per_100g"]
        self.factory_zero = config["zero_counts"]
        self.zero = self.factory_zero
        self._capacity = config["capacity_100g"] * self.counts_per_100g
        self._zero_range = config["zero_range_100g"] * self.counts_per_100g
        self._band = config["stable_band_100g"] * self.counts_per_100g
        self._overload_samples = config["overload_samples"]
        self._timeout_ms = config["timeout_ms"]
        self._size = config["window"]
        self._ring = [0] * self._size
        self._sorted = [0] * self._size
        self._next = 0
        self.filled = 0
        self._over = 0
        self._last_ms = time.ticks_ms()
        self._checked_ms = self._last_ms
        self.fault = 0
        self.latest = 0  # last sample, 0.1 kg
        self.weight = 0  # median of the window, 0.1 kg
        self.median = 0  # the same in counts
        self.stable = False
        self.samples = 0

    def begin(self, now):
        """Start the no-data timeout (after a reset the first result takes the settling time)."""
        self._last_ms = now
        self.clear()

    def clear(self):
        self.filled = 0
        self._next = 0
        self.stable = False

    def full(self):
        return self.filled == self._size

    def to_100g(self, counts):
        """Net counts -> 0.1 kg, rounded half up."""
        cpu = self.counts_per_100g
        return (2 * counts + cpu) // (2 * cpu)

    def update(self, now):
        adc = self._adc
        if adc.flagged or time.ticks_diff(now, self._checked_ms) >= _RECHECK_MS:
            self._checked_ms = now
            if adc.ready():
                return self._sample(adc.read(), now)
        if time.ticks_diff(now, self._last_ms) > self._timeout_ms:
            return self._raise(FAULT_TIMEOUT)
        return UPDATE_NONE

    def _sample(self, raw, now):
        self._last_ms = now
        if not self._adc.released:
            return self._raise(FAULT_STUCK_LOW)
        if raw == RAW_MAX:
            return self._raise(FAULT_OVERLOAD)
        if raw == RAW_MIN:
            return self._raise(FAULT_SATURATED_LOW)
        if raw - self.zero > self._capacity:
            self._over += 1
            if self._over >= self._overload_samples:
                return self._raise(FAULT_OVERLOAD)
            return UPDATE_NONE
        self._over = 0
        self.fault = 0
        self.samples += 1
        self._push(raw)
        self.latest = self.to_100g(raw - self.zero)
        return UPDATE_SAMPLE

    def _push(self, raw):
        size = self._size
        ring = self._ring
        ring[self._next] = raw
        self._next = (self._next + 1) % size
        if self.filled < size:
            self.filled += 1
        count = self.filled
        ordered = self._sorted
        for i in range(count):  # insertion sort of the window into the reused buffer
            value = ring[i]
            j = i - 1
            while j >= 0 and ordered[j] > value:
                ordered[j + 1] = ordered[j]
                j -= 1
            ordered[j + 1] = value
        self.median = (ordered[(count - 1) // 2] + ordered[count // 2]) // 2
        self.weight = self.to_100g(self.median - self.zero)
        self.stable = count == size and ordered[count - 1] - ordered[0] <= self._band

    def _raise(self, code):
        self._over = 0
        self.stable = False
        if self.fault == code:
            return UPDATE_NONE  # reported when it began
        self.fault = code
        self.clear()
        return UPDATE_FAULT

    def zero_here(self):
        """Make the current stable median the zero, if it lies within range of the factory zero."""
        if not self.stable or abs(self.median - self.factory_zero) > self._zero_range:
            return False
        self.zero = self.median
        self.weight = 0
        return True
