"""Flash journal for the link: unacked readings and the link session survive a board reboot.

The gateway recognises a message by (device id, session id from the hello, link seq). After a
reboot the board must therefore resend what was never acked *with the same session and seq*,
and must never reuse a seq that an earlier message of the session had. The journal keeps:

    header  b"KLJ1" session:u32 reserved:u16 (pad to 16)
    slot i  used:u8 seq:u16 length:u16 frame[MAX_ENCODED]      (one per ring slot)

`reserved` is a lease on sequence numbers: the header is rewritten only every LEASE messages,
so a stream of ECG chunks (never journaled: they are too many for flash) costs a flash write
every few seconds, not one per chunk. After a reboot numbering resumes at the end of the lease,
past anything the previous run may have sent.
"""

import os
import struct

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


import kiosk_link as link

_MAGIC = b"KLJ1"
_HEADER = const(16)
_SLOT_HEAD = const(5)
_SLOT_SIZE = const(5 + 260)  # used + seq + length + kiosk_link.MAX_ENCODED
LEASE = const(256)
_LAST_SEQ = const(0xFFFF)
_HELLO_RESERVE = const(32)


def _new_session_id():
    return struct.unpack("<I", os.urandom(4))[0] or 1


class LinkJournal:
    def __init__(self, path, slots):
        self.slots = slots
        self._slot_buf = bytearray(_SLOT_SIZE)
        self._head = bytearray(_HEADER)
        try:
            self._file = open(path, "r+b")
        except OSError:
            self._file = open(path, "w+b")
            self._file.write(bytearray(_HEADER + slots * _SLOT_SIZE))
        self._file.seek(0)
        header = self._file.read(_HEADER)
        if len(header) == _HEADER and header[:4] == _MAGIC:
            self.session_id, reserved = struct.unpack_from("<IH", header, 4)
            self.next_seq = reserved
        else:
            self.session_id = 0
            self.next_seq = _LAST_SEQ  # forces a new session below
        if self.next_seq >= _LAST_SEQ - LEASE and not self.pending():
            # Near the end of the seq space with nothing unacked: start afresh. With unacked
            # messages the old session goes on (they must keep their session and seq); the
            # client starts a new one once they are acked.
            self.session_id = _new_session_id()
            self.next_seq = 1
        self._reserved = 0
        self._lease(self.next_seq)

    def _lease(self, seq):
        self._reserved = min(seq + LEASE, _LAST_SEQ)
        self._head[0:4] = _MAGIC
        struct.pack_into("<IH", self._head, 4, self.session_id, self._reserved)
        self._file.seek(0)
        self._file.write(self._head)
        self._sync()

    def _sync(self):
        try:
            self._file.flush()
            os.sync()
        except (AttributeError, OSError):
            pass

    def take_seq(self, for_hello=False):
        """The next link seq of this session; None when the session is used up (start a new one).

        The last seqs of a session are kept for hellos (see link_client)."""
        seq = self.next_seq
        if seq >= (_LAST_SEQ if for_hello else _LAST_SEQ - _HELLO_RESERVE):
            return None
        if seq >= self._reserved:
            self._lease(seq)
        self.next_seq = seq + 1
        return seq

    def restart_session(self):
        self.session_id = _new_session_id()
        self.next_seq = 1
        self._lease(1)

    def pending(self):
        """Journaled, unacked messages: list of (slot, seq, frame) to load into the ring at boot."""
        out = []
        for slot in range(self.slots):
            self._file.seek(_HEADER + slot * _SLOT_SIZE)
            head = self._file.read(_SLOT_HEAD)
            if len(head) == _SLOT_HEAD and head[0] == 1:
                seq, length = struct.unpack_from("<HH", head, 1)
                frame = self._file.read(length)
                if len(frame) == length and length <= link.MAX_ENCODED:
                    out.append((slot, seq, frame))
        return out

    def store(self, slot, seq, frame):
        buf = self._slot_buf
        buf[0] = 1
        struct.pack_into("<HH", buf, 1, seq, len(frame))
        buf[_SLOT_HEAD : _SLOT_HEAD + len(frame)] = frame
        self._file.seek(_HEADER + slot * _SLOT_SIZE)
        self._file.write(memoryview(buf)[: _SLOT_HEAD + len(frame)])
        self._sync()

    def release(self, slot):
        self._file.seek(_HEADER + slot * _SLOT_SIZE)
        self._file.write(b"\x00")
        self._sync()
