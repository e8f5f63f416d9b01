"""map_reading: one BP reading against resources written out by hand from the FHIR R4 vital-signs
profiles (bp, heartrate), LOINC and UCUM, and the bridge's identifier rules. The other kinds are
in test_fhir_map_vitals.py."""

from __future__ import annotations

import base64
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_bridge import fhir_map
from cloud_bridge.fhir_map import FhirMappingError, format_token, map_reading, parse_token
from contract.wire import DeviceRef, Measurement, Reading, ResidentRef
from tests.unit.fhir_ids import reading_uid as _reading_uid
from tests.unit.fhir_ids import uid

GATEWAY = "gw-zj-0042"
SEQ = 1207
RESIDENT_SYSTEM = "urn:kiosk:sid:resident-health-record"
RESIDENT = "330781-2026-000123"
PATIENT_ID = uid(f"{RESIDENT_SYSTEM}|{RESIDENT}")
DEVICE_ID = uid("urn:kiosk:device|BP-7A31")
GATEWAY_DEVICE_ID = uid(f"urn:kiosk:gateway|{GATEWAY}")
# 2026-03-14 08:30:15.250 UTC (16:30 in Beijing): 20526 days * 86400 + 30615 s, then 250 ms.
MEASURED_AT_MS = 1_773_477_015_250
EFFECTIVE = "2026-03-14T08:30:15.250Z"


def reading_uid(name: str) -> str:
    return _reading_uid(name, MEASURED_AT_MS)


BP_ID = reading_uid(f"urn:kiosk:reading|{GATEWAY}/{SEQ}/85354-9")
HR_ID = reading_uid(f"urn:kiosk:reading|{GATEWAY}/{SEQ}/8867-4")
PROVENANCE_ID = reading_uid(f"urn:kiosk:reading|{GATEWAY}/{SEQ}")
BATCH_HASH = bytes(range(32))
SIGNATURE = b"\x5a" * 64


def bp_reading(**changes: object) -> Reading:
    reading = Reading(
        gateway_id=GATEWAY,
        seq=SEQ,
        device=DeviceRef(id="BP-7A31", model="HEM-7136", firmware="2.4.1"),
        kind="bp",
        values=(
            Measurement("systolic", Decimal("128"), "mm[Hg]"),
            Measurement("diastolic", Decimal("82"), "mm[Hg]"),
            Measurement("mean_arterial", Decimal("97"), "mm[Hg]"),
            Measurement("pulse_rate", Decimal("71"), "/min"),
        ),
        measured_at_ms=MEASURED_AT_MS,
        time_quality="ntp",
        received_mono_ms=88_000,
        resident=ResidentRef("health-record", RESIDENT),
        operator="doctor-17",
        flags=(),
    )
    return dataclasses.replace(reading, **changes)


def by_type(entries: list, resource_type: str) -> list[dict]:
    return [e.resource for e in entries if e.resource_type == resource_type]


VITAL_SIGNS = [
    {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "vital-signs",
                "display": "Vital Signs",
            }
        ]
    }
]
TIME_NTP = {"extension": [{"url": "urn:kiosk:fhir:time-quality", "valueCode": "ntp"}]}


def mmhg(value: str) -> dict:
    return {"value": Decimal(value), "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}


EXPECTED_BP = {
    "resourceType": "Observation",
    "id": BP_ID,
    "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/bp"]},
    "identifier": [{"system": "urn:kiosk:reading", "value": "gw-zj-0042/1207/85354-9"}],
    "status": "final",
    "category": VITAL_SIGNS,
    "code": {
        "coding": [
            {
                "system": "http://loinc.org",
                "code": "85354-9",
                "display": "Blood pressure panel with all children optional",
            }
        ]
    },
    "subject": {"reference": f"Patient/{PATIENT_ID}"},
    "effectiveDateTime": "2026-03-14T08:30:15.250Z",
    "_effectiveDateTime": TIME_NTP,
    "device": {"reference": f"Device/{DEVICE_ID}"},
    "component": [
        {
            "code": {
                "coding": [
                    {"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"}
                ]
            },
            "valueQuantity": mmhg("128"),
        },
        {
            "code": {
                "coding": [
                    {"system": "http://loinc.org", "code": "8462-4", "display": "Diastolic blood pressure"}
                ]
            },
            "valueQuantity": mmhg("82"),
        },
        {
            "code": {
                "coding": [{"system": "http://loinc.org", "code": "8478-0", "display": "Mean blood pressure"}]
            },
            "valueQuantity": mmhg("97"),
        },
    ],
}

