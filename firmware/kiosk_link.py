"""Kiosk link codec: framing and message layouts between a peripheral board and the gateway.

Runs unchanged on MicroPython (the board) and CPython (the gateway), so it uses only
`struct` and plain bytes. One frame on the wire is

    COBS( type:u8 | seq:u16le | payload | crc16:u16le ) 0x00

with CRC-16/CCITT-FALSE over type..payload. COBS removes every zero byte from the frame,
so 0x00 is an unambiguous delimiter and a receiver resynchronises on the next one after
line noise. Byte layouts of each message are documented in docs/wire-format.md.
"""

import struct
from array import array

try:
    from micropython import const
except ImportError:  # CPython

    def const(value):
        return value


MAX_PAYLOAD = const(250)
# type + seq + payload + crc, before COBS; COBS adds at most one byte per 254.
MAX_FRAME = const(255)
MAX_ENCODED = const(260)

# Message types.
MSG_HELLO = const(0x01)
MSG_READING = const(0x02)
MSG_ACK = const(0x03)
MSG_NAK = const(0x04)
MSG_STATUS = const(0x05)
MSG_DEVICE_ERROR = const(0x06)
MSG_ECG_CHUNK = const(0x07)
MSG_TIME_SYNC = const(0x08)
# Firmware update over the link (firmware/link_update.py): the gateway asks, the board answers each
# request with one UPDATE_REPLY carrying the request's seq.
MSG_UPDATE_OFFER = const(0x10)
MSG_UPDATE_FILE = const(0x11)
MSG_UPDATE_CHUNK = const(0x12)
MSG_UPDATE_COMMIT = const(0x13)
MSG_UPDATE_REPLY = const(0x14)

# NAK reasons.
NAK_BAD_CRC = const(1)
NAK_BAD_COBS = const(2)
NAK_TOO_SHORT = const(3)
NAK_BAD_PAYLOAD = const(4)
NAK_REJECTED = const(5)  # well-formed but refused (validation); do not retransmit
NAK_BUSY = const(6)  # gateway cannot store now (disk full); retransmit later
NAK_HELLO_REQUIRED = const(7)  # gateway does not know this device (it restarted): send hello again

# Measurement kinds.
KIND_BP = const(1)
KIND_GLUCOSE = const(2)
KIND_ECG = const(3)
KIND_SPO2 = const(4)
KIND_TEMPERATURE = const(5)
KIND_WEIGHT = const(6)

# Measurement fields; the unit of each comes from the device profile.
FIELD_SYSTOLIC = const(1)
FIELD_DIASTOLIC = const(2)
FIELD_MEAN_ARTERIAL = const(3)
FIELD_PULSE_RATE = const(4)
FIELD_GLUCOSE = const(10)
FIELD_SPO2 = const(20)
FIELD_BODY_TEMPERATURE = const(30)
FIELD_BODY_WEIGHT = const(40)

# Reading flag bits.
FLAG_IRREGULAR_PULSE = const(0x0001)
FLAG_BODY_MOVEMENT = const(0x0002)
FLAG_CUFF_LOOSE = const(0x0004)
FLAG_CONTROL_SOLUTION = const(0x0008)  # glucose: control solution, not the resident's blood
FLAG_LOW_PERFUSION = const(0x0010)  # SpO2: weak pulse signal
FLAG_LEAD_OFF = const(0x0020)  # ECG: an electrode lost contact during the recording
FLAG_UNSTABLE = const(0x0040)  # weight: the resident moved; value did not settle
FLAG_ABOVE_RANGE = const(0x0080)  # the device showed "HI": true value above its range
FLAG_BELOW_RANGE = const(0x0100)  # the device showed "LO": true value below its range
FLAG_FASTING = const(0x0200)  # glucose: taken fasting (the >= 7.0 mmol/L threshold applies)
FLAG_AFTER_MEAL = const(0x0400)  # glucose: taken after a meal

# Device error codes (MSG_DEVICE_ERROR payload: kind:u8 code:u8).
ERROR_CUFF_LEAK = const(1)
ERROR_MOTION = const(2)
ERROR_OVER_PRESSURE = const(3)
ERROR_SENSOR_TIMEOUT = const(4)
ERROR_STRIP = const(5)  # glucose: used, damaged or wrong strip
ERROR_TEMPERATURE = const(6)  # glucose meter or sensor outside its operating temperature
ERROR_SAMPLE_INSUFFICIENT = const(7)  # glucose: not enough blood on the strip
ERROR_LEAD_OFF = const(8)  # ECG: electrodes not attached
ERROR_NO_FINGER = const(9)  # SpO2: no finger in the probe
ERROR_SENSOR_NOT_FOUND = const(10)  # the part did not answer on its bus
ERROR_OVERLOAD = const(11)  # scale: load above capacity
ERROR_SENSOR_FAULT = const(12)  # the part reports an internal fault


