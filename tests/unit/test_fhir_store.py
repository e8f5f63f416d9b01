"""The embedded FHIR store on a real (in-memory) SQLite: conditional create, search, bundles."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from cloud_bridge import db
from cloud_bridge.db import Database
from cloud_bridge.fhir_map import TransactionEntry, map_reading
from cloud_bridge.fhir_store import (
    FhirStoreError,
    apply_transaction,
    ensure_schema,
    from_json,
    read,
    search,
    to_json,
    to_transaction_bundle,
)
from contract.wire import DeviceRef, Measurement, Reading, ResidentRef

NOW = "2026-03-14T08:31:00.000Z"
LATER = "2026-03-15T09:00:00.000Z"
HEALTH_RECORD = "urn:kiosk:sid:resident-health-record"
BATCH_HASH = bytes(32)


def bp(seq: int, resident: str | None = "330781-2026-000123", systolic: str = "128") -> Reading:
    return Reading(
        gateway_id="gw-zj-0042",
        seq=seq,
        device=DeviceRef(id="BP-7A31", model="HEM-7136", firmware="2.4.1"),
        kind="bp",
        values=(
            Measurement("systolic", Decimal(systolic), "mm[Hg]"),
            Measurement("diastolic", Decimal("82"), "mm[Hg]"),
            Measurement("pulse_rate", Decimal("71"), "/min"),
        ),
        measured_at_ms=1_773_477_015_250 + seq * 60_000,
        time_quality="ntp",
        received_mono_ms=seq,
        resident=ResidentRef("health-record", resident) if resident else None,
        operator=None,
    )


@pytest.fixture
def conn() -> Iterator[Database]:
    connection = db.connect(":memory:")
    ensure_schema(connection)
    yield connection
    connection.close()


def count(conn: Database) -> int:
    return conn.execute("SELECT count(*) FROM fhir_resources").fetchone()[0]


def test_applying_twice_creates_nothing_the_second_time(conn: Database) -> None:
    entries = map_reading(bp(1), batch_hash=BATCH_HASH)
    first = apply_transaction(conn, entries, now_iso=NOW)
    assert first == [(e.resource_type, e.resource["id"], True) for e in entries]
    assert count(conn) == 6
    bodies = conn.execute("SELECT body FROM fhir_resources ORDER BY rowid").fetchall()

    again = apply_transaction(conn, map_reading(bp(1), batch_hash=BATCH_HASH), now_iso=LATER)
    assert again == [(e.resource_type, e.resource["id"], False) for e in entries]
    assert count(conn) == 6
    assert conn.execute("SELECT body FROM fhir_resources ORDER BY rowid").fetchall() == bodies


def test_second_reading_reuses_patient_and_devices(conn: Database) -> None:
    apply_transaction(conn, map_reading(bp(1), batch_hash=BATCH_HASH), now_iso=NOW)
    results = apply_transaction(conn, map_reading(bp(2), batch_hash=BATCH_HASH), now_iso=NOW)
    assert [(rt, created) for rt, _, created in results] == [
        ("Patient", False),
        ("Device", False),
        ("Device", False),
        ("Observation", True),
        ("Observation", True),
        ("Provenance", True),
    ]
    assert count(conn) == 9


def test_stored_resource_gains_version_and_last_updated(conn: Database) -> None:
    entries = map_reading(bp(1), batch_hash=BATCH_HASH)
    apply_transaction(conn, entries, now_iso=NOW)
    observation = entries[3].resource
    stored = read(conn, "Observation", observation["id"])
    assert stored == {
        **observation,
        "meta": {
            "profile": ["http://hl7.org/fhir/StructureDefinition/bp"],
            "versionId": "1",
            "lastUpdated": NOW,
        },
    }
    assert "versionId" not in observation["meta"]  # the entry itself is left as it was
    assert read(conn, "Observation", "no-such-id") is None


def test_search_by_subject_and_by_subject_identifier(conn: Database) -> None:
    for reading in (bp(1), bp(2, resident="330781-2026-000999"), bp(3), bp(4, resident=None)):
        apply_transaction(conn, map_reading(reading, batch_hash=BATCH_HASH), now_iso=NOW)
    (patient,) = search(conn, "Patient", identifier=f"{HEALTH_RECORD}|330781-2026-000123")
    expected = [
        "gw-zj-0042/1/85354-9",
        "gw-zj-0042/1/8867-4",
        "gw-zj-0042/3/85354-9",
        "gw-zj-0042/3/8867-4",
    ]

    by_subject = search(conn, "Observation", subject=f"Patient/{patient['id']}")
    assert [o["identifier"][0]["value"] for o in by_subject] == expected
    by_identifier = search(conn, "Observation", subject_identifier=f"{HEALTH_RECORD}|330781-2026-000123")
    assert by_identifier == by_subject
    assert search(conn, "Observation", subject_identifier=f"{HEALTH_RECORD}|nobody") == []
    assert search(conn, "Observation", subject="Patient/nobody") == []


def test_search_needs_a_parameter(conn: Database) -> None:
    with pytest.raises(FhirStoreError, match="at least one parameter"):
        search(conn, "Observation")


def test_decimals_survive_the_store_digit_for_digit(conn: Database) -> None:
    entries = map_reading(bp(1, systolic="120.50"), batch_hash=BATCH_HASH)
    apply_transaction(conn, entries, now_iso=NOW)
    (body,) = conn.execute(
        "SELECT body FROM fhir_resources WHERE id = ?", (entries[3].resource["id"],)
    ).fetchone()
    assert '"value":120.50,' in body
    assert '"value":82,' in body
    value = read(conn, "Observation", entries[3].resource["id"])["component"][0]["valueQuantity"]["value"]
    assert str(value) == "120.50"
    assert to_json({"a": [Decimal("36.6"), Decimal("128"), 1, True, None, "体温"]}) == (
        '{"a":[36.6,128,1,true,null,"体温"]}'
    )
    assert from_json('{"v":36.60,"n":128}') == {"v": Decimal("36.60"), "n": 128}


def test_a_match_under_another_id_is_what_later_entries_refer_to(conn: Database) -> None:
    """As a FHIR server does: a conditional create that finds a resource re-points references."""
    key = f"{HEALTH_RECORD}|330781-2026-000123"
    existing = {
        "resourceType": "Patient",
        "id": "enrolled-earlier",
        "identifier": [{"system": HEALTH_RECORD, "value": "330781-2026-000123"}],
    }
    apply_transaction(conn, [TransactionEntry("Patient", existing, f"identifier={key}")], now_iso=NOW)
    entries = map_reading(bp(1), batch_hash=BATCH_HASH)
    results = apply_transaction(conn, entries, now_iso=NOW)
    assert results[0] == ("Patient", "enrolled-earlier", False)
    observation = read(conn, "Observation", entries[3].resource["id"])
    assert observation["subject"] == {"reference": "Patient/enrolled-earlier"}
    assert len(search(conn, "Observation", subject_identifier=key)) == 2


def test_if_none_exist_must_name_the_first_identifier(conn: Database) -> None:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{"system": HEALTH_RECORD, "value": "330781-2026-000123"}],
    }
    with pytest.raises(FhirStoreError, match="does not name its first identifier"):
        apply_transaction(
            conn, [TransactionEntry("Patient", patient, f"identifier={HEALTH_RECORD}|other")], now_iso=NOW
        )
    with pytest.raises(FhirStoreError, match="unsupported ifNoneExist"):
        apply_transaction(conn, [TransactionEntry("Patient", patient, "name=smith")], now_iso=NOW)
    with pytest.raises(FhirStoreError, match="not an instant"):
        apply_transaction(conn, [], now_iso="yesterday")
    assert count(conn) == 0


def test_transaction_bundle_links_entries_by_urn_uuid() -> None:
    entries = map_reading(bp(1), batch_hash=BATCH_HASH)
    bundle = to_transaction_bundle(entries)
    urn = {e.resource["id"]: f"urn:uuid:{e.resource['id']}" for e in entries}
    patient_id, device_id, gateway_id, bp_id, hr_id, _ = (e.resource["id"] for e in entries)

    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "transaction"
    assert [(b["fullUrl"], b["request"]) for b in bundle["entry"]] == [
        (urn[e.resource["id"]], {"method": "POST", "url": e.resource_type, "ifNoneExist": e.if_none_exist})
        for e in entries
    ]
    observation = bundle["entry"][3]["resource"]
    assert "id" not in observation
    assert observation["subject"] == {"reference": urn[patient_id]}
    assert observation["device"] == {"reference": urn[device_id]}
    assert observation["component"][0]["valueQuantity"]["value"] == Decimal("128")
    provenance = bundle["entry"][5]["resource"]
    assert provenance["target"] == [{"reference": urn[bp_id]}, {"reference": urn[hr_id]}]
    assert provenance["agent"][0]["who"] == {"reference": urn[gateway_id]}
    # The entries themselves keep their local ids and references.
    assert entries[3].resource["subject"] == {"reference": f"Patient/{patient_id}"}
