"""The bridge's read-only FHIR API over a real SQLite file, through FastAPI's TestClient (with a
doctor's token: tests/component/test_bridge_auth.py covers who may call what)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloud_bridge.api import create_app
from cloud_bridge.fhir_map import TransactionEntry, map_reading
from cloud_bridge.fhir_store import apply_transaction, open_store
from contract.wire import DeviceRef, Measurement, Reading, ResidentRef
from tests.component.bridge_auth import bearer

NOW = "2026-03-14T08:31:00.000Z"
HEALTH_RECORD = "urn:kiosk:sid:resident-health-record"
RESIDENT = "330781-2026-000123"
BASE = "http://testserver/fhir"


def bp(seq: int, resident: str = RESIDENT) -> Reading:
    return Reading(
        gateway_id="gw-zj-0042",
        seq=seq,
        device=DeviceRef(id="BP-7A31", model="HEM-7136", firmware="2.4.1"),
        kind="bp",
        values=(
            Measurement("systolic", Decimal("128"), "mm[Hg]"),
            Measurement("diastolic", Decimal("82"), "mm[Hg]"),
            Measurement("mean_arterial", Decimal("97"), "mm[Hg]"),
            Measurement("pulse_rate", Decimal("71"), "/min"),
        ),
        measured_at_ms=1_773_477_015_250,
        time_quality="ntp",
        received_mono_ms=seq,
        resident=ResidentRef("health-record", resident),
        operator=None,
    )


@pytest.fixture
def entries(tmp_path: Path) -> list[TransactionEntry]:
    """Two residents' readings stored in a WAL file the way the bridge stores them."""
    mapped = map_reading(bp(1), batch_hash=bytes(32))
    conn = open_store(str(tmp_path / "bridge.sqlite3"))
    apply_transaction(conn, mapped, now_iso=NOW)
    apply_transaction(conn, map_reading(bp(2, "330781-2026-000999"), batch_hash=bytes(32)), now_iso=NOW)
    conn.close()
    return mapped


@pytest.fixture
def client(tmp_path: Path, entries: list[TransactionEntry]) -> Iterator[TestClient]:
    db = str(tmp_path / "bridge.sqlite3")
    app = create_app(db, metrics=lambda: {"readings_stored": 2, "mqtt_connected": True})
    with TestClient(app, headers=bearer(db, "doctor")) as test_client:
        yield test_client


def stored(entry: TransactionEntry) -> dict:
    """What the store adds to a mapped resource."""
    return {
        **entry.resource,
        "meta": {**entry.resource.get("meta", {}), "versionId": "1", "lastUpdated": NOW},
    }


def fhir_body(response) -> dict:
    assert response.headers["content-type"] == "application/fhir+json"
    return json.loads(response.text, parse_float=Decimal)


def test_observations_of_a_resident_by_identifier(
    client: TestClient, entries: list[TransactionEntry]
) -> None:
    response = client.get("/fhir/Observation", params={"subject:identifier": f"{HEALTH_RECORD}|{RESIDENT}"})
    assert response.status_code == 200
    bp_entry, hr_entry = entries[3], entries[4]
    assert fhir_body(response) == {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 2,
        "link": [{"relation": "self", "url": str(response.request.url)}],
        "entry": [
            {
                "fullUrl": f"{BASE}/Observation/{bp_entry.resource['id']}",
                "resource": stored(bp_entry),
                "search": {"mode": "match"},
            },
            {
                "fullUrl": f"{BASE}/Observation/{hr_entry.resource['id']}",
                "resource": stored(hr_entry),
                "search": {"mode": "match"},
            },
        ],
    }
    # Exact numbers on the wire, not floats.
    assert '"valueQuantity":{"value":128,"unit":"mmHg"' in response.text
    assert '"valueQuantity":{"value":71,"unit":"/min"' in response.text


def test_observations_by_subject_reference(client: TestClient, entries: list[TransactionEntry]) -> None:
    patient_id = entries[0].resource["id"]
    for subject in (f"Patient/{patient_id}", patient_id):
        body = fhir_body(client.get("/fhir/Observation", params={"subject": subject}))
        assert body["total"] == 2
        assert [e["resource"]["id"] for e in body["entry"]] == [
            entries[3].resource["id"],
            entries[4].resource["id"],
        ]


def test_patient_by_identifier(client: TestClient, entries: list[TransactionEntry]) -> None:
    body = fhir_body(client.get("/fhir/Patient", params={"identifier": f"{HEALTH_RECORD}|{RESIDENT}"}))
    assert body["total"] == 1
    assert body["entry"][0]["resource"] == stored(entries[0])
    assert body["entry"][0]["fullUrl"] == f"{BASE}/Patient/{entries[0].resource['id']}"


