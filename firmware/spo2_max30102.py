"""Driver for the Maxim MAX30102 pulse oximeter on I2C, with a windowed SpO2 and pulse estimate.

The part (datasheet 19-7740) answers at 0x57 with PART_ID 0x15 at register 0xFF. In SpO2 mode
(MODE_CONFIG 0b011) every sample is 6 bytes in a 32-deep FIFO: red (LED1) then IR (LED2), each
3 bytes, most significant first, the ADC value left-justified in bits 17..0 (the low bits are
zero at pulse widths shorter than 411 us). Reading FIFO_DATA (0x07) does not advance the
register pointer, so a burst read of 6 * n bytes pops n samples. FIFO_WR_PTR, OVF_COUNTER and
FIFO_RD_PTR (0x04..0x06, read in one burst) tell how many samples wait; a non-zero OVF_COUNTER
means the FIFO was full and that many samples were lost (it saturates at 31).

Set-up: 100 samples/s, 411 us pulses (18 bits), ADC full scale 4096 nA, no sample averaging,
7.2 mA in each LED, FIFO rollover off, and the A_FULL interrupt (INT pin low) when 17 samples
wait. The application calls `service()` when INT falls and on a timer as a fallback.

Each sample drives a small state machine; nothing is allocated per sample:
  idle       no finger: IR below _FINGER_IR (the photodiode sees only the cover glass)
  settling   finger seen: 1 s for the tissue to settle under the probe
  measuring  a 5 s window of red and IR into preallocated arrays
  full       window complete: service() runs estimate()
  done       result given; wait for the finger to leave before the next measurement
A sample below _FINGER_IR while settling goes quietly back to idle; while measuring it ends the
measurement with NO_FINGER. An overflow (samples lost) while measuring restarts the window,
so a window never spans a gap. Not seen: an overflow between reading the pointers and popping
the samples, as the part clears OVF_COUNTER on every pop; at 100 SPS, read at A_FULL (17
samples), that takes a stall of 150 ms inside one read cycle. A power-on reset of the part
(PWR_RDY) sets it up again.

Memory: everything is allocated once, in the constructor. The windows are two `array("i")`,
4 bytes a sample on every port (an 18-bit sample fits; a list would hold a pointer a sample),
the beat indexes a small `array("H")`. The FIFO is read into one 192-byte buffer in bursts of
32, 16, 8, 4, 2 and 1 samples (a count is read as its binary digits: one or two bursts at
A_FULL), so six views of it serve every count. estimate() builds no list and, on a 32-bit
board, no long int (see there); it returns one tuple per window.
"""

import time
from array import array

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


# An underscored const() is folded into the code and takes no RAM on the board; only the names
# other modules use (events, flags, states) are public.
_ADDRESS = const(0x57)
_PART_ID = const(0x15)

_REG_INT_STATUS_1 = const(0x00)
_REG_INT_STATUS_2 = const(0x01)
_REG_INT_ENABLE_1 = const(0x02)
_REG_FIFO_WR_PTR = const(0x04)
_REG_OVF_COUNTER = const(0x05)
_REG_FIFO_RD_PTR = const(0x06)
_REG_FIFO_DATA = const(0x07)
_REG_FIFO_CONFIG = const(0x08)
_REG_MODE_CONFIG = const(0x09)
_REG_SPO2_CONFIG = const(0x0A)
_REG_LED1_PA = const(0x0C)  # red
_REG_LED2_PA = const(0x0D)  # IR
_REG_TEMP_INT = const(0x1F)
_REG_TEMP_FRAC = const(0x20)
_REG_TEMP_CONFIG = const(0x21)
_REG_REV_ID = const(0xFE)
_REG_PART_ID = const(0xFF)

_INT_A_FULL = const(0x80)
_INT_PPG_RDY = const(0x40)
_INT_ALC_OVF = const(0x20)
_INT_PWR_RDY = const(0x01)
_MODE_RESET = const(0x40)
_MODE_SPO2 = const(0x03)

