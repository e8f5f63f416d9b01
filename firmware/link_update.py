"""Firmware update over the kiosk link: the messages, and the board's end of them.

The gateway asks, the board answers every request with one UPDATE_REPLY that carries the
request's seq; the gateway resends a request whose reply does not come, and the board answers a
request it already carried out with the same reply, so a lost frame in either direction costs a
resend, never a second write. Byte layouts (docs/wire-format.md 1.10):

    UPDATE_OFFER   manifest_sha256[32] total:u32 files:u8 version:str
    UPDATE_FILE    update_id:u32 index:u8 size:u32 name:str
    UPDATE_CHUNK   update_id:u32 index:u8 offset:u32 data[<= 241]
    UPDATE_COMMIT  update_id:u32
    UPDATE_REPLY   status:u8 index:u8 offset:u32 [detail:str]

`update_id` is the first four bytes of the manifest's SHA-256, little-endian. The board stages
every file in `new/` as its chunks arrive (nothing is held in RAM but the one chunk being
written) and remembers the offer in `new/.offer`, so an update cut by a dropped link, a gateway
restart or a power cut resumes where it stopped: a FILE request is answered with the bytes of
that file already on flash. COMMIT checks the staged manifest against the offer's hash and every
staged file against the manifest (firmware/updater.py), puts the new version on trial, switches
it in (the installed one to prev/) and resets the board. The board cannot check the release
signature (no Ed25519 on MicroPython): the gateway verified it before it offered anything.

The codec runs on CPython too (the gateway imports it); the board's handler, `LinkUpdater`, is
imported by link_client only when the first update request arrives.
"""

import os
import struct
from binascii import hexlify

try:
    from micropython import const
except ImportError:  # CPython

    def const(value):
        return value


try:
    import kiosk_link as link
except ImportError:  # CPython: the gateway imports this module from the firmware package
    from firmware import kiosk_link as link  # pyright: ignore[reportMissingImports]

# Reply status codes.
UPDATE_OK = const(0)
UPDATE_UNKNOWN = const(1)  # no such update staged (another offer, or none): offer it again
UPDATE_NO_FILE = const(2)  # that file is not the one open: send its FILE request again
UPDATE_BAD_REQUEST = const(3)  # the request does not decode, or names a bad file, size or offset
UPDATE_NO_SPACE = const(4)  # not enough free flash for the update
UPDATE_FLASH_ERROR = const(5)  # the file system refused a write (detail: the error number)
UPDATE_CHECK_FAILED = const(6)  # commit: a staged file does not hash right (detail: its name); new/ cleared

CHUNK_HEAD = const(9)  # update_id:u32 index:u8 offset:u32
MAX_CHUNK = const(241)  # link.MAX_PAYLOAD - CHUNK_HEAD
_REPLY_HEAD = const(6)
_MAX_DETAIL = const(63)
_OFFER_FILE = "new/.offer"  # the staged update's manifest SHA-256, hex
_ENOSPC = const(28)
_RESET_DELAY_MS = const(100)  # lets the commit's reply leave the UART before the reset


def update_id(manifest_sha256):
    """The u32 that names an update in FILE, CHUNK and COMMIT: its manifest hash's first bytes."""
    return struct.unpack("<I", bytes(manifest_sha256[:4]))[0]


def _pack_str(text):
    raw = text.encode("utf-8")
    if len(raw) > _MAX_DETAIL:
        raise link.LinkError(link.NAK_BAD_PAYLOAD, "string too long")
    return bytes((len(raw),)) + raw


def _unpack_str(payload, offset):
    if offset >= len(payload) or offset + 1 + payload[offset] != len(payload):
        raise link.LinkError(link.NAK_BAD_PAYLOAD, "bad string at the end of the payload")
    return bytes(payload[offset + 1 :]).decode("utf-8")


def encode_offer(manifest_sha256, total, files, version):
    if len(manifest_sha256) != 32:
        raise link.LinkError(link.NAK_BAD_PAYLOAD, "manifest hash must be 32 bytes")
    return struct.pack("<32sIB", manifest_sha256, total, files) + _pack_str(version)


