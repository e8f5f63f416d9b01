"""The bridge's store on both back-ends, and what only PostgreSQL can do: several workers at once.

On each back-end (a SQLite file, a PostgreSQL database on a real server from Debian's package):
a replayed or overlapping batch stores nothing twice, every refusal is stored with its reason,
and a FHIR transaction posted twice leaves one Observation. On PostgreSQL: two workers, each with
its own connection, given the same batches of one gateway at the same moment store each reading
once and keep the chain whole; two gateways' readings of one resident make one Patient; a
consumer whose database connection is cut answers nothing, then stores the resend.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from cloud_bridge import fhir_store, store
from cloud_bridge.api import create_app
from cloud_bridge.consumer import BridgeConsumer
from cloud_bridge.db import Database
from cloud_bridge.fhir_map import map_reading
from cloud_bridge.receive import Outcome, receive_batch
from contract.wire import GENESIS_HASH, Reading, ResidentRef, encode_batch, up_topic
from simulators.chain import wait_for
from tests.component.bridge_auth import bearer
from tests.component.bridge_readings import bp_reading
from tests.component.test_bridge_mqtt import GATEWAY as STAND_IN_GATEWAY
from tests.component.test_bridge_mqtt import GatewayStandIn
from tests.conftest import Mosquitto

GATEWAY = "gw-county-07"
NOW = 1795564900000


def pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def reading(seq: int, gateway_id: str = GATEWAY) -> Reading:
    return bp_reading(gateway_id, seq, 118 + seq % 40, 78, measured_at_ms=1795564800000 + seq * 60_000)


def chain_of(key: Ed25519PrivateKey, batches: int, size: int, gateway_id: str = GATEWAY) -> list[bytes]:
    """A gateway's batches in the order it makes them: numbered, each chained to the one before."""
    messages, prev = [], GENESIS_HASH
    for number in range(1, batches + 1):
        seqs = range((number - 1) * size + 1, number * size + 1)
        message, prev = encode_batch(
            [reading(s, gateway_id) for s in seqs], prev_hash=prev, signing_key=key, number=number
        )
        messages.append(message)
    return messages


def enrolled(target: Path | str, key: Ed25519PrivateKey, gateway_id: str = GATEWAY) -> Database:
    conn = store.connect(target, shared_across_threads=True)
    store.enrol_gateway(conn, gateway_id, pem(key), site="county", kind="kiosk", now_ms=0)
    return conn


def one(conn: Database, sql: str, *args: Any) -> Any:
    return conn.execute(sql, args).fetchone()[0]


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def conn(bridge_db: Path | str, key: Ed25519PrivateKey) -> Iterator[Database]:
    conn = enrolled(bridge_db, key)
    yield conn
    conn.close()


def test_a_replayed_or_overlapping_batch_stores_nothing_twice(conn: Database, key: Ed25519PrivateKey) -> None:
    first, second = chain_of(key, 2, 3)
    assert receive_batch(conn, up_topic(GATEWAY), first, now_ms=NOW).stored == 3
    observations = one(conn, "SELECT COUNT(*) FROM fhir_resources WHERE resource_type = 'Observation'")
    replay = receive_batch(conn, up_topic(GATEWAY), first, now_ms=NOW + 1)
    assert replay.replay and replay.stored == 0
    # A gateway that lost its acks rebatches 2-4 after 1-3: only 4 is new.
    overlap, _ = encode_batch(
        [reading(2), reading(3), reading(4)], prev_hash=_head(conn), signing_key=key, number=2
    )
    assert receive_batch(conn, up_topic(GATEWAY), overlap, now_ms=NOW + 2).stored == 1
    assert [row[0] for row in conn.execute("SELECT seq FROM readings ORDER BY seq")] == [1, 2, 3, 4]
    per_reading = observations // 3
    assert one(conn, "SELECT COUNT(*) FROM fhir_resources WHERE resource_type = 'Observation'") == (
        4 * per_reading
    )
    assert one(conn, "SELECT readings FROM devices_seen WHERE gateway_id = ?", GATEWAY) == 4
    # The gateway's own second batch no longer follows the chain head: refused, with the head.
    refused = receive_batch(conn, up_topic(GATEWAY), second, now_ms=NOW + 3)
    assert refused.refusal is not None and refused.refusal.startswith("out of chain order")


def _head(conn: Database) -> bytes:
    return bytes(one(conn, "SELECT last_hash FROM gateways WHERE gateway_id = ?", GATEWAY))


