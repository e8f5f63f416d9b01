"""A follow-up questionnaire through the whole chain, on real parts: the gateway's API (as the kiosk
screen sends it) → outbox → Mosquitto → bridge → a QuestionnaireResponse in the bridge's FHIR store.

Answered while the 4G link is down; sent once the broker is back; a double submission and a
gateway restart add nothing."""

from __future__ import annotations

import sqlite3

import pytest

from cloud_bridge.fhir_map import resource_id
from cloud_bridge.fhir_questionnaire import QUESTIONNAIRE_SYSTEM
from contract.wire import RESIDENT_ID_SYSTEMS
from simulators.chain import Chain
from tests.conftest import Mosquitto

pytestmark = [pytest.mark.mosquitto]

RESIDENT = "330781-2026-000123"
SUBJECT = f"{RESIDENT_ID_SYSTEMS['health-record']}|{RESIDENT}"
FOLLOWUP = "hypertension-diabetes-followup"
FORM = {
    "questionnaire": FOLLOWUP,
    "submission": 20261125001,
    "answers": {
        "conditions": ["diabetes"],
        "visit_mode": "home",
        "symptoms": ["polyuria", "blurred_vision"],
        "smoker": False,
        "drinker": False,
        "exercise_times_per_week": 2,
        "staple_food_g_per_day": "350",
        "psychological_adjustment": "good",
        "compliance": "fair",
        "medication_adherence": "regular",
        "adverse_drug_reaction": False,
        "hypoglycaemia_reaction": "occasional",
        "followup_classification": "uncontrolled",
    },
}


@pytest.fixture
def chain(stopped_broker_chain: Chain) -> Chain:
    return stopped_broker_chain


def responses(chain: Chain) -> list[dict]:
    bundle = chain.bridge_get("/fhir/QuestionnaireResponse", **{"subject:identifier": SUBJECT})
    return [entry["resource"] for entry in bundle.get("entry", [])]


def test_a_followup_answered_offline_becomes_one_questionnaire_response(
    chain: Chain, stopped_mosquitto: Mosquitto
) -> None:
    chain.start_bridge()
    chain.start_gateway()
    chain.check_in("health-record", RESIDENT, operator="doctor-wang")
    stored = chain.gateway_post("/api/resident/questionnaire", FORM)
    assert stored["stored"] is True
    assert chain.gateway_post("/api/resident/questionnaire", FORM)["duplicate"] is True
    status = chain.wait_for_outbox(lambda o: o["stored"] + o["batched"] == 1, timeout=30, what="form stored")
    assert status["link_up"] is False

    stopped_mosquitto.start()
    chain.wait_for_outbox(lambda o: o["synced"] == 1, timeout=60, what="the bridge's ack")

    [response] = responses(chain)
    assert response["status"] == "completed"
    assert response["questionnaire"] == f"urn:kiosk:questionnaire:{FOLLOWUP}|1"
    assert response["identifier"]["value"] == f"{chain.gateway_id}/{stored['seq']}/{FOLLOWUP}"
    assert response["author"]["identifier"]["value"] == f"{chain.gateway_id}/doctor-wang"
    answers = {item["linkId"]: item["answer"] for item in response["item"]}
    assert answers["hypoglycaemia_reaction"][0]["valueCoding"]["display"] == "偶尔"
    assert answers["staple_food_g_per_day"] == [{"valueInteger": 350}]
    assert [a["valueCoding"]["code"] for a in answers["symptoms"]] == ["polyuria", "blurred_vision"]
    assert "salt_intake" not in answers  # a hypertension question, not asked for diabetes alone

    questionnaire = chain.bridge_get(
        f"/fhir/Questionnaire/{resource_id(QUESTIONNAIRE_SYSTEM, f'{FOLLOWUP}/1')}"
    )
    assert (questionnaire["url"], questionnaire["version"]) == (f"urn:kiosk:questionnaire:{FOLLOWUP}", "1")
    with sqlite3.connect(chain.bridge_db) as conn:
        rows = conn.execute("SELECT kind, fhir_status FROM readings").fetchall()
    assert rows == [("questionnaire", "stored")]

    # A restarted gateway sends nothing again.
    chain.stop("gateway")
    chain.start_gateway()
    chain.wait_for_outbox(lambda o: o["synced"] == 1, timeout=30, what="gateway back up")
    assert len(responses(chain)) == 1
