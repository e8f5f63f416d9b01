"""Acks the bridge did not sign change nothing at a gateway that knows the bridge's key.

Real Mosquitto, the gateway's real outbox and sync engine, the bridge's real consumer. A client
that may publish on the gateway's ack topic (the test broker has no access rules: a broker
misconfigured or broken into) reads the gateway's batch, works out its hash and answers it first
with forged acks; the gateway marks nothing synced and takes no clock from them, and the
bridge's own signed ack then syncs everything. A gateway without the key is fooled by the same
forgery: what the key is for.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from cloud_bridge import ack_key, store
from cloud_bridge.consumer import BridgeConsumer
from contract.wire import Ack, ack_topic, batch_hash, encode_ack, peek_batch_gateway, up_topic
from gateway.config import MqttConfig, SyncConfig
from gateway.keys import GatewayKeys, create_keys
from gateway.store import Outbox
from gateway.sync import MqttSync
from tests.component.outbox_readings import bp_new_reading
from tests.conftest import Mosquitto

pytestmark = pytest.mark.mosquitto
GATEWAY = "gw-signed-acks"
READINGS = 5


class Forger:
    """A client that reads the gateway's batches and may publish on its ack topic."""

    def __init__(self, port: int) -> None:
        self.batch_hashes: list[bytes] = []
        self.seen = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="forger")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(up_topic(GATEWAY), qos=1)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            _, payload, _ = peek_batch_gateway(bytes(message.payload))
        except Exception:
            return  # the time probe
        self.batch_hashes.append(batch_hash(payload))
        self.seen.set()

    def answer(self, message: bytes) -> None:
        self.client.publish(ack_topic(GATEWAY), message, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Rig:
    def __init__(self, tmp_path: Path, mosquitto: Mosquitto, bridge_key_file: Path | None) -> None:
        self.tmp_path, self.mosquitto, self.bridge_key_file = tmp_path, mosquitto, bridge_key_file
        create_keys(tmp_path / "gw")
        self.keys = GatewayKeys.load(tmp_path / "gw")
        self.db = tmp_path / "bridge.db"
        conn = store.connect(self.db)
        store.enrol_gateway(
            conn, GATEWAY, ack_key.public_pem(self.keys.signing), site="test", kind="kiosk", now_ms=0
        )
        conn.close()

    async def start_gateway(self) -> None:
        self.outbox = await Outbox.open(self.tmp_path / "gw" / "gateway.db", GATEWAY, self.keys)
        for n in range(1, READINGS + 1):
            await self.outbox.add_reading(bp_new_reading(n))
        self.sync = MqttSync(
            GATEWAY,
            self.outbox,
            MqttConfig(port=self.mosquitto.port, reconnect_min_s=0.5, reconnect_max_s=1),
            SyncConfig(ack_timeout_s=2, idle_poll_s=0.1, bridge_ack_key_file=self.bridge_key_file),
        )
        self.task = asyncio.create_task(self.sync.run())

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.outbox.close()


@pytest.fixture
async def forger(mosquitto: Mosquitto) -> AsyncIterator[Forger]:
    forger = Forger(mosquitto.port)
    yield forger
    forger.close()


async def eventually(condition: object, what: str, timeout_s: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def forgeries(batch: bytes, bridge_key: Ed25519PrivateKey) -> list[bytes]:
    """Acks for `batch` that are not the bridge's word for this gateway, each telling the gateway
    the bridge holds it (and a clock a day off)."""
    ack = Ack(batch, 1, READINGS, batch, server_time_ms=86_400_000)
    return [
        encode_ack(ack),  # unsigned
        encode_ack(ack, gateway_id=GATEWAY, signing_key=Ed25519PrivateKey.generate()),  # another key
        encode_ack(ack, gateway_id="gw-other", signing_key=bridge_key),  # the bridge's, for another
    ]


async def test_forged_acks_change_nothing_and_the_bridges_ack_syncs(
    tmp_path: Path, mosquitto: Mosquitto, forger: Forger
) -> None:
    bridge_key_file = tmp_path / "bridge-ack.key"
    bridge_key = ack_key.create_ack_key(bridge_key_file)
    public_file = tmp_path / "bridge-ack.pub.pem"
    public_file.write_text(ack_key.public_pem(bridge_key))
    rig = Rig(tmp_path, mosquitto, public_file)
    await rig.start_gateway()
    try:
        await eventually(forger.seen.is_set, "the gateway's batch")
        for message in forgeries(forger.batch_hashes[0], bridge_key):
            forger.answer(message)
        await eventually(lambda: rig.sync.state.acks_refused == 3, "the three forgeries refused")
        status = await rig.outbox.status()
        assert (status.synced, status.batched + status.stored) == (0, READINGS)
        assert rig.sync.state.clock_offset_ms is None  # no clock learnt from a forgery
        assert rig.sync.state.last_ack_seq == 0

        consumer = BridgeConsumer(rig.db, host="127.0.0.1", port=mosquitto.port, ack_key=bridge_key)
        consumer.start()
        try:
            await eventually(lambda: rig.sync.state.last_ack_seq == READINGS, "the bridge's signed ack")
            assert (await rig.outbox.status()).synced == READINGS
            assert rig.sync.state.acks_refused == 3
        finally:
            consumer.stop()
    finally:
        await rig.stop()


async def test_a_gateway_without_the_key_is_fooled_by_a_forgery(
    tmp_path: Path, mosquitto: Mosquitto, forger: Forger
) -> None:
    rig = Rig(tmp_path, mosquitto, bridge_key_file=None)
    await rig.start_gateway()
    try:
        await eventually(forger.seen.is_set, "the gateway's batch")
        forger.answer(forgeries(forger.batch_hashes[0], Ed25519PrivateKey.generate())[0])
        await eventually(lambda: rig.sync.state.last_ack_seq == READINGS, "the forged ack taken")
        assert (await rig.outbox.status()).synced == READINGS  # no bridge ever stored these
    finally:
        await rig.stop()
