"""A TCP fault proxy: the 4G link between a gateway and its broker, with the link's bad days.

It listens on a loopback port and relays each connection to the upstream (the broker), with
faults a test turns on and off while traffic flows:
- `latency_s`: every chunk is delayed this long (each direction), as on a congested cell;
- `bytes_per_s`: a throughput cap (a weak signal);
- `stall()` / `resume()`: bytes stop moving but connections stay open (a dead cell that the
  TCP stack has not noticed yet: only keepalives and timeouts find out);
- `cut()`: every open connection is reset at once (the cell dropped);
- `refuse(True)`: new connections are refused (no coverage) until `refuse(False)`.

It runs its own asyncio loop in a thread, so synchronous and asynchronous tests drive it alike.
Counters say what it did, so a test can check that its faults really happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class ProxyCounters:
    connections: int = 0
    refused: int = 0
    cuts: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass
class FaultProxy:
    upstream_port: int
    upstream_host: str = "127.0.0.1"
    latency_s: float = 0.0
    bytes_per_s: float | None = None
    counters: ProxyCounters = field(default_factory=ProxyCounters)

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._running = threading.Event()
        self._flowing: asyncio.Event | None = None
        self._refusing = False
        self._writers: set[asyncio.StreamWriter] = set()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._running.wait(10):
            raise RuntimeError("fault proxy did not start")

    @property
    def open_connections(self) -> int:
        return len(self._writers) // 2

    # -- controls (any thread) -------------------------------------------------------------------
    def stall(self) -> None:
        self._call(lambda: self._flowing.clear())  # type: ignore[union-attr]

    def resume(self) -> None:
        self._call(lambda: self._flowing.set())  # type: ignore[union-attr]

    def cut(self) -> None:
        """Reset every open connection (both sides see the link drop)."""
        self._call(self._cut_all)

    def refuse(self, refusing: bool) -> None:
        self._refusing = refusing

    def close(self) -> None:
        self._call(self._cut_all)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # -- the relay -------------------------------------------------------------------------------
    def _call(self, action) -> None:  # type: ignore[no-untyped-def]
        done = threading.Event()

        def run() -> None:
            action()
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(5)

    def _cut_all(self) -> None:
        if self._writers:
            self.counters.cuts += 1
        for writer in list(self._writers):
            transport = writer.transport
            with contextlib.suppress(OSError):
                sock = transport.get_extra_info("socket")
                if sock is not None:  # RST, not FIN: a dropped cell, not a polite goodbye
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            transport.abort()
        self._writers.clear()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._flowing = asyncio.Event()
        self._flowing.set()
        server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", self.port))
        self._running.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.close()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            self.counters.refused += 1
            client_writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            self.counters.refused += 1
            client_writer.transport.abort()
            return
        self.counters.connections += 1
        self._writers.update((client_writer, up_writer))
        await asyncio.gather(
            self._pump(client_reader, up_writer, up=True),
            self._pump(up_reader, client_writer, up=False),
            return_exceptions=True,
        )
        for writer in (client_writer, up_writer):
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        assert self._flowing is not None
        while True:
            data = await reader.read(4096)
            if not data:
                writer.transport.abort()
                return
            await self._flowing.wait()
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if self.bytes_per_s:
                await asyncio.sleep(len(data) / self.bytes_per_s)
            await self._flowing.wait()
            if writer.transport.is_closing():
                return
            writer.write(data)
            await writer.drain()
            if up:
                self.counters.bytes_up += len(data)
            else:
                self.counters.bytes_down += len(data)
