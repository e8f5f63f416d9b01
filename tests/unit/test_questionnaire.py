"""The follow-up questionnaire's definition and answers (contract/questionnaire.py): every file in
device_profiles/questionnaires loads and names alert rules that exist; answers are checked item
by item against the definition; the wire layout (docs/wire-format.md 3.2.2) written out by hand."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path

import cbor2
import pytest

from contract.questionnaire import (
    QuestionnaireError,
    answers_from_wire,
    answers_to_wire,
    check_answers,
    is_enabled,
    load_questionnaire,
    load_questionnaires,
    managed_conditions,
    parse_questionnaire,
)
from contract.wire import DeviceRef, Measurement, Reading, ResidentRef, decode_reading, encode_reading

REPO = Path(__file__).resolve().parents[2]
DIRECTORY = REPO / "device_profiles" / "questionnaires"
FOLLOWUP = load_questionnaire(DIRECTORY / "hypertension-diabetes-followup.toml")

# A resident under hypertension management who smokes (the usual answers at a village clinic).
HYPERTENSION = {
    "conditions": ["hypertension"],
    "visit_mode": "clinic",
    "symptoms": ["none"],
    "smoker": True,
    "cigarettes_per_day": 10,
    "drinker": False,
    "exercise_times_per_week": 3,
    "salt_intake": "heavy",
    "psychological_adjustment": "good",
    "compliance": "good",
    "medication_adherence": "regular",
    "adverse_drug_reaction": False,
}


def refusal(raw: dict[str, object]) -> tuple[str, str | None]:
    with pytest.raises(QuestionnaireError) as caught:
        check_answers(FOLLOWUP, raw)
    return caught.value.code, caught.value.link_id


def test_every_definition_loads_and_names_alert_rules_the_region_has() -> None:
    definitions = load_questionnaires(DIRECTORY)
    assert list(definitions) == [("hypertension-diabetes-followup", "1")]
    rules = tomllib.loads((REPO / "device_profiles" / "alert_rules" / "cn.toml").read_text(encoding="utf-8"))
    rule_ids = {rule["id"] for rule in rules["rules"]}
    for questionnaire in definitions.values():
        for condition, alert_rules in questionnaire.management.items():
            assert set(alert_rules) <= rule_ids, condition
    assert FOLLOWUP.canonical == "urn:kiosk:questionnaire:hypertension-diabetes-followup|1"
    assert FOLLOWUP.device == DeviceRef("questionnaire:hypertension-diabetes-followup", FOLLOWUP.id, "1")
    # The national forms' options, in their order.
    adherence = FOLLOWUP.item("medication_adherence")
    assert adherence is not None
    assert [(o.code, o.text.zh) for o in adherence.options] == [
        ("regular", "规律"),
        ("intermittent", "间断"),
        ("none", "不服药"),
    ]


def test_answers_come_back_typed_in_the_order_of_the_items() -> None:
    raw = {**HYPERTENSION, "conditions": ["diabetes", "hypertension"], "exercise_minutes": "30"}
    raw |= {"staple_food_g_per_day": "250", "hypoglycaemia_reaction": "occasional"}
    raw |= {"drinker": True, "alcohol_liang_per_day": 1.5}
    answers = check_answers(FOLLOWUP, raw)
    assert answers == (
        ("conditions", ("hypertension", "diabetes")),  # options in the definition's order
        ("visit_mode", "clinic"),
        ("symptoms", ("none",)),
        ("smoker", True),
        ("cigarettes_per_day", 10),
        ("drinker", True),
        ("alcohol_liang_per_day", Decimal("1.5")),
        ("exercise_times_per_week", 3),
        ("exercise_minutes", 30),
        ("salt_intake", "heavy"),
        ("staple_food_g_per_day", 250),
        ("psychological_adjustment", "good"),
        ("compliance", "good"),
        ("medication_adherence", "regular"),
        ("adverse_drug_reaction", False),
        ("hypoglycaemia_reaction", "occasional"),
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"medication_adherence": None}, ("required", "medication_adherence")),
        ({"cigarettes_per_day": None}, ("required", "cigarettes_per_day")),  # smoker: asked
        ({"smoker": False}, ("not_enabled", "cigarettes_per_day")),  # not a smoker: not asked
        ({"staple_food_g_per_day": 300}, ("not_enabled", "staple_food_g_per_day")),  # diabetes only
        ({"conditions": ["diabetes"]}, ("not_enabled", "salt_intake")),  # hypertension only
        ({"conditions": ["diabetes"], "salt_intake": None}, ("required", "hypoglycaemia_reaction")),
        ({"symptoms": ["none", "polyuria"]}, ("exclusive_option", "symptoms")),
        ({"visit_mode": ["clinic", "home"]}, ("one_option", "visit_mode")),
        ({"salt_intake": "very_heavy"}, ("unknown_option", "salt_intake")),
        ({"symptoms": ["polyuria", "polyuria"]}, ("repeated_option", "symptoms")),
        ({"smoker": "yes"}, ("answer_type", "smoker")),
        ({"cigarettes_per_day": "12.5"}, ("not_integer", "cigarettes_per_day")),
        ({"cigarettes_per_day": True}, ("answer_type", "cigarettes_per_day")),
        ({"cigarettes_per_day": 101}, ("out_of_range", "cigarettes_per_day")),
        ({"exercise_times_per_week": -1}, ("out_of_range", "exercise_times_per_week")),
        ({"drinker": True, "alcohol_liang_per_day": "1.25"}, ("too_precise", "alcohol_liang_per_day")),
        ({"drinker": True, "alcohol_liang_per_day": "NaN"}, ("answer_type", "alcohol_liang_per_day")),
        ({"drinker": True, "alcohol_liang_per_day": "two"}, ("answer_type", "alcohol_liang_per_day")),
        ({"blood_type": "A"}, ("unknown_item", None)),
    ],
)
def test_answers_that_do_not_fit_the_definition_are_refused_naming_the_item(
    change: dict[str, object], expected: tuple[str, str | None]
) -> None:
    assert refusal({**HYPERTENSION, **change}) == expected


def test_a_question_is_shown_when_its_condition_holds() -> None:
    salt, cigarettes = FOLLOWUP.item("salt_intake"), FOLLOWUP.item("cigarettes_per_day")
    assert salt is not None and cigarettes is not None
    assert is_enabled(salt, {"conditions": ("hypertension", "diabetes")})
    assert not is_enabled(salt, {"conditions": ("diabetes",)})
    assert is_enabled(cigarettes, {"smoker": True}) and not is_enabled(cigarettes, {"smoker": False})
    assert not is_enabled(cigarettes, {})


def test_the_wire_layout_written_out() -> None:
    """docs/wire-format.md 3.2.2: numbers in `val` with the item's UCUM unit, the rest as
    `answer:<link id>=<code>` flags, the questionnaire as the device."""
    answers = check_answers(FOLLOWUP, HYPERTENSION)
    values, flags = answers_to_wire(FOLLOWUP, answers)
    reading = Reading(
        gateway_id="gw-vector",
        seq=9,
        device=FOLLOWUP.device,
        kind="questionnaire",
        values=values,
        measured_at_ms=1_773_477_015_250,
        time_quality="ntp",
        received_mono_ms=88_000,
        resident=ResidentRef("health-record", "330781-2026-000123"),
        operator="doctor-wang",
        flags=flags,
    )
    encoded = encode_reading(reading)
    assert cbor2.loads(encoded) == {
        "gw": "gw-vector",
        "seq": 9,
        "dev": ["questionnaire:hypertension-diabetes-followup", "hypertension-diabetes-followup", "1"],
        "k": "questionnaire",
        "val": [["cigarettes_per_day", Decimal(10), "/d"], ["exercise_times_per_week", Decimal(3), "/wk"]],
        "t": 1_773_477_015_250,
        "tq": "ntp",
        "rx": 88_000,
        "res": ["health-record", "330781-2026-000123"],
        "op": "doctor-wang",
        "fl": [
            "answer:conditions=hypertension",
            "answer:visit_mode=clinic",
            "answer:symptoms=none",
            "answer:smoker=true",
            "answer:drinker=false",
            "answer:salt_intake=heavy",
            "answer:psychological_adjustment=good",
            "answer:compliance=good",
            "answer:medication_adherence=regular",
            "answer:adverse_drug_reaction=false",
        ],
    }
    decoded = decode_reading(encoded)
    assert decoded == reading
    assert answers_from_wire(FOLLOWUP, decoded.values, decoded.flags) == answers


@pytest.mark.parametrize(
    ("values", "flags", "code"),
    [
        ((), ("answer:smoker=maybe",), "answer_type"),
        ((Measurement("cigarettes_per_day", Decimal(5), "/wk"),), (), "answer_type"),  # wrong unit
        ((Measurement("cigarettes_per_day", Decimal("5.5"), "/d"),), (), "not_integer"),
        ((), ("answer:mood=low",), "unknown_item"),
    ],
)
def test_a_reading_that_does_not_fit_its_definition_is_refused(
    values: tuple[Measurement, ...], flags: tuple[str, ...], code: str
) -> None:
    good_values, good_flags = answers_to_wire(FOLLOWUP, check_answers(FOLLOWUP, HYPERTENSION))
    kept_values = tuple(m for m in good_values if m.name not in {v.name for v in values}) + values
    with pytest.raises(QuestionnaireError) as caught:
        answers_from_wire(FOLLOWUP, kept_values, good_flags + flags)
    assert caught.value.code == code


def test_management_follows_the_regions_rules_and_earlier_followups() -> None:
    assert managed_conditions(FOLLOWUP, ["irregular_pulse", "alert:hypertensive_crisis"]) == ("hypertension",)
    assert managed_conditions(FOLLOWUP, ["fasting", "alert:fasting_hyperglycaemia"]) == ("diabetes",)
    assert managed_conditions(FOLLOWUP, ["alert:hypoglycaemia_level1", "alert:fever"]) == ()
    assert managed_conditions(FOLLOWUP, ["answer:conditions=diabetes"]) == ("diabetes",)


BASE = {
    "id": "t",
    "version": "1",
    "url": "urn:t",
    "title": {"zh": "测", "en": "T"},
    "items": [{"link_id": "a", "type": "boolean", "text": {"zh": "甲", "en": "A"}}],
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": "Bad Id"}, "id must be"),
        ({"url": "no scheme"}, "url must be a URI"),
        ({"title": {"zh": "测"}}, "title: needs exactly zh and en"),
        (
            {"items": [{"link_id": "A-1", "type": "boolean", "text": {"zh": "甲", "en": "A"}}]},
            "link_id must be",
        ),
        (
            {"items": [{"link_id": "a", "type": "text", "text": {"zh": "甲", "en": "A"}}]},
            "type must be one of",
        ),
        ({"items": [{"link_id": "a", "type": "choice", "text": {"zh": "甲", "en": "A"}}]}, "has options"),
        (
            {"items": [{"link_id": "a", "type": "integer", "decimals": 1, "text": {"zh": "甲", "en": "A"}}]},
            "decimals (0-6) only for a decimal item",
        ),
        (
            {
                "items": [
                    {
                        "link_id": "a",
                        "type": "boolean",
                        "text": {"zh": "甲", "en": "A"},
                        "enable_when": {"item": "b", "answer": True},
                    }
                ]
            },
            "names no item before this one",
        ),
        ({"management": {"item": "a"}}, "management.item must name a choice item"),
        ({"colour": "red"}, "unknown keys ['colour']"),
    ],
)
def test_a_bad_definition_is_refused_naming_the_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(QuestionnaireError) as caught:
        parse_questionnaire({**BASE, **change}, "q.toml")
    assert message in str(caught.value) and str(caught.value).startswith("q.toml")