def decode_offer(payload):
    """-> (manifest_sha256, total bytes, file count, version)."""
    if len(payload) < 38:
        raise link.LinkError(link.NAK_BAD_PAYLOAD, "update offer too short")
    digest, total, files = struct.unpack("<32sIB", bytes(payload[:37]))
    return digest, total, files, _unpack_str(payload, 37)


def encode_file(update, index, size, name):
    return struct.pack("<IBI", update, index, size) + _pack_str(name)


def decode_file(payload):
    """-> (update_id, index, size, name)."""
    if len(payload) < 10:
        raise link.LinkError(link.NAK_BAD_PAYLOAD, "update file too short")
    update, index, size = struct.unpack("<IBI", bytes(payload[:9]))
    return update, index, size, _unpack_str(payload, 9)


def encode_chunk(update, index, offset, data):
    if len(data) > MAX_CHUNK:
        raise link.LinkError(link.NAK_BAD_PAYLOAD, "update chunk too long: %d" % len(data))
    return struct.pack("<IBI", update, index, offset) + bytes(data)


def decode_chunk_head(payload):
    """-> (update_id, index, offset); the data is payload[CHUNK_HEAD:]."""
    if len(payload) <= CHUNK_HEAD:
        raise link.LinkError(link.NAK_BAD_PAYLOAD, "update chunk too short")
    return struct.unpack_from("<IBI", payload, 0)


def encode_commit(update):
    return struct.pack("<I", update)


def decode_commit(payload):
    if len(payload) != 4:
        raise link.LinkError(link.NAK_BAD_PAYLOAD, "update commit must be 4 bytes")
    return struct.unpack("<I", bytes(payload))[0]


def encode_reply(status, index=0, offset=0, detail=""):
    out = struct.pack("<BBI", status, index, offset)
    return out + _pack_str(detail) if detail else out


def decode_reply(payload):
    """-> (status, index, offset, detail)."""
    if len(payload) < _REPLY_HEAD:
        raise link.LinkError(link.NAK_BAD_PAYLOAD, "update reply too short")
    status, index, offset = struct.unpack("<BBI", bytes(payload[:_REPLY_HEAD]))
    detail = _unpack_str(payload, _REPLY_HEAD) if len(payload) > _REPLY_HEAD else ""
    return status, index, offset, detail


def _safe_name(name):
    """Flat, not hidden, and not the boot code that guards the update (it is never replaced)."""
    return 0 < len(name) <= _MAX_DETAIL and "/" not in name and not name.startswith(".") and name != "boot.py"


