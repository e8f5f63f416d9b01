"""Link codec loop on MicroPython (run by bench_pipeline.py; CPython cannot run it: it needs ticks_us).

    micropython benchmarks/mp_link_codec.py FIRMWARE_DIR FRAMES

Runs the same loop as the CPython benchmark (encode_frame -> FrameSplitter.feed -> decode_frame
of one blood-pressure READING frame) on the board's interpreter, plus a raw baseline (struct and
binascii.crc32, both in C), and prints one `key value` pair per line for the parent to parse.
Allocation matters more than speed on a board, so it also prints the heap bytes one frame costs.
"""

import gc
import struct
import sys
import time

import micropython

sys.path.insert(0, sys.argv[1])

import kiosk_link as link

FRAMES = int(sys.argv[2])
ROUNDS = 3

PAYLOAD = link.encode_reading(
    link.KIND_BP,
    link.FLAG_IRREGULAR_PULSE,
    1795564800,
    (
        (link.FIELD_SYSTOLIC, 128, 0),
        (link.FIELD_DIASTOLIC, 82, 0),
        (link.FIELD_MEAN_ARTERIAL, 97, 0),
        (link.FIELD_PULSE_RATE, 71, 0),
    ),
)


def codec_loop(count):
    splitter = link.FrameSplitter()
    decoded = 0
    for seq in range(count):
        frame = link.encode_frame(link.MSG_READING, seq, PAYLOAD)
        for encoded in splitter.feed(frame):
            if link.decode_frame(encoded)[2] != PAYLOAD:
                raise ValueError("codec round trip changed the payload")
            decoded += 1
    if decoded != count:
        raise ValueError("splitter lost frames")


def raw_loop(count):
    try:
        from binascii import crc32
    except ImportError:
        return False
    for seq in range(count):
        body = struct.pack("<BH", link.MSG_READING, seq & 0xFFFF) + PAYLOAD
        wire = body + struct.pack("<I", crc32(body))
        struct.unpack_from("<BH", wire)
        if struct.unpack_from("<I", wire, len(wire) - 4)[0] != crc32(wire[:-4]):
            raise ValueError("raw CRC mismatch")
    return True


def best_us(loop, count):
    best = None
    for _ in range(ROUNDS):
        gc.collect()
        start = time.ticks_us()
        if loop(count) is False:
            return None
        elapsed = time.ticks_diff(time.ticks_us(), start)
        if best is None or elapsed < best:
            best = elapsed
    return best


def encode_loop(count):
    for seq in range(count):
        link.encode_frame(link.MSG_READING, seq, PAYLOAD)


def heap_bytes_per_frame(loop, count):
    """Heap allocated per frame with the collector off (what a board's GC must later reclaim)."""
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    loop(count)
    after = gc.mem_alloc()
    gc.enable()
    gc.collect()
    return (after - before) // count


codec = best_us(codec_loop, FRAMES)
raw = best_us(raw_loop, FRAMES)
print("version", ".".join(str(part) for part in sys.implementation.version[:3]))
print("frame_bytes", len(link.encode_frame(link.MSG_READING, 1, PAYLOAD)))
print("codec_frames_per_s", FRAMES * 1000000 // max(codec, 1))
if raw is not None:
    print("raw_frames_per_s", FRAMES * 1000000 // max(raw, 1))
print("heap_bytes_per_frame", heap_bytes_per_frame(codec_loop, 50))
print("heap_bytes_per_encode", heap_bytes_per_frame(encode_loop, 50))
# On the unix port the GC's sweeps are not subtracted from the allocator's counters, so
# mem_peak is close to the bytes allocated over the whole run, not a heap high-water mark.
if hasattr(micropython, "mem_peak"):
    print("mem_peak", micropython.mem_peak())
print("heap_size", gc.mem_alloc() + gc.mem_free())
