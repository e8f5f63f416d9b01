"""A null-modem cable between two pseudo-terminals, with a plug, a baud rate and fault injection.

The firmware opens one end's path and the gateway the other's. One thread per direction copies
bytes. With `baudrate` set, each direction carries at most baudrate/10 bytes per second (8N1
framing), as a real UART does, so link throughput can be measured against the line's limit
(a bare pty moves bytes as fast as memory). The cable can be unplugged (bytes are lost, as on a
loose connector) and can corrupt the next N bytes going to the gateway, to exercise CRC/NAK
recovery. Bytes the far end cannot take are dropped and counted, like a UART overrun.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import selectors
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from simulators.pty_port import PtyPort

_CHUNK = 256
_OVERSHOOT_S = 0.001  # most a thread oversleeps: the line is never counted busier than this


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
    baudrate: int | None = None
    stats: CableStats = field(default_factory=CableStats)

    def __post_init__(self) -> None:
        self._corrupt_next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._pump,
                args=(self.device_end, self.gateway_end, True),
                name="cable-up",
                daemon=True,
            ),
            threading.Thread(
                target=self._pump,
                args=(self.gateway_end, self.device_end, False),
                name="cable-down",
                daemon=True,
            ),
        ]
        for thread in self._threads:
            thread.start()

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

    def _pump(self, source: PtyPort, sink: PtyPort, to_gateway: bool) -> None:
        selector = selectors.DefaultSelector()
        selector.register(source.master_fd, selectors.EVENT_READ)
        line_free_at = time.monotonic()
        while not self._stop.is_set():
            # Bytes already waiting when the line came free leave right behind the last ones,
            # as from a UART's FIFO; counting from now would add this thread's wake-up and
            # sleep overshoot to every chunk as idle line (a few % of a saturated line).
            backlog = bool(selector.select(timeout=0))
            if not backlog and not selector.select(timeout=0.1):
                continue
            try:
                data = os.read(source.master_fd, _CHUNK)
            except (BlockingIOError, OSError):
                continue
            if not data:
                continue
            if not self.plugged:
                with self._lock:
                    self.stats.dropped += len(data)
                continue
            if self.baudrate:
                # The bytes leave the far UART one character time (10 bits) after another.
                now = time.monotonic()
                start = max(line_free_at, now - _OVERSHOOT_S) if backlog else max(line_free_at, now)
                line_free_at = start + len(data) * 10 / self.baudrate
                delay = line_free_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if to_gateway:
                data = self._maybe_corrupt(data)
            written = self._write(sink.master_fd, data)
            with self._lock:
                if to_gateway:
                    self.stats.to_gateway += written
                else:
                    self.stats.to_device += written
                self.stats.dropped += len(data) - written
        selector.close()

    def _maybe_corrupt(self, data: bytes) -> bytes:
        with self._lock:
            if not self._corrupt_next:
                return data
            count = min(self._corrupt_next, len(data))
            self._corrupt_next -= count
            self.stats.corrupted += count
        buf = bytearray(data)
        for i in range(count):
            # Never create or remove a 0x00 delimiter: damage the content, not the framing.
            flipped = buf[i] ^ 0x10
            buf[i] = flipped if flipped and buf[i] else buf[i]
        return bytes(buf)

    @staticmethod
    def _write(fd: int, data: bytes) -> int:
        """Write what the far end's buffer takes; the rest is lost, like a UART overrun."""
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        self.device_end.close()
        self.gateway_end.close()


class SerialCableProcess:
    """A paced SerialCable served from a process of its own.

    Why: a cable in the process of the gateway it feeds shares the GIL with it, so a throughput
    figure would measure the two fighting over one interpreter, not the line. A real UART moves
    bytes in hardware, beside the gateway's CPU. Stats are read over a pipe.
    """

    def __init__(self, baudrate: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve_cable, args=(child, baudrate), name="serial-cable", daemon=True
        )
        self._process.start()
        child.close()
        if not self._conn.poll(30):
            self._process.kill()
            raise RuntimeError("serial cable process did not come up within 30 s")
        self.device_path, self.gateway_path = self._conn.recv()
        self.baudrate = baudrate

    def stats(self) -> CableStats:
        self._conn.send("stats")
        return CableStats(**self._conn.recv())

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send("close")
            self._conn.recv()
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
        self._conn.close()


def _serve_cable(conn: Connection, baudrate: int) -> None:
    cable = SerialCable(baudrate=baudrate)
    conn.send((cable.device_path, cable.gateway_path))
    try:
        while True:
            try:
                request = conn.recv()
            except EOFError:
                return
            if request == "stats":
                with cable._lock:
                    conn.send(dataclasses.asdict(cable.stats))
            else:
                conn.send(None)
                return
    finally:
        cable.close()
