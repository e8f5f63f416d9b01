"""`kiosk-bridge migrate`: a SQLite store filled by the bridge's own code, moved into a real PostgreSQL.

The store holds two enrolled gateways, signed batches with a gap and an alert (so a Flag and a
referral Task), a batch queued for a remote FHIR server (`fhir_posts`), refusals and API tokens.
After the move every table holds the same rows, and the bridge carries on there: the next batch of
a gateway's chain is stored, an old one is a replay, FHIR search gives the same order as on SQLite,
new refusals and tokens get ids past the copied ones, and the API reads a migrated Observation.
A target with data, a table the bridge does not know, a value PostgreSQL refuses, a source still
open in another process, and a target changed after the copy are refused with the table named.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cloud_bridge import auth, fhir_store, migrate, store
from cloud_bridge.alert_rules import load_rule_texts
from cloud_bridge.api import create_app
from cloud_bridge.cli import app
from cloud_bridge.db import Database
from cloud_bridge.receive import receive_batch
from cloud_bridge.referral_routes import DEFAULT_ROUTES, load_routes
from contract.wire import GENESIS_HASH, encode_batch, up_topic
from tests.component.bridge_auth import bearer
from tests.component.bridge_readings import bp_reading

NOW = 1795564900000
RULES = load_rule_texts(Path(__file__).resolve().parents[2] / "device_profiles" / "alert_rules" / "cn.toml")
ROUTES = load_routes(DEFAULT_ROUTES)
EVERY_TABLE = {
    "api_tokens",
    "batches",
    "devices_seen",
    "fhir_posts",
    "fhir_resources",
    "gateways",
    "readings",
    "refusals",
    "seq_gaps",
}


@dataclass
class Gateway:
    """A gateway's signing key and the head of its chain, making batches as the real one does."""

    gateway_id: str
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    head: bytes = GENESIS_HASH
    number: int = 0
    sent: list[bytes] = field(default_factory=list)

    def batch(self, seqs: range | list[int], *, alert_seq: int | None = None) -> bytes:
        readings = [
            bp_reading(self.gateway_id, seq, 185, 118, flags=("alert:hypertensive_crisis",))
            if seq == alert_seq
            else bp_reading(self.gateway_id, seq, 118 + seq, 78, measured_at_ms=1795564800000 + seq * 60_000)
            for seq in seqs
        ]
        self.number += 1
        message, self.head = encode_batch(
            readings, prev_hash=self.head, signing_key=self.key, number=self.number
        )
        self.sent.append(message)
        return message

    def pem(self) -> str:
        public = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return public.decode()


def receive(conn: Database, gateway: Gateway, message: bytes, **options: Any) -> Any:
    return receive_batch(
        conn, up_topic(gateway.gateway_id), message, now_ms=NOW, alert_rules=RULES, referral_routes=ROUTES,
        **options,
    )  # fmt: skip


@dataclass
class FilledStore:
    path: Path
    kiosk: Gateway
    vehicle: Gateway


def fill(path: Path) -> FilledStore:
    """A store as a county's bridge leaves it, made only by the bridge's own code paths."""
    kiosk, vehicle = Gateway("gw-county-07"), Gateway("gw-county-08")
    conn = store.connect(path)
    try:
        store.enrol_gateway(conn, kiosk.gateway_id, kiosk.pem(), site="village 1", kind="kiosk", now_ms=1)
        store.enrol_gateway(conn, vehicle.gateway_id, vehicle.pem(), site="", kind="vehicle", now_ms=2)
        assert receive(conn, kiosk, kiosk.batch(range(1, 4))).stored == 3
        assert receive(conn, kiosk, kiosk.batch(range(4, 6), alert_seq=5)).stored == 2  # Flag + Task
        assert receive(conn, kiosk, kiosk.batch([8, 9])).stored == 2  # 6 and 7 not delivered: a gap
        # The vehicle's bridge posted to the health community's server: bundles queued, not stored.
        assert receive(conn, vehicle, vehicle.batch(range(1, 3)), post_to_remote=True).stored == 2
        forged, _ = encode_batch(
            [bp_reading(kiosk.gateway_id, 10)],
            prev_hash=kiosk.head,
            signing_key=Ed25519PrivateKey.generate(),
            number=kiosk.number + 1,
        )
        assert receive(conn, kiosk, forged).refusal is not None
        assert receive_batch(conn, up_topic(kiosk.gateway_id), b"\xff not cbor", now_ms=NOW).ack is None
        auth.add_token(conn, "county ops", "admin", now_ms=NOW)
        auth.add_token(conn, "nurse wang", "doctor", now_ms=NOW)
        auth.revoke_token(conn, "nurse wang", now_ms=NOW + 1)
    finally:
        conn.close()
    return FilledStore(path, kiosk, vehicle)