EXPECTED_HR = {
    "resourceType": "Observation",
    "id": HR_ID,
    "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/heartrate"]},
    "identifier": [{"system": "urn:kiosk:reading", "value": "gw-zj-0042/1207/8867-4"}],
    "status": "final",
    "category": VITAL_SIGNS,
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
    "subject": {"reference": f"Patient/{PATIENT_ID}"},
    "effectiveDateTime": "2026-03-14T08:30:15.250Z",
    "_effectiveDateTime": TIME_NTP,
    "device": {"reference": f"Device/{DEVICE_ID}"},
    "valueQuantity": {
        "value": Decimal("71"),
        "unit": "/min",
        "system": "http://unitsofmeasure.org",
        "code": "/min",
    },
}


def test_bp_panel_observation_is_exactly_the_profile() -> None:
    entries = map_reading(bp_reading(), batch_hash=BATCH_HASH)
    assert by_type(entries, "Observation")[0] == EXPECTED_BP


def test_heart_rate_is_its_own_observation() -> None:
    entries = map_reading(bp_reading(), batch_hash=BATCH_HASH)
    assert by_type(entries, "Observation")[1] == EXPECTED_HR


def test_entries_are_conditional_creates_in_dependency_order() -> None:
    entries = map_reading(bp_reading(), batch_hash=BATCH_HASH)
    assert [(e.resource_type, e.resource["id"], e.if_none_exist) for e in entries] == [
        ("Patient", PATIENT_ID, "identifier=urn:kiosk:sid:resident-health-record|330781-2026-000123"),
        ("Device", DEVICE_ID, "identifier=urn:kiosk:device|BP-7A31"),
        ("Device", GATEWAY_DEVICE_ID, "identifier=urn:kiosk:gateway|gw-zj-0042"),
        ("Observation", BP_ID, "identifier=urn:kiosk:reading|gw-zj-0042/1207/85354-9"),
        ("Observation", HR_ID, "identifier=urn:kiosk:reading|gw-zj-0042/1207/8867-4"),
        ("Provenance", PROVENANCE_ID, "entity:identifier=urn:kiosk:reading|gw-zj-0042/1207"),
    ]


def test_patient_and_devices() -> None:
    entries = map_reading(bp_reading(), batch_hash=BATCH_HASH)
    assert by_type(entries, "Patient") == [
        {
            "resourceType": "Patient",
            "id": PATIENT_ID,
            "identifier": [{"system": "urn:kiosk:sid:resident-health-record", "value": "330781-2026-000123"}],
        }
    ]
    assert by_type(entries, "Device") == [
        {
            "resourceType": "Device",
            "id": DEVICE_ID,
            "identifier": [{"system": "urn:kiosk:device", "value": "BP-7A31"}],
            "modelNumber": "HEM-7136",
            "version": [{"type": {"text": "firmware"}, "value": "2.4.1"}],
        },
        {
            "resourceType": "Device",
            "id": GATEWAY_DEVICE_ID,
            "identifier": [{"system": "urn:kiosk:gateway", "value": "gw-zj-0042"}],
            "type": {"text": "Health kiosk gateway"},
        },
    ]


def test_provenance_carries_the_gateway_signature_and_batch_hash() -> None:
    entries = map_reading(
        bp_reading(),
        batch_hash=BATCH_HASH,
        gateway_signature=SIGNATURE,
        recorded_at_ms=MEASURED_AT_MS + 60_000,
    )
    gateway = {"reference": f"Device/{GATEWAY_DEVICE_ID}"}
    assert by_type(entries, "Provenance") == [
        {
            "resourceType": "Provenance",
            "id": PROVENANCE_ID,
            "target": [{"reference": f"Observation/{BP_ID}"}, {"reference": f"Observation/{HR_ID}"}],
            "occurredDateTime": "2026-03-14T08:30:15.250Z",
            "recorded": "2026-03-14T08:31:15.250Z",
            "activity": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                        "code": "CREATE",
                        "display": "create",
                    }
                ]
            },
            "agent": [
                {
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                "code": "assembler",
                                "display": "Assembler",
                            }
                        ]
                    },
                    "who": gateway,
                }
            ],
            "entity": [
                {
                    "role": "source",
                    "what": {"identifier": {"system": "urn:kiosk:reading", "value": "gw-zj-0042/1207"}},
                },
                {
                    "role": "source",
                    "what": {
                        "identifier": {
                            "system": "urn:kiosk:batch-sha256",
                            "value": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                        }
                    },
                },
            ],
            "signature": [
                {
                    "type": [
                        {
                            "system": "urn:iso-astm:E1762-95:2013",
                            "code": "1.2.840.10065.1.12.1.14",
                            "display": "Source Signature",
                        }
                    ],
                    "when": "2026-03-14T08:31:15.250Z",
                    "who": gateway,
                    "sigFormat": "application/cbor+ed25519",
                    "data": base64.b64encode(SIGNATURE).decode(),
                }
            ],
        }
    ]


