"""Scale-out: three bridge workers share the uplink (MQTT v5 shared subscription) over one PostgreSQL.

Real Mosquitto, a real PostgreSQL, three `kiosk-bridge run --worker …` processes, and 50 gateways
with their real outbox and sync engine (in this process). The broker hands consecutive batches of
one gateway to different workers, so batches are decided out of order; midway one worker is killed
with SIGKILL and started again under its name. At the end every reading is stored exactly once and
every gateway's chain at the bridge runs unbroken from its first batch to the head the gateway
holds acked. `KIOSK_WORKERS_READINGS=100000` runs it at the issue's size (default 10,000).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_bridge import ack_key, store
from cloud_bridge.receive import Outcome, receive_batch
from contract.wire import GENESIS_HASH, encode_batch, up_topic
from gateway.config import MqttConfig, SyncConfig
from gateway.keys import GatewayKeys, create_keys
from gateway.store import Outbox
from gateway.sync import MqttSync
from simulators.chain import free_port
from tests.component.bridge_readings import bp_reading
from tests.component.outbox_readings import bp_new_reading as reading
from tests.conftest import Mosquitto

pytestmark = pytest.mark.mosquitto

GATEWAYS = 50
WORKERS = ("w1", "w2", "w3")
READINGS = int(os.environ.get("KIOSK_WORKERS_READINGS", "10000"))
BRIDGE = Path(sys.executable).with_name("kiosk-bridge")
ZERO_HASH = bytes(32)


async def stop_gateways(tasks: list[asyncio.Task[None]], outboxes: dict[str, Outbox]) -> None:
    """A test's clean-up, however it ended: the gateways' sync tasks cancelled, their outboxes
    closed (also used by the TLS and dynamic-security worker tests)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for outbox in outboxes.values():
        await outbox.close()


