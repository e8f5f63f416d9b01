"""Driver for an oscillometric blood-pressure cuff module on a UART.

The module (an OEM NIBP board of the common kind) speaks small binary frames:

    0xAA  len:u8  cmd:u8  payload  sum:u8      (len counts cmd + payload; sum = low byte of
                                                 len + cmd + payload)

host -> module: 0x01 start, 0x02 stop, 0x03 query
module -> host: 0x81 progress (cuff pressure u16 mmHg), 0x82 result (sys, dia, map, pulse as u16
mmHg / bpm, status u8: bit0 irregular heartbeat, bit1 body movement, bit2 cuff loose),
0x83 error (code u8: 1 cuff leak, 2 motion, 3 over-pressure), 0x84 idle.
The module also starts on its own front-panel button, so results may arrive unrequested.
Parsing reuses one receive buffer; nothing is allocated per byte.
"""

import struct

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


SYNC = const(0xAA)
CMD_START = const(0x01)
CMD_STOP = const(0x02)
CMD_QUERY = const(0x03)
RSP_PROGRESS = const(0x81)
RSP_RESULT = const(0x82)
RSP_ERROR = const(0x83)
RSP_IDLE = const(0x84)

EVENT_PROGRESS = const(1)
EVENT_RESULT = const(2)
EVENT_ERROR = const(3)
EVENT_BAD_FRAME = const(4)

STATUS_IRREGULAR = const(0x01)
STATUS_MOVEMENT = const(0x02)
STATUS_CUFF_LOOSE = const(0x04)

_MAX_BODY = const(16)
_WAIT_SYNC = const(0)
_WAIT_LEN = const(1)
_WAIT_BODY = const(2)
_WAIT_SUM = const(3)


def encode_command(cmd, payload=b""):
    """Frame a command or response (also used by the simulated module)."""
    length = 1 + len(payload)
    total = length + cmd
    for byte in payload:
        total += byte
    return bytes((SYNC, length, cmd)) + bytes(payload) + bytes((total & 0xFF,))


class BpCuff:
    """Feed it UART bytes with `poll()`; it returns (event, value) tuples as frames complete."""

    def __init__(self, uart):
        self._uart = uart
        self._rx = bytearray(32)
        self._body = bytearray(_MAX_BODY)
        self._state = _WAIT_SYNC
        self._length = 0
        self._index = 0
        self._sum = 0
        self.bad_frames = 0

    def start(self):
        self._uart.write(encode_command(CMD_START))

    def stop(self):
        self._uart.write(encode_command(CMD_STOP))

    def poll(self):
        """Read what the UART has; return the list of decoded events (usually empty)."""
        events = []
        count = self._uart.readinto(self._rx)
        if not count:
            return events
        for i in range(count):
            event = self._feed(self._rx[i])
            if event is not None:
                events.append(event)
        return events

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
                return (EVENT_BAD_FRAME, byte)
            self._length = byte
            self._sum = byte
            self._index = 0
            self._state = _WAIT_BODY
            return None
        if state == _WAIT_BODY:
            self._body[self._index] = byte
            self._index += 1
            self._sum += byte
            if self._index == self._length:
                self._state = _WAIT_SUM
            return None
        self._state = _WAIT_SYNC
        if byte != self._sum & 0xFF:
            self.bad_frames += 1
            return (EVENT_BAD_FRAME, byte)
        return self._decode()

    def _decode(self):
        body = self._body
        cmd = body[0]
        if cmd == RSP_PROGRESS and self._length == 3:
            return (EVENT_PROGRESS, struct.unpack_from("<H", body, 1)[0])
        if cmd == RSP_RESULT and self._length == 10:
            return (EVENT_RESULT, struct.unpack_from("<HHHHB", body, 1))
        if cmd == RSP_ERROR and self._length == 2:
            return (EVENT_ERROR, body[1])
        if cmd == RSP_IDLE:
            return None
        self.bad_frames += 1
        return (EVENT_BAD_FRAME, cmd)
