"""The simulated board bus: chip models behind I2C, SPI and GPIO, served to firmware on the unix port.

Firmware's `hal_unix` (firmware/host/sim_bus.py) connects twice: a command socket for bus
transactions (request/response) and an event socket on which the server writes one byte, the
pin number, for every edge on a watched pin (a data-ready line falling, for instance).

Chip models subclass `Chip` and implement only what their part does: I2C register access,
SPI transfers while their chip-select pin is low, reactions to pin writes (clock lines), and
`tick` for free-running timing (a converter's data-ready rate). Everything runs under one lock,
so a model never sees two transactions at once, as on a real bus.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from firmware.host.sim_bus import (
    OP_HELLO,
    OP_I2C_READ,
    OP_I2C_WRITE,
    OP_PIN_READ,
    OP_PIN_WATCH,
    OP_PIN_WRITE,
    OP_SPI_XFER,
    ROLE_EVENTS,
    STATUS_BAD_REQUEST,
    STATUS_NACK,
    STATUS_OK,
)


class Chip:
    """A part on the board. Override what the part responds to."""

    i2c_address: int | None = None
    spi_bus: int | None = None
    chip_select: int | None = None

    def attach(self, board: SimulatedBoard) -> None:
        self.board = board

    def i2c_write(self, data: bytes) -> None:
        raise NotImplementedError

    def i2c_read(self, count: int) -> bytes:
        raise NotImplementedError

    def spi_transfer(self, data: bytes) -> bytes:
        raise NotImplementedError

    def pin_written(self, pin: int, value: int) -> None:
        """A firmware output pin changed (e.g. a clock line this chip listens to)."""

    def tick(self, now: float) -> None:
        """Called about every millisecond: free-running behaviour (data-ready timing)."""


@dataclass
class BusStats:
    transactions: int = 0
    nacks: int = 0
    edges_sent: int = 0


@dataclass
class SimulatedBoard:
    """Pins and chips of one peripheral board, served on a Unix socket at `path`."""

    path: str
    chips: list[Chip] = field(default_factory=list)
    tick_interval_s: float = 0.0005
    stats: BusStats = field(default_factory=BusStats)

    def __post_init__(self) -> None:
        self.pins: dict[int, int] = {}
        self.lock = threading.RLock()
        self._watched: set[int] = set()
        self._event_socks: list[socket.socket] = []
        self._edges_held_until = 0.0
        self._held_edges: dict[int, None] = {}  # pins with an edge pending while held (in order)
        self._stop = threading.Event()
        for chip in self.chips:
            chip.attach(self)
        if os.path.exists(self.path):
            os.unlink(self.path)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(4)
        self._threads = [
            threading.Thread(target=self._accept, name="bus-accept", daemon=True),
            threading.Thread(target=self._ticker, name="bus-tick", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # what chips call ------------------------------------------------------------------------
    def drive_pin(self, pin: int, value: int) -> None:
        """A chip drives one of its output pins; a change on a watched pin is sent as an edge."""
        with self.lock:
            old = self.pins.get(pin)
            self.pins[pin] = value
            if old != value and pin in self._watched:
                self._send_edge(pin)

    def pulse_pin(self, pin: int) -> None:
        """An edge the firmware must see even if the level ends where it started (DRDY pulse)."""
        with self.lock:
            if pin in self._watched:
                self._send_edge(pin)

    def hold_edges(self, seconds: float) -> None:
        """Deliver no edge for `seconds`, then one per pin that had any: the firmware's interrupts
        masked for that long (a flash erase with IRQs off), its controller latching one pending
        edge per line. Held in the bus, so the firmware is never stopped inside a handler."""
        with self.lock:
            self._edges_held_until = time.monotonic() + seconds

    def _send_edge(self, pin: int) -> None:
        if self._edges_held_until and time.monotonic() < self._edges_held_until:
            self._held_edges[pin] = None
            return
        for sock in list(self._event_socks):
            try:
                sock.sendall(bytes((pin,)))
                self.stats.edges_sent += 1
            except OSError:
                self._event_socks.remove(sock)

    # serving ----------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _ticker(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            with self.lock:
                if self._edges_held_until and now >= self._edges_held_until:
                    self._edges_held_until = 0.0
                    for pin in self._held_edges:
                        self._send_edge(pin)
                    self._held_edges.clear()
                for chip in self.chips:
                    chip.tick(now)
            time.sleep(self.tick_interval_s)

    @staticmethod
    def _recv_exact(conn: socket.socket, count: int) -> bytes | None:
        data = b""
        while len(data) < count:
            chunk = conn.recv(count - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def _serve(self, conn: socket.socket) -> None:
        # A firmware process killed mid-transaction resets its socket: that ends the connection.
        with conn, contextlib.suppress(ConnectionError):
            while not self._stop.is_set():
                head = self._recv_exact(conn, 4)
                if head is None:
                    return
                op, target, length = struct.unpack("<BBH", head)
                data = self._recv_exact(conn, length) if length else b""
                if data is None:
                    return
                if op == OP_HELLO and target == ROLE_EVENTS:
                    with self.lock:
                        self._event_socks.append(conn)
                    self._stop.wait()  # this connection only carries edges from now on
                    return
                status, reply = self._handle(op, target, data)
                conn.sendall(struct.pack("<BH", status, len(reply)) + reply)

    def _handle(self, op: int, target: int, data: bytes) -> tuple[int, bytes]:
        with self.lock:
            self.stats.transactions += 1
            if op == OP_HELLO:
                return STATUS_OK, b""
            if op in (OP_I2C_WRITE, OP_I2C_READ):
                chip = next((c for c in self.chips if c.i2c_address == target), None)
                if chip is None:
                    self.stats.nacks += 1
                    return STATUS_NACK, b""
                if op == OP_I2C_WRITE:
                    chip.i2c_write(data)
                    return STATUS_OK, b""
                (count,) = struct.unpack("<H", data)
                return STATUS_OK, chip.i2c_read(count)
            if op == OP_SPI_XFER:
                selected = [
                    c
                    for c in self.chips
                    if c.spi_bus == target
                    and c.chip_select is not None
                    and self.pins.get(c.chip_select, 1) == 0
                ]
                if len(selected) != 1:
                    return STATUS_OK, b"\xff" * len(data)  # nobody drives MISO: it floats high
                return STATUS_OK, selected[0].spi_transfer(data)
            if op == OP_PIN_READ:
                return STATUS_OK, bytes((self.pins.get(target, 1),))
            if op == OP_PIN_WRITE:
                value = data[0] if data else 0
                self.pins[target] = value
                for chip in self.chips:
                    chip.pin_written(target, value)
                return STATUS_OK, b""
            if op == OP_PIN_WATCH:
                self._watched.add(target)
                return STATUS_OK, b""
            return STATUS_BAD_REQUEST, b""

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        for sock in self._event_socks:
            sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)