class LinkUpdater:
    """The board's end: stages files in new/ chunk by chunk, commits, resets.

    State in RAM is the offer's hash and the one file being written; all of it can be rebuilt
    from new/ after a reboot, which is what makes a transfer resumable.
    """

    def __init__(self, uart, log=print):
        import updater  # the board's file layout (also what boot.py runs)

        self._updater = updater
        self._uart = uart
        self._log = log
        self._offer = None  # manifest SHA-256 (hex) of the update being staged
        self._id = 0
        self._file = None  # the open file in new/, or None
        self._index = -1
        self._size = 0
        self._offset = 0
        self._out = bytearray(link.frame_size(_REPLY_HEAD + 1 + _MAX_DETAIL))

    def handle(self, msg_type, seq, payload):
        """Carry out one request and answer it; a committed update resets the board."""
        index = offset = 0
        detail = ""
        try:
            if msg_type == link.MSG_UPDATE_OFFER:
                status, offset, detail = self._on_offer(payload)
            elif msg_type == link.MSG_UPDATE_FILE:
                status, index, offset = self._on_file(payload)
            elif msg_type == link.MSG_UPDATE_CHUNK:
                status, index, offset = self._on_chunk(payload)
            elif msg_type == link.MSG_UPDATE_COMMIT:
                status, detail = self._on_commit(payload)
            else:
                return
        except (link.LinkError, ValueError):
            status = UPDATE_BAD_REQUEST
        except OSError as exc:
            self._close()
            errno = exc.args[0] if exc.args else 0
            status = UPDATE_NO_SPACE if errno == _ENOSPC else UPDATE_FLASH_ERROR
            detail = "errno %s" % errno
        length = link.encode_frame_into(
            self._out, 0, link.MSG_UPDATE_REPLY, seq, encode_reply(status, index, offset, detail)
        )
        self._uart.write(memoryview(self._out)[:length])
        if msg_type == link.MSG_UPDATE_COMMIT and status == UPDATE_OK:
            import time

            from hal import reset

            time.sleep_ms(_RESET_DELAY_MS)
            reset()

    def _close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def _known(self, update):
        """True when `update` is the offer staged in new/ (read back from flash after a reboot)."""
        if self._offer is None:
            try:
                with open(_OFFER_FILE) as f:
                    self._offer = f.read()
                self._id = update_id(bytes.fromhex(self._offer))
            except (OSError, ValueError):
                self._offer = None
                return False
        return update == self._id

    def _staged_bytes(self):
        return sum(self._updater.file_size("new/" + name) for name in os.listdir("new") if name[0] != ".")

    def _on_offer(self, payload):
        digest, total, _files, version = decode_offer(payload)
        self._close()
        updater = self._updater
        wanted = hexlify(digest).decode()
        self._offer = None
        if not (self._known(update_id(digest)) and self._offer == wanted):
            updater.clear(updater.STAGING)
            with open(_OFFER_FILE, "w") as f:
                f.write(wanted)
            self._offer, self._id = wanted, update_id(digest)
            self._log("update %s offered: %d bytes, staging in new/" % (version, total))
        staged = self._staged_bytes()
        stat = os.statvfs(".")
        free = stat[1] * stat[4]
        if free < total - staged:
            return UPDATE_NO_SPACE, staged, "%d bytes free" % free
        return UPDATE_OK, staged, ""

    def _on_file(self, payload):
        update, index, size, name = decode_file(payload)
        if not self._known(update):
            return UPDATE_UNKNOWN, index, 0
        if not _safe_name(name):
            return UPDATE_BAD_REQUEST, index, 0
        self._close()
        path = "new/" + name
        have = self._updater.file_size(path)
        if have > size:
            os.remove(path)
            have = 0
        have = max(have, 0)
        if have < size:
            self._file = open(path, "ab")
        self._index, self._size, self._offset = index, size, have
        return UPDATE_OK, index, have

    def _on_chunk(self, payload):
        update, index, offset = decode_chunk_head(payload)
        if not self._known(update):
            return UPDATE_UNKNOWN, index, 0
        if index != self._index:
            return UPDATE_NO_FILE, index, 0
        if offset != self._offset or self._file is None:
            return UPDATE_OK, index, self._offset  # a resend, or a gap: say where we are
        data = memoryview(payload)[CHUNK_HEAD:]
        if offset + len(data) > self._size:
            return UPDATE_BAD_REQUEST, index, self._offset
        self._file.write(data)
        self._offset += len(data)
        if self._offset == self._size:
            self._close()
        return UPDATE_OK, index, self._offset

    def _on_commit(self, payload):
        update = decode_commit(payload)
        if not self._known(update):
            return UPDATE_UNKNOWN, ""
        self._close()
        updater = self._updater
        try:
            manifest, names = updater.check_staged_manifest(self._offer)
        except ValueError as exc:
            updater.clear(updater.STAGING)
            self._offer = None
            self._index = -1
            self._log("update refused: staged %s does not match its manifest" % exc.args[0])
            return UPDATE_CHECK_FAILED, exc.args[0]
        current = updater.read_json(updater.MANIFEST)
        previous = current["version"] if current else None
        updater.start_trial(manifest["version"], previous)
        updater.switch(names)
        self._offer = None
        self._log("update %s switched in (was %s): on trial, resetting" % (manifest["version"], previous))
        return UPDATE_OK, ""
