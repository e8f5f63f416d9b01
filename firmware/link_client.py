"""Board side of the kiosk link: sequence numbers, an unacked ring buffer, retransmit until acked.

Every message the board sends is kept in a fixed ring of slots until the gateway acks its
sequence number. Each slot has a frame buffer of `frame_capacity` bytes, allocated at start-up,
so sending allocates no frame: a streaming board's heap stays flat. The buffers are separate
blocks, not one: a fragmented heap has room for many small blocks where one large one fails. A NAK (corrupt
frame seen by the gateway) or a silent timeout sends it again, with the timeout doubling up to a
ceiling, so a busy or restarting gateway loses nothing. The hello has a slot of its own, so a
gateway that restarted and asks who we are (NAK_HELLO_REQUIRED) hears it at once, even while the
ring is full of readings.

The gateway knows a message by (device, session id from the hello, seq). When the 16-bit seq
space of a session is used up, the ring is drained and a new session starts with a new hello,
so a seq is never reused within a session. With a `LinkJournal` (flash), durable messages are
on flash before they are on the wire and released when acked; after a reboot they are resent
under their original session and seq, so the gateway stores each exactly once.

Firmware updates (UPDATE_* requests from the gateway) are handed to `link_update.LinkUpdater`,
imported when the first one arrives, and only on a board whose boot code ran `updater.boot()`:
its hello then says so (CAP_UPDATE), and says whether this version is on trial or the last
update was rolled back. The ack of that hello confirms the trial (`updater.confirm()`).
"""

import struct
import time
from array import array

import kiosk_link as link

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


_RETRY_FIRST_MS = const(300)
_RETRY_MAX_MS = const(4000)
_LAST_SEQ = const(0xFFFF)
_HELLO_RESERVE = const(32)  # last seqs of a session: only hellos may use them
_REJECTED_HELLO_RETRY_MS = const(60000)


def update_flags():
    """Hello bits about firmware updates: CAP_UPDATE once the boot code ran `updater.boot()` in
    this interpreter (boot.py on a board), plus CAP_TRIAL / CAP_ROLLED_BACK from the flash."""
    import sys

    updater = sys.modules.get("updater")
    if updater is None or not updater.booted:
        return 0
    on_trial, rolled_back = updater.state()
    flags = link.CAP_UPDATE
    if on_trial:
        flags |= link.CAP_TRIAL
    if rolled_back:
        flags |= link.CAP_ROLLED_BACK
    return flags


def _random_u32():
    try:
        import os

        return struct.unpack("<I", os.urandom(4))[0] or 1
    except (ImportError, AttributeError):
        return (time.ticks_cpu() & 0xFFFFFFFF) or 1


class _Receiver:
    """Cuts the UART's bytes into frames in one preallocated buffer (kiosk_link.FrameSplitter's
    rules: oversize garbage is dropped up to the next 0x00) and hands each frame to a callback.

    `feed_into(buf, count, handle)` reads buf[0:count] by index: no slice, no list of frames,
    no per-frame buffer; the only allocation is the callback's (decoding the frame).
    """

    def __init__(self, max_encoded=link.MAX_ENCODED):
        self._buf = bytearray(max_encoded)
        self._view = memoryview(self._buf)
        self._len = 0
        self._overflowed = False
        self.dropped_bytes = 0

    def feed_into(self, data, count, handle):
        buf = self._buf
        size = len(buf)
        for index in range(count):
            byte = data[index]
            if byte == 0:
                if self._overflowed:
                    self._overflowed = False
                elif self._len:
                    handle(self._view[: self._len])  # valid until the next byte: decode at once
                self._len = 0
            elif self._overflowed:
                self.dropped_bytes += 1
            elif self._len >= size:
                self.dropped_bytes += self._len + 1
                self._len = 0
                self._overflowed = True
            else:
                buf[self._len] = byte
                self._len += 1


class RamSession:
    """Session numbering without flash (the journal's interface, minus persistence)."""

    slots = 0

    def __init__(self):
        self.session_id = _random_u32()
        self.next_seq = 1

    def take_seq(self, for_hello=False):
        seq = self.next_seq
        if seq >= (_LAST_SEQ if for_hello else _LAST_SEQ - _HELLO_RESERVE):
            return None
        self.next_seq = seq + 1
        return seq

    def restart_session(self):
        self.session_id = _random_u32()
        self.next_seq = 1


