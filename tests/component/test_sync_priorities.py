"""What goes first, what waits for the budget, and how batches adapt: on real Mosquitto and the bridge.

The gateway's real outbox and sync engine publish through the fault proxy (to slow or spoil the
link) to Mosquitto; the bridge's real consumer stores, answers, and keeps track of gaps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from cloud_bridge import store
from cloud_bridge.consumer import BridgeConsumer
from contract.wire import DeviceRef, Waveform, decode_reading
from gateway.config import MqttConfig, SyncConfig
from gateway.keys import GatewayKeys, create_keys
from gateway.store import NewReading, Outbox
from gateway.sync import MqttSync
from simulators.fault_proxy import FaultProxy
from tests.component.outbox_readings import bp_new_reading
from tests.conftest import Mosquitto

pytestmark = pytest.mark.mosquitto
GATEWAY = "gw-vehicle-07"


def vitals(n: int, *, flags: tuple[str, ...] = ()) -> NewReading:
    """A plain BP reading, or with `flags` a hypertensive crisis."""
    if flags:
        return bp_new_reading(n, systolic=182, diastolic=115, flags=flags)
    return bp_new_reading(n, systolic=100 + n % 40)


def ecg_strip(n: int, *, flags: tuple[str, ...] = ()) -> NewReading:
    """10 s of two noisy leads: ~28 KB on the wire, so a small budget holds some back."""
    rng = random.Random(n)
    leads = tuple(tuple(rng.randrange(-30000, 30000) for _ in range(5000)) for _ in range(2))
    return dataclasses.replace(
        vitals(n),
        device=DeviceRef("ecg-0001", "KX-ECG2", "0.1.0"),
        kind="ecg",
        values=(),
        flags=flags,
        waveform=Waveform(500, Decimal("0.5"), ("MDC_ECG_LEAD_I", "MDC_ECG_LEAD_II"), n * 5000, leads),
    )


@dataclasses.dataclass
class Rig:
    outbox: Outbox
    sync: MqttSync
    proxy: FaultProxy
    bridge_db: Path
    outbox_path: Path

    def bridge(self, sql: str, *args: object) -> list[tuple]:
        with sqlite3.connect(self.bridge_db) as conn:
            return conn.execute(sql, args).fetchall()

    def bridge_seqs(self) -> list[int]:
        return [row[0] for row in self.bridge("SELECT seq FROM readings ORDER BY seq")]


async def wait_until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def rig_factory(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Callable[..., object]]:
    made: list[tuple[asyncio.Task[None], Rig, BridgeConsumer]] = []

    async def make(sync_config: SyncConfig, readings: list[NewReading]) -> Rig:
        create_keys(tmp_path / "gw")
        keys = GatewayKeys.load(tmp_path / "gw")
        db = tmp_path / "bridge.db"
        conn = store.connect(db)
        public = keys.signing.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        store.enrol_gateway(conn, GATEWAY, public.decode(), site="outreach", kind="vehicle", now_ms=0)
        conn.close()
        consumer = BridgeConsumer(db, host="127.0.0.1", port=mosquitto.port)
        consumer.start()
        assert await asyncio.to_thread(consumer.connected.wait, 10)
        outbox = await Outbox.open(tmp_path / "gw" / "gateway.db", GATEWAY, keys)
        if readings:
            await outbox.add_readings(readings)
        proxy = FaultProxy(upstream_port=mosquitto.port)
        sync = MqttSync(GATEWAY, outbox, MqttConfig(port=proxy.port, keepalive_s=5), sync_config)
        rig = Rig(outbox, sync, proxy, db, tmp_path / "gw" / "gateway.db")
        made.append((asyncio.create_task(sync.run()), rig, consumer))
        return rig

    yield make
    for task, rig, consumer in made:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=15)  # a sync that ignores its cancel fails here
        assert done, "the sync task did not stop when cancelled"
        await rig.outbox.close()
        await asyncio.to_thread(consumer.stop)
        rig.proxy.close()


async def test_a_crisis_taken_during_a_backlog_drain_overtakes_it_and_gaps_are_reported_until_filled(
    rig_factory: Callable[..., object], caplog: pytest.LogCaptureFixture
) -> None:
    backlog = 1500
    rig = await rig_factory(  # type: ignore[misc]
        SyncConfig(batch_max_readings=100, batch_min_readings=100, max_in_flight=2, idle_poll_s=0.1),
        [vitals(n) for n in range(1, backlog + 1)],
    )
    rig.proxy.bytes_per_s = 8_000  # a weak 4G link: the backlog takes several seconds
    with caplog.at_level(logging.INFO, logger="cloud_bridge.receive"):
        await wait_until(lambda: rig.bridge_seqs(), 30, "the first batch at the bridge")
        crisis_seq = await rig.outbox.add_reading(vitals(backlog + 1, flags=("alert:hypertensive_crisis",)))
        rig.sync.wake()
        await wait_until(lambda: crisis_seq in rig.bridge_seqs(), 30, "the crisis reading at the bridge")
        at_arrival = len(rig.bridge_seqs())
        [fleet] = [
            g for g in store.fleet(store.connect(rig.bridge_db), now_ms=0) if g["gateway_id"] == GATEWAY
        ]
        await wait_until(lambda: len(rig.bridge_seqs()) == backlog + 1, 60, "the whole backlog")
    # The crisis reading arrived with most of the backlog still on the vehicle.
    assert at_arrival < backlog / 2, at_arrival
    # Meanwhile the bridge saw the gap below it and knew the gateway still held those readings.
    assert fleet["missing"] > 0 and fleet["backlog"] >= fleet["missing"], fleet
    assert "not received yet" in caplog.text and "missing (" not in caplog.text
    assert rig.bridge("SELECT COUNT(*) FROM seq_gaps") == [(0,)]  # filled by the end
    assert "arrived (gaps filled)" in caplog.text
    assert rig.bridge_seqs() == list(range(1, backlog + 2))  # each once
    assert rig.bridge("SELECT COUNT(*) FROM refusals") == [(0,)]


async def test_the_daily_budget_holds_plain_ecg_back_until_the_next_day(
    rig_factory: Callable[..., object],
) -> None:
    readings = [vitals(1), ecg_strip(2), vitals(3), ecg_strip(4), ecg_strip(5), vitals(6)]
    budget_mb = 64 / 1024  # 64 KB: the vitals and two strips of ~28 KB, not three
    rig = await rig_factory(  # type: ignore[misc]
        SyncConfig(daily_budget_mb=budget_mb, idle_poll_s=0.1, batch_max_readings=10), readings
    )
    sync, outbox = rig.sync, rig.outbox
    await wait_until(lambda: sync.state.waveforms_deferred, 30, "the budget to run out")
    await wait_until(lambda: len(rig.bridge_seqs()) == 5, 30, "vitals and two strips at the bridge")
    assert rig.bridge_seqs() == [1, 2, 3, 4, 6]  # strip 5 waits
    status = await outbox.status()
    assert (status.stored, status.waveforms_waiting) == (1, 1)
    assert sync.state.bytes_today <= budget_mb * 1024 * 1024
    assert await outbox.link_usage(sync.today()) == sync.state.bytes_today  # durable, for restarts

    # Readings still go today, and so does a strip the region's rules flagged.
    await outbox.add_reading(vitals(7))
    await outbox.add_reading(ecg_strip(8, flags=("alert:arrhythmia",)))
    sync.wake()
    await wait_until(lambda: rig.bridge_seqs()[-2:] == [7, 8], 30, "a reading and a flagged strip")
    await asyncio.sleep(1.0)
    assert 5 not in rig.bridge_seqs()

    sync.today = lambda: "2099-01-01"  # type: ignore[method-assign]  # midnight on the vehicle
    sync.wake()
    await wait_until(lambda: 5 in rig.bridge_seqs(), 30, "the held strip on the next day")
    assert rig.bridge_seqs() == list(range(1, 9))
    assert (await outbox.status()).waveforms_waiting == 0 and not sync.state.waveforms_deferred


async def test_batches_shrink_when_acks_time_out_and_grow_back_on_a_good_link(
    rig_factory: Callable[..., object],
) -> None:
    total = 3000
    rig = await rig_factory(  # type: ignore[misc]
        SyncConfig(
            batch_max_readings=400,
            batch_min_readings=25,
            ack_timeout_s=0.6,
            max_in_flight=1,
            idle_poll_s=0.05,
        ),
        [vitals(n) for n in range(1, total + 1)],
    )
    sync, proxy = rig.sync, rig.proxy
    proxy.latency_s = 0.5  # each way: no ack within the 0.6 s time-out
    sizes: list[int] = []

    async def watch() -> None:
        while True:
            sizes.append(sync.state.batch_readings)
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    try:
        await wait_until(lambda: sync.state.batch_readings == 25, 30, "batches to shrink to the minimum")
        proxy.latency_s = 0.0
        await wait_until(lambda: sync.state.batch_readings == 400, 60, "batches to grow back")
        await wait_until(lambda: len(rig.bridge_seqs()) == total, 60, "every reading at the bridge")
    finally:
        watcher.cancel()
    assert sizes[0] == 400 and min(sizes) == 25
    assert rig.bridge_seqs() == list(range(1, total + 1))


async def test_readings_taken_on_an_unsynced_clock_get_the_bridge_time_before_they_are_signed(
    rig_factory: Callable[..., object], monkeypatch: pytest.MonkeyPatch
) -> None:
    three_days_ms = 3 * 86_400_000
    true_now = time.time_ns() // 1_000_000
    taken_at = true_now - 300_000  # five minutes ago, really
    # The vehicle's Pi booted without network or RTC: its clock runs three days behind.
    monkeypatch.setattr("gateway.store._now_ms", lambda: time.time_ns() // 1_000_000 - three_days_ms)
    rx = time.monotonic_ns() // 1_000_000  # the gateway's monotonic clock when they arrived
    unsynced = [
        dataclasses.replace(
            vitals(n),
            measured_at_ms=taken_at - three_days_ms,
            time_quality="unsynced",
            received_mono_ms=rx,
        )
        for n in (1, 2)
    ]
    ntp = dataclasses.replace(vitals(3), measured_at_ms=taken_at, time_quality="ntp")
    earlier_boot = dataclasses.replace(vitals(4), measured_at_ms=12345, time_quality="unsynced")
    rig = await rig_factory(SyncConfig(idle_poll_s=0.1), [*unsynced, ntp, earlier_boot])  # type: ignore[misc]
    monkeypatch.undo()
    with sqlite3.connect(rig.outbox_path) as conn:  # stored before the last reboot
        conn.execute("UPDATE readings SET gateway_boot = 'an-earlier-boot' WHERE seq = 4")
    await wait_until(lambda: len(rig.bridge_seqs()) == 4, 30, "every reading at the bridge")

    def at_bridge(seq: int) -> tuple[int, str]:
        [(body,)] = rig.bridge("SELECT body FROM readings WHERE seq = ?", seq)
        reading = decode_reading(body)
        return reading.measured_at_ms, reading.time_quality

    for seq in (1, 2):
        measured, quality = at_bridge(seq)
        assert quality == "bridge" and abs(measured - taken_at) < 2_000, (seq, measured - taken_at)
    assert at_bridge(3) == (taken_at, "ntp")  # a good clock is left alone
    assert at_bridge(4) == (12345, "unsynced")  # another boot's monotonic time says nothing now
    assert rig.sync.state.times_corrected == 2 and rig.sync.state.clock_rtt_ms is not None
