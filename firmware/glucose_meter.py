"""Driver for a blood-glucose strip-meter module on a UART.

OEM strip-meter boards (the measuring engine of a hand-held glucometer, sold without case and
display) report what happens on their strip port and keep a memory of past results. This module
speaks the small framed protocol of the kiosk's meter module, KX-GLU100:

    0x5A  len:u8  cmd:u8  payload  chk:u8     len counts cmd + payload (1..32);
                                               chk = XOR of len, cmd and every payload byte

All multi-byte numbers are little-endian. A glucose value is mmol/L x 10 as u16 (5.2 mmol/L is
52). A record is 9 bytes:  index:u16  glucose:u16  flags:u8  time:u32  where index is the meter's
own result counter (1, 2, 3 ... never 0, never reused while the memory is not cleared) and time
is seconds since 1970 UTC from the meter's clock, 0 when its clock was never set.

host -> meter
    0x10 READ_INFO                       -> 0x90 INFO  newest:u16 count:u16
                                            (indices newest-count+1 .. newest are in memory;
                                             newest is 0 when the memory is empty)
    0x11 READ_RECORD  index:u16          -> 0x91 RECORD  record
                                            or 0x92 NO_RECORD  index:u16 (overwritten/absent)
meter -> host, unrequested
    0x81 STRIP_IN                           a strip was inserted
    0x82 COUNTDOWN  seconds:u8              blood was applied; result in this many seconds
    0x83 RESULT  record                     a test finished; it is also stored in memory
    0x84 ERROR  code:u8                     1 = E-1 used or damaged strip, 2 = E-2 temperature
                                            out of the operating range, 3 = E-3 not enough blood
    0x85 STRIP_OUT                          the strip was removed

Record flags: bit0 control solution (not blood), bit1 HI (above the meter's range: glucose
holds the upper limit, 333), bit2 LO (below range: glucose holds the lower limit, 11),
bit3 fasting, bit4 after a meal (meal context chosen by the operator on the meter).

`poll()` returns one event code per call (call it until it returns None) and leaves the decoded
values in attributes (index, glucose, flags, time, code, countdown); one receive buffer and one
body buffer are reused, so waiting and parsing allocate nothing.
"""

import struct

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


SYNC = const(0x5A)
CMD_READ_INFO = const(0x10)
CMD_READ_RECORD = const(0x11)
RSP_STRIP_IN = const(0x81)
RSP_COUNTDOWN = const(0x82)
RSP_RESULT = const(0x83)
RSP_ERROR = const(0x84)
RSP_STRIP_OUT = const(0x85)
RSP_INFO = const(0x90)
RSP_RECORD = const(0x91)
RSP_NO_RECORD = const(0x92)

# Meter error codes as shown on its display (E-1 ... E-3).
METER_E1_STRIP = const(1)
METER_E2_TEMPERATURE = const(2)
METER_E3_SAMPLE = const(3)

RECORD_FORMAT = "<HHBI"
RECORD_SIZE = const(9)

FLAG_CONTROL = const(0x01)
FLAG_HI = const(0x02)
FLAG_LO = const(0x04)
FLAG_FASTING = const(0x08)
FLAG_AFTER_MEAL = const(0x10)

# The meter's measuring range, mmol/L x 10; HI/LO results carry these limits as their value.
RANGE_LOW = const(11)
RANGE_HIGH = const(333)

EVENT_STRIP_IN = const(1)
EVENT_COUNTDOWN = const(2)
EVENT_RESULT = const(3)
EVENT_ERROR = const(4)
EVENT_STRIP_OUT = const(5)
EVENT_INFO = const(6)
EVENT_RECORD = const(7)
EVENT_NO_RECORD = const(8)
EVENT_BAD_FRAME = const(9)

_MAX_BODY = const(32)
_WAIT_SYNC = const(0)
_WAIT_LEN = const(1)
_WAIT_BODY = const(2)
_WAIT_CHK = const(3)


def encode_frame(cmd, payload=b""):
    """Frame a command or a response (also used by the simulated meter)."""
    length = 1 + len(payload)
    check = length ^ cmd
    for byte in payload:
        check ^= byte
    return bytes((SYNC, length, cmd)) + bytes(payload) + bytes((check,))


