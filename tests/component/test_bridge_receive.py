"""The bridge's decision for one message, on each real store (a SQLite file, a PostgreSQL server):
batch chain, gaps, probes, v1.

`receive_batch` is called directly (no broker): each case is one message and its answer.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import cbor2
import pytest
import zstandard
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_bridge import fhir_store, store
from cloud_bridge.db import Database
from cloud_bridge.fhir_map import TransactionEntry, map_reading
from cloud_bridge.receive import receive_batch
from contract.wire import GENESIS_HASH, Reading, batch_hash, encode_batch, encode_time_probe, up_topic
from tests.component.bridge_readings import bp_reading

GATEWAY = "gw-county-03"
NOW = 1795564900000
KEY = Ed25519PrivateKey.generate()


def reading(seq: int) -> Reading:
    return bp_reading(GATEWAY, seq, 120 + seq % 30, 80, measured_at_ms=1795564800000 + seq * 60_000)


@pytest.fixture
def conn(bridge_db: str | Path) -> Iterator[Database]:
    conn = store.connect(bridge_db)
    pem = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    store.enrol_gateway(conn, GATEWAY, pem.decode(), site="county", kind="vehicle", now_ms=0)
    yield conn
    conn.close()


class Chain:
    """Batches as a gateway makes them: numbered, each chained to the one before."""

    def __init__(self) -> None:
        self.prev = GENESIS_HASH
        self.number = 0

    def next(self, seqs: list[int], waiting: int = 0) -> bytes:
        self.number += 1
        message, self.prev = encode_batch(
            [reading(s) for s in seqs],
            prev_hash=self.prev,
            signing_key=KEY,
            number=self.number,
            waiting=waiting,
        )
        return message


def receive(conn: Database, message: bytes):
    return receive_batch(conn, up_topic(GATEWAY), message, now_ms=NOW)


def test_urgent_readings_first_open_a_gap_that_the_backlog_fills(
    conn: Database, caplog: pytest.LogCaptureFixture
) -> None:
    chain = Chain()
    with caplog.at_level(logging.INFO, logger="cloud_bridge.receive"):
        assert receive(conn, chain.next([1, 2, 3])).stored == 3
        crisis = receive(conn, chain.next([9], waiting=5))  # 4-8 wait on the gateway
        assert crisis.ack is not None and crisis.ack.acked == 9 and crisis.gaps_opened == 1
        assert store.gateway_gaps(conn, GATEWAY) == [(4, 8)]
        assert "sequences 4–8 not received yet (5 missing in all; the gateway holds 5 back)" in caplog.text
        [row] = store.fleet(conn, now_ms=NOW)
        assert (row["missing"], row["missing_seqs"], row["backlog"]) == (5, "4–8", 5)
        receive(conn, chain.next([4, 5, 6, 7, 8]))
    assert store.gateway_gaps(conn, GATEWAY) == []
    assert "sequences 4–8 arrived (gaps filled)" in caplog.text
    assert [r[0] for r in conn.execute("SELECT seq FROM readings ORDER BY seq")] == list(range(1, 10))


def test_a_gap_the_gateway_does_not_account_for_is_a_warning(
    conn: Database, caplog: pytest.LogCaptureFixture
) -> None:
    chain = Chain()
    receive(conn, chain.next([1]))
    with caplog.at_level(logging.WARNING, logger="cloud_bridge.receive"):
        receive(conn, chain.next([5], waiting=0))  # 2-4 are not waiting anywhere it says
    assert "sequences 2–4 missing (3 missing in all, the gateway reports 0 waiting)" in caplog.text


def test_replay_and_a_lost_batch_are_answered_with_the_chain_head(conn: Database) -> None:
    chain = Chain()
    first = chain.next([1, 2])
    head = batch_hash(cbor2.loads(first)["p"])
    receive(conn, first)
    second = chain.next([3])
    third = chain.next([4])
    refused = receive(conn, third)  # the second never arrived
    assert refused.refusal is not None and refused.refusal.startswith("out of chain order: batch 3 (seq 4)")
    assert refused.ack is not None and (refused.ack.head_hash, refused.ack.head_number) == (head, 1)
    replay = receive(conn, first)
    assert replay.replay and replay.ack is not None and replay.ack.head_hash == head
    assert receive(conn, second).stored == 1 and receive(conn, third).stored == 1


def test_a_batch_number_that_does_not_count_up_is_refused(conn: Database) -> None:
    chain = Chain()
    receive(conn, chain.next([1]))
    chain.number -= 1  # a gateway bug: the same number again, correctly chained
    outcome = receive(conn, chain.next([2]))
    assert outcome.refusal == "batch number 1 is not after the stored 1"


def test_a_version_1_batch_from_a_gateway_not_yet_updated_is_accepted(conn: Database) -> None:
    body = cbor2.dumps([reading(1).to_cbor_map(), reading(2).to_cbor_map()], canonical=True)
    payload = cbor2.dumps(
        {"v": 1, "gw": GATEWAY, "first": 1, "last": 2, "prev": GENESIS_HASH, "n": 2,
         "z": zstandard.ZstdCompressor(level=3).compress(body)},
        canonical=True,
    )  # fmt: skip
    message = cbor2.dumps({"p": payload, "s": KEY.sign(payload)}, canonical=True)
    outcome = receive(conn, message)
    assert outcome.stored == 2 and outcome.ack is not None and outcome.ack.head_hash == batch_hash(payload)
    # ... and its next batch, updated to v2, chains on.
    follow, _ = encode_batch([reading(3)], prev_hash=batch_hash(payload), signing_key=KEY, number=2)
    assert receive(conn, follow).stored == 1


def test_a_time_probe_gets_the_bridge_clock_and_head_and_stores_nothing(conn: Database) -> None:
    chain = Chain()
    receive(conn, chain.next([1]))
    outcome = receive(conn, encode_time_probe(GATEWAY))
    assert outcome.probe and outcome.refusal is None and outcome.ack is not None
    assert (outcome.ack.server_time_ms, outcome.ack.head_hash, outcome.ack.batch_hash) == (
        NOW,
        chain.prev,
        None,
    )
    assert conn.execute("SELECT COUNT(*) FROM readings").fetchone() == (1,)


def test_a_time_probe_from_a_stranger_or_on_another_topic_is_refused(conn: Database) -> None:
    stranger = receive_batch(conn, up_topic("gw-stranger"), encode_time_probe("gw-stranger"), now_ms=NOW)
    assert stranger.refusal == "unknown gateway (not enrolled)"
    spoofed = receive_batch(conn, up_topic("gw-stranger"), encode_time_probe(GATEWAY), now_ms=NOW)
    assert spoofed.refusal is not None and "came on" in spoofed.refusal
    store.revoke_gateway(conn, GATEWAY)
    assert receive(conn, encode_time_probe(GATEWAY)).refusal == "gateway is revoked"


def test_a_reading_whose_observation_the_record_holds_already_points_at_the_stored_one(
    conn: Database,
) -> None:
    """Readings are stored first time without looking their own resources up; when one is there
    after all (here: posted under its identifier with another id), the batch is applied again
    with look-ups, and the reading's Provenance names the Observation the record holds."""
    mapped = map_reading(reading(2), batch_hash=bytes(32))
    [bp_entry] = [e for e in mapped if e.resource_type == "Observation" and "component" in e.resource]
    elsewhere = str(uuid.uuid4())
    posted = {**bp_entry.resource, "id": elsewhere}
    with conn.transaction():
        fhir_store.apply_transaction(
            conn,
            [TransactionEntry("Observation", posted, bp_entry.if_none_exist)],
            now_iso="2026-11-25T00:00:00Z",
        )
    chain = Chain()
    outcome = receive(conn, chain.next([1, 2, 3]))
    assert outcome.stored == 3 and outcome.refusal is None
    identifier = bp_entry.key
    [kept] = fhir_store.search(conn, "Observation", identifier=identifier)
    assert kept["id"] == elsewhere
    [prov] = [p for p in fhir_store.all_of_type(conn, "Provenance") if f"{GATEWAY}/2" in str(p["entity"])]
    assert {"reference": f"Observation/{elsewhere}"} in prov["target"]
    assert len(fhir_store.all_of_type(conn, "Provenance")) == 3