class LinkClient:
    """The board's end of the link. Slot state is kept as parallel arrays (struct of arrays):
    four ints per slot in arrays cost a fraction of a list per slot, on a board's heap.
    Slot `ring_size` is the hello's: its frame is kept apart (a hello may be larger than a slot)."""

    def __init__(self, uart, ring_size=16, journal=None, frame_capacity=link.MAX_ENCODED):
        self._uart = uart
        self._receiver = _Receiver()
        self._rx = bytearray(64)
        self._handle_frame = self._handle  # bound once: a bound method is an allocation
        self._journal = journal
        self._session = journal if journal is not None else RamSession()
        if journal is not None:
            ring_size = journal.slots
        self._size = ring_size
        self._capacity = frame_capacity
        self._buffers = [bytearray(frame_capacity) for _ in range(ring_size)]
        slots = ring_size + 1  # the last one is the hello's
        self._seqs = array("i", bytes(4 * slots))  # seq of the unacked message; 0: slot free
        self._lengths = array("H", bytes(2 * slots))  # its frame's length in the slot's buffer
        self._due = [time.ticks_ms()] * slots  # ticks_ms of its next resend (ticks: a list, not ints)
        self._backoff = array("i", bytes(4 * slots))  # ms until the resend after that
        self._journal_slots = array("h", bytes(2 * slots))  # its journal slot, -1: not journaled
        self._due_order = array("H", bytes(2 * slots))  # scratch: slots due, oldest first
        self._hello_frame = b""
        self._hello_payload = None
        self._hello_builder = None
        self._update_flags = 0  # CAP_UPDATE, CAP_TRIAL, CAP_ROLLED_BACK: added to the hello
        self._updater = None  # link_update.LinkUpdater, made when the first update request comes
        self.acked = 0
        self.naks_received = 0
        self.retransmits = 0
        self.bad_frames = 0
        self.sessions_started = 0
        self.last_ack_ms = None
        self.restored = 0
        self._synced_unix_s = 0
        self._synced_ticks = 0
        if journal is not None:
            now = time.ticks_ms()
            for index, seq, frame in journal.pending():
                if index < ring_size and len(frame) <= frame_capacity:
                    self._buffers[index][: len(frame)] = frame
                    self._occupy(index, seq, len(frame), now, index)
                    self.restored += 1

    def device_time(self):
        """Seconds since 1970 UTC from the gateway's last TIME_SYNC, or 0 (clock not set).

        Stamped on a reading when it is taken, so readings held on the board while the
        gateway was away keep their true time.
        """
        if not self._synced_unix_s:
            return 0
        return self._synced_unix_s + time.ticks_diff(time.ticks_ms(), self._synced_ticks) // 1000

    @property
    def journaled(self):
        """True when durable messages are kept on flash until acked."""
        return self._journal is not None

    @property
    def session_id(self):
        return self._session.session_id

    def _hello_waiting(self):
        return self._seqs[self._size] != 0

    def _free_slot(self):
        """Index of a free ring slot, or -1."""
        seqs = self._seqs
        for index in range(self._size):
            if not seqs[index]:
                return index
        return -1

    def pending(self):
        seqs = self._seqs
        return sum(1 for index in range(self._size + 1) if seqs[index])

    def has_room(self):
        """True when send() would take a message now: the gateway has our hello, a slot is free."""
        return not self._hello_waiting() and self._free_slot() >= 0

    def hello(self, payload):
        """Introduce the board with a HELLO payload (kiosk_link.encode_hello).

        Its boot id is replaced by the link session id, which is what the gateway
        de-duplicates by; the hello is rebuilt when a new session starts and resent whenever
        the gateway asks.
        """
        if callable(payload):
            build_payload = payload
        else:
            _, device_id, model, firmware = link.decode_hello(payload)
            capabilities = link.decode_hello_capabilities(payload)
            self._update_flags = update_flags()

            def build_payload(session_id):
                return link.encode_hello(
                    session_id, device_id, model, firmware, capabilities | self._update_flags
                )

        self._hello_builder = build_payload
        self._hello_payload = build_payload(self._session.session_id)
        self._send_hello(self._hello_payload)

    def send(self, msg_type, payload, durable=True):
        """Queue and send a message; returns its sequence, or None when it cannot go yet.

        With a journal, a durable message is on flash before it is on the wire; pass
        durable=False for high-rate streams (ECG chunks), whose gaps are visible downstream.
        Allocates nothing but the memoryview handed to the UART.
        """
        if link.frame_size(len(payload)) > self._capacity:
            raise link.LinkError(
                link.NAK_BAD_PAYLOAD,
                "a %d-byte payload does not fit a %d-byte link slot" % (len(payload), self._capacity),
            )
        if self._hello_waiting():
            # Until the gateway acks the hello it may still hold an older session of ours, and
            # would file these seqs under it: nothing goes out before the hello is heard.
            return None
        index = self._free_slot()
        if index < 0:
            return None
        seq = self._session.take_seq()
        if seq is None:
            # Session used up: once the ring has drained, start a new one with a new hello;
            # this message waits until the gateway has acked that hello.
            self._start_new_session()
            return None
        length = link.encode_frame_into(self._buffers[index], 0, msg_type, seq, payload)
        frame = memoryview(self._buffers[index])[:length]
        journal_slot = -1
        if self._journal is not None and durable:
            self._journal.store(index, seq, frame)
            journal_slot = index
        self._uart.write(frame)
        self._occupy(index, seq, length, time.ticks_add(time.ticks_ms(), _RETRY_FIRST_MS), journal_slot)
        return seq

    def _occupy(self, index, seq, length, due_ms, journal_slot):
        self._seqs[index] = seq
        self._lengths[index] = length
        self._due[index] = due_ms
        self._backoff[index] = _RETRY_FIRST_MS
        self._journal_slots[index] = journal_slot

    def _frame(self, index):
        if index == self._size:
            return self._hello_frame
        return memoryview(self._buffers[index])[: self._lengths[index]]

    def _start_new_session(self):
        """Seq space used up: once everything of the old session is acked, start a new one."""
        if self.pending():
            return False
        self._session.restart_session()
        self.sessions_started += 1
        if self._hello_builder is not None:
            self._hello_payload = self._hello_builder(self._session.session_id)
            self._send_hello(self._hello_payload)
        return True

    def _send_hello(self, payload):
        # Hellos may use the seqs reserved at the end of a session, so answering a gateway's
        # NAK_HELLO_REQUIRED never forces a new session while messages are still pending.
        seq = self._session.take_seq(True)
        if seq is None and self.pending():
            # No seq left, messages of this session still unacked: they must stay in it, so
            # the hello reuses the last seq (a hello's seq only pairs it with its ack).
            seq = _LAST_SEQ - 1
        elif seq is None:  # the very end of a session, nothing pending: start afresh
            self._session.restart_session()
            self.sessions_started += 1
            seq = self._session.take_seq(True)
            if self._hello_builder is not None:
                self._hello_payload = payload = self._hello_builder(self._session.session_id)
        self._hello_frame = link.encode_frame(link.MSG_HELLO, seq, payload)
        self._uart.write(self._hello_frame)
        self._occupy(
            self._size, seq, len(self._hello_frame), time.ticks_add(time.ticks_ms(), _RETRY_FIRST_MS), -1
        )

    def poll(self):
        """Handle incoming acks/naks and retransmit what is due. Returns ms until the next retry.

        Allocates nothing when nothing came in and nothing is due; a resend allocates the
        memoryview handed to the UART, and each frame received what decoding it takes.
        """
        count = self._uart.readinto(self._rx)
        if count:
            self._receiver.feed_into(self._rx, count, self._handle_frame)
        return self._retransmit_due()

    def _handle(self, encoded):
        try:
            msg_type, seq, payload = link.decode_frame(encoded)
        except link.LinkError:
            self.bad_frames += 1  # our retransmit timer covers whatever was lost
            return
        if msg_type == link.MSG_ACK:
            self._ack(seq)
        elif msg_type == link.MSG_TIME_SYNC:
            try:
                unix_s, millis = link.decode_time_sync(payload)
            except link.LinkError:
                self.bad_frames += 1
                return
            self._synced_ticks = time.ticks_add(time.ticks_ms(), -millis)
            self._synced_unix_s = unix_s
        elif msg_type == link.MSG_NAK:
            self.naks_received += 1
            reason = payload[0] if payload else 0
            hello = self._size
            if reason == link.NAK_REJECTED and self._hello_waiting() and self._seqs[hello] == seq:
                # The gateway does not accept this model: ask again much later, not in a loop.
                self._due[hello] = time.ticks_add(time.ticks_ms(), _REJECTED_HELLO_RETRY_MS)
                self._backoff[hello] = _REJECTED_HELLO_RETRY_MS
            elif reason == link.NAK_REJECTED:
                self._ack(seq)  # refused for good (the gateway logged why): do not resend
            elif reason == link.NAK_HELLO_REQUIRED:
                if not self._hello_waiting() and self._hello_payload is not None:
                    self._send_hello(self._hello_payload)
            elif reason != link.NAK_BUSY:
                self._resend_now(seq)
        elif link.MSG_UPDATE_OFFER <= msg_type <= link.MSG_UPDATE_COMMIT:
            self._update(msg_type, seq, payload)

    def _update(self, msg_type, seq, payload):
        if not self._update_flags & link.CAP_UPDATE:
            return  # no boot code guards an update here: the gateway read that in our hello
        if self._updater is None:
            from link_update import LinkUpdater  # only a board being updated pays for the module

            self._updater = LinkUpdater(self._uart)
        self._updater.handle(msg_type, seq, payload)

    def _hello_acked(self):
        """The gateway heard us: a version on trial is confirmed, a rollback reported."""
        outcome = link.CAP_TRIAL | link.CAP_ROLLED_BACK
        if self._update_flags & outcome and self._hello_builder is not None:
            import updater

            updater.confirm()
            self._update_flags &= ~outcome
            self._hello_payload = self._hello_builder(self._session.session_id)

    def _ack(self, seq):
        seqs = self._seqs
        if seqs[self._size] == seq and seq:
            seqs[self._size] = 0
            self._acked()
            self._hello_acked()
            self._resend_now(0)  # the gateway knows us now: resend what it turned away
            return
        for index in range(self._size):
            if seqs[index] == seq and seq:
                seqs[index] = 0
                if self._journal_slots[index] >= 0:
                    self._journal.release(self._journal_slots[index])
                self._acked()
                return

    def _acked(self):
        self.acked += 1
        self.last_ack_ms = time.ticks_ms()

    def _resend_now(self, seq):
        now = time.ticks_ms()
        seqs = self._seqs
        for index in range(self._size):
            if seqs[index] and (seq == 0 or seqs[index] == seq):
                self._due[index] = now

    def _retransmit_due(self):
        now = time.ticks_ms()
        wait = _RETRY_MAX_MS
        if self._hello_waiting():
            wait = self._retransmit(self._size, now, wait)
            if self._hello_waiting():
                return wait  # readings wait until the gateway has heard the hello
        seqs = self._seqs
        due = self._due
        order = self._due_order
        count = 0
        for index in range(self._size):
            if seqs[index] and time.ticks_diff(due[index], now) <= 0:
                # Insertion sort by seq, oldest first: the gateway stores in the order it hears.
                at = count
                while at and seqs[order[at - 1]] > seqs[index]:
                    order[at] = order[at - 1]
                    at -= 1
                order[at] = index
                count += 1
        for at in range(count):
            wait = self._retransmit(order[at], now, wait)
        for index in range(self._size):
            if seqs[index]:
                wait = min(wait, time.ticks_diff(due[index], now))
        return max(wait, 0)

    def _retransmit(self, index, now, wait):
        remaining = time.ticks_diff(self._due[index], now)
        if remaining <= 0:
            self._uart.write(self._frame(index))
            self.retransmits += 1
            backoff = min(self._backoff[index] * 2, _RETRY_MAX_MS)
            self._backoff[index] = backoff
            self._due[index] = time.ticks_add(now, backoff)
            remaining = backoff
        return min(wait, remaining)


def open_client(uart, journal_path=None, slots=16, log=print, frame_capacity=link.MAX_ENCODED):
    """A LinkClient, with its flash journal when `journal_path` is given (unacked readings then
    survive a reboot); logs what it will resend. Returns (client, capability bits it adds)."""
    journal = None
    if journal_path:
        from link_journal import LinkJournal  # only boards with a journal pay for the module

        journal = LinkJournal(journal_path, slots)
    client = LinkClient(uart, slots, journal, frame_capacity)
    if client.restored:
        log("resending %d unacked message(s) from flash" % client.restored)
    return client, (link.CAP_JOURNAL if journal is not None else 0)
