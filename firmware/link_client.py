"""Board side of the kiosk link: sequence numbers, an unacked ring buffer, retransmit until acked.

Every message the board sends is kept in a fixed ring of slots until the gateway acks its
sequence number. A NAK (corrupt frame seen by the gateway) or a silent timeout sends it again,
with the timeout doubling up to a ceiling, so a busy or restarting gateway loses nothing.
The hello has a slot of its own, so a gateway that restarted and asks who we are
(NAK_HELLO_REQUIRED) hears it at once, even while the ring is full of readings.
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
_SEQ = const(0)
_FRAME = const(1)
_DUE = const(2)
_BACKOFF = const(3)


class LinkClient:
    def __init__(self, uart, ring_size=16):
        self._uart = uart
        self._splitter = link.FrameSplitter()
        self._rx = bytearray(64)
        self._slots = [None] * ring_size  # each: [seq, frame, due_ms, backoff_ms]
        self._hello_payload = None
        self._hello_slot = None
        self._next_seq = 1
        self.acked = 0
        self.naks_received = 0
        self.retransmits = 0
        self.bad_frames = 0
        self.last_ack_ms = None

    def pending(self):
        count = sum(1 for slot in self._slots if slot is not None)
        return count + (1 if self._hello_slot is not None else 0)

    def has_room(self):
        return None in self._slots

    def hello(self, payload):
        """Introduce the board; sent again whenever the gateway asks (after its restart)."""
        self._hello_payload = payload
        self._hello_slot = self._transmit(link.MSG_HELLO, payload)

    def send(self, msg_type, payload):
        """Queue and send a message; returns its sequence, or None when the ring is full."""
        try:
            index = self._slots.index(None)
        except ValueError:
            return None
        slot = self._transmit(msg_type, payload)
        self._slots[index] = slot
        return slot[_SEQ]

    def _transmit(self, msg_type, payload):
        seq = self._next_seq
        self._next_seq = (seq % 0xFFFF) + 1  # 1..65535, 0 is never used
        frame = link.encode_frame(msg_type, seq, payload)
        self._uart.write(frame)
        return [seq, frame, time.ticks_add(time.ticks_ms(), _RETRY_FIRST_MS), _RETRY_FIRST_MS]

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
            self.bad_frames += 1  # our retransmit timer covers whatever was lost
            return
        if msg_type == link.MSG_ACK:
            self._ack(seq)
        elif msg_type == link.MSG_NAK:
            self.naks_received += 1
            reason = payload[0] if payload else 0
            if reason == link.NAK_REJECTED:
                self._ack(seq)  # refused for good (the gateway logged why): do not resend
            elif reason == link.NAK_HELLO_REQUIRED:
                if self._hello_slot is None and self._hello_payload is not None:
                    self._hello_slot = self._transmit(link.MSG_HELLO, self._hello_payload)
            elif reason != link.NAK_BUSY:
                self._resend_now(seq)

    def _ack(self, seq):
        hello = self._hello_slot
        if hello is not None and hello[_SEQ] == seq:
            self._hello_slot = None
            self._acked()
            self._resend_now(0)  # the gateway knows us now: resend what it turned away
            return
        for index, slot in enumerate(self._slots):
            if slot is not None and slot[_SEQ] == seq:
                self._slots[index] = None
                self._acked()
                return

    def _acked(self):
        self.acked += 1
        self.last_ack_ms = time.ticks_ms()

    def _resend_now(self, seq):
        now = time.ticks_ms()
        for slot in self._slots:
            if slot is not None and (seq == 0 or slot[_SEQ] == seq):
                slot[_DUE] = now

    def _retransmit_due(self):
        now = time.ticks_ms()
        wait = _RETRY_MAX_MS
        if self._hello_slot is not None:
            wait = self._retransmit(self._hello_slot, now, wait)
            if self._hello_slot is not None:
                return wait  # readings wait until the gateway has heard the hello
        for slot in self._slots:
            if slot is not None:
                wait = self._retransmit(slot, now, wait)
        return wait

    def _retransmit(self, slot, now, wait):
        remaining = time.ticks_diff(slot[_DUE], now)
        if remaining <= 0:
            self._uart.write(slot[_FRAME])
            self.retransmits += 1
            slot[_BACKOFF] = min(slot[_BACKOFF] * 2, _RETRY_MAX_MS)
            slot[_DUE] = time.ticks_add(now, slot[_BACKOFF])
            remaining = slot[_BACKOFF]
        return min(wait, remaining)