def test_an_observation_by_its_identifier(client: TestClient, entries: list[TransactionEntry]) -> None:
    """How a client finds one reading's Observation: its id has the measurement time in it, its
    identifier is the gateway, the sequence and the LOINC code."""
    hr_entry = entries[4]
    [identifier] = hr_entry.resource["identifier"]
    body = fhir_body(
        client.get(
            "/fhir/Observation", params={"identifier": f"{identifier['system']}|{identifier['value']}"}
        )
    )
    assert body["total"] == 1
    assert body["entry"][0]["resource"] == stored(hr_entry)


def test_search_without_match_is_an_empty_searchset(client: TestClient) -> None:
    response = client.get("/fhir/Observation", params={"subject:identifier": f"{HEALTH_RECORD}|nobody"})
    assert response.status_code == 200
    body = fhir_body(response)
    assert (body["total"], "entry" in body) == (0, False)


def test_read_by_id(client: TestClient, entries: list[TransactionEntry]) -> None:
    provenance = entries[5]
    response = client.get(f"/fhir/Provenance/{provenance.resource['id']}")
    assert response.status_code == 200
    assert fhir_body(response) == stored(provenance)


@pytest.mark.parametrize(
    ("path", "code", "diagnostics"),
    [
        ("/fhir/Observation/no-such-id", "not-found", "Observation/no-such-id is not known"),
        ("/fhir/Medication/x", "not-supported", "resource type Medication is not served here"),
    ],
)
def test_missing_is_404_with_an_operation_outcome(
    client: TestClient, path: str, code: str, diagnostics: str
) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert fhir_body(response) == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


@pytest.mark.parametrize(
    ("path", "params", "diagnostics"),
    [
        (
            "/fhir/Observation",
            {},
            "Observation search supports: identifier, subject, subject:identifier; got: no parameter",
        ),
        (
            "/fhir/Observation",
            {"subject": "Patient/x", "code": "8480-6"},
            "Observation search supports: identifier, subject, subject:identifier; got: code",
        ),
        (
            "/fhir/Device",
            {"identifier": "urn:kiosk:device|BP-7A31"},
            "Device search supports: none; got: identifier",
        ),
        ("/fhir/Patient", {"identifier": RESIDENT}, "identifier: expected a token of the form system|value"),
    ],
)
def test_unsupported_search_is_400_with_an_operation_outcome(
    client: TestClient, path: str, params: dict[str, str], diagnostics: str
) -> None:
    response = client.get(path, params=params)
    assert response.status_code == 400
    body = fhir_body(response)
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["diagnostics"] == diagnostics


def test_capability_statement(client: TestClient) -> None:
    body = fhir_body(client.get("/fhir/metadata"))
    assert (body["resourceType"], body["kind"], body["fhirVersion"]) == (
        "CapabilityStatement",
        "instance",
        "4.3.0",
    )
    observation = next(r for r in body["rest"][0]["resource"] if r["type"] == "Observation")
    assert observation["searchParam"] == [
        {"name": "identifier", "type": "token"},
        {"name": "subject", "type": "reference"},
    ]


def test_health_and_metrics(client: TestClient) -> None:
    anonymous = TestClient(client.app)  # no token: both are open, as probes and scrapers expect
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    response = anonymous.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = prometheus_samples(response.text)
    assert samples["kiosk_bridge_readings_stored_total"] == 2
    assert samples["kiosk_bridge_mqtt_connected"] == 1
    assert samples["kiosk_bridge_refused_total"] == 0  # every counter from the start
    assert "# TYPE kiosk_bridge_readings_stored_total counter" in response.text


def prometheus_samples(text: str) -> dict[str, float]:
    """Unlabelled samples of a Prometheus text exposition, parsed by prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def test_a_new_file_becomes_an_empty_wal_store(tmp_path: Path) -> None:
    """WAL is set once by create_app, so the API's readers never block the bridge's writer."""
    path = tmp_path / "new.sqlite3"
    with TestClient(create_app(str(path)), headers=bearer(path, "admin")) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        body = fhir_body(client.get("/fhir/Patient", params={"identifier": f"{HEALTH_RECORD}|{RESIDENT}"}))
        assert body["total"] == 0
        assert prometheus_samples(client.get("/metrics").text)["kiosk_bridge_readings_stored_total"] == 0
    conn = open_store(str(path))
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()