def test_provenance_without_signature_has_no_data_and_records_measurement_time() -> None:
    (provenance,) = by_type(map_reading(bp_reading(), batch_hash=BATCH_HASH), "Provenance")
    assert "data" not in provenance["signature"][0]
    assert provenance["recorded"] == provenance["signature"][0]["when"] == EFFECTIVE


def test_unsynced_time_is_marked_on_the_time_and_in_a_note() -> None:
    entries = map_reading(bp_reading(time_quality="unsynced"), batch_hash=BATCH_HASH)
    for observation in by_type(entries, "Observation"):
        assert observation["effectiveDateTime"] == EFFECTIVE
        assert observation["_effectiveDateTime"] == {
            "extension": [{"url": "urn:kiosk:fhir:time-quality", "valueCode": "unsynced"}]
        }
        assert observation["note"] == [
            {"text": "Measurement time comes from an unsynchronised clock and may be wrong."}
        ]


def test_reading_without_resident_has_no_patient_and_no_subject() -> None:
    entries = map_reading(bp_reading(resident=None), batch_hash=BATCH_HASH)
    assert [e.resource_type for e in entries] == [
        "Device",
        "Device",
        "Observation",
        "Observation",
        "Provenance",
    ]
    expected = {key: value for key, value in EXPECTED_BP.items() if key != "subject"}
    assert by_type(entries, "Observation")[0] == expected


def test_irregular_pulse_is_a_note_and_an_abnormal_heart_rate() -> None:
    entries = map_reading(bp_reading(flags=("irregular_pulse", "cuff_loose")), batch_hash=BATCH_HASH)
    bp, hr = by_type(entries, "Observation")
    notes = [
        {"text": "Irregular pulse detected by the device during the measurement."},
        {"text": "The cuff was loose during the measurement; the values may be inaccurate."},
    ]
    assert bp == {**EXPECTED_BP, "note": notes}
    assert hr == {
        **EXPECTED_HR,
        "note": notes,
        "interpretation": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": "A",
                        "display": "Abnormal",
                    }
                ],
                "text": "Irregular pulse detected by the device during the measurement.",
            }
        ],
    }


def test_unknown_flag_is_kept_as_a_note() -> None:
    entries = map_reading(bp_reading(flags=("error_e5",)), batch_hash=BATCH_HASH)
    assert by_type(entries, "Observation")[0]["note"] == [{"text": "Device flag: error_e5"}]


def test_bp_without_mean_or_pulse_is_a_two_component_panel() -> None:
    values = (
        Measurement("systolic", Decimal("128"), "mm[Hg]"),
        Measurement("diastolic", Decimal("82"), "mm[Hg]"),
    )
    entries = map_reading(bp_reading(values=values), batch_hash=BATCH_HASH)
    (bp,) = by_type(entries, "Observation")
    assert bp == {**EXPECTED_BP, "component": EXPECTED_BP["component"][:2]}
    assert by_type(entries, "Provenance")[0]["target"] == [{"reference": f"Observation/{BP_ID}"}]


def test_decimals_keep_their_exact_digits() -> None:
    values = (
        Measurement("systolic", Decimal("120.50"), "mm[Hg]"),
        Measurement("diastolic", Decimal("80"), "mm[Hg]"),
    )
    (bp,) = by_type(map_reading(bp_reading(values=values), batch_hash=BATCH_HASH), "Observation")
    systolic = bp["component"][0]["valueQuantity"]["value"]
    assert isinstance(systolic, Decimal)
    assert str(systolic) == "120.50"


def test_ecg_without_waveform_is_refused_by_name() -> None:
    reading = bp_reading(kind="ecg", values=(Measurement("heart_rate", Decimal("72"), "/min"),))
    with pytest.raises(FhirMappingError, match=r"reading gw-zj-0042/1207: ecg reading has no waveform"):
        map_reading(reading, batch_hash=BATCH_HASH)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ((Measurement("systolic", Decimal("128"), "mm[Hg]"),), "bp reading has no diastolic"),
        (
            (
                Measurement("systolic", Decimal("17.1"), "kPa"),
                Measurement("diastolic", Decimal("10.9"), "kPa"),
            ),
            "systolic has unit 'kPa', expected 'mm\\[Hg\\]'",
        ),
        (
            (
                Measurement("systolic", Decimal("128"), "mm[Hg]"),
                Measurement("diastolic", Decimal("82"), "mm[Hg]"),
                Measurement("stiffness", Decimal("3"), "1"),
            ),
            "unmapped values \\['stiffness'\\]",
        ),
    ],
)
def test_incomplete_or_foreign_bp_is_refused(values: tuple[Measurement, ...], message: str) -> None:
    with pytest.raises(FhirMappingError, match=f"reading gw-zj-0042/1207: .*{message}"):
        map_reading(bp_reading(values=values), batch_hash=BATCH_HASH)


