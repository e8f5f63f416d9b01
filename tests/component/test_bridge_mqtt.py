"""The bridge's consumer on a real Mosquitto with each real store (a SQLite file, a PostgreSQL
database): accept, replay, refuse."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from cloud_bridge import store
from cloud_bridge.consumer import BridgeConsumer
from contract.wire import (
    GENESIS_HASH,
    Ack,
    Reading,
    ack_topic,
    decode_ack,
    encode_batch,
    up_topic,
)
from simulators.chain import wait_for
from tests.component.bridge_readings import bp_reading
from tests.conftest import Mosquitto

pytestmark = pytest.mark.mosquitto
GATEWAY = "gw-test-01"


def reading(seq: int, systolic: int = 130) -> Reading:
    return bp_reading(GATEWAY, seq, systolic)


class GatewayStandIn:
    """Publishes batches and collects acks, as the gateway's sync engine would."""

    def __init__(self, port: int) -> None:
        self.acks: list[Ack] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_message = lambda c, u, m: self.acks.append(decode_ack(m.payload))
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(ack_topic(GATEWAY), qos=1)
        assert self._subscribed.wait(5)

    def publish(self, message: bytes, gateway_id: str = GATEWAY) -> None:
        self.client.publish(up_topic(gateway_id), message, qos=1).wait_for_publish(5)

    def wait_acks(self, count: int) -> list[Ack]:
        wait_for(lambda: len(self.acks) >= count, timeout=10, what=f"{count} ack(s)")
        return self.acks

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def bridge(
    bridge_db: Path | str, mosquitto: Mosquitto, key: Ed25519PrivateKey
) -> Iterator[tuple[BridgeConsumer, Path | str]]:
    db = bridge_db
    conn = store.connect(db)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    store.enrol_gateway(conn, GATEWAY, pem.decode(), site="test", kind="kiosk", now_ms=0)
    conn.close()
    consumer = BridgeConsumer(db, host="127.0.0.1", port=mosquitto.port, client_id="bridge-under-test")
    consumer.start()
    assert consumer.connected.wait(10)
    yield consumer, db
    consumer.stop()


@pytest.fixture
def gateway(mosquitto: Mosquitto) -> Iterator[GatewayStandIn]:
    stand_in = GatewayStandIn(mosquitto.port)
    yield stand_in
    stand_in.close()


def rows(db: Path | str, sql: str) -> list[tuple]:
    conn = store.connect(db)
    try:
        return [tuple(row) for row in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def test_valid_batch_is_stored_and_acked_once_even_when_replayed(
    bridge: tuple[BridgeConsumer, Path | str], gateway: GatewayStandIn, key: Ed25519PrivateKey
) -> None:
    consumer, db = bridge
    message, digest = encode_batch(
        [reading(1), reading(2)], prev_hash=GENESIS_HASH, signing_key=key, number=1
    )
    gateway.publish(message)
    gateway.publish(message)  # a resend after a lost ack
    first, second = gateway.wait_acks(2)[:2]
    assert first == Ack(digest, 1, 2, batch_hash=digest, server_time_ms=first.server_time_ms)
    assert (second.head_hash, second.acked, second.error) == (digest, 2, None)
    assert rows(db, "SELECT gateway_id, seq FROM readings ORDER BY seq") == [(GATEWAY, 1), (GATEWAY, 2)]
    assert rows(db, "SELECT COUNT(*) FROM fhir_resources WHERE resource_type = 'Observation'") == [(2,)]
    assert consumer.counters["replays"] == 1

    follow_up, follow_digest = encode_batch([reading(3)], prev_hash=digest, signing_key=key, number=2)
    gateway.publish(follow_up)
    assert gateway.wait_acks(3)[2].head_hash == follow_digest


def test_batch_signed_by_unknown_key_is_refused_and_stores_nothing(
    bridge: tuple[BridgeConsumer, Path | str], gateway: GatewayStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    consumer, db = bridge
    forged, _ = encode_batch(
        [reading(1, systolic=99)], prev_hash=GENESIS_HASH, signing_key=Ed25519PrivateKey.generate(), number=1
    )
    with caplog.at_level(logging.WARNING, logger="cloud_bridge.receive"):
        gateway.publish(forged)
        [ack] = gateway.wait_acks(1)
    assert (ack.head_hash, ack.acked) == (None, 0)
    assert ack.error == "signature does not verify against the enrolled key"
    assert f"refused batch from {GATEWAY}: signature does not verify" in caplog.text
    assert rows(db, "SELECT COUNT(*) FROM readings") == [(0,)]
    assert rows(db, "SELECT COUNT(*) FROM fhir_resources") == [(0,)]
    assert rows(db, "SELECT gateway_id, reason FROM refusals") == [
        (GATEWAY, "signature does not verify against the enrolled key")
    ]
    assert consumer.counters["refused"] == 1


def test_unknown_gateway_is_refused(bridge: tuple[BridgeConsumer, Path | str], mosquitto: Mosquitto) -> None:
    _, db = bridge
    stranger = Reading(
        **{**{f: getattr(reading(1), f) for f in Reading.__slots__}, "gateway_id": "gw-stranger"}
    )
    message, _ = encode_batch(
        [stranger], prev_hash=GENESIS_HASH, signing_key=Ed25519PrivateKey.generate(), number=1
    )
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    client.publish(up_topic("gw-stranger"), message, qos=1).wait_for_publish(5)
    wait_for(lambda: rows(db, "SELECT reason FROM refusals"), timeout=10, what="refusal")
    client.loop_stop()
    assert rows(db, "SELECT gateway_id, reason FROM refusals") == [
        ("gw-stranger", "unknown gateway (not enrolled)")
    ]
    assert rows(db, "SELECT COUNT(*) FROM readings") == [(0,)]


def test_out_of_chain_and_revoked_batches_are_refused(
    bridge: tuple[BridgeConsumer, Path | str], gateway: GatewayStandIn, key: Ed25519PrivateKey
) -> None:
    _, db = bridge
    first, digest = encode_batch([reading(1)], prev_hash=GENESIS_HASH, signing_key=key, number=1)
    skipped, _ = encode_batch([reading(3)], prev_hash=bytes(range(32)), signing_key=key, number=3)
    gateway.publish(skipped)  # batch 2 never arrived: the chain does not continue
    refusal = gateway.wait_acks(1)[0]
    assert refusal.error.startswith("out of chain order: batch 3 (seq 3)")
    assert refusal.head_hash == GENESIS_HASH  # what the bridge holds: nothing yet
    gateway.publish(first)
    assert gateway.wait_acks(2)[1].head_hash == digest

    conn = store.connect(db)
    store.revoke_gateway(conn, GATEWAY)
    conn.close()
    second, _ = encode_batch([reading(2)], prev_hash=digest, signing_key=key, number=2)
    gateway.publish(second)
    assert gateway.wait_acks(3)[2].error == "gateway is revoked"
    assert rows(db, "SELECT seq FROM readings") == [(1,)]
