"""A null-modem cable between two pseudo-terminals, with a plug and fault injection.

The firmware opens one end's path and the gateway the other's. The cable copies bytes both
ways on a thread; it can be unplugged (bytes are lost, as on a loose connector) and can corrupt
the next N bytes going to the gateway, to exercise CRC/NAK recovery.
"""

from __future__ import annotations

import os
import selectors
import threading
from dataclasses import dataclass, field

from simulators.pty_port import PtyPort


@dataclass
class CableStats:
    to_gateway: int = 0
    to_device: int = 0
    dropped: int = 0
    corrupted: int = 0


@dataclass
class SerialCable:
    device_end: PtyPort = field(default_factory=PtyPort.open)
    gateway_end: PtyPort = field(default_factory=PtyPort.open)
    plugged: bool = True
    stats: CableStats = field(default_factory=CableStats)

    def __post_init__(self) -> None:
        self._corrupt_next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="serial-cable", daemon=True)
        self._thread.start()

    @property
    def device_path(self) -> str:
        return self.device_end.path

    @property
    def gateway_path(self) -> str:
        return self.gateway_end.path

    def corrupt_next_bytes_to_gateway(self, count: int) -> None:
        """Flip one bit in each of the next `count` bytes sent towards the gateway."""
        with self._lock:
            self._corrupt_next = count

    def _pump(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.device_end.master_fd, selectors.EVENT_READ, "to_gateway")
        selector.register(self.gateway_end.master_fd, selectors.EVENT_READ, "to_device")
        while not self._stop.is_set():
            for key, _ in selector.select(timeout=0.1):
                try:
                    data = os.read(key.fd, 4096)
                except (BlockingIOError, OSError):
                    continue
                if not data:
                    continue
                if not self.plugged:
                    self.stats.dropped += len(data)
                    continue
                if key.data == "to_gateway":
                    data = self._maybe_corrupt(data)
                    self._write_all(self.gateway_end.master_fd, data)
                    self.stats.to_gateway += len(data)
                else:
                    self._write_all(self.device_end.master_fd, data)
                    self.stats.to_device += len(data)
        selector.close()

    def _maybe_corrupt(self, data: bytes) -> bytes:
        with self._lock:
            if not self._corrupt_next:
                return data
            count = min(self._corrupt_next, len(data))
            self._corrupt_next -= count
        buf = bytearray(data)
        for i in range(count):
            # Never create or remove a 0x00 delimiter: damage the content, not the framing.
            flipped = buf[i] ^ 0x10
            buf[i] = flipped if flipped and buf[i] else buf[i]
        self.stats.corrupted += count
        return bytes(buf)

    def _write_all(self, fd: int, data: bytes) -> None:
        """Write what the far end's buffer takes; the rest is lost, like a UART overrun."""
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            written = 0
        self.stats.dropped += len(data) - written

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.device_end.close()
        self.gateway_end.close()