def test_invalid_resource_fails_fhir_validation_naming_the_reading() -> None:
    reading = bp_reading(device=DeviceRef(id="", model="HEM-7136", firmware="2.4.1"))
    with pytest.raises(
        FhirMappingError, match=r"reading gw-zj-0042/1207: invalid Device: identifier\.0\.value"
    ):
        map_reading(reading, batch_hash=BATCH_HASH)


def test_batch_hash_must_be_a_sha256() -> None:
    with pytest.raises(FhirMappingError, match="batch hash must be 32 bytes"):
        map_reading(bp_reading(), batch_hash=b"short")


def test_ids_are_deterministic() -> None:
    first = map_reading(bp_reading(), batch_hash=BATCH_HASH, gateway_signature=SIGNATURE)
    again = map_reading(bp_reading(), batch_hash=BATCH_HASH, gateway_signature=SIGNATURE)
    assert first == again
    # The same resident, device and gateway from another reading name the same resources.
    other = map_reading(bp_reading(seq=SEQ + 1), batch_hash=BATCH_HASH)
    assert [e.resource["id"] for e in other[:3]] == [PATIENT_ID, DEVICE_ID, GATEWAY_DEVICE_ID]
    assert other[3].resource["id"] == reading_uid(f"urn:kiosk:reading|{GATEWAY}/{SEQ + 1}/85354-9") != BP_ID
    # uuid5 of the namespace and "system|value", pinned from the uuid module itself.
    assert PATIENT_ID == "d64df83a-76ba-5bdb-8a2b-c38e3c801b95"


TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=60)  # encodable


@given(TEXT, TEXT)
def test_resource_id_is_uuid5_of_system_and_value(system: str, value: str) -> None:
    expected = str(uuid.uuid5(fhir_map.ID_NAMESPACE, f"{system}|{value}"))
    assert fhir_map.resource_id.__wrapped__(system, value) == expected


MS = st.integers(0, 253_402_300_799_999)  # up to 9999-12-31, the last instant FHIR can write


@given(TEXT, TEXT, MS)
def test_reading_resource_id_is_the_digest_behind_the_measurement_time(
    system: str, value: str, ms: int
) -> None:
    made = fhir_map.reading_resource_id(system, value, ms)
    assert made == _reading_uid(f"{system}|{value}", ms)
    assert uuid.UUID(made).version == 8
    assert made == fhir_map.reading_resource_id(system, value, ms)  # the same reading, the same id


@given(st.lists(MS, min_size=2, max_size=20, unique=True))
def test_reading_resource_ids_sort_by_measurement_time(times: list[int]) -> None:
    """What keeps a store's id index appending: readings measured later sort later."""
    ids = {
        fhir_map.reading_resource_id(fhir_map.READING_SYSTEM, f"gw-1/{n}", ms): ms
        for n, ms in enumerate(times)
    }
    assert [ids[made] for made in sorted(ids)] == sorted(times)


def _instant_by_datetime(ms: int) -> str:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@given(st.integers(-62_135_596_800_000, 253_402_300_799_999))  # 0001-01-01 to 9999-12-31
def test_instant_is_what_datetime_writes(ms: int) -> None:
    assert fhir_map.instant(ms) == _instant_by_datetime(ms)


@pytest.mark.parametrize("ms", [-62_135_596_800_001, 253_402_300_800_000, 10**18, -(10**18)])
def test_an_instant_outside_years_1_to_9999_overflows_as_datetime_does(ms: int) -> None:
    with pytest.raises(OverflowError):
        _instant_by_datetime(ms)
    with pytest.raises(OverflowError):
        fhir_map.instant(ms)


def test_search_tokens_escape_reserved_characters() -> None:
    token = format_token("urn:kiosk:device", "a|b,c$d\\e")
    assert token == "urn:kiosk:device|a\\|b\\,c\\$d\\\\e"
    assert parse_token(token) == ("urn:kiosk:device", "a|b,c$d\\e")
    entries = map_reading(
        bp_reading(device=DeviceRef(id="BP 7&1", model="m", firmware="f")), batch_hash=BATCH_HASH
    )
    assert entries[1].if_none_exist == "identifier=urn:kiosk:device|BP%207%261"
    for bad in ("no-system", "|value", "a|b|c", "a|b,c|d"):
        with pytest.raises(ValueError):
            parse_token(bad)