# FIFO_CONFIG: SMP_AVE 000 (none), FIFO_ROLLOVER_EN 0, FIFO_A_FULL 15 (17 samples waiting).
_FIFO_CONFIG = const(0x0F)
# SPO2_CONFIG: ADC range 01 (4096 nA) | SPO2_SR 001 (100 /s) | LED_PW 11 (411 us, 18 bits).
_SPO2_CONFIG = const(0x27)
_LED_PA = const(0x24)  # 0.2 mA per step: 7.2 mA
_SAMPLE_RATE = const(100)
_FIFO_DEPTH = const(32)
_BYTES_PER_SAMPLE = const(6)
_FULL_SCALE = const(0x3FFFF)

_FINGER_IR = const(50000)  # IR counts: above with a fingertip on the probe, tune per enclosure
_LOW_PERFUSION_PI = const(30)  # perfusion index below 0.30 % (units of 0.01 %) is flagged
_MIN_PERFUSION_PI = const(5)  # below 0.05 % the swing is noise: no value at all
_SPO2_FLOOR = const(70)  # below the empirical curve's useful range: report 70 + BELOW_RANGE
_SETTLE = const(100)  # samples (1 s)
_WINDOW = const(500)  # samples (5 s)
_ATTEMPTS = const(2)  # windows without a usable pulse before giving up
_MAX_BEATS = const(24)
_PROBE_MS = const(1000)

# service() events
NONE = const(0)
RESULT = const(1)  # spo2, pulse, flags hold the result
NO_FINGER = const(2)  # the finger left during the window
NOT_FOUND = const(3)  # the part did not answer, or answered with another part id
UNUSABLE = const(4)  # no regular pulse in the signal (motion, or no perfused tissue)
FOUND = const(5)  # the part answers (again) and is set up

# result flags
FLAG_LOW_PERFUSION = const(0x01)
FLAG_BELOW_RANGE = const(0x02)

# estimate() status
EST_OK = const(0)
EST_UNUSABLE = const(1)

STATE_IDLE = const(0)
STATE_SETTLING = const(1)
STATE_MEASURING = const(2)
STATE_FULL = const(3)
STATE_DONE = const(4)


