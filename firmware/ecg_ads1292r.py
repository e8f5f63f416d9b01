"""Driver for the TI ADS1292R ECG front end: SPI mode 1, DRDY (active low) on a pin IRQ.

Start-up: RESET, SDATAC (the part wakes in read-data-continuous mode, where it ignores register
commands), check the ID register (0x73), write CONFIG1..RESP2 in one WREG and read them back,
then RDATAC and START. From then on the part pulls DRDY low for every conversion (500 SPS) and
the IRQ handler clocks out the 72-bit frame:

    status:24  = 1100 | LOFF_STAT[4:0] | GPIO[1:0] | 13 zeros
    ch1:24     = lead I  (LA - RA), two's complement, MSB first
    ch2:24     = lead II (LL - RA)

The handler only copies the raw frame into a preallocated slot of a sample ring; it allocates
nothing. The ring is one flat bytearray (slot i at offset 9 * i) and one int array for the gap
before each slot: no per-slot objects, so 512 frames cost about 6.5 KB of heap.

The part has no sample counter, so missing samples (a conversion the part skipped, a frame
overwritten because DRDY was serviced more than a period late) are found from time: each
frame is expected one period after the one before. A frame more than half a period late opens
a question, held open while frames keep coming: if later frames catch up (a late interrupt,
then frames on time) nothing was missed; if they stay late by N periods for 50 ms, N samples are
missing just before the first late frame. A frame a whole period later still, while the question
is open, starts a question of its own, answered after the first: samples lost there are placed
there. Frames from the first late one on wait in the ring until the answer is known, so a gap
is placed exactly and never hidden. The expected time follows the part's clock (its crystal
drifts from ours) from the earliest frames. Each frame's time is taken once it has been read,
so it is never earlier than its conversion: a handler held off can only make a frame look late.

When the ring is full the handler still reads the frame (the part keeps its rhythm) but drops
it, counts an overrun and adds it to the gap before the next stored frame. `take()`
(application context) decodes frames into plain ints, in runs that are contiguous in sample
index and have one lead-off status, so a gap or a lead-off change always starts a new run.

Sample indices are ints counted from the first frame; on a 32-bit port they stay small ints
(no allocation) for 2^30 samples, 24 days of continuous streaming.
"""

import time
from array import array

try:
    from micropython import const
except ImportError:  # CPython

    def const(value):
        return value


CMD_RESET = const(0x06)
CMD_START = const(0x08)
CMD_STOP = const(0x0A)
CMD_RDATAC = const(0x10)
CMD_SDATAC = const(0x11)
CMD_RREG = const(0x20)
CMD_WREG = const(0x40)

REG_ID = const(0x00)
REG_CONFIG1 = const(0x01)
REG_LOFF_STAT = const(0x08)

ID_ADS1292R = const(0x73)

# LOFF_STAT bits, as they come in the status word (and in ECG_CHUNK's lead_off byte).
LOFF_IN1P = const(0x01)  # LA
LOFF_IN1N = const(0x02)  # RA (channel 1 side)
LOFF_IN2P = const(0x04)  # LL
LOFF_IN2N = const(0x08)  # RA (channel 2 side)
LOFF_RLD = const(0x10)  # RL, the right-leg drive electrode

# start() results.
FAULT_NONE = const(0)
FAULT_NOT_FOUND = const(1)  # no answer, or another part: the ID register is not 0x73
FAULT_CONFIG = const(2)  # registers did not read back as written: bus or part fault

