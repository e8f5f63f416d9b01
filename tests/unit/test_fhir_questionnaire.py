"""A follow-up questionnaire reading becomes a FHIR R4 QuestionnaireResponse (and the Questionnaire
it answers), validated with fhir.resources; it is stored once however often it is posted, and a
reading the bridge cannot read is refused with the reason (a dead letter)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.questionnaire import Questionnaire as FhirQuestionnaire
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse

from cloud_bridge import db
from cloud_bridge.db import Database
from cloud_bridge.fhir_map import FhirMappingError, map_reading
from cloud_bridge.fhir_questionnaire import map_questionnaire, questionnaire_resource
from cloud_bridge.fhir_store import apply_transaction, ensure_schema, search, to_transaction_bundle
from contract.questionnaire import answers_to_wire, check_answers, load_questionnaire
from contract.wire import Measurement, Reading, ResidentRef

NAMESPACE = uuid.UUID("b3ef8c0d-e43e-4ee2-9202-5ee2196eca72")  # fhir_map.ID_NAMESPACE, pinned
REPO = Path(__file__).resolve().parents[2]
FOLLOWUP = load_questionnaire(
    REPO / "device_profiles" / "questionnaires" / "hypertension-diabetes-followup.toml"
)
GATEWAY, SEQ = "gw-zj-0042", 1208
RESIDENT = "330781-2026-000123"
PATIENT_ID = str(uuid.uuid5(NAMESPACE, f"urn:kiosk:sid:resident-health-record|{RESIDENT}"))
RESPONSE_KEY = f"{GATEWAY}/{SEQ}/hypertension-diabetes-followup"
SYSTEM = "urn:kiosk:questionnaire:hypertension-diabetes-followup"
ANSWERS = {
    "conditions": ["hypertension", "diabetes"],
    "visit_mode": "home",
    "symptoms": ["polyuria", "limb_numbness"],
    "smoker": False,
    "drinker": True,
    "alcohol_liang_per_day": "1.5",
    "exercise_times_per_week": 5,
    "exercise_minutes": 30,
    "salt_intake": "moderate",
    "staple_food_g_per_day": 300,
    "psychological_adjustment": "fair",
    "compliance": "good",
    "medication_adherence": "intermittent",
    "adverse_drug_reaction": False,
    "hypoglycaemia_reaction": "occasional",
}


def followup_reading(**changes: object) -> Reading:
    values, flags = answers_to_wire(FOLLOWUP, check_answers(FOLLOWUP, ANSWERS))
    reading = Reading(
        gateway_id=GATEWAY,
        seq=SEQ,
        device=FOLLOWUP.device,
        kind="questionnaire",
        values=values,
        measured_at_ms=1_773_477_615_250,
        time_quality="ntp",
        received_mono_ms=91_000,
        resident=ResidentRef("health-record", RESIDENT),
        operator="doctor-wang",
        flags=flags,
    )
    return dataclasses.replace(reading, **changes)  # type: ignore[arg-type]


def test_the_response_carries_every_answer_coded_for_the_record() -> None:
    entries = map_reading(followup_reading(), batch_hash=bytes(range(32)), gateway_signature=b"\x5a" * 64)
    assert [e.resource_type for e in entries] == [
        "Patient", "Device", "Questionnaire", "QuestionnaireResponse", "Provenance",
    ]  # fmt: skip
    response = entries[3].resource
    QuestionnaireResponse.model_validate(response)
    assert response["id"] == str(uuid.uuid5(NAMESPACE, f"urn:kiosk:reading|{RESPONSE_KEY}"))
    assert response["identifier"] == {"system": "urn:kiosk:reading", "value": RESPONSE_KEY}
    assert entries[3].if_none_exist == f"identifier=urn:kiosk:reading|{RESPONSE_KEY}"
    assert response["questionnaire"] == f"{SYSTEM}|1"
    assert response["status"] == "completed"
    assert response["subject"] == response["source"] == {"reference": f"Patient/{PATIENT_ID}"}
    assert response["authored"] == "2026-03-14T08:40:15.250Z"
    assert response["author"] == {
        "type": "Practitioner",
        "identifier": {"system": "urn:kiosk:operator", "value": f"{GATEWAY}/doctor-wang"},
        "display": "doctor-wang",
    }
    answers = {item["linkId"]: item["answer"] for item in response["item"]}
    assert list(answers) == [
        "conditions", "visit_mode", "symptoms", "smoker", "drinker", "alcohol_liang_per_day",
        "exercise_times_per_week", "exercise_minutes", "salt_intake", "staple_food_g_per_day",
        "psychological_adjustment", "compliance", "medication_adherence", "adverse_drug_reaction",
        "hypoglycaemia_reaction",
    ]  # fmt: skip
    assert answers["medication_adherence"] == [
        {
            "valueCoding": {
                "system": f"{SYSTEM}:medication_adherence",
                "code": "intermittent",
                "display": "间断",
            }
        }
    ]
    assert [a["valueCoding"]["code"] for a in answers["symptoms"]] == ["limb_numbness", "polyuria"]
    assert answers["smoker"] == [{"valueBoolean": False}]
    assert answers["exercise_times_per_week"] == [{"valueInteger": 5}]
    assert answers["alcohol_liang_per_day"] == [{"valueDecimal": Decimal("1.5")}]
    assert next(i for i in response["item"] if i["linkId"] == "smoker")["text"] == "目前吸烟"

    provenance = entries[4].resource
    assert provenance["target"] == [{"reference": f"QuestionnaireResponse/{response['id']}"}]
    assert provenance["entity"][1]["what"]["identifier"]["value"] == bytes(range(32)).hex()


def test_the_questionnaire_itself_is_published_once_per_version() -> None:
    form = questionnaire_resource(FOLLOWUP)
    FhirQuestionnaire.model_validate(form)
    assert (form["url"], form["version"], form["status"]) == (SYSTEM, "1", "active")
    assert form["title"] == "高血压、2型糖尿病患者随访"
    assert (
        form["_title"]["extension"][0]["extension"][1]["valueString"]
        == "Hypertension and type 2 diabetes follow-up"
    )
    items = {item["linkId"]: item for item in form["item"]}
    assert items["cigarettes_per_day"]["enableWhen"] == [
        {"question": "smoker", "operator": "=", "answerBoolean": True}
    ]
    assert items["salt_intake"]["enableWhen"] == [
        {
            "question": "conditions",
            "operator": "=",
            "answerCoding": {"system": f"{SYSTEM}:conditions", "code": "hypertension"},
        }
    ]
    units = {e["url"].rsplit("/", 1)[1]: e for e in items["cigarettes_per_day"]["extension"]}
    assert units["questionnaire-unit"]["valueCoding"] == {
        "system": "http://unitsofmeasure.org", "code": "/d", "display": "支/日",
    }  # fmt: skip
    assert units["maxValue"] == {
        "url": "http://hl7.org/fhir/StructureDefinition/maxValue",
        "valueInteger": 100,
    }
    assert items["symptoms"]["repeats"] is True and items["symptoms"]["type"] == "choice"
    assert [o["valueCoding"]["code"] for o in items["medication_adherence"]["answerOption"]] == [
        "regular", "intermittent", "none",
    ]  # fmt: skip


@pytest.fixture
def conn() -> Iterator[Database]:
    connection = db.connect(":memory:")
    ensure_schema(connection)
    yield connection
    connection.close()


def test_posting_again_creates_nothing_new(conn: Database) -> None:
    entries = map_reading(followup_reading(), batch_hash=bytes(32))
    first = apply_transaction(conn, entries, now_iso="2026-03-14T08:41:00.000Z")
    assert [created for _type, _id, created in first] == [True] * 5
    again = apply_transaction(
        conn, map_reading(followup_reading(), batch_hash=bytes(32)), now_iso="2026-03-15T09:00:00Z"
    )
    assert [created for _type, _id, created in again] == [False] * 5
    # A second follow-up of the same resident: a new response, the same Questionnaire and Patient.
    later = apply_transaction(
        conn, map_reading(followup_reading(seq=SEQ + 9), batch_hash=bytes(32)), now_iso="2026-03-16T09:00:00Z"
    )
    assert [(t, created) for t, _id, created in later] == [
        ("Patient", False), ("Device", False), ("Questionnaire", False), ("QuestionnaireResponse", True),
        ("Provenance", True),
    ]  # fmt: skip
    responses = search(conn, "QuestionnaireResponse", subject=f"Patient/{PATIENT_ID}")
    assert len(responses) == 2
    # ... and the same entries make a valid transaction Bundle for a remote FHIR server.
    Bundle.model_validate(to_transaction_bundle(entries))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            {"device": dataclasses.replace(FOLLOWUP.device, firmware="7")},
            "version 7 is not known to the bridge",
        ),
        ({"resident": None}, "a questionnaire answered for no resident"),
        ({"flags": ("answer:smoker=perhaps",)}, "answers do not fit hypertension-diabetes-followup 1"),
        (
            {
                "values": tuple(
                    Measurement(m.name, Decimal(50), m.unit) if m.name == "exercise_times_per_week" else m
                    for m in followup_reading().values
                )
            },
            "exercise_times_per_week: must be between 0 and 21",
        ),
    ],
)
def test_a_reading_the_bridge_cannot_read_is_refused_with_the_reason(
    changes: dict[str, object], reason: str
) -> None:
    with pytest.raises(FhirMappingError) as caught:
        map_reading(followup_reading(**changes), batch_hash=bytes(32))
    assert reason in str(caught.value)
    assert str(caught.value).startswith(f"reading {GATEWAY}/{SEQ}: ")
    assert RESIDENT not in str(caught.value)


def test_a_bridge_without_the_definition_keeps_the_reading_as_a_dead_letter() -> None:
    with pytest.raises(FhirMappingError, match="not known to the bridge"):
        map_questionnaire(followup_reading(), batch_hash=bytes(32), questionnaires={})