class Worker:
    """One `kiosk-bridge run --worker NAME` process; `start` again after a kill is a restart."""

    def __init__(self, name: str, db_url: str, mqtt_port: int, workdir: Path, ack_key: Path) -> None:
        self.name = name
        self.ack_key = ack_key  # the bridge's one ack key: every worker is given the same file
        self.db_url = db_url
        self.mqtt_port = mqtt_port
        self.http_port = free_port()
        self.log = workdir / f"bridge-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(BRIDGE), "run", "--db", self.db_url, "--mqtt-port", str(self.mqtt_port),
                 "--http-port", str(self.http_port), "--worker", self.name, "--ack-key", str(self.ack_key)],
                stdout=log, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while b"subscribed to $share/bridge/kiosk/+/up" not in self.log.read_bytes()[offset:]:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"worker {self.name} did not subscribe"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def metrics(self) -> dict[str, float]:
        """The worker's counters from /metrics (Prometheus text; open, no token), by name."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as answer:
            text = answer.read().decode("utf-8")
        return {
            sample.name.removeprefix("kiosk_bridge_"): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if not sample.labels
        }

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def stored_count(db_url: str) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT COUNT(*) FROM readings").fetchone()
        assert row is not None
        return int(row[0])


def test_a_worker_defers_a_batch_ahead_of_the_chain_but_still_refuses_a_fork(postgres_url: str) -> None:
    """`defer_ahead`: batch 3 before batch 2 is put off (no ack, no refusal recorded) and stored once
    2 is; a batch that claims the next number but does not chain to the head is refused at once."""
    key = Ed25519PrivateKey.generate()
    gateway_id = "gw-defer-01"
    conn = store.connect(postgres_url)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    store.enrol_gateway(conn, gateway_id, pem.decode(), site="test", kind="kiosk", now_ms=0)
    prev, messages = GENESIS_HASH, []
    for number, seqs in enumerate(([1, 2], [3], [4, 5]), start=1):
        message, prev = encode_batch(
            [bp_reading(gateway_id, s) for s in seqs], prev_hash=prev, signing_key=key, number=number
        )
        messages.append(message)
    forged, _ = encode_batch([bp_reading(gateway_id, 3)], prev_hash=GENESIS_HASH, signing_key=key, number=2)

    def receive(message: bytes, defer: bool = True) -> Outcome:
        return receive_batch(conn, up_topic(gateway_id), message, now_ms=1, defer_ahead=defer)

    try:
        assert receive(messages[0]).stored == 2
        ahead = receive(messages[2])
        assert ahead.deferred and ahead.ack is None and ahead.refusal is None and ahead.stored == 0
        fork = receive(forged)  # number 2 right after the head, but not chained to it: tampering
        assert fork.refusal is not None and fork.refusal.startswith("out of chain order")
        assert fork.ack is not None and fork.ack.error
        assert receive(messages[1]).stored == 1
        assert receive(messages[2]).stored == 2  # the retry fits now
        late = receive(messages[0])  # a stale copy is a replay, deferred or not
        assert late.replay and late.ack is not None
        refusals = conn.execute("SELECT reason FROM refusals").fetchall()
        assert len(refusals) == 1  # the fork only
        # The last try refuses as before, with the head, so the gateway resends from it.
        extra, _ = encode_batch(
            [bp_reading(gateway_id, 9)], prev_hash=bytes(range(32)), signing_key=key, number=5
        )
        last_try = receive(extra, defer=False)
        assert last_try.refusal is not None and last_try.ack is not None and last_try.ack.head_number == 3
    finally:
        conn.close()


def test_bridge_refuses_workers_on_sqlite(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BRIDGE), "run", "--db", str(tmp_path / "bridge.db"), "--worker", "w1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "PostgreSQL" in result.stderr


def test_a_worker_does_not_make_an_ack_key_of_its_own(tmp_path: Path, postgres_url: str) -> None:
    """Its acks would be refused by every gateway that knows the bridge's key."""
    missing = tmp_path / "bridge-ack.key"
    result = subprocess.run(
        [str(BRIDGE), "run", "--db", postgres_url, "--worker", "w1", "--ack-key", str(missing)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "does not exist: make it once with `kiosk-bridge ack-key init`" in result.stderr
    assert not missing.exists()


async def test_three_workers_store_every_reading_once_through_a_worker_kill(
    tmp_path: Path, mosquitto: Mosquitto, postgres_url: str
) -> None:
    per_gateway = READINGS // GATEWAYS
    gateway_ids = [f"gw-workers-{i:02d}" for i in range(GATEWAYS)]
    conn = store.connect(postgres_url)
    keys: dict[str, GatewayKeys] = {}
    for gateway_id in gateway_ids:
        create_keys(tmp_path / gateway_id)
        keys[gateway_id] = GatewayKeys.load(tmp_path / gateway_id)
        public = (
            keys[gateway_id]
            .signing.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        store.enrol_gateway(conn, gateway_id, public.decode(), site="test", kind="kiosk", now_ms=0)
    conn.close()

    bridge_key = ack_key.create_ack_key(tmp_path / "bridge-ack.key")
    (tmp_path / "bridge-ack.pub.pem").write_text(ack_key.public_pem(bridge_key))
    workers = [
        Worker(name, postgres_url, mosquitto.port, tmp_path, tmp_path / "bridge-ack.key") for name in WORKERS
    ]
    outboxes: dict[str, Outbox] = {}
    syncs: dict[str, MqttSync] = {}
    tasks: list[asyncio.Task[None]] = []
    try:
        for worker in workers:
            worker.start()
        for gateway_id in gateway_ids:
            outboxes[gateway_id] = await Outbox.open(
                tmp_path / gateway_id / "gateway.db", gateway_id, keys[gateway_id]
            )
            syncs[gateway_id] = MqttSync(
                gateway_id,
                outboxes[gateway_id],
                MqttConfig(port=mosquitto.port, keepalive_s=5, reconnect_min_s=0.5, reconnect_max_s=2),
                SyncConfig(
                    batch_min_readings=10,
                    batch_max_readings=50,  # many small batches: many chances to overtake
                    ack_timeout_s=3.0,
                    idle_poll_s=0.2,
                    time_probe_wait_s=0.5,
                    bridge_ack_key_file=tmp_path / "bridge-ack.pub.pem",  # acks from any worker count
                ),
            )
            tasks.append(asyncio.create_task(syncs[gateway_id].run()))

        async def produce(gateway_id: str) -> None:
            for first in range(1, per_gateway + 1, 20):
                last = min(first + 19, per_gateway)
                await outboxes[gateway_id].add_readings([reading(n) for n in range(first, last + 1)])
                syncs[gateway_id].wake()
                await asyncio.sleep(0.01)

        started = time.monotonic()
        producing = [asyncio.create_task(produce(gateway_id)) for gateway_id in gateway_ids]

        # Midway, SIGKILL one worker (whatever it holds in flight is not acked), then restart it
        # under its name: the broker gives it back its session with the messages queued for it.
        victim = workers[1]
        deadline = started + 60 + READINGS / 200
        while await asyncio.to_thread(stored_count, postgres_url) < READINGS * 0.4:
            assert time.monotonic() < deadline, "no progress before the kill"
            await asyncio.sleep(0.05)
        victim.kill()
        killed_at = await asyncio.to_thread(stored_count, postgres_url)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(victim.start)
        await asyncio.gather(*producing)

        async def all_synced() -> bool:
            for outbox in outboxes.values():
                status = await outbox.status()
                if status.synced < per_gateway:
                    return False
            return True

        while not await all_synced():
            assert time.monotonic() < deadline, f"not synced in time: {stored_count(postgres_url)} stored"
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
        metrics = {worker.name: worker.metrics() for worker in workers}
    finally:
        await stop_gateways(tasks, outboxes)
        for worker in workers:
            worker.stop()

    with psycopg.connect(postgres_url, autocommit=True) as db:
        rows = db.execute("SELECT gateway_id, seq FROM readings").fetchall()
        expected = {(gateway_id, seq) for gateway_id in gateway_ids for seq in range(1, per_gateway + 1)}
        assert len(rows) == len(expected)  # (gateway_id, seq) is the key: no reading twice
        assert set(rows) == expected
        for gateway_id in gateway_ids:
            # The chain at the bridge: from the head back to the genesis hash, every stored batch of
            # the gateway on it once, its sequences exactly 1..n, and the head the gateway's newest batch.
            head, head_no = db.execute(
                "SELECT last_hash, last_batch_no FROM gateways WHERE gateway_id = %s", (gateway_id,)
            ).fetchone()
            links = {
                bytes(h): (bytes(prev), first, last)
                for h, prev, first, last in db.execute(
                    "SELECT hash, prev_hash, first_seq, last_seq FROM batches WHERE gateway_id = %s",
                    (gateway_id,),
                )
            }
            walked, cursor, seqs = 0, bytes(head), 0
            while cursor != ZERO_HASH:
                prev, first, last = links[cursor]
                seqs += last - first + 1  # this test's batches are single runs (no priorities)
                walked += 1
                cursor = prev
            assert walked == len(links) == head_no, gateway_id
            assert seqs == per_gateway, gateway_id
            (gw_last_batch,) = await _last_batch_id(tmp_path / gateway_id / "gateway.db")
            assert gw_last_batch == head_no, gateway_id
        refusals = db.execute("SELECT reason FROM refusals").fetchall()
    assert all(reason.startswith("out of chain order") for (reason,) in refusals), refusals[:5]

    retried = sum(int(m.get("out_of_order_retries_total", 0)) for m in metrics.values())
    print(
        f"\n{READINGS} readings from {GATEWAYS} gateways through {len(WORKERS)} workers in {elapsed:.1f} s "
        f"({READINGS / elapsed:,.0f} readings/s); killed {victim.name} at {killed_at} stored; "
        f"{retried} out-of-order retries, {len(refusals)} chain-order refusals; per worker: "
        + "; ".join(
            f"{name} {m.get('readings_stored_total', 0):.0f} readings, "
            f"{m.get('replays_total', 0):.0f} replays"
            for name, m in metrics.items()
        )
    )


async def _last_batch_id(path: Path) -> tuple[int]:
    import aiosqlite

    async with aiosqlite.connect(path) as db, db.execute("SELECT MAX(id) FROM batches") as cursor:
        row = await cursor.fetchone()
    assert row is not None
    return (int(row[0]),)
