"""Bluetooth LE: the small GATT interface the gateway reads standard health devices through.

`BleakCentral` implements it on a real adapter (bleak: BlueZ over D-Bus on the Raspberry Pi);
`simulators.ble` implements it with simulated devices, so CI runs the BLE path without radios.
The BLE ingest (`gateway.ble_ingest`) knows only this interface, never which of the two it has.

Characteristics and services are named by their full 128-bit UUID strings, lower case
(`uuid16(0x2A18)` -> "00002a18-0000-1000-8000-00805f9b34fb"), as bleak reports them.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.transports.base import TransportClosed

BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"

NotifyCallback = Callable[[bytes], None]


def uuid16(short: int) -> str:
    """The full UUID of a 16-bit Bluetooth SIG number (service or characteristic)."""
    if not 0 <= short <= 0xFFFF:
        raise ValueError(f"not a 16-bit UUID: {short:#x}")
    return f"0000{short:04x}{BASE_UUID_SUFFIX}"


class BleUnavailable(TransportClosed):
    """A device could not be reached or dropped the connection: retry later, nothing is lost."""


@dataclass(frozen=True, slots=True)
class Advertisement:
    address: str
    name: str | None
    service_uuids: tuple[str, ...]
    rssi: int | None = None


class GattConnection(abc.ABC):
    """One connected peripheral. Every call raises BleUnavailable once the link has dropped."""

    address: str

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool: ...

    @abc.abstractmethod
    async def start_notify(self, characteristic: str, callback: NotifyCallback) -> None:
        """Subscribe to notifications or indications (the CCCD the characteristic supports)."""

    @abc.abstractmethod
    async def write(self, characteristic: str, data: bytes) -> None:
        """Write with response (a control point such as RACP 0x2A52 needs the response)."""

    @abc.abstractmethod
    async def read(self, characteristic: str) -> bytes: ...

    @abc.abstractmethod
    async def wait_disconnected(self) -> None:
        """Return when the link drops (either side)."""

    @abc.abstractmethod
    async def disconnect(self) -> None:
        """Close the link; harmless when it is already down."""


class BleCentral(abc.ABC):
    """The gateway's adapter: find devices and connect to them."""

    @abc.abstractmethod
    async def scan(self, service_uuids: Sequence[str], timeout_s: float) -> list[Advertisement]:
        """Devices advertising any of `service_uuids` within `timeout_s`."""

    @abc.abstractmethod
    async def connect(self, address: str, *, timeout_s: float, pair: bool) -> GattConnection:
        """Connect (and bond first when `pair`); raises BleUnavailable when it cannot."""


class BleakCentral(BleCentral):
    """The real adapter through bleak. Needs BlueZ (bluetoothd) on Linux; not run in CI."""

    def __init__(self, adapter: str | None = None) -> None:
        self._adapter = adapter

    async def scan(self, service_uuids: Sequence[str], timeout_s: float) -> list[Advertisement]:
        from bleak import BleakScanner
        from bleak.exc import BleakError

        options = {"adapter": self._adapter} if self._adapter else {}
        try:
            found = await BleakScanner.discover(
                timeout=timeout_s, service_uuids=list(service_uuids), return_adv=True, **options
            )
        except (BleakError, OSError) as exc:
            raise BleUnavailable(f"BLE scan failed: {exc}") from exc
        return [
            Advertisement(device.address, adv.local_name or device.name, tuple(adv.service_uuids), adv.rssi)
            for device, adv in found.values()
        ]

    async def connect(self, address: str, *, timeout_s: float, pair: bool) -> GattConnection:
        from bleak import BleakClient
        from bleak.exc import BleakError

        dropped = asyncio.Event()
        options = {"adapter": self._adapter} if self._adapter else {}
        client = BleakClient(
            address, disconnected_callback=lambda _: dropped.set(), timeout=timeout_s, **options
        )
        try:
            await client.connect()
            if pair:
                await client.pair()
        except (BleakError, TimeoutError, OSError) as exc:
            with contextlib.suppress(BleakError, OSError):
                await client.disconnect()
            raise BleUnavailable(f"{address}: cannot connect: {exc}") from exc
        return _BleakConnection(address, client, dropped)


class _BleakConnection(GattConnection):
    def __init__(self, address: str, client: object, dropped: asyncio.Event) -> None:
        from bleak import BleakClient

        assert isinstance(client, BleakClient)
        self.address = address
        self._client = client
        self._dropped = dropped

    @property
    def is_connected(self) -> bool:
        return self._client.is_connected

    async def _call(self, what: str, operation: Callable[[], object]) -> object:
        from bleak.exc import BleakError

        try:
            return await operation()  # type: ignore[misc]
        except (BleakError, TimeoutError, OSError) as exc:
            raise BleUnavailable(f"{self.address}: {what} failed: {exc}") from exc

    async def start_notify(self, characteristic: str, callback: NotifyCallback) -> None:
        await self._call(
            f"subscribe {characteristic}",
            lambda: self._client.start_notify(characteristic, lambda _, data: callback(bytes(data))),
        )

    async def write(self, characteristic: str, data: bytes) -> None:
        await self._call(
            f"write {characteristic}",
            lambda: self._client.write_gatt_char(characteristic, data, response=True),
        )

    async def read(self, characteristic: str) -> bytes:
        return bytes(
            await self._call(f"read {characteristic}", lambda: self._client.read_gatt_char(characteristic))
        )  # type: ignore[arg-type]

    async def wait_disconnected(self) -> None:
        await self._dropped.wait()

    async def disconnect(self) -> None:
        from bleak.exc import BleakError

        with contextlib.suppress(BleakError, OSError, TimeoutError):
            await self._client.disconnect()