def estimate(red, ir, count, rate, beat_at):
    """SpO2 and pulse from `count` red and IR samples -> (status, spo2 %, pulse /min, flags).

    `beat_at` is a preallocated array for the beat indexes (any length: it bounds the beats
    counted). A simple, documented estimate, run once per window, in integers so the board and
    CPython agree to the unit:
    1. DC of each channel: the mean over the window.
    2. Beats: IR light dips when the arterial blood volume peaks (systole). On the 4-sample
       moving sum of IR, a beat is the lowest point of each excursion below halfway between
       the mean and the minimum (with 1/8 hysteresis, at least 0.3 s apart: up to 200 /min).
       Excursions cut by the window's start or end are not counted.
    3. Pulse = 60 * rate * (beats - 1) / (samples from first to last beat), rounded.
    4. AC of each channel: the mean over beat-to-beat intervals of (max - min) of its moving sum.
    5. R = (AC_red / DC_red) / (AC_ir / DC_ir); SpO2 = 110 - 25 * R, the common empirical
       approximation. It must be calibrated per probe and enclosure against a reference
       oximeter before clinical use. Above 100 reads 100; below 70 reads 70 with BELOW_RANGE.
    6. Perfusion index = AC_ir / DC_ir; below 0.30 % the reading carries LOW_PERFUSION.
    Unusable: fewer than 3 beats, a clipped (full-scale) sample, or a perfusion index below
    0.05 % (what the detector found is noise, not a pulse).

    Integer sizes: on a 32-bit board an int below 2**30 is held in the object word itself; a
    larger one is a heap object (a long int). Samples are below 2**18, a moving sum below 2**20,
    a window's sum below count * 2**18 (2**27 for 500 samples) and the mean is taken without
    forming 4 * sum, so no loop makes a long int. R and the perfusion index compare products of
    those sums (up to 2**60), so they are not computed as written in the comments: `_muldiv`
    divides while it multiplies, and floor(floor(x / a) / b) == floor(x / (a * b)) splits a
    division by a product in two. The results are the same integers. The largest intermediate
    is then about 2**27 for a normal finger and stays below 2**30 up to a 10 % pulse swing at
    180 /min; a stronger pulse costs a few long ints, once in that window.
    """
    unusable = (EST_UNUSABLE, 0, 0, 0)
    if count < 8:
        return unusable
    dc_red = 0
    dc_ir = 0
    for i in range(count):
        r = red[i]
        x = ir[i]
        if r >= _FULL_SCALE or x >= _FULL_SCALE:
            return unusable
        dc_red += r
        dc_ir += x
    if dc_red == 0 or dc_ir == 0:
        return unusable
    last = count - 3  # moving sums s[i] = x[i] + ... + x[i+3] for i < last
    mean = 4 * (dc_ir // count) + 4 * (dc_ir % count) // count  # (4 * dc_ir) // count
    low = mean
    s = ir[0] + ir[1] + ir[2] + ir[3]
    for i in range(last):
        if i:
            s += ir[i + 3] - ir[i - 1]
        if s < low:
            low = s
    swing = mean - low
    if swing <= 0:
        return unusable
    enter = low + swing // 2
    leave = enter + swing // 8
    refractory = rate * 3 // 10
    max_beats = len(beat_at)
    beats = 0
    inside = False
    start = 0
    best = 0
    best_at = 0
    s = ir[0] + ir[1] + ir[2] + ir[3]
    for i in range(last):
        if i:
            s += ir[i + 3] - ir[i - 1]
        if inside:
            if s < best:
                best = s
                best_at = i
            elif s > leave:
                inside = False
                if (
                    start > 0
                    and beats < max_beats
                    and (beats == 0 or best_at - beat_at[beats - 1] >= refractory)
                ):
                    beat_at[beats] = best_at
                    beats += 1
        elif s < enter:
            inside = True
            start = i
            best = s
            best_at = i
    if beats < 3:
        return unusable
    span = beat_at[beats - 1] - beat_at[0]
    pulse = (120 * rate * (beats - 1) + span) // (2 * span)
    ac_red = 0
    ac_ir = 0
    for k in range(beats - 1):
        ac_red += _swing(red, beat_at[k], beat_at[k + 1])
        ac_ir += _swing(ir, beat_at[k], beat_at[k + 1])
    if ac_ir <= 0 or ac_red <= 0:
        return unusable
    # R in thousandths, rounded: (2000 * ac_red * dc_ir + ac_ir * dc_red) // (2 * ac_ir * dc_red).
    r_milli = (_muldiv(2000 * ac_red, dc_ir, dc_red) + ac_ir) // (2 * ac_ir)
    spo2_milli = 110000 - 25 * r_milli
    flags = 0
    if spo2_milli >= 100000:
        spo2 = 100
    elif spo2_milli < _SPO2_FLOOR * 1000:
        spo2 = _SPO2_FLOOR
        flags |= FLAG_BELOW_RANGE
    else:
        spo2 = (spo2_milli + 500) // 1000
    # Perfusion index in 0.01 %: (ac_ir / 4 / intervals) / (dc_ir / count) * 10000.
    perfusion = _muldiv(ac_ir, 2500 * count, dc_ir) // (beats - 1)
    if perfusion < _MIN_PERFUSION_PI:
        return unusable  # the "beats" are noise: no pulsatile tissue under the probe
    if perfusion < _LOW_PERFUSION_PI:
        flags |= FLAG_LOW_PERFUSION
    return (EST_OK, spo2, pulse, flags)


def _swing(x, begin, end):
    """max - min of the 4-sample moving sum of x over moving-sum indexes begin..end."""
    s = x[begin] + x[begin + 1] + x[begin + 2] + x[begin + 3]
    top = s
    bottom = s
    for i in range(begin + 1, end + 1):
        s += x[i + 3] - x[i - 1]
        if s > top:
            top = s
        elif s < bottom:
            bottom = s
    return top - bottom


def _muldiv(a, b, c):
    """floor(a * b / c) for a, b >= 0 and c > 0, without forming a * b.

    Long multiplication by the bits of b, dividing as it goes: the remainder stays below c and
    each step below 3 * c, so with c < 2**28 (a window sum of up to 1024 samples) nothing is
    larger than a or the result.
    """
    whole = a // c * b
    a %= c
    quotient = 0
    rest = 0
    bit = 1
    while bit <= b:
        bit <<= 1
    while bit > 1:
        bit >>= 1
        quotient <<= 1
        rest <<= 1
        if b & bit:
            rest += a
        while rest >= c:
            rest -= c
            quotient += 1
    return whole + quotient


class Max30102:
    """Call `service()` on the INT edge and every few tens of ms; act on the event it returns."""

    def __init__(self, i2c, address=_ADDRESS, window=_WINDOW, settle=_SETTLE):
        self._i2c = i2c
        self._address = address
        self._window = window
        self._settle = settle
        self._one = bytearray(1)
        self._two = bytearray(2)
        self._ptrs = bytearray(3)  # FIFO_WR_PTR, OVF_COUNTER, FIFO_RD_PTR
        self._fifo = bytearray(_FIFO_DEPTH * _BYTES_PER_SAMPLE)
        whole = memoryview(self._fifo)
        # Bursts of 32, 16, 8, 4, 2 and 1 samples: any count is read as its binary digits.
        self._bursts = [whole[: (1 << k) * _BYTES_PER_SAMPLE] for k in range(5, -1, -1)]
        # Allocated once; range() sizes them without a temporary (contents are written first).
        self._red = array("i", range(window))
        self._ir = array("i", range(window))
        self._beat_at = array("H", range(_MAX_BEATS))  # sample indexes: window <= 65535
        self.state = STATE_IDLE
        self.index = 0
        self._attempt = 0
        self._event = NONE
        self.present = None  # None: not probed yet
        self._next_probe = time.ticks_ms()
        self.spo2 = 0
        self.pulse = 0
        self.flags = 0
        self.samples = 0
        self.overflows = 0
        self.lost_samples = 0  # at least this many (OVF_COUNTER saturates at 31)
        self.restarts = 0
        self.power_resets = 0

    # --- bus ------------------------------------------------------------------------------
    def _write(self, register, value):
        self._two[0] = register
        self._two[1] = value
        self._i2c.writeto(self._address, self._two)

    def _read(self, register):
        self._i2c.readfrom_mem_into(self._address, register, self._one)
        return self._one[0]

    def start(self):
        """Probe and set up the part -> True when a MAX30102 answered and is sampling."""
        try:
            if self._read(_REG_PART_ID) != _PART_ID:
                return False
            self._write(_REG_MODE_CONFIG, _MODE_RESET)
            for _ in range(10):
                if not self._read(_REG_MODE_CONFIG) & _MODE_RESET:
                    break
                time.sleep_ms(1)
            else:
                return False
            self._configure()
        except OSError:
            return False
        return True

    def _configure(self):
        self._read(_REG_INT_STATUS_1)  # clears PWR_RDY, releases INT
        self._write(_REG_FIFO_CONFIG, _FIFO_CONFIG)
        self._write(_REG_SPO2_CONFIG, _SPO2_CONFIG)
        self._write(_REG_LED1_PA, _LED_PA)
        self._write(_REG_LED2_PA, _LED_PA)
        self._write(_REG_INT_ENABLE_1, _INT_A_FULL)
        self._write(_REG_FIFO_WR_PTR, 0)
        self._write(_REG_OVF_COUNTER, 0)
        self._write(_REG_FIFO_RD_PTR, 0)
        self._write(_REG_MODE_CONFIG, _MODE_SPO2)
        self.state = STATE_IDLE

    # --- sample path (allocation-free) ---------------------------------------------------
    def read_fifo(self):
        """Pop every waiting sample into the state machine -> number of samples read."""
        i2c = self._i2c
        address = self._address
        i2c.readfrom_mem_into(address, _REG_INT_STATUS_1, self._one)  # releases INT
        if self._one[0] & _INT_PWR_RDY:
            self.power_resets += 1  # the part lost power: its set-up is gone
            self._configure()
            return 0
        ptrs = self._ptrs
        i2c.readfrom_mem_into(address, _REG_FIFO_WR_PTR, ptrs)
        lost = ptrs[1] & 0x1F
        count = _FIFO_DEPTH if lost else (ptrs[0] - ptrs[2]) & 0x1F
        if count:
            buf = self._fifo
            left = count  # samples still to read, taken in bursts of 32, 16, 8, 4, 2 and 1
            for burst in self._bursts:
                size = len(burst)
                if left * _BYTES_PER_SAMPLE < size:
                    continue
                i2c.readfrom_mem_into(address, _REG_FIFO_DATA, burst)
                left -= size // _BYTES_PER_SAMPLE
                for offset in range(0, size, _BYTES_PER_SAMPLE):
                    self._sample(
                        ((buf[offset] & 0x03) << 16) | (buf[offset + 1] << 8) | buf[offset + 2],
                        ((buf[offset + 3] & 0x03) << 16) | (buf[offset + 4] << 8) | buf[offset + 5],
                    )
            self.samples = (self.samples + count) & 0x3FFFFFFF  # stays a small int
        if lost:
            # Samples were lost after the ones just read: the window starts again past the gap.
            self.overflows += 1
            self.lost_samples += lost
            if self.state == STATE_MEASURING:
                self.index = 0
                self.restarts += 1
        return count

    def _sample(self, red, ir):
        state = self.state
        if ir < _FINGER_IR:
            if state == STATE_MEASURING:
                self._event = NO_FINGER
            if state != STATE_FULL:
                self.state = STATE_IDLE
            return
        if state == STATE_MEASURING:
            index = self.index
            self._red[index] = red
            self._ir[index] = ir
            index += 1
            self.index = index
            if index >= self._window:
                self.state = STATE_FULL
        elif state == STATE_IDLE:
            self.state = STATE_SETTLING
            self.index = 0
            self._attempt = 0
        elif state == STATE_SETTLING:
            self.index += 1
            if self.index >= self._settle:
                self.state = STATE_MEASURING
                self.index = 0

    # --- application side ----------------------------------------------------------------
    def service(self):
        """Read the FIFO and advance the measurement -> one of the events above."""
        if self.present is not True:
            return self._probe()
        try:
            self.read_fifo()
        except OSError:
            self.present = False
            self.state = STATE_IDLE
            self._next_probe = time.ticks_add(time.ticks_ms(), _PROBE_MS)
            return NOT_FOUND
        event = self._event
        if event != NONE:
            self._event = NONE
            return event
        if self.state == STATE_FULL:
            return self._finish()
        return NONE

    def _probe(self):
        now = time.ticks_ms()
        if time.ticks_diff(now, self._next_probe) < 0:
            return NONE
        self._next_probe = time.ticks_add(now, _PROBE_MS)
        if self.start():
            self.present = True
            self._event = NONE
            return FOUND
        if self.present is None:
            self.present = False
            return NOT_FOUND
        return NONE  # still missing: said so already

    def _finish(self):
        status, spo2, pulse, flags = estimate(self._red, self._ir, self._window, _SAMPLE_RATE, self._beat_at)
        if status == EST_OK:
            self.spo2 = spo2
            self.pulse = pulse
            self.flags = flags
            self.state = STATE_DONE
            return RESULT
        self._attempt += 1
        if self._attempt >= _ATTEMPTS:
            self.state = STATE_DONE
            return UNUSABLE
        self.state = STATE_MEASURING
        self.index = 0
        return NONE
