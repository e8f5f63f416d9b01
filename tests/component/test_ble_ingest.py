"""BLE ingest on simulated Bluetooth devices and a real SQLite outbox.

The devices are `simulators.ble` (spec-exact payloads from their own encoders) behind the same
GATT interface bleak implements; the ingest, the profile checks, the alert rules and the outbox
are the gateway's own. Stored glucose records: downloads that are cut halfway, restarts, a meter
reset and the 16-bit record number wrapping, each checked record by record.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from contract.wire import Reading
from gateway.alerts import load_alert_rules
from gateway.ble_ingest import BleDeviceIngest, find_devices
from gateway.cli import print_found
from gateway.keys import GatewayKeys, create_keys
from gateway.profiles import DeviceProfile, load_profiles
from gateway.store import Outbox
from simulators.ble import BloodPressureCuff, GlucoseMeter, SimulatedCentral
from simulators.ble.glucose import RACP as RACP_UUID
from simulators.ble.ieee11073 import Special

PROFILES_DIR = Path(__file__).resolve().parents[2] / "device_profiles"
METER = "C0:FF:EE:00:01:08"
CUFF = "C0:FF:EE:00:01:10"
START = datetime(2026, 11, 2, 7, 30)  # device-local (China, UTC+8)


@pytest.fixture(scope="module")
def profiles() -> dict[str, DeviceProfile]:
    return load_profiles(PROFILES_DIR)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    create_keys(tmp_path / "gw")
    box = await Outbox.open(tmp_path / "gw" / "gateway.db", "gw-ble", GatewayKeys.load(tmp_path / "gw"))
    try:
        yield box
    finally:
        await box.close()


async def until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(ingest: BleDeviceIngest) -> AsyncIterator[BleDeviceIngest]:
    task = asyncio.create_task(ingest.serve())
    try:
        yield ingest
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def meter_ingest(
    central: SimulatedCentral, outbox: Outbox, profiles: dict[str, DeviceProfile]
) -> BleDeviceIngest:
    return BleDeviceIngest(
        central, METER, profiles["Accu-Chek Guide"], outbox, retry_min_s=0.01, retry_max_s=0.05
    )


async def glucose_readings(outbox: Outbox) -> list[Reading]:
    readings = [reading for reading, _ in await outbox.recent_readings(10_000) if reading.kind == "glucose"]
    return sorted(readings, key=lambda r: r.seq)


def add_records(meter: GlucoseMeter, count: int, *, first_value: int = 40, start: datetime = START) -> None:
    for n in range(count):
        meter.add_record(Decimal(first_value + n) / 10, at=start + timedelta(minutes=n))


def values(readings: list[Reading]) -> list[Decimal]:
    return [r.values[0].value for r in readings]  # type: ignore[misc]


async def test_fifty_records_cut_halfway_arrive_once_in_order(
    outbox: Outbox, profiles: dict[str, DeviceProfile]
) -> None:
    meter = GlucoseMeter(address=METER, name="meter+01234567")
    add_records(meter, 50)
    meter.faults.drop_after_notifications = 25  # the link drops in the middle of the download
    central = SimulatedCentral([meter])
    ingest = meter_ingest(central, outbox, profiles)
    async with running(ingest):
        await until(lambda: ingest.counters.readings_stored == 50)
        await asyncio.sleep(0.1)  # a duplicate would show up now
    stored = await glucose_readings(outbox)
    assert values(stored) == [Decimal(40 + n) / 10 for n in range(50)]
    assert [r.measured_at_ms for r in stored] == sorted(r.measured_at_ms for r in stored)
    assert ingest.counters.connects >= 2 and ingest.counters.disconnects >= 1
    assert ingest.counters.duplicates == 0
    # 07:30 in China is 23:30 UTC the day before; the meter's clock is the reading's (quality rtc).
    assert stored[0].measured_at_ms == int(datetime(2026, 11, 1, 23, 30, tzinfo=UTC).timestamp() * 1000)
    assert {r.time_quality for r in stored} == {"rtc"}
    assert {r.device.model for r in stored} == {"Accu-Chek Guide"}


async def test_a_restart_downloads_only_the_new_records(
    outbox: Outbox, profiles: dict[str, DeviceProfile]
) -> None:
    meter = GlucoseMeter(address=METER, name="meter+01234567")
    add_records(meter, 10)
    central = SimulatedCentral([meter])
    first = meter_ingest(central, outbox, profiles)
    async with running(first):
        await until(lambda: first.counters.readings_stored == 10)
    add_records(meter, 3, first_value=90, start=START + timedelta(hours=2))
    second = meter_ingest(central, outbox, profiles)  # a new gateway process: the cursor is on disk
    async with running(second):
        await until(lambda: second.counters.readings_stored == 3)
        await asyncio.sleep(0.1)
    assert second.counters.records_downloaded == 4  # the record at the cursor, then the 3 new ones
    assert second.counters.duplicates == 0
    assert values(await glucose_readings(outbox)) == [Decimal(40 + n) / 10 for n in range(10)] + [
        Decimal("9.0"),
        Decimal("9.1"),
        Decimal("9.2"),
    ]


async def test_a_reset_meter_is_noticed_and_its_new_records_are_kept(
    outbox: Outbox, profiles: dict[str, DeviceProfile]
) -> None:
    meter = GlucoseMeter(address=METER, name="meter+01234567")
    add_records(meter, 5)
    central = SimulatedCentral([meter])
    first = meter_ingest(central, outbox, profiles)
    async with running(first):
        await until(lambda: first.counters.readings_stored == 5)
    meter.reset()  # numbering starts over at 0: records 0..2 are new, though 0..4 were stored
    add_records(meter, 3, first_value=120, start=START + timedelta(days=1))
    second = meter_ingest(central, outbox, profiles)
    async with running(second):
        await until(lambda: second.counters.readings_stored == 3)
    assert second.counters.resets_detected == 1
    assert values(await glucose_readings(outbox))[-3:] == [Decimal("12.0"), Decimal("12.1"), Decimal("12.2")]


async def test_records_after_the_sequence_number_wraps_are_kept(
    outbox: Outbox, profiles: dict[str, DeviceProfile]
) -> None:
    meter = GlucoseMeter(address=METER, name="meter+01234567", first_sequence=0xFFFB)
    add_records(meter, 3)  # 0xFFFB..0xFFFD
    central = SimulatedCentral([meter])
    first = meter_ingest(central, outbox, profiles)
    async with running(first):
        await until(lambda: first.counters.readings_stored == 3)
    add_records(meter, 5, first_value=70, start=START + timedelta(hours=1))  # 0xFFFE, 0xFFFF, 0, 1, 2
    second = meter_ingest(central, outbox, profiles)
    async with running(second):
        await until(lambda: second.counters.readings_stored == 5)
        await asyncio.sleep(0.1)
    assert values(await glucose_readings(outbox)) == [Decimal("4.0"), Decimal("4.1"), Decimal("4.2")] + [
        Decimal(70 + n) / 10 for n in range(5)
    ]
    assert second.counters.duplicates == 0


async def test_meter_results_that_are_no_measurement_are_refused_and_hi_is_a_bound(
    outbox: Outbox, profiles: dict[str, DeviceProfile]
) -> None:
    meter = GlucoseMeter(address=METER, name="meter+01234567")
    meter.add_record(Decimal("6.2"), at=START)
    meter.add_record(Decimal("5.5"), sample_type=10, at=START + timedelta(minutes=1))  # control solution
    meter.add_record(Special.NAN, at=START + timedelta(minutes=2))
    meter.add_record(Decimal("33.3"), sensor_status=1 << 5, at=START + timedelta(minutes=3))  # "HI"
    meter.add_record(Decimal("5.0"), sensor_status=1 << 3, at=START + timedelta(minutes=4))  # strip error
    central = SimulatedCentral([meter])
    ingest = meter_ingest(central, outbox, profiles)
    async with running(ingest):
        await until(lambda: ingest.counters.readings_stored + ingest.counters.refused == 5)
    stored = await glucose_readings(outbox)
    assert [(r.values[0].value, r.values[0].absent_reason, r.flags) for r in stored] == [
        (Decimal("6.2"), None, ()),
        (None, "nan", ()),
        (Decimal("33.3"), None, ("above_range",)),
    ]
    assert ingest.counters.refused == 2


async def test_a_cuff_reading_over_the_crisis_threshold_is_stored_with_its_alert(
    outbox: Outbox, profiles: dict[str, DeviceProfile]
) -> None:
    cuff = BloodPressureCuff(address=CUFF, name="A&D_UA-651")
    central = SimulatedCentral([cuff])
    profile = next(p for p in profiles.values() if p.protocol == "ble-bls")
    ingest = BleDeviceIngest(
        central, CUFF, profile, outbox, rules=load_alert_rules(PROFILES_DIR, "CN"), retry_min_s=0.01
    )
    async with running(ingest):
        await until(lambda: ingest.connected)
        await cuff.measure(systolic=182, diastolic=115, pulse_rate=88)
        await until(lambda: ingest.counters.readings_stored == 1)
    (reading,) = [r for r, _ in await outbox.recent_readings(10)]
    assert reading.kind == "bp"
    assert {m.name: m.value for m in reading.values}["systolic"] == Decimal(182)
    assert "alert:hypertensive_crisis" in reading.flags


async def test_a_scan_matches_advertising_devices_to_their_profiles(
    profiles: dict[str, DeviceProfile], capsys: pytest.CaptureFixture[str]
) -> None:
    cuff = BloodPressureCuff(address=CUFF, name="A&D_UA-651BLE_8DA42A")
    meter = GlucoseMeter(address=METER, name="meter+01234567")
    stranger = BloodPressureCuff(address="C0:FF:EE:00:09:99", name="SomeOtherCuff")
    found = await find_devices(SimulatedCentral([cuff, meter, stranger]), profiles, timeout_s=0.1)
    assert [(f.advertisement.address, f.profile.model if f.profile else None) for f in found] == [
        (METER, "Accu-Chek Guide"),
        (CUFF, "UA-651BLE"),
        ("C0:FF:EE:00:09:99", None),
    ]
    print_found(found)
    out = capsys.readouterr().out
    assert f'[[ble.devices]]\naddress = "{CUFF}"\nmodel = "UA-651BLE"' in out
    assert "C0:FF:EE:00:09:99  SomeOtherCuff" in out and "no matching profile" in out


class GarblingMeter(GlucoseMeter):
    """A meter whose RACP answers are truncated: out of spec."""

    async def _respond(self, request_op_code: int, code: object) -> None:
        await self._send(RACP_UUID, b"\x06")


async def test_a_device_out_of_spec_is_dropped_and_retried_without_stopping_the_gateway(
    outbox: Outbox, profiles: dict[str, DeviceProfile]
) -> None:
    meter = GarblingMeter(address=METER, name="meter+01234567")
    add_records(meter, 2)
    ingest = BleDeviceIngest(
        SimulatedCentral([meter]),
        METER,
        profiles["Accu-Chek Guide"],
        outbox,
        retry_min_s=0.01,
        retry_max_s=0.05,
    )
    task = asyncio.create_task(ingest.serve())
    try:
        await until(lambda: ingest.counters.connects >= 2)  # dropped, then tried again
        assert not task.done()
        assert ingest.counters.parse_errors >= 1
        assert "out of spec" in (ingest.last_error or "")
        assert ingest.counters.readings_stored == 2  # what came before the bad answer is kept
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_peripherals_command_shows_serial_boards_and_bluetooth_devices_alike(
    outbox: Outbox, tmp_path: Path
) -> None:
    from gateway.cli import peripheral_rows
    from gateway.config import BleConfig, BleDeviceConfig, GatewayConfig, SerialPortConfig
    from gateway.service import GatewayService

    cuff = BloodPressureCuff(address=CUFF, name="A&D_UA-651BLE_8DA42A")
    config = GatewayConfig(
        gateway_id="gw-ble",
        data_dir=tmp_path / "gw",
        profiles_dir=PROFILES_DIR,
        serial=(SerialPortConfig(path="/dev/ttyKIOSK0"),),
        ble=BleConfig(devices=(BleDeviceConfig(address=CUFF, model="UA-651BLE"),)),
    )
    service = GatewayService(config, outbox, load_profiles(PROFILES_DIR), central=SimulatedCentral([cuff]))
    (device,) = service.ble_devices
    async with running(device):
        await until(lambda: device.connected)
        await cuff.measure(systolic=128, diastolic=82, pulse_rate=70)
        await until(lambda: device.counters.readings_stored == 1)
        rows = peripheral_rows(await service.status())
    serial, bluetooth = rows
    assert serial[:5] == ["serial /dev/ttyKIOSK0", "-", "-", "-", "no hello"]
    assert bluetooth[0] == f"ble {CUFF}" and bluetooth[2:5] == [
        "UA-651BLE",
        "1.0.0",
        "connected",
    ]  # firmware from Device Information
    assert bluetooth[5] == "1" and bluetooth[1].startswith("ble-c0ffee")
