"""`SimulatedCentral`: the gateway's BLE adapter, with simulated devices instead of radios."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import TypeVar

from gateway.transports.ble import Advertisement, BleCentral, BleUnavailable
from simulators.ble.peripheral import (
    ATT_INSUFFICIENT_AUTHENTICATION,
    AttError,
    SimulatedConnection,
    SimulatedPeripheral,
)

__all__ = ["SimulatedCentral"]

DeviceT = TypeVar("DeviceT", bound=SimulatedPeripheral)


class SimulatedCentral(BleCentral):
    """An adapter that sees the simulated devices it holds (in-process, on the running event loop).

    `scan_time_s` caps how long a scan lasts (0: return at once; None: the caller's full timeout).
    A connection to a device that cannot be reached fails at once, or after the caller's `timeout_s`
    when `realistic_timeouts` is set. A device requiring bonding refuses a connection without
    `pair=True` unless this central bonded with it before (as a bonded device reconnects encrypted).
    """

    def __init__(
        self,
        devices: Iterable[SimulatedPeripheral] = (),
        *,
        address: str = "DC:A6:32:00:00:01",
        scan_time_s: float | None = 0.0,
        realistic_timeouts: bool = False,
    ) -> None:
        self.address = address.upper()
        self.scan_time_s = scan_time_s
        self.realistic_timeouts = realistic_timeouts
        self.devices: dict[str, SimulatedPeripheral] = {}
        self.connections: list[SimulatedConnection] = []
        for device in devices:
            self.add(device)

    def add(self, device: DeviceT) -> DeviceT:
        if device.address in self.devices:
            raise ValueError(f"a device with address {device.address} is already here")
        self.devices[device.address] = device
        return device

    def remove(self, address: str) -> SimulatedPeripheral:
        device = self.devices.pop(address.upper())
        device.drop_link("device removed from the simulation")
        return device

    async def scan(self, service_uuids: Sequence[str], timeout_s: float) -> list[Advertisement]:
        duration = timeout_s if self.scan_time_s is None else min(timeout_s, self.scan_time_s)
        await asyncio.sleep(max(duration, 0.0))
        wanted = {uuid.lower() for uuid in service_uuids}
        return [
            device.advertisement()
            for device in self.devices.values()
            if device.is_advertising and (not wanted or wanted.intersection(device.advertised_services))
        ]

    async def connect(self, address: str, *, timeout_s: float, pair: bool) -> SimulatedConnection:
        device = self.devices.get(address.upper())
        await asyncio.sleep(0)
        if device is None or not device.reachable:
            if self.realistic_timeouts:
                await asyncio.sleep(timeout_s)
            raise BleUnavailable(f"{address}: cannot connect: device not found within {timeout_s} s")
        if device.faults.connect_failures > 0:
            device.faults.connect_failures -= 1
            raise BleUnavailable(f"{address}: cannot connect: connection failed to be established (0x3e)")
        if device.connection is not None:
            raise BleUnavailable(f"{address}: cannot connect: already connected to a central")
        if pair:
            if device.faults.refuse_pairing:
                raise AttError(device.address, None, ATT_INSUFFICIENT_AUTHENTICATION, "pairing rejected")
            device.bonds.add(self.address)
        elif device.requires_bonding and self.address not in device.bonds:
            raise AttError(
                device.address, None, ATT_INSUFFICIENT_AUTHENTICATION, "the device requires bonding"
            )
        connection = SimulatedConnection(device, central_address=self.address)
        device._attach(connection)
        self.connections.append(connection)
        return connection

    async def close(self) -> None:
        """Disconnect every link this central opened (end of a test)."""
        for connection in self.connections:
            await connection.disconnect()
        self.connections.clear()

    async def __aenter__(self) -> SimulatedCentral:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()
