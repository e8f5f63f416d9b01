"""The chronic-disease follow-up at the kiosk: which questionnaires the gateway offers, who is due
one, and the answers as a reading for the outbox. Pure, apart from reading the definitions.

Definitions are data (`<profiles_dir>/questionnaires/*.toml`, format in contract/questionnaire.py);
the gateway offers the newest version of each and keeps the older ones to show earlier answers.
A resident is **under management** for a condition when one of their readings on this gateway
crossed one of the region's alert rules the definition names for it (`[management]`), or an earlier
follow-up here covered it; the operator may also tick a condition on the form. The answers are
stored as one reading of kind `questionnaire` (the wire layout is in contract/questionnaire.py),
so they are kept, signed and synced exactly like a measurement.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from contract.questionnaire import (
    DEVICE_PREFIX,
    KIND,
    Answers,
    AnswerValue,
    Item,
    Questionnaire,
    QuestionnaireError,
    Text,
    answers_from_wire,
    answers_to_wire,
    load_questionnaires,
    managed_conditions,
)
from contract.wire import Reading, ResidentRef
from gateway.store import NewReading

__all__ = [
    "QUESTIONNAIRES_DIR",
    "Followups",
    "answers_view",
    "definition_view",
    "new_reading",
    "reading_answers",
]

QUESTIONNAIRES_DIR = "questionnaires"  # under the device profile directory
SUBMISSION_BOOT = 0  # a form has no boot: the submission number alone makes it unique


def _texts(text: Text) -> dict[str, str]:
    return {"zh-CN": text.zh, "en": text.en}


@dataclass(frozen=True, slots=True)
class Followups:
    """The definitions a gateway knows: every version, and the newest of each id on offer.
    `problem` says why there are none when the files could not be read."""

    versions: Mapping[tuple[str, str], Questionnaire]
    problem: str | None = None

    @classmethod
    def load(cls, profiles_dir: Path) -> Followups:
        try:
            return cls(load_questionnaires(profiles_dir / QUESTIONNAIRES_DIR))
        except QuestionnaireError as exc:
            return cls({}, problem=str(exc))

    @property
    def offered(self) -> dict[str, Questionnaire]:
        newest: dict[str, Questionnaire] = {}
        for questionnaire in self.versions.values():
            held = newest.get(questionnaire.id)
            if held is None or questionnaire.version_key() > held.version_key():
                newest[questionnaire.id] = questionnaire
        return dict(sorted(newest.items()))

    def of_reading(self, reading: Reading) -> Questionnaire | None:
        """The definition a questionnaire reading was answered under, if the gateway has it."""
        if reading.kind != KIND or not reading.device.id.startswith(DEVICE_PREFIX):
            return None
        return self.versions.get((reading.device.model, reading.device.firmware))

    def conditions(self, questionnaire: Questionnaire, flag_sets: Iterable[Iterable[str]]) -> list[str]:
        """The conditions the resident's readings (their flags) put them under management for,
        in the order of the definition."""
        seen: set[str] = set()
        for flags in flag_sets:
            seen.update(managed_conditions(questionnaire, flags))
        return [code for code in questionnaire.management if code in seen]


def _number(value: int | Decimal | None) -> str | None:
    return None if value is None else str(value)


def _item_view(item: Item) -> dict[str, object]:
    view: dict[str, object] = {
        "link_id": item.link_id,
        "type": item.type,
        "text": _texts(item.text),
        "section": item.section,
        "required": item.required,
        "repeats": item.repeats,
    }
    if item.options:
        view["options"] = [
            {"code": option.code, "text": _texts(option.text), "exclusive": option.exclusive}
            for option in item.options
        ]
    if item.type in ("integer", "decimal"):
        view.update(
            unit=item.unit,
            unit_text=_texts(item.unit_text) if item.unit_text else None,
            min=_number(item.minimum),
            max=_number(item.maximum),
            decimals=0 if item.type == "integer" else item.decimals,
        )
    if item.enable_when is not None:
        view["enable_when"] = {"item": item.enable_when.item, "answer": item.enable_when.answer}
    return view


def definition_view(questionnaire: Questionnaire) -> dict[str, object]:
    """The definition as the screen draws the form (texts keyed by the screen's language)."""
    return {
        "id": questionnaire.id,
        "version": questionnaire.version,
        "title": _texts(questionnaire.title),
        "sections": {key: _texts(text) for key, text in questionnaire.sections.items()},
        "management_item": questionnaire.management_item,
        "items": [_item_view(item) for item in questionnaire.items],
    }


_YES_NO = {True: Text("是", "yes"), False: Text("否", "no")}


def _answer_text(item: Item, value: AnswerValue) -> Text:
    if isinstance(value, bool):
        return _YES_NO[value]
    if isinstance(value, str | tuple):
        codes = value if isinstance(value, tuple) else (value,)
        options = [item.option(code) for code in codes]
        return Text("、".join(o.text.zh for o in options if o), ", ".join(o.text.en for o in options if o))
    unit = item.unit_text
    return Text(f"{value} {unit.zh}" if unit else str(value), f"{value} {unit.en}" if unit else str(value))


def answers_view(questionnaire: Questionnaire, answers: Answers) -> list[dict[str, object]]:
    """Each answer with its question, in both languages, for the resident's history."""
    out: list[dict[str, object]] = []
    for link_id, value in answers:
        item = questionnaire.item(link_id)
        assert item is not None
        wire_value: object = list(value) if isinstance(value, tuple) else value
        if isinstance(value, Decimal):
            wire_value = str(value)
        out.append(
            {
                "link_id": link_id,
                "question": _texts(item.text),
                "value": wire_value,
                "text": _texts(_answer_text(item, value)),
            }
        )
    return out


def reading_answers(followups: Followups, reading: Reading) -> tuple[Questionnaire, Answers] | None:
    """A stored questionnaire reading's definition and answers; None if the gateway cannot read
    it any more (its definition was removed)."""
    questionnaire = followups.of_reading(reading)
    if questionnaire is None:
        return None
    try:
        return questionnaire, answers_from_wire(questionnaire, reading.values, reading.flags)
    except QuestionnaireError:
        return None


def new_reading(
    questionnaire: Questionnaire,
    answers: Answers,
    *,
    resident: ResidentRef,
    operator: str,
    time_quality: str,
    submission: int,
    now_ms: int | None = None,
) -> NewReading:
    """The answers as a reading for the outbox. `submission` (the screen's number for this form)
    is its link sequence: the same form sent twice is stored once."""
    values, flags = answers_to_wire(questionnaire, answers)
    return NewReading(
        device=questionnaire.device,
        boot_id=SUBMISSION_BOOT,
        link_seq=submission,
        kind=KIND,
        values=values,
        measured_at_ms=time.time_ns() // 1_000_000 if now_ms is None else now_ms,
        time_quality=time_quality,
        received_mono_ms=time.monotonic_ns() // 1_000_000,
        resident=resident,
        operator=operator,
        flags=flags,
    )
