"""Link codec vectors on the MicroPython unix port (run by tests/unit/test_link_codec.py).

micropython tests/micropython/link_vectors.py REPO_ROOT
"""

import json
import sys

ROOT = sys.argv[1]
sys.path.insert(0, ROOT + "/firmware")
sys.path.insert(0, ROOT + "/tests/micropython")

import kiosk_link as link  # noqa: E402
from mp_runner import run_tests  # noqa: E402


def unhex(text):
    """Vector notation: hex bytes, spaces ignored, 'aa..bb' is an inclusive byte range."""
    out = bytearray()
    for part in text.split():
        if ".." in part:
            start, end = part.split("..")
            out.extend(range(int(start, 16), int(end, 16) + 1))
        else:
            out.extend(bytes.fromhex(part))
    return bytes(out)


def load(name):
    with open(ROOT + "/tests/vectors/" + name) as handle:
        return json.load(handle)["cases"]


def test_crc16():
    for case in load("crc16.json"):
        data = case["data_ascii"].encode() if "data_ascii" in case else unhex(case["data_hex"])
        assert link.crc16(data) == int(case["crc"], 16), case


def test_cobs():
    for case in load("cobs.json"):
        decoded, encoded = unhex(case["decoded"]), unhex(case["encoded"])
        assert link.cobs_encode(decoded) == encoded, case
        assert link.cobs_decode(encoded) == decoded, case


def test_frames():
    for case in load("link_frames.json"):
        frame = unhex(case["frame"])
        assert link.encode_frame(case["type"], case["seq"], unhex(case["payload"])) == frame, case["name"]
        assert link.decode_frame(frame[:-1]) == (case["type"], case["seq"], unhex(case["payload"])), case[
            "name"
        ]


def test_corrupt_frame_rejected():
    frame = bytearray(unhex(load("link_frames.json")[3]["frame"]))
    frame[5] ^= 0x01
    try:
        link.decode_frame(bytes(frame[:-1]))
    except link.LinkError as exc:
        assert exc.reason == link.NAK_BAD_CRC
    else:
        raise AssertionError("corrupt frame decoded")


def test_splitter_resynchronises():
    frames = [unhex(c["frame"]) for c in load("link_frames.json")]
    splitter = link.FrameSplitter()
    got = splitter.feed(b"\x55\x66noise\x00" + b"".join(frames))
    assert got[1:] == [f[:-1] for f in frames]


run_tests(globals())
