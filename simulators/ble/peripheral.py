"""A simulated GATT peripheral and the link to it: the part every simulated health device shares.

A `SimulatedPeripheral` has characteristics (read / write / notify / indicate), a Device Information,
a Battery and a Current Time service (writing 0x2A2B sets the device's clock), a clock, bonds, and
faults a test injects. A `SimulatedConnection` is the
`GattConnection` a `SimulatedCentral` hands the gateway: values the device sends go through one
ordered queue and are handed to the subscriber's callback by a task of the event loop, one at a time
and in order (indications and notifications alike), as a BLE stack does.

ATT errors (read not permitted, procedure already in progress, ...) raise `AttError`, a
`BleUnavailable`, because that is what the gateway sees from bleak, whose errors the real back-end
turns into `BleUnavailable`; the code is kept on the exception for tests.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import ClassVar

from gateway.transports.ble import Advertisement, BleUnavailable, GattConnection, NotifyCallback, uuid16

__all__ = [
    "CURRENT_TIME",
    "UNSET_CLOCK_EPOCH",
    "AttError",
    "DeviceClock",
    "Faults",
    "Property",
    "SimulatedConnection",
    "SimulatedPeripheral",
    "encode_current_time",
]

# ATT error codes (Core spec Vol 3 Part F 3.4.1.1) and the GLS / HRS application errors.
ATT_READ_NOT_PERMITTED = 0x02
ATT_WRITE_NOT_PERMITTED = 0x03
ATT_INSUFFICIENT_AUTHENTICATION = 0x05
ATT_ATTRIBUTE_NOT_FOUND = 0x0A
ATT_INVALID_ATTRIBUTE_VALUE_LENGTH = 0x0D
ATT_PROCEDURE_ALREADY_IN_PROGRESS = 0x80  # GLS application error (0xFE in the common codes)
ATT_CCCD_IMPROPERLY_CONFIGURED = 0x81  # GLS application error (0xFD in the common codes)
ATT_CONTROL_POINT_VALUE_NOT_SUPPORTED = 0x80  # HRS application error
ATT_OUT_OF_RANGE = 0xFF  # common profile and service error code

CURRENT_TIME = uuid16(0x2A2B)


def encode_current_time(now: datetime, adjust_reason: int = 0) -> bytes:
    """Current Time 0x2A2B: Exact Time 256 (Date Time, Day of Week 1=Monday..7, Fractions256),
    then Adjust Reason (bit 0 manual, 1 external reference, 2 time zone, 3 DST)."""
    return (
        now.year.to_bytes(2, "little")
        + bytes([now.month, now.day, now.hour, now.minute, now.second, now.isoweekday()])
        + bytes([now.microsecond * 256 // 1_000_000, adjust_reason])
    )


UNSET_CLOCK_EPOCH = datetime(2000, 1, 1)  # where a clock nobody set starts counting, as many meters do


class AttError(BleUnavailable):
    """The peripheral answered a request with an ATT error (or refused the link's security)."""

    def __init__(self, address: str, characteristic: str | None, code: int, what: str) -> None:
        where = f" {characteristic}" if characteristic else ""
        super().__init__(f"{address}{where}: ATT error {code:#04x} ({what})")
        self.address = address
        self.characteristic = characteristic
        self.code = code


class Property(enum.Flag):
    READ = enum.auto()
    WRITE = enum.auto()  # write with response
    NOTIFY = enum.auto()
    INDICATE = enum.auto()


WriteHandler = Callable[[bytes], Awaitable[None]]


@dataclass
class Characteristic:
    uuid: str
    properties: Property
    value: bytes = b""  # what a read returns (unless `on_read` computes it)
    on_write: WriteHandler | None = None
    on_read: Callable[[], bytes] | None = None


class DeviceClock:
    """The device's real-time clock: frozen (tests: only `advance` moves it) or running with the host.

    A clock that was never set (or lost its battery) counts from `UNSET_CLOCK_EPOCH`; `is_set` says
    which. Devices stamp measurements with `now()` unless the test passes a time.
    """

    def __init__(self, time_: datetime | None = None, *, running: bool = False) -> None:
        self.running = running
        self._set(time_)

    @classmethod
    def host(cls) -> DeviceClock:
        """A set clock that runs with the host's local time (for demos)."""
        return cls(datetime.now().replace(microsecond=0), running=True)

    def _set(self, time_: datetime | None) -> None:
        self.is_set = time_ is not None
        self._base = time_ if time_ is not None else UNSET_CLOCK_EPOCH
        self._started = time.monotonic()

    def now(self) -> datetime:
        elapsed = time.monotonic() - self._started if self.running else 0.0
        return (self._base + timedelta(seconds=elapsed)).replace(microsecond=0)

    def set(self, time_: datetime) -> None:
        """Someone set the clock (the technician, or the gateway through Current Time)."""
        self._set(time_)

    def unset(self) -> None:
        """The clock battery was pulled: it restarts from its default and is no longer set."""
        self._set(None)

    def advance(self, delta: timedelta | float) -> None:
        self._base += delta if isinstance(delta, timedelta) else timedelta(seconds=delta)


@dataclass
class Faults:
    """Faults a test injects into one device. Each is read at the moment it matters."""

    connect_failures: int = 0  # the next N connection attempts fail (interference), then succeed
    drop_after_notifications: int | None = None  # one-shot: the link drops after N more values sent
    refuse_pairing: bool = False  # pairing fails (the user did not confirm on the device)
    refused_op_codes: set[int] = field(default_factory=set)  # control-point op codes "not supported"
    abort_unsuccessful: bool = False  # RACP abort answers "abort unsuccessful" and the report goes on
    report_fails_after: int | None = None  # a RACP report stops after N records: "procedure not completed"


@dataclass
class _Outgoing:
    characteristic: str
    data: bytes
    delivered: asyncio.Future[bool]


class SimulatedPeripheral:
    """Base of the simulated devices: GATT table, radio state, bonds, faults, one link at a time."""

    service: ClassVar[int] = 0  # the health service it advertises (16-bit UUID)

    def __init__(
        self,
        *,
        address: str,
        name: str,
        requires_bonding: bool = False,
        clock: DeviceClock | None = None,
        rssi: int = -60,
        manufacturer: str = "Kiosk Simulated Devices",
        model: str = "SIM",
        serial_number: str | None = None,
        firmware_revision: str = "1.0.0",
        battery_percent: int = 100,
        interval_s: float = 0.0,
        att_mtu: int = 23,
        current_time_service: bool = True,
    ) -> None:
        self.address = address.upper()
        self.name = name
        self.requires_bonding = requires_bonding
        self.clock = clock if clock is not None else DeviceClock.host()
        self.rssi = rssi
        self.interval_s = interval_s  # pause before each value sent (a connection interval)
        self.att_mtu = att_mtu
        self.powered = True
        self.in_range = True
        self.advertising = True
        self.faults = Faults()
        self.bonds: set[str] = set()
        self.connection: SimulatedConnection | None = None
        self.connections_made = 0
        self._services: dict[str, dict[str, Characteristic]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.add_service(
            0x180A,  # Device Information
            Characteristic(uuid16(0x2A29), Property.READ, manufacturer.encode()),
            Characteristic(uuid16(0x2A24), Property.READ, model.encode()),
            Characteristic(uuid16(0x2A25), Property.READ, (serial_number or self.address).encode()),
            Characteristic(uuid16(0x2A26), Property.READ, firmware_revision.encode()),
        )
        self.add_service(0x180F, Characteristic(uuid16(0x2A19), Property.READ, bytes([battery_percent])))
        if current_time_service:
            self.add_service(
                0x1805,  # Current Time Service: how a central sets a clock that is not set
                Characteristic(
                    CURRENT_TIME,
                    Property.READ | Property.WRITE,
                    on_read=lambda: encode_current_time(self.clock.now()),
                    on_write=self._current_time_written,
                ),
            )

    # ------------------------------------------------------------------ GATT table

    def add_service(self, service: int, *characteristics: Characteristic) -> None:
        self._services[uuid16(service)] = {c.uuid: c for c in characteristics}

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(self._services)

    @property
    def advertised_services(self) -> tuple[str, ...]:
        """Advertising data has room for the health service only (as on most devices)."""
        return (uuid16(self.service),)

    def characteristic(self, uuid: str) -> Characteristic | None:
        uuid = uuid.lower()
        for characteristics in self._services.values():
            if uuid in characteristics:
                return characteristics[uuid]
        return None

    def set_value(self, characteristic: str, value: bytes) -> None:
        """Change what a read of `characteristic` returns (battery level, a feature...)."""
        found = self.characteristic(characteristic)
        if found is None:
            raise KeyError(characteristic)
        found.value = bytes(value)

    # ------------------------------------------------------------------ radio and faults

    @property
    def reachable(self) -> bool:
        return self.powered and self.in_range

    @property
    def is_advertising(self) -> bool:
        """A connected device stops advertising (most health devices accept one central)."""
        return self.reachable and self.advertising and self.connection is None

    def advertisement(self) -> Advertisement:
        return Advertisement(self.address, self.name, self.advertised_services, self.rssi)

    @property
    def is_connected(self) -> bool:
        return self.connection is not None and self.connection.is_connected

    def power_off(self) -> None:
        self.powered = False
        self.drop_link("device powered off")

    def power_on(self) -> None:
        self.powered = True

    def move_out_of_range(self) -> None:
        self.in_range = False
        self.drop_link("supervision timeout: device out of range")

    def come_into_range(self) -> None:
        self.in_range = True

    def drop_link(self, reason: str = "link dropped") -> None:
        if self.connection is not None:
            self.connection._drop(reason)

    async def _current_time_written(self, data: bytes) -> None:
        if len(data) != 10:
            raise AttError(self.address, CURRENT_TIME, ATT_INVALID_ATTRIBUTE_VALUE_LENGTH, "needs 10 bytes")
        year = int.from_bytes(data[0:2], "little")
        try:
            when = datetime(year, data[2], data[3], data[4], data[5], data[6])
        except ValueError:
            raise AttError(self.address, CURRENT_TIME, ATT_OUT_OF_RANGE, "not a valid date") from None
        self.clock.set(when)

    def forget_bonds(self) -> None:
        """The device lost its bonding keys (factory reset, new pairing from another phone)."""
        self.bonds.clear()

    # ------------------------------------------------------------------ hooks for devices

    def _attach(self, connection: SimulatedConnection) -> None:
        self.connection = connection
        self.connections_made += 1

    def _detached(self, connection: SimulatedConnection) -> None:
        if self.connection is connection:
            self.connection = None
        self._on_disconnected()

    def _on_disconnected(self) -> None:
        """The link is down; a device stops what it was sending."""

    def _on_subscribed(self, characteristic: str) -> None:
        """The central enabled notifications or indications on `characteristic`."""

    def _spawn(self, coroutine: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def subscribed(self, characteristic: str) -> bool:
        return self.connection is not None and self.connection._subscribed(characteristic)

    async def _send(self, characteristic: str, data: bytes) -> bool:
        """Notify or indicate `data`; True once the central's callback has run, False when it could
        not be (no link, nobody subscribed, or the link dropped before delivery)."""
        if len(data) > self.att_mtu - 3:
            raise ValueError(f"{len(data)}-byte value does not fit ATT_MTU {self.att_mtu}")
        connection = self.connection
        if connection is None or not connection._subscribed(characteristic):
            return False
        return await connection._enqueue(characteristic, data)


class SimulatedConnection(GattConnection):
    """The central's side of one link to a simulated peripheral."""

    def __init__(self, device: SimulatedPeripheral, *, central_address: str) -> None:
        self.address = device.address
        self.central_address = central_address
        self.device = device
        self.disconnect_reason: str | None = None
        self.values_sent = 0
        self._connected = True
        self._dropped = asyncio.Event()
        self._callbacks: dict[str, NotifyCallback] = {}
        self._queue: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self._pump = asyncio.create_task(self._run_pump(), name=f"sim-ble-{device.address}")

    # ------------------------------------------------------------------ GattConnection

    @property
    def is_connected(self) -> bool:
        return self._connected

    def _check(self, what: str) -> None:
        if not self._connected:
            raise BleUnavailable(f"{self.address}: {what}: not connected ({self.disconnect_reason})")

    def _lookup(self, characteristic: str) -> Characteristic:
        found = self.device.characteristic(characteristic)
        if found is None:
            raise AttError(self.address, characteristic, ATT_ATTRIBUTE_NOT_FOUND, "no such characteristic")
        return found

    async def start_notify(self, characteristic: str, callback: NotifyCallback) -> None:
        self._check(f"subscribe {characteristic}")
        await asyncio.sleep(0)  # a CCCD write is a round trip
        self._check(f"subscribe {characteristic}")
        found = self._lookup(characteristic)
        if not found.properties & (Property.NOTIFY | Property.INDICATE):
            raise AttError(self.address, characteristic, ATT_WRITE_NOT_PERMITTED, "no notify or indicate")
        self._callbacks[found.uuid] = callback
        self.device._on_subscribed(found.uuid)

    async def write(self, characteristic: str, data: bytes) -> None:
        self._check(f"write {characteristic}")
        await asyncio.sleep(0)
        self._check(f"write {characteristic}")
        found = self._lookup(characteristic)
        if not found.properties & Property.WRITE or found.on_write is None:
            raise AttError(self.address, characteristic, ATT_WRITE_NOT_PERMITTED, "not writable")
        await found.on_write(bytes(data))

    async def read(self, characteristic: str) -> bytes:
        self._check(f"read {characteristic}")
        await asyncio.sleep(0)
        self._check(f"read {characteristic}")
        found = self._lookup(characteristic)
        if not found.properties & Property.READ:
            raise AttError(self.address, characteristic, ATT_READ_NOT_PERMITTED, "not readable")
        return found.on_read() if found.on_read is not None else found.value

    async def wait_disconnected(self) -> None:
        await self._dropped.wait()

    async def disconnect(self) -> None:
        self._drop("disconnected by the central")
        await asyncio.sleep(0)

    # ------------------------------------------------------------------ the device's side

    def _subscribed(self, characteristic: str) -> bool:
        return self._connected and characteristic.lower() in self._callbacks

    async def _enqueue(self, characteristic: str, data: bytes) -> bool:
        if not self._connected:
            return False
        delivered: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Outgoing(characteristic.lower(), bytes(data), delivered))
        return await asyncio.shield(delivered)

    async def _run_pump(self) -> None:
        loop = asyncio.get_running_loop()
        item: _Outgoing | None = None
        try:
            while self._connected:
                item = await self._queue.get()
                if self.device.interval_s:
                    await asyncio.sleep(self.device.interval_s)
                callback = self._callbacks.get(item.characteristic) if self._connected else None
                if callback is None:
                    _resolve(item.delivered, False)
                    continue
                # The loop calls it, as a BLE stack's callback is called: an exception in it goes to
                # the loop's exception handler and the link carries on. FIFO, so values keep their order,
                # and the sender resumes only after the callback has run.
                loop.call_soon(callback, item.data)
                self.values_sent += 1
                _resolve(item.delivered, True)
                await asyncio.sleep(0)
                self._count_towards_drop()
        finally:
            if item is not None:
                _resolve(item.delivered, False)

    def _count_towards_drop(self) -> None:
        faults = self.device.faults
        if faults.drop_after_notifications is None:
            return
        faults.drop_after_notifications -= 1
        if faults.drop_after_notifications <= 0:
            faults.drop_after_notifications = None
            self._drop(f"link dropped after {self.values_sent} values (injected fault)")

    def _drop(self, reason: str) -> None:
        if not self._connected:
            return
        self._connected = False
        self.disconnect_reason = reason
        while not self._queue.empty():
            _resolve(self._queue.get_nowait().delivered, False)
        if asyncio.current_task() is not self._pump:
            self._pump.cancel()
        self._dropped.set()
        self.device._detached(self)


def _resolve(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)
