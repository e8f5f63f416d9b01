"""The interface every peripheral transport implements (serial now; BLE and simulated next)."""

from __future__ import annotations

import abc


class TransportClosed(ConnectionError):
    """The link went away (port vanished, device disconnected)."""


class Transport(abc.ABC):
    """A bidirectional byte stream to one peripheral board."""

    name: str

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def read(self) -> bytes:
        """Wait for and return the next bytes (never empty); raise TransportClosed at the end."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...
