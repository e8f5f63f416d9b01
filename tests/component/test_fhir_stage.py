"""The FHIR stage apart (`kiosk-bridge run --fhir-stage separate`), on each real store.

The receiver stores and acks a batch without its FHIR resources; the stage writes them after,
the same resources the receiver would have written, each reading once, dead letters with their
reason, alerts routed by the gateway's site; an older store is widened in place to queue them.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_bridge import fhir_stage, fhir_store, store
from cloud_bridge.alert_rules import load_rule_texts
from cloud_bridge.db import Database
from cloud_bridge.receive import receive_batch
from cloud_bridge.referral_routes import DEFAULT_ROUTES, load_routes
from contract.wire import GENESIS_HASH, DeviceRef, Measurement, Reading, ResidentRef, encode_batch, up_topic
from tests.component.bridge_readings import bp_reading

RULES = load_rule_texts(Path(__file__).resolve().parents[2] / "device_profiles" / "alert_rules" / "cn.toml")
ROUTES = load_routes(DEFAULT_ROUTES)
GATEWAY = "gw-stage-01"
KEY = Ed25519PrivateKey.generate()
NOW = 1795565000000


def readings() -> list[Reading]:
    crisis = bp_reading(
        GATEWAY, 1, 182, 115, flags=("alert:hypertensive_crisis",), resident=ResidentRef("health-record", "1")
    )
    plain = [bp_reading(GATEWAY, seq, 120 + seq, 80) for seq in range(2, 40)]
    control = Reading(  # a meter's control-solution check: no resident's measurement, a dead letter
        gateway_id=GATEWAY,
        seq=40,
        device=DeviceRef("glu-1", "KX-GLU100", "1.0"),
        kind="glucose",
        values=(Measurement("glucose", Decimal("5.5"), "mmol/L"),),
        measured_at_ms=1795564800000,
        time_quality="ntp",
        received_mono_ms=1,
        resident=None,
        operator=None,
        flags=("control_solution",),
    )
    return [crisis, *plain, control]


def batch_messages(items: list[Reading], per_batch: int = 10) -> list[bytes]:
    messages, prev = [], GENESIS_HASH
    for number, first in enumerate(range(0, len(items), per_batch), start=1):
        message, prev = encode_batch(
            items[first : first + per_batch], prev_hash=prev, signing_key=KEY, number=number
        )
        messages.append(message)
    return messages


def enrolled_store(target: Path | str) -> Database:
    conn = store.connect(target)
    pem = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    store.enrol_gateway(conn, GATEWAY, pem.decode(), site="Beiling village clinic", kind="kiosk", now_ms=0)
    return conn


def receive_all(conn: Database, *, map_fhir: bool) -> None:
    for message in batch_messages(readings()):
        outcome = receive_batch(
            conn, up_topic(GATEWAY), message, now_ms=NOW, alert_rules=RULES, referral_routes=ROUTES,
            map_fhir=map_fhir,
        )  # fmt: skip
        assert outcome.ack is not None and outcome.refusal is None


def resources(conn: Database) -> dict[tuple[str, str], Any]:
    """Every stored resource by (type, id), without the store's own meta."""
    out = {}
    for resource_type in ("Patient", "Device", "Observation", "Provenance", "Flag", "Task"):
        for resource in fhir_store.all_of_type(conn, resource_type):
            meta = {
                k: v for k, v in resource.pop("meta", {}).items() if k not in ("versionId", "lastUpdated")
            }
            if meta:
                resource["meta"] = meta
            out[(resource_type, resource["id"])] = resource
    return out


@pytest.fixture
def conn(bridge_db: Path | str) -> Iterator[Database]:
    conn = enrolled_store(bridge_db)
    yield conn
    conn.close()


def test_the_stage_writes_what_the_receiver_would_have_written(conn: Database, tmp_path: Path) -> None:
    receive_all(conn, map_fhir=False)
    assert store.count_readings(conn, GATEWAY) == 40  # stored and acked ...
    assert fhir_stage.pending_count(conn) == 39  # ... with no FHIR yet, but for the crisis:
    [task] = fhir_store.all_of_type(conn, "Task")  # its referral is raised before the ack
    assert {key[0] for key in resources(conn)} == {
        "Patient",
        "Device",
        "Observation",
        "Provenance",
        "Flag",
        "Task",
    }
    assert len(fhir_store.all_of_type(conn, "Provenance")) == 1
    while fhir_stage.map_pending(conn, now_ms=NOW, limit=7, alert_rules=RULES, referral_routes=ROUTES):
        pass
    assert fhir_stage.pending_count(conn) == 0
    inline = enrolled_store(tmp_path / "inline.db")
    try:
        receive_all(inline, map_fhir=True)
        assert resources(conn) == resources(inline)  # the same resources, ids and references
        [dead] = conn.execute(
            "SELECT seq, fhir_error FROM readings WHERE fhir_status = 'dead_letter'"
        ).fetchall()
        assert dead[0] == 40 and "control" in dead[1]
    finally:
        inline.close()
    [task] = fhir_store.all_of_type(conn, "Task")
    assert task["owner"]["identifier"]["value"] == "county-tcm-cardiology"  # routed by the gateway's site


def test_mapping_twice_creates_nothing_more(conn: Database) -> None:
    receive_all(conn, map_fhir=False)
    fhir_stage.map_pending(conn, now_ms=NOW, limit=1000, alert_rules=RULES, referral_routes=ROUTES)
    before = resources(conn)
    conn.execute(
        "UPDATE readings SET fhir_status = 'pending' WHERE fhir_status = 'stored'"
    )  # as after a crash
    assert (
        fhir_stage.map_pending(conn, now_ms=NOW, limit=1000, alert_rules=RULES, referral_routes=ROUTES) == 39
    )
    assert resources(conn) == before


def test_two_stages_on_postgresql_share_the_queue(postgres_url: str) -> None:
    bridge_db = postgres_url
    first = enrolled_store(bridge_db)
    receive_all(first, map_fhir=False)
    second = store.connect(bridge_db)
    done: list[int] = []
    errors: list[BaseException] = []

    def drain(connection: Database) -> None:
        try:
            while count := fhir_stage.map_pending(connection, now_ms=NOW, limit=3, alert_rules=RULES):
                done.append(count)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=drain, args=(c,)) for c in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == [] and sum(done) == 39  # every queued reading (not the crisis) taken once
        assert len(fhir_store.all_of_type(first, "Provenance")) == 39
    finally:
        first.close()
        second.close()


def test_a_store_from_before_the_stage_is_widened_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = enrolled_store(path)
    receive_all(conn, map_fhir=True)
    conn.close()
    with sqlite3.connect(path) as raw:  # as an older bridge made it: no 'pending' in the CHECK
        raw.execute("PRAGMA foreign_keys=OFF")
        (sql,) = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'readings'").fetchone()
        raw.execute("ALTER TABLE readings RENAME TO r_old")
        raw.execute(sql.replace(", 'pending'", ""))
        raw.execute("INSERT INTO readings SELECT * FROM r_old")
        raw.execute("DROP TABLE r_old")
        raw.execute("DROP INDEX IF EXISTS readings_fhir_pending")
        with pytest.raises(sqlite3.IntegrityError):
            raw.execute("UPDATE readings SET fhir_status = 'pending' WHERE seq = 2")
    conn = store.connect(path)
    try:
        assert store.count_readings(conn, GATEWAY) == 40  # nothing lost in the copy
        conn.execute("UPDATE readings SET fhir_status = 'pending' WHERE seq = 2")
        assert fhir_stage.pending_count(conn) == 1
    finally:
        conn.close()