SAMPLE_RATE_HZ = const(500)
_PERIOD_US = const(1000000 // SAMPLE_RATE_HZ)
_GUARD_US = const(_PERIOD_US // 4)  # rounding margin when counting missing periods
_OPEN_US = const(_PERIOD_US // 2)  # a frame this late opens the question
_EARLY_US = const(_GUARD_US - _PERIOD_US)  # this early: an edge with no new frame behind it
FRAME_SIZE = const(9)
CHANNELS = const(2)
_SETTLE_US = const(50000)  # how long frames must stay late before the missing ones are counted

# CONFIG1..RESP2, written in one WREG starting at CONFIG1.
CONFIG = bytes(
    (
        0x02,  # CONFIG1: continuous conversion, DR = 010: 500 SPS
        0xE0,  # CONFIG2: bit 7 set, lead-off comparators on, reference buffer on, VREF 2.42 V
        0xF0,  # LOFF: comparator thresholds 70 % / 30 %, bit 4 set, 6 nA, DC lead-off
        0x00,  # CH1SET: on, PGA gain 6, normal electrode input
        0x00,  # CH2SET: on, PGA gain 6, normal electrode input
        0x3C,  # RLD_SENS: RLD buffer on, RL lead-off sensing, RLD from channel 2 (+ and -)
        0x0F,  # LOFF_SENS: lead-off sensing on IN1P, IN1N, IN2P, IN2N; currents not flipped
        0x00,  # LOFF_STAT: CLK_DIV = 0 (512 kHz clock); the status bits are read-only
        0x02,  # RESP1: respiration off; bit 1 set
        0x03,  # RESP2: internal RLD reference; bit 0 set
    )
)
_LOFF_STAT_INDEX = const(REG_LOFF_STAT - REG_CONFIG1)


class Ads1292r:
    """Two-channel ECG at 500 SPS. `ring_size` (a power of two) frames are kept for the app."""

    def __init__(self, spi, cs, drdy, ring_size=512):
        if ring_size & (ring_size - 1):
            raise ValueError("ring_size must be a power of two")
        self._spi = spi
        self._cs = cs
        self._drdy = drdy
        self._size = ring_size
        self._mask = ring_size - 1
        self._wrap = 2 * ring_size - 1  # head and tail run over 2 x size: full != empty
        self._frames = bytearray(ring_size * FRAME_SIZE)  # slot i: bytes 9 * i .. 9 * i + 8
        self._gaps = array("i", (0 for _ in range(ring_size)))  # periods missed before each slot
        self._head = 0  # written by the IRQ only
        self._tail = 0  # written by take() only
        self._zeros = bytearray(FRAME_SIZE)  # DIN stays low while the frame is clocked out
        self._scratch = bytearray(FRAME_SIZE)  # the SPI reads here; stored frames are copied out
        self._cmd = bytearray(1)
        self._rreg = bytearray(2)
        self._regs = bytearray(len(CONFIG))
        self._running = False
        self._fresh = True  # the next frame restarts the timing (after start())
        self._seen = False  # a frame has arrived since boot
        self._expected_us = time.ticks_us()  # when the last frame was due (never later than it came)
        self._late_open = False  # a late frame is waiting for the answer: missed or just late
        self._late_min = 0  # least lateness since then
        self._late_since = self._expected_us
        self._hold = -1  # ring position of that frame: take() stops there until the answer
        self._jump = -1  # ring position of a frame a period later than the open question's least
        self._jump_min = 0  # least lateness since that frame (the same clock as _late_min)
        self._jump_since = self._expected_us
        self._last_us = time.ticks_us()
        self._last_ms = time.ticks_ms()
        self._pending_gap = 0  # periods missing before the next frame stored
        self._next = 0  # index of the next sample take() will hand out
        self.device_id = None
        self.first = 0  # index of the first sample of the current run (set by take)
        self.lead_off = 0  # LOFF_STAT bits of the current run (set by take)
        self.received = 0  # frames read (wraps at 2^30)
        self.overruns = 0  # frames dropped because the ring was full
        self.gaps = 0  # sample periods handed out as gaps (missed DRDY, skips, overruns, bad frames)
        self.spurious = 0  # DRDY edges with no new frame behind them
        self.bad_frames = 0  # frames without the 1100 status header (dropped, seen as a gap)
        self.bad_run = 0  # consecutive bad frames
        cs.value(1)
        drdy.irq(self._on_drdy, drdy.IRQ_FALLING)

    # -- commands and registers (application context) ------------------------------------------
    def _command(self, opcode):
        self._cmd[0] = opcode
        self._cs.value(0)
        self._spi.write(self._cmd)
        self._cs.value(1)

    def read_registers(self, address, buf):
        self._rreg[0] = CMD_RREG | address
        self._rreg[1] = len(buf) - 1
        self._cs.value(0)
        self._spi.write(self._rreg)
        self._spi.readinto(buf)
        self._cs.value(1)

    def write_registers(self, address, data):
        self._rreg[0] = CMD_WREG | address
        self._rreg[1] = len(data) - 1
        self._cs.value(0)
        self._spi.write(self._rreg)  # at 1 MHz each byte outlasts the 4 tCLK decode time
        self._spi.write(data)
        self._cs.value(1)

    def start(self):
        """Reset, check and configure the part, start conversions; FAULT_NONE or a FAULT_* code."""
        self._running = False  # the IRQ leaves the bus alone while we talk to the part
        self._command(CMD_RESET)
        time.sleep_ms(1)  # 18 tCLK after RESET
        self._command(CMD_SDATAC)
        self.read_registers(REG_ID, memoryview(self._regs)[:1])
        self.device_id = self._regs[0]
        if self.device_id != ID_ADS1292R:
            return FAULT_NOT_FOUND
        self.write_registers(REG_CONFIG1, CONFIG)
        self.read_registers(REG_CONFIG1, self._regs)
        for index in range(len(CONFIG)):
            if index != _LOFF_STAT_INDEX and self._regs[index] != CONFIG[index]:
                return FAULT_CONFIG
        self.settle()
        self.bad_run = 0
        self._fresh = True
        self._last_us = time.ticks_us()
        self._running = True
        self._command(CMD_RDATAC)
        self._command(CMD_START)
        return FAULT_NONE

    def stop(self):
        self._running = False
        self._command(CMD_STOP)

    # -- the sample path ------------------------------------------------------------------------
    def _read_frame(self):
        self._cs.value(0)
        self._spi.write_readinto(self._zeros, self._scratch)
        self._cs.value(1)

    def _on_drdy(self, _pin):
        """DRDY fell: read the frame into the ring. Runs as an IRQ: no allocation."""
        if not self._running:
            return
        if not self._fresh:
            edge = time.ticks_us()
            late = time.ticks_diff(edge, time.ticks_add(self._expected_us, _PERIOD_US))
            off_time = late > _OPEN_US or late < _EARLY_US
            if (off_time or time.ticks_diff(edge, self._last_us) < _OPEN_US) and self._drdy.value():
                # An edge off time or right after another, and DRDY already high: its frame was
                # read by the call before (edges queued while the handler was held off).
                self.spurious += 1
                return
        head = self._head
        full = ((head - self._tail) & self._wrap) == self._size
        self._read_frame()  # read even into a full ring: the part keeps its rhythm
        now = time.ticks_us()  # after the read: never earlier than the frame's conversion
        gap = 0
        if self._fresh:  # first frame since start(): no timing to compare with
            self._fresh = False
            if self._seen:  # restarted: whole periods since the last frame, to the millisecond
                gap = (time.ticks_diff(time.ticks_ms(), self._last_ms) * SAMPLE_RATE_HZ + 500) // 1000 - 1
                if gap < 0:
                    gap = 0
            self._expected_us = now
        else:
            expected = time.ticks_add(self._expected_us, _PERIOD_US)
            late = time.ticks_diff(now, expected)
            if late < 0:
                expected = now  # the part's clock runs ahead of ours, or we had been late
                late = 0
            self._expected_us = expected
            if self._late_open:
                if late < self._late_min:
                    self._late_min = late
                if self._jump >= 0:
                    if late < self._jump_min:
                        self._jump_min = late
                elif late - self._late_min > _PERIOD_US and not full:
                    # A whole period later than any frame since the question opened: if that
                    # lasts, samples went missing here too, not before the frame that opened it.
                    self._jump = head
                    self._jump_min = late
                    self._jump_since = now
                while self._late_open and (
                    self._late_min <= _OPEN_US or time.ticks_diff(now, self._late_since) > _SETTLE_US
                ):
                    settled = self._late_min
                    self._settle()
                    late -= settled
            if not self._late_open and late > _OPEN_US:
                self._late_open = True
                self._late_min = late
                self._late_since = now
        self._seen = True
        self._last_us = now
        self._last_ms = time.ticks_ms()
        self.received = (self.received + 1) & 0x3FFFFFFF
        if full:
            self.overruns += 1
            self._pending_gap += gap + 1
            return
        slot = head & self._mask
        frames = self._frames
        scratch = self._scratch
        offset = slot * FRAME_SIZE
        for index in range(FRAME_SIZE):  # by index: a slice would allocate a slice object
            frames[offset + index] = scratch[index]
        self._gaps[slot] = self._pending_gap + gap
        self._pending_gap = 0
        if self._late_open and self._hold < 0:
            self._hold = head
        self._head = (head + 1) & self._wrap

    def _settle(self):
        """Answer the open question: the least lateness seen, in whole periods, was missed."""
        least = self._late_min
        missing = (least + _GUARD_US) // _PERIOD_US
        if self._hold >= 0:
            self._gaps[self._hold & self._mask] += missing
        else:
            self._pending_gap += missing  # the late frames were all dropped: the next one carries it
        self._expected_us = time.ticks_add(self._expected_us, least)  # re-anchor on the part's clock
        self._late_open = False
        self._hold = -1
        if self._jump >= 0:  # the later question goes on, measured from the re-anchored clock
            self._late_open = True
            self._hold = self._jump
            self._late_min = self._jump_min - least
            self._late_since = self._jump_since
            self._jump = -1

    def settle(self):
        """Release frames held for a timing question, when DRDY has stopped (the IRQ is quiet)."""
        while self._late_open:
            self._settle()

    def available(self):
        """Frames take() can hand out now (not those held while a timing question is open)."""
        end = self._hold if self._hold >= 0 else self._head
        return (end - self._tail) & self._wrap

    def silent_us(self):
        """Microseconds since the last frame (or since start())."""
        return time.ticks_diff(time.ticks_us(), self._last_us)

    def take(self, out, start, max_count):
        """Decode up to max_count samples into out[2 * start:] as (ch1, ch2) pairs; return the count.

        start == 0 begins a run: `first` and `lead_off` describe it. start > 0 continues the
        run only with samples that directly follow it and have the same lead-off status; the
        first sample that does not stays in the ring for the next run. No allocation.
        """
        frames = self._frames
        count = 0
        while count < max_count:
            tail = self._tail
            if tail == self._head or tail == self._hold:
                break
            slot = tail & self._mask
            gap = self._gaps[slot]
            offset = slot * FRAME_SIZE
            status0 = frames[offset]
            if status0 & 0xF0 != 0xC0:  # not a status word: the frame cannot be trusted
                if start or count:
                    break  # end the run here; the next run skips this frame
                self._next += gap + 1
                self.gaps += gap + 1
                self.bad_frames += 1
                self.bad_run += 1
                self._tail = (tail + 1) & self._wrap
                continue
            lead_off = ((status0 & 0x0F) << 1) | (frames[offset + 1] >> 7)
            if start or count:
                if gap or lead_off != self.lead_off:
                    break
            else:
                self._next += gap
                self.gaps += gap
                self.first = self._next
                self.lead_off = lead_off
            self.bad_run = 0
            value = (frames[offset + 3] << 16) | (frames[offset + 4] << 8) | frames[offset + 5]
            if value & 0x800000:
                value -= 0x1000000
            position = 2 * (start + count)
            out[position] = value
            value = (frames[offset + 6] << 16) | (frames[offset + 7] << 8) | frames[offset + 8]
            if value & 0x800000:
                value -= 0x1000000
            out[position + 1] = value
            self._next += 1
            self._tail = (tail + 1) & self._wrap
            count += 1
        return count