def test_every_refusal_is_stored_with_its_reason(conn: Database, key: Ed25519PrivateKey) -> None:
    forged, _ = encode_batch(
        [reading(1)], prev_hash=GENESIS_HASH, signing_key=Ed25519PrivateKey.generate(), number=1
    )
    stranger, _ = encode_batch([reading(1, "gw-stranger")], prev_hash=GENESIS_HASH, signing_key=key, number=1)
    assert receive_batch(conn, up_topic(GATEWAY), forged, now_ms=NOW).refusal is not None
    assert receive_batch(conn, up_topic("gw-stranger"), stranger, now_ms=NOW).refusal is not None
    assert receive_batch(conn, up_topic(GATEWAY), b"\xff not cbor", now_ms=NOW).ack is None
    store.revoke_gateway(conn, GATEWAY)
    (batch,) = chain_of(key, 1, 1)
    assert receive_batch(conn, up_topic(GATEWAY), batch, now_ms=NOW).refusal == "gateway is revoked"
    reasons = [tuple(row) for row in conn.execute("SELECT gateway_id, reason FROM refusals ORDER BY id")]
    assert reasons[0] == (GATEWAY, "signature does not verify against the enrolled key")
    assert reasons[1] == ("gw-stranger", "unknown gateway (not enrolled)")
    assert reasons[2][0] is None and reasons[2][1].startswith("malformed message on 'kiosk/gw-county-07/up'")
    assert reasons[3] == (GATEWAY, "gateway is revoked")
    assert one(conn, "SELECT COUNT(*) FROM readings") == 0
    assert one(conn, "SELECT COUNT(*) FROM fhir_resources") == 0


def test_a_transaction_posted_twice_leaves_one_observation(bridge_db: Path | str) -> None:
    entries = map_reading(reading(1), batch_hash=bytes(32))
    bundle = fhir_store.to_json(fhir_store.to_transaction_bundle(entries))
    with TestClient(create_app(str(bridge_db)), headers=bearer(bridge_db, "admin")) as client:
        first = client.post("/fhir", content=bundle, headers={"Content-Type": "application/fhir+json"})
        again = client.post("/fhir", content=bundle, headers={"Content-Type": "application/fhir+json"})
        assert {e["response"]["status"] for e in first.json()["entry"]} == {"201 Created"}
        assert {e["response"]["status"] for e in again.json()["entry"]} == {"200 OK"}
        found = client.get("/fhir/Observation", params={"subject:identifier": _resident_key(entries)}).json()
    assert found["total"] == sum(1 for e in entries if e.resource_type == "Observation") == 1
    conn = store.connect(bridge_db)
    try:
        assert one(conn, "SELECT COUNT(*) FROM fhir_resources WHERE resource_type = 'Observation'") == 1
    finally:
        conn.close()


def _resident_key(entries: list[fhir_store.TransactionEntry]) -> str:
    (patient,) = [e for e in entries if e.resource_type == "Patient"]
    return fhir_store.identifier_key(patient)


def _in_parallel(workers: int, work: Callable[[int], None]) -> list[BaseException]:
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            work(index)
        except BaseException as exc:  # reported by the test, never swallowed
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return errors


def test_two_workers_given_the_same_batches_at_once_store_each_reading_once(
    postgres_url: str, postgres_server: Any, key: Ed25519PrivateKey
) -> None:
    batches = chain_of(key, 25, 4)
    enrolled(postgres_url, key).close()
    connections = [store.connect(postgres_url, shared_across_threads=True) for _ in range(2)]
    outcomes: list[list[Outcome]] = [[], []]
    in_step = threading.Barrier(2)

    def worker(index: int) -> None:
        for message in batches:
            in_step.wait(30)  # both take the same batch at the same moment
            outcomes[index].append(receive_batch(connections[index], up_topic(GATEWAY), message, now_ms=NOW))

    errors = _in_parallel(2, worker)
    assert errors == []
    for first, second in zip(*outcomes, strict=True):
        assert first.refusal is None and second.refusal is None
        assert sorted((first.stored, second.stored)) == [0, 4]  # one stored it, the other saw a replay
        assert first.replay != second.replay
    conn = connections[0]
    assert [row[0] for row in conn.execute("SELECT seq FROM readings ORDER BY seq")] == list(range(1, 101))
    # The chain is whole: from the head back to the genesis hash, one link per batch.
    links = dict(conn.execute("SELECT hash, prev_hash FROM batches").fetchall())
    head, walked = _head(conn), 0
    while head != GENESIS_HASH:
        head, walked = links[head], walked + 1
    assert walked == len(links) == 25
    assert one(conn, "SELECT last_seq FROM gateways") == 100
    assert one(conn, "SELECT COUNT(*) FROM seq_gaps") == 0
    # The same batches on one worker, for the resources a single writer makes.
    alone = postgres_server.create_database()
    single = enrolled(alone, key)
    for message in batches:
        receive_batch(single, up_topic(GATEWAY), message, now_ms=NOW)
    count = "SELECT resource_type, COUNT(*) FROM fhir_resources GROUP BY resource_type ORDER BY 1"
    assert conn.execute(count).fetchall() == single.execute(count).fetchall()
    for each in [*connections, single]:
        each.close()


