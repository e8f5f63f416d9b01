"""The Bluetooth path end to end: a simulated BLE glucose meter -> the gateway's BLE ingest ->
SQLite outbox -> Mosquitto -> bridge -> FHIR record.

The meter is `simulators.ble` behind the GATT interface bleak also implements; the gateway's
parts (`GatewayService`: BLE ingest, profiles, alert rules, outbox, MQTT sync) run in the test's
process because the simulated radio is in-process; the bridge and the broker are real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from contract.wire import RESIDENT_ID_SYSTEMS, ResidentRef
from gateway.config import BleConfig, BleDeviceConfig, GatewayConfig, MqttConfig
from gateway.keys import GatewayKeys
from gateway.profiles import load_profiles
from gateway.service import GatewayService
from gateway.store import Outbox
from simulators.ble import GlucoseMeter, SimulatedCentral
from simulators.chain import REPO_ROOT, Chain

pytestmark = pytest.mark.mosquitto

METER = "C0:FF:EE:00:01:08"
RESIDENT = "330781-2026-000456"
SUBJECT = f"{RESIDENT_ID_SYSTEMS['health-record']}|{RESIDENT}"
RECORDS = 50


@pytest.fixture
def chain(running_broker_chain: Chain) -> Chain:
    running_broker_chain.start_bridge()
    return running_broker_chain


def bridge_glucose(chain: Chain) -> list[tuple[int, str]]:
    with sqlite3.connect(chain.bridge_db) as conn:
        return conn.execute("SELECT seq, kind FROM readings WHERE kind = 'glucose' ORDER BY seq").fetchall()


async def run_gateway_parts(chain: Chain, meter: GlucoseMeter) -> None:
    config = GatewayConfig(
        gateway_id=chain.gateway_id,
        data_dir=chain.gateway_dir,
        profiles_dir=REPO_ROOT / "device_profiles",
        mqtt=MqttConfig(port=chain.broker_port),
        ble=BleConfig(devices=(BleDeviceConfig(address=METER, model="Accu-Chek Guide"),), retry_max_s=0.2),
    )
    outbox = await Outbox.open(config.db_path, config.gateway_id, GatewayKeys.load(config.data_dir))
    # Records from the last hour; the resident sat down an hour before the first. The meter's
    # clock shows China time (UTC+8), as the gateway's default device_utc_offset_min says.
    first_utc = datetime.now(UTC) - timedelta(minutes=RECORDS + 5)
    await outbox.start_checkin(
        ResidentRef("health-record", RESIDENT),
        "doctor-li",
        int((first_utc - timedelta(hours=1)).timestamp() * 1000),
    )
    meter_local = (first_utc + timedelta(hours=8)).replace(tzinfo=None, microsecond=0)
    for n in range(RECORDS):
        meter.add_record(Decimal(50 + n) / 10, at=meter_local + timedelta(minutes=n))
    service = GatewayService(
        config, outbox, load_profiles(config.profiles_dir), central=SimulatedCentral([meter])
    )
    tasks = [asyncio.create_task(service.sync.run())]
    tasks += [asyncio.create_task(device.serve()) for device in service.ble_devices]
    try:
        deadline = time.monotonic() + 60
        while len(bridge_glucose(chain)) < RECORDS and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # a duplicate would arrive now
        (device,) = service.ble_devices
        assert device.counters.disconnects >= 1, "the download was not cut as the test meant"
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await outbox.close()


def test_fifty_stored_glucose_records_cut_halfway_reach_the_record_once_in_order(chain: Chain) -> None:
    meter = GlucoseMeter(address=METER, name="meter+01234567")
    meter.faults.drop_after_notifications = RECORDS // 2
    asyncio.run(run_gateway_parts(chain, meter))
    rows = bridge_glucose(chain)
    assert len(rows) == RECORDS, rows
    bundle = chain.bridge_get("/fhir/Observation", **{"subject:identifier": SUBJECT})
    glucose = [
        e["resource"]
        for e in bundle.get("entry", [])
        if e["resource"]["code"]["coding"][0]["code"] == "14743-9"
    ]
    assert len(glucose) == RECORDS
    glucose.sort(key=lambda r: r["effectiveDateTime"])
    assert [Decimal(str(r["valueQuantity"]["value"])) for r in glucose] == [
        Decimal(50 + n) / 10 for n in range(RECORDS)
    ]
    assert len({r["id"] for r in glucose}) == RECORDS
