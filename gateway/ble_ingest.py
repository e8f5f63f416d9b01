"""Standard Bluetooth health devices -> durable readings in the outbox.

One `BleDeviceIngest` per configured device (an address and its profile). It keeps connecting
(exponential backoff with jitter, so a meter in a drawer costs little), subscribes to the
profile's measurement characteristics, and stores each measurement as a reading, through the
same profile checks, outbox and sync as the kiosk link's readings. It reads devices only through
`gateway.transports.ble` (`BleCentral`), so CI runs it on simulated devices and a gateway on
bleak, without knowing which.

Glucose meters keep records; the Record Access Control Point (0x2A52) downloads them. A cursor
per meter (`BleCursor`, in the outbox database) remembers the newest record stored, so each
download asks for "records >= that one" and stores only what follows, in order, whatever
disconnects or restarts come between. The record at the cursor must come back unchanged (same
number, same time): if it does not, the meter was reset (its numbering started over), so the
ingest starts a new epoch and downloads everything the meter has. When the 16-bit record number
is close to wrapping, it also asks for the lowest numbers and keeps those newer than the cursor,
under a new epoch. A reading is keyed by (device, epoch, record number): a record downloaded
twice is stored once.

Device time: a device's clock is local wall time without a zone; `device_utc_offset_min` (China:
+480) turns it into UTC, and the reading's time quality says "rtc" (the device's clock). A live
measurement whose device time is more than MAX_CLOCK_SKEW_S away from the gateway's, or one sent
without a time (or with the device saying its clock is not set), gets the gateway's receive time
and the gateway's clock quality instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import secrets
import time
from collections.abc import Callable
from datetime import timedelta, timezone
from typing import TypeVar

from contract.wire import DeviceRef
from gateway.alerts import AlertRules
from gateway.ble.glucose import (
    BleParseError,
    DateTime,
    RacpOpCode,
    RacpResponse,
    RacpResponseCode,
    encode_abort,
    encode_report_records_greater_or_equal,
    parse_glucose_measurement,
    parse_racp_response,
)
from gateway.ble_readings import STREAMS, DeviceReading, NotAReading, device_reading, glucose_reading
from gateway.errors import GatewayError, RejectedReading, StorageFullError
from gateway.profiles import DeviceProfile
from gateway.store import BleCursor, NewReading, Outbox
from gateway.transports.ble import Advertisement, BleCentral, BleUnavailable, GattConnection, uuid16
from gateway.validate import check_reading

log = logging.getLogger(__name__)
_T = TypeVar("_T")
Download = asyncio.Queue[tuple[str, bytes]]  # ("record" | "answer", payload), in arrival order

GLUCOSE_MEASUREMENT = uuid16(0x2A18)
RACP = uuid16(0x2A52)
FIRMWARE_REVISION = uuid16(0x2A26)  # Device Information Service
MAX_CLOCK_SKEW_S = 600
RECORD_TIMEOUT_S = 10.0  # longest silence between stored records (or the RACP answer)
WRAP_WINDOW = 0x1000  # record numbers this close to 0xFFFF make a download also ask for the lowest ones
_LAST_SEQUENCE = 0xFFFF


@dataclasses.dataclass
class BleCounters:
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    notifications: int = 0
    readings_stored: int = 0
    duplicates: int = 0
    refused: int = 0  # not a resident's measurement, or refused by the profile
    parse_errors: int = 0
    records_downloaded: int = 0
    resets_detected: int = 0


class _Dropped(Exception):
    """The link went down while we waited for the device."""


def device_id_of(address: str) -> str:
    return "ble-" + address.replace(":", "").replace("-", "").lower()


class BleDeviceIngest:
    def __init__(
        self,
        central: BleCentral,
        address: str,
        profile: DeviceProfile,
        outbox: Outbox,
        *,
        rules: AlertRules | None = None,
        clock_quality: str = "ntp",
        device_utc_offset_min: int = 480,
        stream_interval_s: float = 10.0,
        retry_min_s: float = 1.0,
        retry_max_s: float = 60.0,
        on_stored: Callable[[], None] = lambda: None,
    ) -> None:
        if profile.ble is None:
            raise GatewayError(f"profile {profile.model} has no [ble] section")
        self.central = central
        self.address = address
        self.profile = profile
        self.outbox = outbox
        self.rules = rules
        self.clock_quality = clock_quality
        self.device_zone = timezone(timedelta(minutes=device_utc_offset_min))
        self.stream_interval_s = stream_interval_s
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.on_stored = on_stored
        self.device = DeviceRef(device_id_of(address), profile.model, "unknown")
        self.counters = BleCounters()
        self.connected = False
        self.last_error: str | None = None
        self._session_id = 0
        self._counter = 0
        self._stream_stored: dict[str, float] = {}
        self._pending: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    @property
    def name(self) -> str:
        return f"ble {self.address} ({self.profile.model})"

    async def serve(self) -> None:
        """Connect, read, reconnect: forever (until cancelled). A `Peripheral`."""
        delay = self.retry_min_s
        while True:
            try:
                connection = await self.central.connect(
                    self.address,
                    timeout_s=10.0,
                    pair=self.profile.ble.bond,  # type: ignore[union-attr]
                )
            except BleUnavailable as exc:
                self.counters.connect_failures += 1
                self.last_error = str(exc)
                log.info("%s: not reachable (%s); next try in %.1f s", self.name, exc, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))  # jitter: meters do not retry in step
                delay = min(delay * 2, self.retry_max_s)
                continue
            delay = self.retry_min_s
            self.counters.connects += 1
            self.connected = True
            try:
                await self.session(connection)
            except (BleUnavailable, _Dropped) as exc:
                self.last_error = str(exc) or "disconnected"
                log.info("%s: link lost (%s)", self.name, self.last_error)
            except StorageFullError as exc:
                # Stored records stay on the meter (the cursor did not move); a live measurement
                # the device already handed over is lost, and said so.
                self.last_error = f"not stored: {exc}"
                log.error("%s: %s; disconnecting, will retry", self.name, self.last_error)
                await asyncio.sleep(self.retry_max_s)
            except BleParseError as exc:
                # A device that answers what the spec does not allow: drop the link and try
                # again later; one device's fault never stops the gateway.
                self.counters.parse_errors += 1
                self.last_error = f"device answered out of spec: {exc}"
                log.warning("%s: %s; disconnecting, will retry", self.name, self.last_error)
                await asyncio.sleep(self.retry_max_s)
            except Exception:
                self.last_error = "internal error (see the log)"
                log.exception("%s: failed; disconnecting, will retry", self.name)
                await asyncio.sleep(self.retry_max_s)
            finally:
                self.connected = False
                self.counters.disconnects += 1
                await connection.disconnect()

    async def session(self, connection: GattConnection) -> None:
        """One connection: subscribe, download stored records, then store what the device sends."""
        self._session_id = secrets.randbits(31) or 1
        self._counter = 0
        self._pending = asyncio.Queue()
        await self._read_firmware(connection)
        ble = self.profile.ble
        assert ble is not None
        # Records and RACP answers in one queue, in the order the meter sent them: its last
        # record always comes before the answer that ends the report.
        download: Download = asyncio.Queue()
        downloading = ble.stored_records and ble.racp == RACP
        # The glucose context (0x2A34: meal, tester, exercise) is not read yet: a BLE meter's
        # reading carries no fasting flag, so the fasting-glucose rule does not apply to it.
        for characteristic in (*ble.measurements, *((RACP,) if downloading else ())):
            if characteristic == RACP:
                await connection.start_notify(RACP, lambda data: download.put_nowait(("answer", data)))
            elif characteristic == GLUCOSE_MEASUREMENT and downloading:
                await connection.start_notify(
                    characteristic, lambda data: download.put_nowait(("record", data))
                )
            else:
                await connection.start_notify(
                    characteristic, lambda data, c=characteristic: self._pending.put_nowait((c, data))
                )
        log.info("%s: connected as %s", self.name, self.device.id)
        if downloading:
            await self.download(connection, download)
        while True:
            characteristic, payload = await self._next(connection, self._pending, timeout_s=None)
            await self._live(characteristic, payload)

    async def _read_firmware(self, connection: GattConnection) -> None:
        try:
            firmware = (await connection.read(FIRMWARE_REVISION)).decode("utf-8", "replace").strip("\x00 ")
        except (BleUnavailable, KeyError, ValueError):
            return  # optional characteristic; "unknown" stays
        if firmware:
            self.device = dataclasses.replace(self.device, firmware=firmware[:32])

    # -- live measurements ---------------------------------------------------------------------
    async def _live(self, characteristic: str, payload: bytes) -> None:
        self.counters.notifications += 1
        if characteristic in STREAMS:
            now = time.monotonic()
            if now - self._stream_stored.get(characteristic, float("-inf")) < self.stream_interval_s:
                return  # a stream: one reading per interval is what the record needs
        reading = await self._decode(characteristic, payload)
        if reading is None:
            return
        self._counter += 1
        if (
            await self._store(reading, self._session_id, self._counter, live=True)
            and characteristic in STREAMS
        ):
            self._stream_stored[characteristic] = time.monotonic()

    async def _decode(self, characteristic: str, payload: bytes) -> DeviceReading | None:
        try:
            return device_reading(characteristic, payload)
        except BleParseError as exc:
            self.counters.parse_errors += 1
            await self._refuse(f"unreadable {characteristic}: {exc}")
        except NotAReading as exc:
            self.counters.refused += 1
            await self._refuse(str(exc))
        return None

    async def _refuse(self, reason: str) -> None:
        log.warning("%s: %s", self.name, reason)
        self.last_error = reason
        try:
            await self.outbox.record_rejection(self.name, reason)
        except StorageFullError:
            log.error("%s: rejection not recorded, storage full", self.name)

    async def _store(self, reading: DeviceReading, boot_id: int, key: int, *, live: bool) -> bool:
        """Check and store one reading; True when stored (or already stored)."""
        try:
            checked = check_reading(
                self.device.id, self.profile, reading.kind, reading.values, reading.flags, self.rules
            )
        except RejectedReading as exc:
            self.counters.refused += 1
            await self._refuse(exc.reason)
            return False
        now_ms = time.time_ns() // 1_000_000
        measured_at_ms, quality = self._when(reading.device_time, now_ms, live=live)
        checkin = await self.outbox.checkin_at(measured_at_ms)
        stored = await self.outbox.add_reading(
            NewReading(
                device=self.device,
                boot_id=boot_id,
                link_seq=key,
                kind=reading.kind,
                values=checked.measurements,
                measured_at_ms=measured_at_ms,
                time_quality=quality,
                received_mono_ms=time.monotonic_ns() // 1_000_000,
                resident=checkin[0] if checkin else None,
                operator=checkin[1] if checkin else None,
                flags=checked.flags,
            )
        )
        for note in checked.notes:
            log.info("%s: %s", self.name, note)
        if stored is None:
            self.counters.duplicates += 1
        else:
            self.counters.readings_stored += 1
            log.info("%s: stored %s reading as seq %d", self.name, reading.kind, stored)
            self.on_stored()
        return True

    def _when(self, device_time: DateTime | None, now_ms: int, *, live: bool) -> tuple[int, str]:
        moment = device_time.to_datetime() if device_time is not None else None
        if moment is None:
            return now_ms, self.clock_quality
        at_ms = int(moment.replace(tzinfo=self.device_zone).timestamp() * 1000)
        if live and abs(at_ms - now_ms) > MAX_CLOCK_SKEW_S * 1000:
            log.warning(
                "%s: device clock is %+d s off the gateway's; using the receive time",
                self.name,
                (at_ms - now_ms) // 1000,
            )
            return now_ms, self.clock_quality
        return at_ms, "rtc"

    # -- stored records (Glucose Service, RACP) ------------------------------------------------
    async def download(self, connection: GattConnection, queue: Download) -> None:
        """Download the records the meter has that are not stored yet; returns when it says done."""
        cursor = await self.outbox.ble_cursor(self.device.id)
        if cursor is None:
            await self._transfer(connection, queue, None, BleCursor(1, 0, ""))
            return
        fresh = await self._transfer(connection, queue, cursor.last_seq, cursor)
        if fresh is None:  # the record at the cursor is gone or changed: the meter started over
            self.counters.resets_detected += 1
            restart = BleCursor(cursor.epoch + 1, 0, "")
            log.warning(
                "%s: record %d is not what was stored; meter reset, downloading all under epoch %d",
                self.name,
                cursor.last_seq,
                restart.epoch,
            )
            await self.outbox.set_ble_cursor(self.device.id, restart)
            await self._transfer(connection, queue, None, restart)
            return
        if fresh.last_seq >= _LAST_SEQUENCE - WRAP_WINDOW:
            await self._after_wrap(connection, queue, fresh)

    async def _transfer(
        self,
        connection: GattConnection,
        queue: Download,
        from_seq: int | None,
        cursor: BleCursor,
    ) -> BleCursor | None:
        """Ask for records (all, or >= from_seq) and store them in order. With `from_seq`, the
        first record must be the cursor's own (returns None if it is not: the meter was reset)."""
        request = (
            encode_report_records_greater_or_equal(from_seq)
            if from_seq is not None
            else bytes([RacpOpCode.REPORT_STORED_RECORDS, 0x01])
        )
        await connection.write(RACP, request)
        expect_anchor = from_seq is not None
        while True:
            source, payload = await self._next(connection, queue, timeout_s=RECORD_TIMEOUT_S)
            if source == "answer":
                answer = parse_racp_response(payload)
                if isinstance(answer, RacpResponse) and answer.response_code in (
                    RacpResponseCode.SUCCESS,
                    RacpResponseCode.NO_RECORDS_FOUND,
                ):
                    if expect_anchor:
                        return None  # the record at the cursor did not come back
                    return cursor
                raise BleUnavailable(f"{self.address}: record download ended with {answer}")
            try:
                record = parse_glucose_measurement(payload)
            except BleParseError as exc:
                self.counters.parse_errors += 1
                await self._refuse(f"unreadable stored glucose record: {exc}")
                continue
            self.counters.records_downloaded += 1
            stamp = _iso(record.base_time)
            if expect_anchor:
                expect_anchor = False
                if record.sequence_number != cursor.last_seq or stamp != cursor.last_time:
                    await self._abort(connection, queue)
                    return None
                continue  # already stored: the anchor only proves the numbering is the same
            try:
                reading = glucose_reading(record)
            except NotAReading as exc:
                self.counters.refused += 1
                await self._refuse(str(exc))
            else:
                await self._store(reading, cursor.epoch, record.sequence_number, live=False)
            cursor = BleCursor(cursor.epoch, record.sequence_number, stamp)
            await self.outbox.set_ble_cursor(self.device.id, cursor)

    async def _after_wrap(
        self,
        connection: GattConnection,
        queue: Download,
        cursor: BleCursor,
    ) -> None:
        """Near 0xFFFF the meter's numbering may have wrapped: records after it have low numbers."""
        await connection.write(RACP, bytes([RacpOpCode.REPORT_STORED_RECORDS, 0x02, 0x01])
                               + (WRAP_WINDOW - 1).to_bytes(2, "little"))  # fmt: skip
        wrapped = BleCursor(cursor.epoch + 1, 0, cursor.last_time)
        stored_any = False
        while True:
            source, payload = await self._next(connection, queue, timeout_s=RECORD_TIMEOUT_S)
            if source == "answer":
                return
            record = parse_glucose_measurement(payload)
            stamp = _iso(record.base_time)
            if stamp < cursor.last_time:
                continue  # an old record with a low number: from before the wrap
            if not stored_any:
                stored_any = True
                log.info("%s: record numbers wrapped; epoch %d", self.name, wrapped.epoch)
            try:
                await self._store(glucose_reading(record), wrapped.epoch, record.sequence_number, live=False)
            except NotAReading as exc:
                await self._refuse(str(exc))
            wrapped = BleCursor(wrapped.epoch, record.sequence_number, stamp)
            await self.outbox.set_ble_cursor(self.device.id, wrapped)

    async def _abort(self, connection: GattConnection, queue: Download) -> None:
        await connection.write(RACP, encode_abort())
        while True:  # drain until the abort's answer (records may still be in flight)
            source, payload = await self._next(connection, queue, timeout_s=RECORD_TIMEOUT_S)
            answer = parse_racp_response(payload) if source == "answer" else None
            if isinstance(answer, RacpResponse) and answer.request_op_code == RacpOpCode.ABORT_OPERATION:
                return

    async def _next(
        self, connection: GattConnection, queue: asyncio.Queue[_T], timeout_s: float | None
    ) -> _T:
        if not queue.empty():
            return queue.get_nowait()
        getter = asyncio.ensure_future(queue.get())
        dropped = asyncio.ensure_future(connection.wait_disconnected())
        try:
            done, _ = await asyncio.wait(
                [getter, dropped], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            getter.cancel()
            dropped.cancel()
        if getter in done and not getter.cancelled():
            return getter.result()
        if dropped in done:
            raise _Dropped(f"{self.address} disconnected")
        raise BleUnavailable(f"{self.address}: nothing for {timeout_s} s")

    def status(self) -> dict[str, object]:
        return {
            "transport": "ble",
            "address": self.address,
            "device": dataclasses.asdict(self.device),
            "connected": self.connected,
            "counters": dataclasses.asdict(self.counters),
            "last_error": self.last_error,
        }


def _iso(moment: DateTime) -> str:
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hours:02d}:{moment.minutes:02d}:{moment.seconds:02d}"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class FoundDevice:
    advertisement: Advertisement
    profile: DeviceProfile | None  # None: it advertises a health service no profile's name matches


async def find_devices(
    central: BleCentral, profiles: dict[str, DeviceProfile], timeout_s: float
) -> list[FoundDevice]:
    """Health devices advertising nearby, each matched to the profile whose service and name
    prefix it advertises, for a technician adding it to the gateway's configuration."""
    ble_profiles = [p for p in profiles.values() if p.ble is not None]
    services = sorted({p.ble.service for p in ble_profiles if p.ble is not None})
    found = []
    for advertisement in await central.scan(services, timeout_s):
        advertised = {uuid.lower() for uuid in advertisement.service_uuids}
        name = advertisement.name or ""
        match = next(
            (
                p
                for p in ble_profiles
                if p.ble is not None and p.ble.service in advertised and name.startswith(p.ble.name_prefix)
            ),
            None,
        )
        found.append(FoundDevice(advertisement, match))
    return sorted(found, key=lambda f: (f.profile is None, f.advertisement.address))
