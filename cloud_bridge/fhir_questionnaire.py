"""Map a questionnaire reading to FHIR R4: a QuestionnaireResponse, and the Questionnaire it answers.

Pure, like `fhir_map` (which hands a reading of kind `questionnaire` to `map_questionnaire`):
the same reading always gives the same resources with the same ids, every one a conditional
create on a stable identifier, so a repost creates nothing new. The answers are read from the
reading's values and flags with the definition they were given under (contract/questionnaire.py,
`device_profiles/questionnaires/*.toml`); a reading whose questionnaire or version the bridge does
not have, or whose answers do not fit it, is refused with the reason (the bridge keeps it as a
dead letter; nothing is lost, and it maps once the definition is added).

The resources, in the order they are applied:
- Patient (conditional create by resident identifier, as for every reading) and the gateway Device;
- the Questionnaire (`url`, `version`; its items with their link ids, types, options as Codings,
  units, ranges, enableWhen; Chinese texts with English translations);
- the QuestionnaireResponse: status `completed`, `questionnaire` = `url|version`, subject and
  source the resident, author the operator (a logical Practitioner reference: operators are the
  gateway's own), `authored` the time of the answers with their time quality, one item per answered
  question in the questionnaire's order; identifier `urn:kiosk:reading|{gateway}/{seq}/{id}`;
- a Provenance tying it to the gateway's signed batch, as for Observations.

Definitions are read from `$KIOSK_QUESTIONNAIRES` or else the checkout's
`device_profiles/questionnaires` (once per process).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fhir.resources.R4B.device import Device
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.questionnaire import Questionnaire as FhirQuestionnaire
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from pydantic import ValidationError

from cloud_bridge.fhir_map import (
    GATEWAY_SYSTEM,
    READING_SYSTEM,
    TIME_QUALITY_EXTENSION,
    FhirMappingError,
    TransactionEntry,
    format_token,
    instant,
    provenance_resource,
    resource_id,
)
from contract.questionnaire import (
    DEVICE_PREFIX,
    KIND,
    Item,
    Questionnaire,
    QuestionnaireError,
    Text,
    answers_from_wire,
    load_questionnaires,
)
from contract.wire import RESIDENT_ID_SYSTEMS, Reading

__all__ = [
    "OPERATOR_SYSTEM",
    "QUESTIONNAIRES_ENV",
    "QUESTIONNAIRE_SYSTEM",
    "map_questionnaire",
    "option_system",
    "questionnaire_resource",
]

QUESTIONNAIRES_ENV = "KIOSK_QUESTIONNAIRES"
DEFAULT_QUESTIONNAIRES = Path(__file__).resolve().parents[1] / "device_profiles" / "questionnaires"
QUESTIONNAIRE_SYSTEM = "urn:kiosk:questionnaire"  # identifier value: {id}/{version}
OPERATOR_SYSTEM = "urn:kiosk:operator"  # value: {gateway}/{operator id}
UCUM = "http://unitsofmeasure.org"
TRANSLATION = "http://hl7.org/fhir/StructureDefinition/translation"
UNIT_EXTENSION = "http://hl7.org/fhir/StructureDefinition/questionnaire-unit"
MIN_VALUE = "http://hl7.org/fhir/StructureDefinition/minValue"
MAX_VALUE = "http://hl7.org/fhir/StructureDefinition/maxValue"
MAX_DECIMALS = "http://hl7.org/fhir/StructureDefinition/maxDecimalPlaces"
_VALUE_KEY = {"integer": "valueInteger", "decimal": "valueDecimal"}

_MODELS: dict[str, Any] = {
    "Patient": Patient,
    "Device": Device,
    "Questionnaire": FhirQuestionnaire,
    "QuestionnaireResponse": QuestionnaireResponse,
    "Provenance": Provenance,
}


@functools.lru_cache(maxsize=4)
def _definitions(directory: str) -> Mapping[tuple[str, str], Questionnaire]:
    return load_questionnaires(Path(directory))


def known_questionnaires() -> Mapping[tuple[str, str], Questionnaire]:
    """The definitions this bridge maps with, by (id, version)."""
    return _definitions(os.environ.get(QUESTIONNAIRES_ENV) or str(DEFAULT_QUESTIONNAIRES))


def option_system(questionnaire: Questionnaire, item: Item) -> str:
    """The code system of one choice item's options."""
    return f"{questionnaire.url}:{item.link_id}"


def _entry(
    resource: dict[str, Any], system: str, value: str, param: str = "identifier", *, shared: bool = False
) -> TransactionEntry:
    search = f"{param}={quote(format_token(system, value), safe=':/|')}"
    return TransactionEntry(resource["resourceType"], resource, search, shared=shared)


