"""The gateway's sync through a bad 4G link: zero lost, zero doubled at the bridge.

Real Mosquitto, the gateway's real outbox and sync engine, the bridge's real consumer; between
the gateway and the broker the fault proxy (`simulators.fault_proxy`) adds latency, throttles,
stalls the link without closing it, cuts every connection and refuses new ones, at random, while
readings keep arriving. The broker and the bridge are also restarted mid-sync. At the end every
reading the gateway stored is in the bridge's store once, under its own sequence number.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from cloud_bridge import store
from cloud_bridge.consumer import BridgeConsumer
from gateway.config import MqttConfig, SyncConfig
from gateway.keys import GatewayKeys, create_keys
from gateway.store import Outbox
from gateway.sync import MqttSync
from simulators.fault_proxy import FaultProxy
from tests.component.outbox_readings import bp_new_reading as reading
from tests.conftest import Mosquitto

pytestmark = pytest.mark.mosquitto
GATEWAY = "gw-faults-01"
READINGS = 400


def bridge_seqs(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [
            row[0]
            for row in conn.execute("SELECT seq FROM readings WHERE gateway_id = ? ORDER BY seq", (GATEWAY,))
        ]


async def test_a_flapping_link_and_restarts_lose_nothing_and_double_nothing(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    seed = int(os.environ.get("KIOSK_FAULT_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    create_keys(tmp_path / "gw")
    keys = GatewayKeys.load(tmp_path / "gw")
    db = tmp_path / "bridge.db"
    conn = store.connect(db)
    public = keys.signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    store.enrol_gateway(conn, GATEWAY, public.decode(), site="test", kind="vehicle", now_ms=0)
    conn.close()
    consumer = BridgeConsumer(db, host="127.0.0.1", port=mosquitto.port)
    consumer.start()
    proxy = FaultProxy(upstream_port=mosquitto.port)
    outbox = await Outbox.open(tmp_path / "gw" / "gateway.db", GATEWAY, keys)
    sync = MqttSync(
        GATEWAY,
        outbox,
        MqttConfig(port=proxy.port, keepalive_s=2, reconnect_min_s=0.5, reconnect_max_s=2),
        SyncConfig(batch_max_readings=25, ack_timeout_s=2.0, idle_poll_s=0.1),
    )
    syncing = asyncio.create_task(sync.run())
    faults: list[str] = []

    async def produce() -> None:
        for n in range(1, READINGS + 1):
            await outbox.add_reading(reading(n))
            sync.wake()
            await asyncio.sleep(0.02)

    async def misbehave() -> None:
        nonlocal consumer
        # Every kind of fault twice, in a random order, and the two restarts at fixed points.
        schedule = ["cut", "stall", "latency", "refuse", "throttle"] * 2
        rng.shuffle(schedule)
        schedule[5:5] = ["broker restart"]
        schedule[9:9] = ["bridge restart"]
        for fault in schedule:
            await asyncio.sleep(rng.uniform(0.2, 0.8))
            faults.append(fault)
            if fault == "cut":
                deadline = time.monotonic() + 10
                while not proxy.open_connections and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)  # cut a live link, not an empty proxy
                proxy.cut()
            elif fault == "stall":  # longer than 1.5 keepalives: the client must notice by itself
                proxy.stall()
                await asyncio.sleep(3.5)
                proxy.resume()
            elif fault == "latency":
                proxy.latency_s = rng.uniform(0.05, 0.4)
            elif fault == "throttle":
                proxy.bytes_per_s = rng.choice([2_000, 8_000])
            elif fault == "refuse":
                proxy.refuse(True)
                proxy.cut()
                await asyncio.sleep(rng.uniform(0.5, 2.0))
                proxy.refuse(False)
            elif fault == "broker restart":
                mosquitto.stop()
                await asyncio.sleep(1.0)
                mosquitto.start()
            elif fault == "bridge restart":
                await asyncio.to_thread(consumer.stop)
                consumer = BridgeConsumer(db, host="127.0.0.1", port=mosquitto.port)
                consumer.start()
        proxy.latency_s, proxy.bytes_per_s = 0.0, None

    try:
        await asyncio.gather(produce(), misbehave())
        deadline = time.monotonic() + 90
        while (await outbox.status()).synced < READINGS and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        status = await outbox.status()
        assert status.synced == READINGS, f"seed {seed}, faults {faults}: {status}, {sync.state}"
    finally:
        syncing.cancel()
        await asyncio.gather(syncing, return_exceptions=True)
        await outbox.close()
        await asyncio.to_thread(consumer.stop)
        proxy.close()
    assert bridge_seqs(db) == list(range(1, READINGS + 1)), f"seed {seed}, faults {faults}"
    assert proxy.counters.connections > 1 and proxy.counters.cuts >= 1, proxy.counters
