"""The transaction Bundle the bridge queues for the health community's server, written as text
(`transaction_bundle_json`), is exactly `to_json(to_transaction_bundle(...))`."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from cloud_bridge import fhir_map
from cloud_bridge.fhir_map import TransactionEntry, map_reading, resource_id
from cloud_bridge.fhir_store import (
    FhirStoreError,
    from_json,
    to_json,
    to_transaction_bundle,
    transaction_bundle_json,
)
from contract.wire import Reading
from tests.component.bridge_readings import bp_reading
from tests.unit.generated_readings import readings

BATCH_HASH = bytes(range(32))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(readings())
def test_the_text_is_the_bundle_written_out_for_every_kind_of_reading(
    example: tuple[Reading, Any, bool],
) -> None:
    reading, alerts, signed = example
    try:
        entries = map_reading(
            reading, batch_hash=BATCH_HASH, gateway_signature=bytes(64) if signed else None, alerts=alerts
        )
    except fhir_map.FhirMappingError:
        return  # never stored, never posted
    expected = to_json(to_transaction_bundle(entries, validate=False))
    assert transaction_bundle_json(entries, validate=False) == expected
    assert transaction_bundle_json(entries, validate=True) == expected  # and it validates


def _entry(resource: dict[str, Any]) -> TransactionEntry:
    system, value = "urn:test", resource["id"]
    return TransactionEntry(
        resource["resourceType"], resource, f"identifier={system}|{value}", key=f"{system}|{value}"
    )


def test_only_reference_members_naming_an_entry_are_renamed() -> None:
    patient_id, other_id = resource_id("urn:test", "p"), resource_id("urn:test", "elsewhere")
    patient = {
        "resourceType": "Patient",
        "id": patient_id,
        "identifier": [{"system": "urn:test", "value": "p"}],
    }
    observation = {
        "resourceType": "Observation",
        "id": resource_id("urn:test", "o"),
        "status": "final",
        "code": {"text": 'a note quoting "reference":"Patient/' + patient_id + '"'},
        "subject": {"reference": f"Patient/{patient_id}"},
        "performer": [{"reference": f"Patient/{other_id}"}],  # not in this Bundle: left as it is
        "note": [{"text": "reference"}],
    }
    entries = [_entry(patient), _entry(observation)]
    text = transaction_bundle_json(entries, validate=False)
    assert text == to_json(to_transaction_bundle(entries, validate=False))
    sent = from_json(text)["entry"][1]["resource"]
    assert sent["subject"] == {"reference": f"urn:uuid:{patient_id}"}
    assert sent["performer"] == [{"reference": f"Patient/{other_id}"}]
    assert sent["code"]["text"].endswith(f'"reference":"Patient/{patient_id}"')  # text, not a reference
    assert "id" not in sent


def test_an_empty_transaction_has_no_entry_array() -> None:
    assert transaction_bundle_json([]) == '{"resourceType":"Bundle","type":"transaction"}'
    assert from_json(transaction_bundle_json([])) == to_transaction_bundle([])


def test_validation_finds_what_the_mapper_would_have_refused() -> None:
    entries = map_reading(bp_reading("gw-1", 7), batch_hash=BATCH_HASH)
    broken = [
        TransactionEntry(e.resource_type, {k: v for k, v in e.resource.items() if k != "status"},
                         e.if_none_exist, key=e.key)
        if e.resource_type == "Observation" else e
        for e in entries
    ]  # fmt: skip
    transaction_bundle_json(broken, validate=False)  # not checked: the caller vouches for it
    with pytest.raises(FhirStoreError, match=r"invalid transaction Bundle: .*status"):
        transaction_bundle_json(broken, validate=True)


def test_an_entry_whose_id_is_not_a_uuid_is_refused() -> None:
    entry = _entry({"resourceType": "Patient", "id": "not-a-uuid"})
    with pytest.raises(FhirStoreError, match="entry id must be a UUID"):
        transaction_bundle_json([entry], validate=False)


def test_an_id_in_another_form_or_place_is_written_as_the_bundle_would() -> None:
    """The fast paths assume the mapper's habits (a lower-case UUID, `id` second); anything else
    takes the slow path and still comes out as `to_transaction_bundle` writes it."""
    patient_id = resource_id("urn:test", "p")
    patient = {"resourceType": "Patient", "id": patient_id.upper(), "identifier": [{"value": "p"}]}
    observation = {
        "status": "final",
        "id": "{" + resource_id("urn:test", "o") + "}",  # a form uuid.UUID also reads
        "resourceType": "Observation",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{patient_id.upper()}"},
    }
    only_type_and_id = {"resourceType": "Device", "id": resource_id("urn:test", "d")}
    entries = [_entry(patient), _entry(observation), _entry(only_type_and_id)]
    text = transaction_bundle_json(entries, validate=False)
    assert text == to_json(to_transaction_bundle(entries, validate=False))
    sent = from_json(text)["entry"]
    assert sent[0]["fullUrl"] == f"urn:uuid:{patient_id}"
    assert sent[1]["resource"]["subject"] == {"reference": f"urn:uuid:{patient_id}"}
    assert all("id" not in entry["resource"] for entry in sent)
    assert sent[2]["resource"] == {"resourceType": "Device"}