def run_migration(source_path: Path, url: str) -> migrate.MigrationReport:
    source = migrate.open_source(source_path)
    try:
        target = migrate.open_target(url)
        try:
            return migrate.migrate(source, target, chunk_rows=7)  # several chunks per table
        finally:
            target.close()
    finally:
        source.close()


def all_rows(conn: Database, table: str, columns: list[str]) -> list[tuple[Any, ...]]:
    rows = conn.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
    return sorted(
        (tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in rows), key=repr
    )


def sqlite_columns(path: Path, table: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def target_counts(url: str) -> dict[str, int]:
    conn = store.connect(url)
    try:
        return {table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in EVERY_TABLE}
    finally:
        conn.close()


def observation_order(conn: Database) -> list[str]:
    """The resident's Observations as FHIR search returns them (oldest first)."""
    (resident_key,) = conn.execute(
        "SELECT identifier_key FROM fhir_resources WHERE resource_type = 'Patient'"
    ).fetchone()
    return [o["id"] for o in fhir_store.search(conn, "Observation", subject_identifier=resident_key)]


@pytest.fixture
def filled(tmp_path: Path) -> FilledStore:
    return fill(tmp_path / "bridge.db")


@pytest.fixture
def migrated(
    filled: FilledStore, postgres_url: str
) -> Iterator[tuple[FilledStore, str, migrate.MigrationReport]]:
    report = run_migration(filled.path, postgres_url)
    yield filled, postgres_url, report


def test_every_table_holds_the_same_rows_after_the_move(
    migrated: tuple[FilledStore, str, migrate.MigrationReport],
) -> None:
    filled, url, report = migrated
    assert {copied.table for copied in report.tables} == EVERY_TABLE
    assert all(copied.rows > 0 for copied in report.tables), report.tables  # the fill reached every table
    source, target = store.connect(filled.path), store.connect(url)
    try:
        for copied in report.tables:
            columns = sqlite_columns(filled.path, copied.table)
            expected = all_rows(source, copied.table, columns)
            assert all_rows(target, copied.table, columns) == expected, copied.table
            assert copied.rows == len(expected)
        kinds = dict(
            target.execute("SELECT resource_type, COUNT(*) FROM fhir_resources GROUP BY 1").fetchall()
        )
        assert kinds["Flag"] == 1 and kinds["Task"] == 1 and kinds["Observation"] == 7
        assert store.gateway_gaps(target, filled.kiosk.gateway_id) == [(6, 7)]
        assert {c.table: c.next_id for c in report.tables if c.next_id is not None} == {
            "api_tokens": 3,
            "refusals": 3,
        }
    finally:
        source.close()
        target.close()


def test_the_bridge_carries_on_where_the_sqlite_store_left_off(
    migrated: tuple[FilledStore, str, migrate.MigrationReport],
) -> None:
    filled, url, _ = migrated
    kiosk = filled.kiosk
    before = store.connect(filled.path)
    try:
        order_on_sqlite = observation_order(before)
        an_observation = fhir_store.read(before, "Observation", order_on_sqlite[0])
    finally:
        before.close()
    conn = store.connect(url)
    try:
        assert observation_order(conn) == order_on_sqlite  # row_no follows SQLite's rowid
        assert order_on_sqlite != sorted(order_on_sqlite)  # ids are random: an order by key would differ
        # The chain head came across: the kiosk's next batch follows on, its first batch is a replay.
        following = receive(conn, kiosk, kiosk.batch([10, 11]))
        assert following.refusal is None and following.stored == 2
        replay = receive(conn, kiosk, kiosk.sent[0])
        assert replay.replay and replay.stored == 0
        head = store.get_gateway(conn, kiosk.gateway_id)
        assert head is not None and head.last_seq == 11 and head.last_hash == kiosk.head
        assert store.gateway_gaps(conn, kiosk.gateway_id) == [(6, 7)]
        assert observation_order(conn)[: len(order_on_sqlite)] == order_on_sqlite
        assert len(observation_order(conn)) == len(order_on_sqlite) + 2
        # Identities moved past the copied ids: the next refusal and token do not collide.
        store.record_refusal(conn, None, "a refusal after the move", NOW)
        assert conn.execute("SELECT MAX(id) FROM refusals").fetchone()[0] == 3
        auth.add_token(conn, "after the move", "technician", now_ms=NOW)
        assert conn.execute("SELECT id FROM api_tokens WHERE name = 'after the move'").fetchone()[0] == 3
    finally:
        conn.close()
    with TestClient(create_app(url), headers=bearer(url, "doctor")) as client:
        answer = client.get(f"/fhir/Observation/{order_on_sqlite[0]}")
    assert answer.status_code == 200
    assert answer.json() == an_observation


def test_a_target_that_holds_data_is_refused_and_left_as_it_was(
    filled: FilledStore, postgres_url: str
) -> None:
    conn = store.connect(postgres_url)
    auth.add_token(conn, "someone", "admin", now_ms=NOW)
    conn.close()
    with pytest.raises(migrate.TargetNotEmpty) as refused:
        run_migration(filled.path, postgres_url)
    assert refused.value.table == "api_tokens"
    assert "api_tokens" in str(refused.value)
    assert target_counts(postgres_url) == {table: int(table == "api_tokens") for table in EVERY_TABLE}


def test_a_table_the_bridge_does_not_know_is_refused(filled: FilledStore, postgres_url: str) -> None:
    with sqlite3.connect(filled.path) as conn:
        conn.execute("CREATE TABLE county_notes (note TEXT)")
        conn.execute("INSERT INTO county_notes VALUES ('kept by hand')")
    conn.close()
    with pytest.raises(migrate.UnknownTable) as refused:
        run_migration(filled.path, postgres_url)
    assert refused.value.table == "county_notes"
    assert set(target_counts(postgres_url).values()) == {0}


def test_a_failed_copy_leaves_the_target_empty_and_can_run_again(
    filled: FilledStore, postgres_url: str
) -> None:
    conn = store.connect(filled.path)
    store.record_refusal(conn, None, "a NUL \x00 PostgreSQL's text cannot hold", NOW)
    conn.close()
    with pytest.raises(migrate.MigrationError, match="rolled back"):
        run_migration(filled.path, postgres_url)
    assert set(target_counts(postgres_url).values()) == {0}
    with sqlite3.connect(filled.path) as fix:
        fix.execute("UPDATE refusals SET reason = 'mended by hand' WHERE id = (SELECT MAX(id) FROM refusals)")
    fix.close()
    report = run_migration(filled.path, postgres_url)
    assert {c.table: c.rows for c in report.tables}["refusals"] == 3
    assert {c.table: c.next_id for c in report.tables}["refusals"] == 4


def test_verification_finds_a_changed_row_and_a_changed_order(
    migrated: tuple[FilledStore, str, migrate.MigrationReport],
) -> None:
    filled, url, _ = migrated
    target = store.connect(url)
    source = migrate.open_source(filled.path)
    try:
        assert {c.table: c.rows for c in migrate.verify(source, target)}["readings"] == 9
        target.execute(
            "UPDATE readings SET fhir_error = 'changed' WHERE seq = 2 AND gateway_id = 'gw-county-07'"
        )
        with pytest.raises(migrate.VerificationFailed) as changed:
            migrate.verify(source, target)
        assert changed.value.table == "readings"
        # The same rows in another order: a resource deleted and written again goes last.
        first = target.execute(
            "SELECT resource_type, id, identifier_key, subject, body, last_updated FROM fhir_resources"
            " ORDER BY row_no LIMIT 1"
        ).fetchone()
        with target.transaction():
            target.execute("DELETE FROM fhir_resources WHERE resource_type = ? AND id = ?", first[:2])
            target.execute(
                "INSERT INTO fhir_resources (resource_type, id, identifier_key, subject, body, last_updated)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                first,
            )
        with pytest.raises(migrate.VerificationFailed, match="order") as reordered:
            migrate.verify(source, target)
        assert reordered.value.table == "fhir_resources"
    finally:
        source.close()
        target.close()


def test_a_store_still_open_in_another_process_is_refused(filled: FilledStore, postgres_url: str) -> None:
    bridge = store.connect(filled.path)  # an idle bridge: connected, between batches
    store.count_readings(bridge)
    try:
        with pytest.raises(migrate.SourceInUse):
            migrate.open_source(filled.path)
        result = CliRunner().invoke(app, ["migrate", "--from", str(filled.path), "--to", postgres_url])
        assert result.exit_code == 1
        assert "stop the bridge first" in result.stderr
    finally:
        bridge.close()
    assert set(target_counts(postgres_url).values()) == {0}


def test_the_command_prints_what_it_copied_and_exits_0(filled: FilledStore, postgres_url: str) -> None:
    result = CliRunner().invoke(app, ["migrate", "--from", str(filled.path), "--to", postgres_url])
    assert result.exit_code == 0, result.output
    assert "readings" in result.stdout and "fhir_resources" in result.stdout
    assert "rows copied and verified" in result.stdout
    assert target_counts(postgres_url)["readings"] == 9
    again = CliRunner().invoke(app, ["migrate", "--from", str(filled.path), "--to", postgres_url])
    assert again.exit_code == 1
    assert "the target already holds data" in again.stderr and "Traceback" not in again.output


@pytest.mark.parametrize(
    ("arguments", "exit_code", "message"),
    [
        (["--from", "{missing}", "--to", "{url}"], 1, "no such file"),
        (["--from", "{store}", "--to", "bridge2.db"], 2, "--to must be a postgresql:// URL"),
        (["--from", "{store}", "--to", "postgresql://kiosk@127.0.0.1:9/none"], 1, "cannot open the target"),
        (["--from", "{not_a_store}", "--to", "{url}"], 1, "not a bridge store"),
    ],
)
def test_the_command_says_why_it_refuses_without_a_traceback(
    filled: FilledStore, postgres_url: str, tmp_path: Path, arguments: list[str], exit_code: int, message: str
) -> None:
    not_a_store = tmp_path / "other.db"
    with sqlite3.connect(not_a_store) as other:
        other.execute("CREATE TABLE t (x)")
    other.close()
    names = {
        "missing": tmp_path / "missing.db",
        "url": postgres_url,
        "store": filled.path,
        "not_a_store": not_a_store,
    }
    result = CliRunner().invoke(app, ["migrate", *(a.format(**names) for a in arguments)])
    assert result.exit_code == exit_code, result.output
    assert message in result.stderr
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert not (tmp_path / "missing.db").exists()


def test_a_store_of_10000_readings_moves_in_several_chunks(tmp_path: Path, postgres_url: str) -> None:
    """More rows than one chunk (CHUNK_ROWS) in the larger tables: every chunk arrives, and is
    verified. (How fast: benchmarks/bench_migrate.py.)"""
    gateway, path = Gateway("gw-county-07"), tmp_path / "big.db"
    conn = store.connect(path)
    store.enrol_gateway(conn, gateway.gateway_id, gateway.pem(), site="", kind="kiosk", now_ms=0)
    for start in range(1, 10_001, 500):
        assert receive(conn, gateway, gateway.batch(range(start, start + 500))).stored == 500
    conn.close()
    report = run_migration_in_default_chunks(path, postgres_url)
    copied = {c.table: c.rows for c in report.tables}
    assert copied["readings"] == 10_000 > migrate.CHUNK_ROWS
    assert copied["fhir_resources"] > 2 * migrate.CHUNK_ROWS
    with psycopg.connect(postgres_url) as db:
        (stored,) = db.execute("SELECT COUNT(*) FROM readings WHERE gateway_id = 'gw-county-07'").fetchone()
    assert stored == 10_000


def run_migration_in_default_chunks(source_path: Path, url: str) -> migrate.MigrationReport:
    source, target = migrate.open_source(source_path), migrate.open_target(url)
    try:
        return migrate.migrate(source, target)
    finally:
        target.close()
        source.close()
