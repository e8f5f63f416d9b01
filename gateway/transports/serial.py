"""Serial back-end: pyserial on a UART (or, in CI, a pseudo-terminal), driven by the event loop."""

from __future__ import annotations

import asyncio
import contextlib

import serial

from gateway.transports.base import Transport, TransportClosed


class SerialTransport(Transport):
    def __init__(self, path: str, baudrate: int = 115200) -> None:
        self.name = path
        self._path = path
        self._baudrate = baudrate
        self._port: serial.Serial | None = None
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.write_overruns = 0

    async def open(self) -> None:
        try:
            # Non-blocking both ways: a board that stopped reading must not stall the event loop.
            self._port = serial.Serial(self._path, self._baudrate, timeout=0, write_timeout=0)
        except serial.SerialException as exc:
            raise TransportClosed(f"cannot open {self._path}: {exc}") from exc
        asyncio.get_running_loop().add_reader(self._port.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        assert self._port is not None
        try:
            data = self._port.read(4096)
        except serial.SerialException:
            data = None
        if data is None:
            asyncio.get_running_loop().remove_reader(self._port.fileno())
            self._queue.put_nowait(None)
        elif data:
            self._queue.put_nowait(data)

    async def read(self) -> bytes:
        data = await self._queue.get()
        if data is None:
            raise TransportClosed(f"{self._path} closed")
        return data

    async def write(self, data: bytes) -> None:
        if self._port is None:
            raise TransportClosed(f"{self._path} is not open")
        try:
            self._port.write(data)
        except serial.SerialTimeoutException:
            # The board's receive buffer is full: the answer is lost like a UART overrun, and
            # the board's retransmit (deduplicated here) brings the message back.
            self.write_overruns += 1
        except serial.SerialException as exc:
            raise TransportClosed(f"write to {self._path} failed: {exc}") from exc

    async def close(self) -> None:
        if self._port is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._port.fileno())
            self._port.close()
            self._port = None