def _translated(text: Text) -> dict[str, Any]:
    """The extension that gives a Chinese text its English translation."""
    return {
        "extension": [
            {
                "url": TRANSLATION,
                "extension": [{"url": "lang", "valueCode": "en"}, {"url": "content", "valueString": text.en}],
            }
        ]
    }


def _number(item: Item, value: Decimal) -> int | Decimal:
    return int(value) if item.type == "integer" else value


def _item_resource(questionnaire: Questionnaire, item: Item) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "linkId": item.link_id,
        "text": item.text.zh,
        "_text": _translated(item.text),
        "type": item.type,
        "required": item.required,
    }
    if item.repeats:
        resource["repeats"] = True
    if item.options:
        resource["answerOption"] = [
            {
                "valueCoding": {
                    "system": option_system(questionnaire, item),
                    "code": option.code,
                    "display": option.text.zh,
                }
            }
            for option in item.options
        ]
    extensions: list[dict[str, Any]] = []
    if item.unit is not None:
        display = item.unit_text.zh if item.unit_text else item.unit
        extensions.append(
            {"url": UNIT_EXTENSION, "valueCoding": {"system": UCUM, "code": item.unit, "display": display}}
        )
    if item.type in _VALUE_KEY:
        for url, bound in ((MIN_VALUE, item.minimum), (MAX_VALUE, item.maximum)):
            if bound is not None:
                extensions.append({"url": url, _VALUE_KEY[item.type]: _number(item, bound)})
    if item.decimals is not None:
        extensions.append({"url": MAX_DECIMALS, "valueInteger": item.decimals})
    if extensions:
        resource["extension"] = extensions
    condition = item.enable_when
    if condition is not None:
        target = questionnaire.item(condition.item)
        assert target is not None  # parse_questionnaire checked it
        when: dict[str, Any] = {"question": condition.item, "operator": "="}
        if isinstance(condition.answer, bool):
            when["answerBoolean"] = condition.answer
        else:
            when["answerCoding"] = {"system": option_system(questionnaire, target), "code": condition.answer}
        resource["enableWhen"] = [when]
    return resource


def questionnaire_resource(questionnaire: Questionnaire) -> dict[str, Any]:
    """The FHIR Questionnaire of one definition's version."""
    key = f"{questionnaire.id}/{questionnaire.version}"
    resource: dict[str, Any] = {
        "resourceType": "Questionnaire",
        "id": resource_id(QUESTIONNAIRE_SYSTEM, key),
        "identifier": [{"system": QUESTIONNAIRE_SYSTEM, "value": key}],
        "url": questionnaire.url,
        "version": questionnaire.version,
        "name": "".join(part.capitalize() for part in questionnaire.id.split("-")),
        "title": questionnaire.title.zh,
        "_title": _translated(questionnaire.title),
        "status": "active",
        "subjectType": ["Patient"],
        "item": [_item_resource(questionnaire, item) for item in questionnaire.items],
    }
    if questionnaire.source:
        resource["description"] = f"Source: {questionnaire.source}"
    return resource


def _answer(questionnaire: Questionnaire, item: Item, value: object) -> list[dict[str, Any]]:
    if isinstance(value, bool):
        return [{"valueBoolean": value}]
    if isinstance(value, str | tuple):
        codes = value if isinstance(value, tuple) else (value,)
        system = option_system(questionnaire, item)
        return [
            {"valueCoding": {"system": system, "code": code, "display": option.text.zh}}
            for code in codes
            if (option := item.option(code)) is not None
        ]
    assert isinstance(value, int | Decimal)
    return [{_VALUE_KEY[item.type]: value}]


# Questionnaires already validated, by (id, version, url): the same version maps to the same
# resource every time, and it is the largest of a follow-up's resources to validate.
_VALID_FORMS: set[tuple[str, str, str]] = set()


def _validate(where: str, entries: list[TransactionEntry]) -> None:
    for entry in entries:
        if entry.resource_type == "Questionnaire":
            key = (entry.resource["identifier"][0]["value"], entry.resource["version"], entry.resource["url"])
            if key in _VALID_FORMS:
                continue
        try:
            _MODELS[entry.resource_type].model_validate(entry.resource)
        except ValidationError as exc:
            # Locations and messages only: the input values may hold a resident identifier.
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise FhirMappingError(f"{where}: invalid {entry.resource_type}: {detail}") from None
        if entry.resource_type == "Questionnaire":
            _VALID_FORMS.add(key)