def test_two_gateways_measuring_one_resident_at_once_make_one_patient(postgres_url: str) -> None:
    keys = [Ed25519PrivateKey.generate() for _ in range(2)]
    gateways = ["gw-village-a", "gw-village-b"]
    for gateway_id, gateway_key in zip(gateways, keys, strict=True):
        enrolled(postgres_url, gateway_key, gateway_id).close()
    chains = [chain_of(k, 10, 3, g) for k, g in zip(keys, gateways, strict=True)]
    connections = [store.connect(postgres_url, shared_across_threads=True) for _ in range(2)]
    in_step = threading.Barrier(2)

    def worker(index: int) -> None:
        for message in chains[index]:
            in_step.wait(30)
            outcome = receive_batch(connections[index], up_topic(gateways[index]), message, now_ms=NOW)
            assert outcome.stored == 3, outcome

    assert _in_parallel(2, worker) == []
    conn = connections[0]
    assert one(conn, "SELECT COUNT(*) FROM readings") == 60
    assert one(conn, "SELECT COUNT(*) FROM fhir_resources WHERE resource_type = 'Patient'") == 1
    for each in connections:
        each.close()


@pytest.mark.mosquitto
def test_a_consumer_whose_database_connection_is_cut_stores_the_resend(
    postgres_url: str, mosquitto: Mosquitto, key: Ed25519PrivateKey
) -> None:
    enrolled(postgres_url, key, STAND_IN_GATEWAY).close()
    first, second = chain_of(key, 2, 2, STAND_IN_GATEWAY)
    consumer = BridgeConsumer(postgres_url, host="127.0.0.1", port=mosquitto.port, client_id="bridge-pg")
    gateway = GatewayStandIn(mosquitto.port)
    consumer.start()
    try:
        assert consumer.connected.wait(10)
        gateway.publish(first)
        assert gateway.wait_acks(1)[0].acked == 2
        admin = store.connect(postgres_url)
        admin.execute(  # what a database restart or a network cut does to the consumer's session
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        gateway.publish(second)
        wait_for(lambda: consumer.counters["storage_errors"] == 1, timeout=10, what="the storage error")
        assert len(gateway.acks) == 1  # nothing stored, nothing acked
        gateway.publish(second)  # the gateway's resend after its ack time-out
        acks = gateway.wait_acks(2)
        assert acks[1].acked == 4 and acks[1].error is None
        assert one(admin, "SELECT COUNT(*) FROM readings") == 4
        admin.close()
    finally:
        gateway.close()
        consumer.stop()


def test_workers_storing_the_same_residents_in_other_orders_do_not_deadlock(postgres_url: str) -> None:
    """Two workers' batches name the same residents (a resident measured at two kiosks) in
    different orders. Each batch's transaction creates the residents it is first to hold; were they
    inserted in each batch's own order, two transactions could each wait for a row the other
    inserted (PostgreSQL then aborts one: a deadlock, a batch not acked). Inserted in one order
    everywhere, one waits for the other and both commit."""
    rounds, per_round = 20, 40
    conns = [store.connect(postgres_url) for _ in range(2)]
    try:
        errors: list[BaseException] = []
        start = threading.Barrier(2, timeout=30)

        def apply_batches(conn: Database, worker: int) -> None:
            rng = random.Random(worker)
            try:
                for round_no in range(rounds):
                    # Residents new to the record, the same for both workers, each in its own order.
                    order = [f"330781-2026-{round_no:02d}{n:04d}" for n in range(per_round)]
                    rng.shuffle(order)
                    transactions = [
                        map_reading(
                            bp_reading(f"gw-{worker}", round_no * 100 + n + 1,
                                       resident=ResidentRef("health-record", resident)),
                            batch_hash=bytes(32),
                        )
                        for n, resident in enumerate(order)
                    ]  # fmt: skip
                    start.wait()
                    with conn.transaction():
                        fhir_store.apply_transactions(
                            conn, transactions, now_iso="2026-11-25T08:00:00+00:00", first_time=True
                        )
                        time.sleep(0.01)  # hold the rows a moment, as a batch's other work does
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=apply_batches, args=(conn, n)) for n, conn in enumerate(conns)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        (patients,) = (
            conns[0].execute("SELECT COUNT(*) FROM fhir_resources WHERE resource_type = 'Patient'").fetchone()
        )
        assert patients == rounds * per_round
    finally:
        for conn in conns:
            conn.close()