def test_a_new_sqlite_store_has_16_kib_pages_an_old_one_its_own_and_writers_a_large_cache(
    tmp_path: Path,
) -> None:
    new = store.connect(tmp_path / "new.db")
    try:
        assert new.execute("PRAGMA page_size").fetchone()[0] == 16_384
        assert new.execute("PRAGMA cache_size").fetchone()[0] == -256 * 1024  # KiB: 256 MiB
        assert new.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 256 * 1024 // 16  # pages
    finally:
        new.close()
    old_path = tmp_path / "old.db"
    with closing(sqlite3.connect(old_path)) as old:
        old.execute("PRAGMA page_size=4096")
        old.execute("CREATE TABLE before_us (x)")
        old.commit()
    reopened = store.connect(old_path)
    try:
        assert reopened.execute("PRAGMA page_size").fetchone()[0] == 4096
        assert reopened.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 256 * 1024 // 4  # its pages
        assert reopened.execute("SELECT count(*) FROM before_us").fetchone()[0] == 0
    finally:
        reopened.close()


def test_a_search_by_subject_uses_the_index_that_leaves_out_resources_without_one(tmp_path: Path) -> None:
    conn = store.connect(tmp_path / "bridge.db")
    try:
        entries = map_reading(bp_reading("gw-1", 1), batch_hash=b"\x01" * 32)
        fhir_store.apply_transaction(conn, entries, now_iso="2026-11-25T08:00:00+00:00")
        observations = [entry for entry in entries if entry.resource_type == "Observation"]
        assert observations and len(entries) > len(observations)
        partial = {row[1]: row[4] for row in conn.execute("PRAGMA index_list(fhir_resources)")}
        assert partial["fhir_resources_subject"] == 1  # leaves out the Patient, Devices, Provenance
        plan = " ".join(
            str(row[-1])
            for row in conn.execute(
                "EXPLAIN QUERY PLAN SELECT body FROM fhir_resources WHERE resource_type = ? AND subject = ?",
                ("Observation", "Patient/x"),
            )
        )
        assert "USING INDEX fhir_resources_subject" in plan
        (patient,) = fhir_store.all_of_type(conn, "Patient")
        found = fhir_store.search(conn, "Observation", subject=f"Patient/{patient['id']}")
        assert len(found) == len(observations)
    finally:
        conn.close()