def map_questionnaire(
    reading: Reading,
    *,
    batch_hash: bytes,
    gateway_signature: bytes | None = None,
    recorded_at_ms: int | None = None,
    questionnaires: Mapping[tuple[str, str], Questionnaire] | None = None,
) -> list[TransactionEntry]:
    """The resources for one questionnaire reading (see the module's docstring), validated with
    the fhir.resources R4B models. `questionnaires` defaults to `known_questionnaires()`."""
    where = f"reading {reading.gateway_id}/{reading.seq}"
    if reading.kind != KIND or not reading.device.id.startswith(DEVICE_PREFIX):
        raise FhirMappingError(f"{where}: not a questionnaire reading")
    if len(batch_hash) != 32:
        raise FhirMappingError(f"{where}: batch hash must be 32 bytes, got {len(batch_hash)}")
    if reading.resident is None:
        raise FhirMappingError(f"{where}: a questionnaire answered for no resident")
    try:
        known = known_questionnaires() if questionnaires is None else questionnaires
    except QuestionnaireError as exc:
        raise FhirMappingError(
            f"{where}: the bridge's questionnaire definitions cannot be read: {exc}"
        ) from None
    questionnaire_id, version = reading.device.model, reading.device.firmware
    questionnaire = known.get((questionnaire_id, version))
    if questionnaire is None:
        raise FhirMappingError(
            f"{where}: questionnaire {questionnaire_id} version {version} is not known to the bridge "
            f"(add its definition to device_profiles/questionnaires or ${QUESTIONNAIRES_ENV})"
        )
    try:
        answers = answers_from_wire(questionnaire, reading.values, reading.flags)
    except QuestionnaireError as exc:
        raise FhirMappingError(f"{where}: answers do not fit {questionnaire_id} {version}: {exc}") from None
    try:
        authored = instant(reading.measured_at_ms)
        recorded = instant(reading.measured_at_ms if recorded_at_ms is None else recorded_at_ms)
    except OverflowError:
        raise FhirMappingError(f"{where}: time out of range") from None

    system, value = RESIDENT_ID_SYSTEMS[reading.resident.system], reading.resident.value
    patient = {
        "resourceType": "Patient",
        "id": resource_id(system, value),
        "identifier": [{"system": system, "value": value}],
    }
    subject = {"reference": f"Patient/{patient['id']}"}
    gateway = {
        "resourceType": "Device",
        "id": resource_id(GATEWAY_SYSTEM, reading.gateway_id),
        "identifier": [{"system": GATEWAY_SYSTEM, "value": reading.gateway_id}],
        "type": {"text": "Health kiosk gateway"},
    }
    form = questionnaire_resource(questionnaire)

    reading_key = f"{reading.gateway_id}/{reading.seq}"
    response_key = f"{reading_key}/{questionnaire.id}"
    items = []
    for link_id, answer in answers:
        item = questionnaire.item(link_id)
        assert item is not None
        items.append(
            {"linkId": link_id, "text": item.text.zh, "answer": _answer(questionnaire, item, answer)}
        )
    response: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "id": resource_id(READING_SYSTEM, response_key),
        "identifier": {"system": READING_SYSTEM, "value": response_key},
        "questionnaire": questionnaire.canonical,
        "status": "completed",
        "subject": dict(subject),
        "authored": authored,
        "_authored": {"extension": [{"url": TIME_QUALITY_EXTENSION, "valueCode": reading.time_quality}]},
        "source": dict(subject),
        "item": items,
    }
    if reading.operator:
        response["author"] = {
            "type": "Practitioner",
            "identifier": {"system": OPERATOR_SYSTEM, "value": f"{reading.gateway_id}/{reading.operator}"},
            "display": reading.operator,
        }

    provenance = provenance_resource(
        reading_key,
        measured_at_ms=reading.measured_at_ms,
        targets=[f"QuestionnaireResponse/{response['id']}"],
        occurred=authored,
        recorded=recorded,
        gateway_id=gateway["id"],
        batch_hash=batch_hash,
        gateway_signature=gateway_signature,
    )
    entries = [
        _entry(patient, system, value, shared=True),  # residents, gateways, forms: many readings
        _entry(gateway, GATEWAY_SYSTEM, reading.gateway_id, shared=True),
        _entry(form, QUESTIONNAIRE_SYSTEM, f"{questionnaire.id}/{questionnaire.version}", shared=True),
        _entry(response, READING_SYSTEM, response_key),
        _entry(provenance, READING_SYSTEM, reading_key, param="entity:identifier"),
    ]
    _validate(where, entries)
    return entries
