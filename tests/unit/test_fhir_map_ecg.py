"""ECG strips map to an EKG-study Observation with one valueSampledData per lead, samples exact."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from cloud_bridge.fhir_map import FhirMappingError, map_reading
from contract.wire import DeviceRef, Reading, ResidentRef, Waveform
from tests.unit.test_fhir_map import BATCH_HASH, GATEWAY, MEASURED_AT_MS, RESIDENT, reading_uid

STRIP = Waveform(
    sample_rate_hz=500,
    resolution_uv=Decimal("0.5"),
    leads=("MDC_ECG_LEAD_I", "MDC_ECG_LEAD_II"),
    first_sample=15000,
    samples=((0, 12, 250, -40), (3, 20, 310, -52)),
)


def ecg_reading(**changes: object) -> Reading:
    reading = Reading(
        gateway_id=GATEWAY,
        seq=3001,
        device=DeviceRef(id="ECG-0101", model="KX-ECG200", firmware="0.1.0"),
        kind="ecg",
        values=(),
        measured_at_ms=MEASURED_AT_MS,
        time_quality="ntp",
        received_mono_ms=91_000,
        resident=ResidentRef("health-record", RESIDENT),
        operator="doctor-17",
        flags=(),
        waveform=STRIP,
    )
    return dataclasses.replace(reading, **changes)


def observation(entries: list) -> dict:
    [resource] = [e.resource for e in entries if e.resource_type == "Observation"]
    return resource


def sampled(code: str, display: str, data: str) -> dict:
    return {
        "code": {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.24", "code": code, "display": display}]},
        "valueSampledData": {
            "origin": {"value": 0, "unit": "µV", "system": "http://unitsofmeasure.org", "code": "uV"},
            "period": Decimal(2),
            "factor": Decimal("0.5"),
            "dimensions": 1,
            "data": data,
        },
    }


def test_strip_maps_to_sampled_data_per_lead() -> None:
    resource = observation(map_reading(ecg_reading(), batch_hash=BATCH_HASH))
    key = f"{GATEWAY}/3001/11524-6"
    assert resource["id"] == reading_uid(f"urn:kiosk:reading|{key}")
    assert resource["identifier"] == [{"system": "urn:kiosk:reading", "value": key}]
    assert resource["code"] == {
        "coding": [{"system": "http://loinc.org", "code": "11524-6", "display": "EKG study"}]
    }
    assert resource["category"][0]["coding"][0]["code"] == "procedure"
    assert resource["component"] == [
        sampled("131329", "MDC_ECG_ELEC_POTL_I", "0 12 250 -40"),
        sampled("131330", "MDC_ECG_ELEC_POTL_II", "3 20 310 -52"),
    ]
    assert "valueQuantity" not in resource


def test_lead_off_strip_carries_the_note() -> None:
    resource = observation(map_reading(ecg_reading(flags=("lead_off",)), batch_hash=BATCH_HASH))
    assert resource["note"] == [
        {"text": "An electrode lost contact during the recording; the trace may be unusable."}
    ]


def test_unknown_lead_is_refused() -> None:
    strip = dataclasses.replace(STRIP, leads=("MDC_ECG_LEAD_I", "LEAD_X"))
    with pytest.raises(FhirMappingError, match="ECG lead 'LEAD_X' has no MDC code"):
        map_reading(ecg_reading(waveform=strip), batch_hash=BATCH_HASH)
