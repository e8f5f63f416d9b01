"""Board side of the kiosk link: sequence numbers, an unacked ring buffer, retransmit until acked.

Every message the board sends is kept in a fixed ring of slots until the gateway acks its
sequence number. A NAK (corrupt frame seen by the gateway) or a silent timeout sends it again,
with the timeout doubling up to a ceiling, so a busy or restarting gateway loses nothing.
"""

import time

import kiosk_link as link

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


_RETRY_FIRST_MS = const(300)
_RETRY_MAX_MS = const(4000)


class LinkClient:
    def __init__(self, uart, ring_size=16):
        self._uart = uart
        self._splitter = link.FrameSplitter()
        self._rx = bytearray(64)
        self._slots = [None] * ring_size  # each: [seq, frame, due_ms, backoff_ms]
        self._next_seq = 1
        self.acked = 0
        self.naks_received = 0
        self.retransmits = 0
        self.bad_frames = 0
        self.last_ack_ms = None

    def pending(self):
        return sum(1 for slot in self._slots if slot is not None)

    def has_room(self):
        return None in self._slots

    def send(self, msg_type, payload):
        """Queue and send a message; returns its sequence, or None when the ring is full."""
        try:
            index = self._slots.index(None)
        except ValueError:
            return None
        seq = self._next_seq
        self._next_seq = (seq % 0xFFFF) + 1  # 1..65535, 0 is never used
        frame = link.encode_frame(msg_type, seq, payload)
        self._slots[index] = [seq, frame, time.ticks_add(time.ticks_ms(), _RETRY_FIRST_MS), _RETRY_FIRST_MS]
        self._uart.write(frame)
        return seq

    def poll(self):
        """Handle incoming acks/naks and retransmit what is due. Returns ms until the next retry."""
        count = self._uart.readinto(self._rx)
        if count:
            for encoded in self._splitter.feed(memoryview(self._rx)[:count]):
                self._handle(encoded)
        return self._retransmit_due()

    def _handle(self, encoded):
        try:
            msg_type, seq, payload = link.decode_frame(encoded)
        except link.LinkError:
            self.bad_frames += 1  # the gateway retransmits nothing; our own timer covers it
            return
        if msg_type == link.MSG_ACK:
            self._ack(seq)
        elif msg_type == link.MSG_NAK:
            self.naks_received += 1
            reason = payload[0] if payload else 0
            if reason == link.NAK_REJECTED:
                self._ack(seq)  # refused for good (logged by the gateway): do not resend
            else:
                self._resend_now(seq)

    def _ack(self, seq):
        for index, slot in enumerate(self._slots):
            if slot is not None and slot[0] == seq:
                self._slots[index] = None
                self.acked += 1
                self.last_ack_ms = time.ticks_ms()
                return

    def _resend_now(self, seq):
        now = time.ticks_ms()
        for slot in self._slots:
            if slot is not None and (seq == 0 or slot[0] == seq):
                slot[2] = now

    def _retransmit_due(self):
        now = time.ticks_ms()
        wait = _RETRY_MAX_MS
        for slot in self._slots:
            if slot is None:
                continue
            remaining = time.ticks_diff(slot[2], now)
            if remaining <= 0:
                self._uart.write(slot[1])
                self.retransmits += 1
                slot[3] = min(slot[3] * 2, _RETRY_MAX_MS)
                slot[2] = time.ticks_add(now, slot[3])
                remaining = slot[3]
            wait = min(wait, remaining)
        return wait
