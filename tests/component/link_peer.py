"""The gateway's end of a serial cable, driven by a test that speaks the kiosk link itself.

Firmware tests use it to ack, withhold acks, NAK, and read back exactly what a board sent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import serial

from firmware import kiosk_link as link
from gateway.link_names import MESSAGE_NAMES

Frame = tuple[int, int, bytes]
_DATA = (link.MSG_READING, link.MSG_DEVICE_ERROR)


@dataclass
class GatewayEnd:
    port: serial.Serial
    splitter: link.FrameSplitter = field(default_factory=link.FrameSplitter)
    seen: list[Frame] = field(default_factory=list)
    early: list[Frame] = field(default_factory=list)  # data frames that came with the hello

    def collect(self, seconds: float) -> list[Frame]:
        got: list[Frame] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for encoded in self.splitter.feed(self.port.read(4096)):
                got.append(link.decode_frame(encoded))
            time.sleep(0.01)
        self.seen += got
        return got

    def wait_for(self, msg_type: int, timeout: float = 10) -> Frame:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for frame in self.collect(0.05):
                if frame[0] == msg_type:
                    return frame
        raise TimeoutError(f"no {MESSAGE_NAMES[msg_type]} frame within {timeout}s")

    def send(self, msg_type: int, seq: int, payload: bytes = b"") -> None:
        self.port.write(link.encode_frame(msg_type, seq, payload))

    def hello(self, timeout: float = 5) -> tuple[int, str, str, str]:
        """Wait for the hello and ack it; frames sent meanwhile are kept for `messages`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frames = self.collect(0.05)
            for index, (msg_type, seq, payload) in enumerate(frames):
                if msg_type == link.MSG_HELLO:
                    self.early += frames[index + 1 :]
                    self.send(link.MSG_ACK, seq)
                    return link.decode_hello(payload)
                self.early.append((msg_type, seq, payload))
        raise TimeoutError("no hello")

    def messages(self, count: int, timeout: float = 5) -> list[tuple[int, tuple]]:
        """The next `count` distinct readings/device errors, each acked, decoded, in order."""
        got: list[tuple[int, tuple]] = []
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            frames, self.early = self.early + self.collect(0.05), []
            for msg_type, seq, payload in frames:
                if msg_type not in _DATA:
                    continue
                self.send(link.MSG_ACK, seq)
                if seq in seen:
                    continue
                seen.add(seq)
                decoder = link.decode_reading if msg_type == link.MSG_READING else link.decode_device_error
                got.append((msg_type, decoder(payload)))
        return got

    def quiet(self, seconds: float) -> list[Frame]:
        """Readings and device errors that arrive in the next `seconds`."""
        return [f for f in self.collect(seconds) if f[0] in _DATA]