def pack_record(index, glucose, flags, time_s):
    """The 9-byte record carried by RESULT and RECORD."""
    return struct.pack(RECORD_FORMAT, index, glucose, flags, time_s)


class GlucoseMeter:
    def __init__(self, uart):
        self._uart = uart
        self._rx = bytearray(32)
        self._rx_count = 0
        self._rx_pos = 0
        self._body = bytearray(_MAX_BODY)
        self._info_request = encode_frame(CMD_READ_INFO)
        self._record_request = bytearray(encode_frame(CMD_READ_RECORD, b"\x00\x00"))
        self._state = _WAIT_SYNC
        self._length = 0
        self._index_in_body = 0
        self._check = 0
        self.bad_frames = 0
        # Decoded values of the last event.
        self.index = 0
        self.glucose = 0
        self.flags = 0
        self.time = 0
        self.code = 0
        self.countdown = 0
        self.newest = 0
        self.count = 0

    def request_info(self):
        self._uart.write(self._info_request)

    def request_record(self, index):
        buf = self._record_request
        buf[3] = index & 0xFF
        buf[4] = (index >> 8) & 0xFF
        buf[5] = 3 ^ CMD_READ_RECORD ^ buf[3] ^ buf[4]
        self._uart.write(buf)

    def poll(self):
        """Decode bytes until one frame completes; return its event code, or None when drained."""
        while True:
            if self._rx_pos >= self._rx_count:
                count = self._uart.readinto(self._rx)
                if not count:
                    self._rx_count = self._rx_pos = 0
                    return None
                self._rx_count = count
                self._rx_pos = 0
            byte = self._rx[self._rx_pos]
            self._rx_pos += 1
            event = self._feed(byte)
            if event is not None:
                return event

    def _feed(self, byte):
        state = self._state
        if state == _WAIT_SYNC:
            if byte == SYNC:
                self._state = _WAIT_LEN
            return None
        if state == _WAIT_LEN:
            if byte == 0 or byte > _MAX_BODY:
                self._state = _WAIT_SYNC
                self.bad_frames += 1
                return EVENT_BAD_FRAME
            self._length = byte
            self._check = byte
            self._index_in_body = 0
            self._state = _WAIT_BODY
            return None
        if state == _WAIT_BODY:
            self._body[self._index_in_body] = byte
            self._index_in_body += 1
            self._check ^= byte
            if self._index_in_body == self._length:
                self._state = _WAIT_CHK
            return None
        self._state = _WAIT_SYNC
        if byte != self._check:
            self.bad_frames += 1
            return EVENT_BAD_FRAME
        return self._decode()

    def _decode(self):
        body = self._body
        cmd = body[0]
        size = self._length - 1
        if cmd == RSP_RESULT or cmd == RSP_RECORD:
            if size != RECORD_SIZE:
                return self._bad()
            self.index = body[1] | (body[2] << 8)
            self.glucose = body[3] | (body[4] << 8)
            self.flags = body[5]
            self.time = body[6] | (body[7] << 8) | (body[8] << 16) | (body[9] << 24)
            return EVENT_RESULT if cmd == RSP_RESULT else EVENT_RECORD
        if cmd == RSP_COUNTDOWN and size == 1:
            self.countdown = body[1]
            return EVENT_COUNTDOWN
        if cmd == RSP_ERROR and size == 1:
            self.code = body[1]
            return EVENT_ERROR
        if cmd == RSP_INFO and size == 4:
            self.newest = body[1] | (body[2] << 8)
            self.count = body[3] | (body[4] << 8)
            return EVENT_INFO
        if cmd == RSP_NO_RECORD and size == 2:
            self.index = body[1] | (body[2] << 8)
            return EVENT_NO_RECORD
        if cmd == RSP_STRIP_IN and size == 0:
            return EVENT_STRIP_IN
        if cmd == RSP_STRIP_OUT and size == 0:
            return EVENT_STRIP_OUT
        return self._bad()

    def _bad(self):
        self.bad_frames += 1
        return EVENT_BAD_FRAME