class LinkError(ValueError):
    """A frame or payload that cannot be decoded; `reason` is one of the NAK_* codes."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


def _make_crc_table():
    # array('H'): 512 bytes of heap, where a tuple of 256 ints costs four times that.
    table = array("H", bytes(512))
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table[byte] = crc & 0xFFFF
    return table


_CRC_TABLE = _make_crc_table()


def crc16(data, crc=0xFFFF):
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF); check value of b"123456789" is 0x29B1."""
    return _crc16_head(data, len(data), crc)


def _crc16_head(data, length, crc):
    """crc16 of data[0:length], without the slice a prefix would allocate."""
    table = _CRC_TABLE
    for index in range(length):
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ data[index]) & 0xFF]
    return crc


def cobs_encode(data):
    """Consistent Overhead Byte Stuffing: returns bytes with no 0x00 (delimiter not added)."""
    out = bytearray(len(data) + len(data) // 254 + 1)
    return bytes(out[: _cobs_encode_into(data, len(data), out, 0)])


def _cobs_encode_into(data, length, out, start):
    """COBS-encode data[0:length] into out[start:]; returns the end offset. No allocation."""
    code_index = start
    out_index = start + 1
    code = 1
    last = length - 1
    for index in range(length):
        byte = data[index]
        if byte == 0:
            out[code_index] = code
            code_index = out_index
            out_index += 1
            code = 1
            continue
        out[out_index] = byte
        out_index += 1
        code += 1
        if code == 0xFF and index < last:
            # A full block of 254 non-zero bytes carries no implied zero; start the next one.
            out[code_index] = code
            code_index = out_index
            out_index += 1
            code = 1
    out[code_index] = code
    return out_index


def cobs_decode(data):
    """Inverse of cobs_encode; raises LinkError on a zero byte or a code past the end."""
    out = bytearray()
    index = 0
    length = len(data)
    while index < length:
        code = data[index]
        if code == 0:
            raise LinkError(NAK_BAD_COBS, "zero byte inside COBS frame")
        index += 1
        end = index + code - 1
        if end > length:
            raise LinkError(NAK_BAD_COBS, "COBS code runs past end of frame")
        out.extend(data[index:end])
        index = end
        if code != 0xFF and index < length:
            out.append(0)
    return bytes(out)


def frame_size(payload_length):
    """Most bytes one frame with a payload of this length takes on the wire, delimiter included
    (COBS adds one byte per 254, fewer when the body has zeros)."""
    body = payload_length + 5
    return body + body // 254 + 2


_BODY = bytearray(MAX_FRAME)  # encode_frame_into's scratch: frames are encoded one at a time


def encode_frame_into(out, start, msg_type, seq, payload=b""):
    """Write one delimited frame into out[start:]; returns its end offset. No allocation.

    `out` needs frame_size(len(payload)) bytes from `start`. Not reentrant (one scratch body):
    never call it from an interrupt handler.
    """
    length = len(payload)
    if length > MAX_PAYLOAD:
        raise LinkError(NAK_BAD_PAYLOAD, "payload too long: %d" % length)
    body = _BODY
    struct.pack_into("<BH", body, 0, msg_type, seq & 0xFFFF)
    body[3 : 3 + length] = payload
    end = 3 + length
    struct.pack_into("<H", body, end, _crc16_head(body, end, 0xFFFF))
    end = _cobs_encode_into(body, end + 2, out, start)
    out[end] = 0
    return end + 1


def encode_frame(msg_type, seq, payload=b""):
    """Build one delimited frame ready to write to the UART."""
    out = bytearray(frame_size(len(payload)))
    return bytes(out[: encode_frame_into(out, 0, msg_type, seq, payload)])


def decode_frame(encoded):
    """Decode one frame without its 0x00 delimiter -> (msg_type, seq, payload)."""
    body = cobs_decode(encoded)
    if len(body) < 5:
        raise LinkError(NAK_TOO_SHORT, "frame too short: %d bytes" % len(body))
    (expected,) = struct.unpack("<H", body[-2:])
    actual = crc16(body[:-2])
    if expected != actual:
        raise LinkError(NAK_BAD_CRC, "CRC mismatch: frame says %04x, computed %04x" % (expected, actual))
    msg_type, seq = struct.unpack("<BH", body[:3])
    return msg_type, seq, body[3:-2]


class FrameSplitter:
    """Cuts a byte stream into delimited frames; drops oversize garbage until the next 0x00."""

    def __init__(self, max_encoded=MAX_ENCODED):
        self._buf = bytearray()
        self._max = max_encoded
        self._overflowed = False
        self.dropped_bytes = 0

    def feed(self, data):
        """Return a list of complete frames (without delimiter) found so far."""
        frames = []
        for byte in data:
            if byte == 0:
                if self._overflowed:
                    self._overflowed = False
                elif self._buf:
                    frames.append(bytes(self._buf))
                self._buf = bytearray()
            elif self._overflowed:
                self.dropped_bytes += 1
            elif len(self._buf) >= self._max:
                self.dropped_bytes += len(self._buf) + 1
                self._buf = bytearray()
                self._overflowed = True
            else:
                self._buf.append(byte)
        return frames


def _pack_str(text):
    raw = text.encode("utf-8")
    if len(raw) > 63:
        raise LinkError(NAK_BAD_PAYLOAD, "string too long")
    return bytes((len(raw),)) + raw


def _unpack_str(payload, offset):
    if offset >= len(payload):
        raise LinkError(NAK_BAD_PAYLOAD, "string length missing")
    length = payload[offset]
    end = offset + 1 + length
    if end > len(payload):
        raise LinkError(NAK_BAD_PAYLOAD, "string runs past end of payload")
    return bytes(payload[offset + 1 : end]).decode("utf-8"), end


# HELLO capabilities (optional trailing u16): one bit per kind the board measures, plus features.
CAP_JOURNAL = const(0x0100)  # unacked readings are kept on flash across a reboot
CAP_TIME_SYNC = const(0x0200)  # stamps readings with the clock from TIME_SYNC
CAP_STATUS = const(0x0400)  # sends STATUS messages
CAP_UPDATE = const(0x0800)  # takes firmware over the link; its boot code rolls back a failed update
CAP_TRIAL = const(0x1000)  # this version is on trial: the ack of this hello confirms it
CAP_ROLLED_BACK = const(0x2000)  # the last update never said hello: this is the version before it


def capability_of_kind(kind):
    return 1 << (kind - 1)


def encode_hello(boot_id, device_id, model, firmware_version, capabilities=0):
    """HELLO: boot_id:u32, device id, model and firmware version as u8-length strings, then
    capabilities:u16 when non-zero (older boards send none; decoders treat that as 0)."""
    out = struct.pack("<I", boot_id) + _pack_str(device_id) + _pack_str(model) + _pack_str(firmware_version)
    if capabilities:
        out += struct.pack("<H", capabilities)
    return out


def decode_hello(payload):
    """-> (boot_id, device_id, model, firmware_version)."""
    if len(payload) < 4:
        raise LinkError(NAK_BAD_PAYLOAD, "hello too short")
    (boot_id,) = struct.unpack("<I", payload[:4])
    device_id, offset = _unpack_str(payload, 4)
    model, offset = _unpack_str(payload, offset)
    firmware_version, offset = _unpack_str(payload, offset)
    if offset != len(payload) and offset + 2 != len(payload):
        raise LinkError(NAK_BAD_PAYLOAD, "trailing bytes after hello")
    return boot_id, device_id, model, firmware_version


def decode_hello_capabilities(payload):
    """The hello's capability bits (0 when the board sent none)."""
    boot_id, device_id, model, firmware_version = decode_hello(payload)
    end = 4 + 3 + len(device_id.encode()) + len(model.encode()) + len(firmware_version.encode())
    return struct.unpack("<H", payload[end : end + 2])[0] if len(payload) == end + 2 else 0


_READING_HEAD = "<BHIB"  # kind, flags, device_time (s since 1970, 0 = clock not set), count
_READING_FIELD = "<BbI"  # field, decimal exponent, mantissa (two's complement i32)


def reading_size(field_count):
    """Payload bytes of a READING with this many fields (a board sizes its link slots by it)."""
    return 8 + 6 * field_count


def encode_reading(kind, flags, device_time, fields):
    """READING: fields is a sequence of (field, mantissa, exponent); value = mantissa * 10**exponent."""
    out = bytearray(struct.pack(_READING_HEAD, kind, flags, device_time, len(fields)))
    for field, mantissa, exponent in fields:
        out += struct.pack(_READING_FIELD, field, exponent, mantissa & 0xFFFFFFFF)
    return bytes(out)


def decode_reading(payload):
    """-> (kind, flags, device_time, [(field, mantissa, exponent), ...])."""
    head = struct.calcsize(_READING_HEAD)
    item = struct.calcsize(_READING_FIELD)
    if len(payload) < head:
        raise LinkError(NAK_BAD_PAYLOAD, "reading too short")
    kind, flags, device_time, count = struct.unpack(_READING_HEAD, payload[:head])
    if len(payload) != head + count * item:
        raise LinkError(
            NAK_BAD_PAYLOAD, "reading says %d fields, payload has %d bytes" % (count, len(payload))
        )
    fields = []
    for index in range(count):
        start = head + index * item
        field, exponent, raw = struct.unpack(_READING_FIELD, payload[start : start + item])
        mantissa = raw - 0x100000000 if raw & 0x80000000 else raw
        fields.append((field, mantissa, exponent))
    return kind, flags, device_time, fields


def encode_device_error(kind, code):
    return struct.pack("<BB", kind, code)


def decode_device_error(payload):
    if len(payload) != 2:
        raise LinkError(NAK_BAD_PAYLOAD, "device error must be 2 bytes")
    return struct.unpack("<BB", payload)


def encode_nak(reason):
    return struct.pack("<B", reason)


def decode_nak(payload):
    if len(payload) != 1:
        raise LinkError(NAK_BAD_PAYLOAD, "nak must be 1 byte")
    return payload[0]


# ECG_CHUNK: first_sample:u32 channels:u8 count:u8 lead_off:u8, then count x channels samples,
# each a 24-bit two's-complement value, little-endian, interleaved by sample. Sample rate and
# gain are properties of the model (device profile), not repeated in every chunk.
_ECG_HEAD = "<IBBB"
ECG_HEAD_SIZE = const(7)


def ecg_chunk_capacity(channels):
    """Most samples per channel that fit in one chunk."""
    return (MAX_PAYLOAD - ECG_HEAD_SIZE) // (3 * channels)


def pack_ecg_chunk_into(buf, first_sample, channels, count, lead_off, samples):
    """Fill `buf` (a bytearray of at least the chunk's size) without allocating; returns its length.

    `samples` holds count * channels ints, interleaved by sample.
    """
    struct.pack_into(_ECG_HEAD, buf, 0, first_sample, channels, count, lead_off)
    offset = ECG_HEAD_SIZE
    for index in range(count * channels):
        value = samples[index] & 0xFFFFFF
        buf[offset] = value & 0xFF
        buf[offset + 1] = (value >> 8) & 0xFF
        buf[offset + 2] = value >> 16
        offset += 3
    return offset


def decode_ecg_chunk(payload):
    """-> (first_sample, channels, lead_off, [samples interleaved by sample])."""
    if len(payload) < ECG_HEAD_SIZE:
        raise LinkError(NAK_BAD_PAYLOAD, "ecg chunk too short")
    first_sample, channels, count, lead_off = struct.unpack(_ECG_HEAD, payload[:ECG_HEAD_SIZE])
    if channels == 0 or len(payload) != ECG_HEAD_SIZE + 3 * channels * count:
        raise LinkError(
            NAK_BAD_PAYLOAD, "ecg chunk length does not match %d x %d samples" % (count, channels)
        )
    samples = []
    for offset in range(ECG_HEAD_SIZE, len(payload), 3):
        value = payload[offset] | (payload[offset + 1] << 8) | (payload[offset + 2] << 16)
        samples.append(value - 0x1000000 if value & 0x800000 else value)
    return first_sample, channels, lead_off, samples


def encode_status(battery_percent, error_flags, uptime_s):
    """STATUS: battery:u8 (255 = mains powered), error_flags:u16, uptime_s:u32."""
    return struct.pack("<BHI", battery_percent, error_flags, uptime_s)


def decode_status(payload):
    if len(payload) != 7:
        raise LinkError(NAK_BAD_PAYLOAD, "status must be 7 bytes")
    return struct.unpack("<BHI", payload)


def encode_time_sync(unix_seconds, milliseconds):
    """TIME_SYNC (gateway -> board): seconds since 1970 UTC:u32, milliseconds:u16."""
    return struct.pack("<IH", unix_seconds, milliseconds)


def decode_time_sync(payload):
    if len(payload) != 6:
        raise LinkError(NAK_BAD_PAYLOAD, "time sync must be 6 bytes")
    return struct.unpack("<IH", payload)
