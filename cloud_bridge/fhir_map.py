"""Map one accepted reading to the FHIR R4 resources the health community's record receives.

Pure functions: a `Reading` in, a list of `TransactionEntry` out, no I/O and no clock, so the
same reading always maps to the same resources with the same ids. Every entry is a conditional
create (`ifNoneExist` on a stable identifier), which is what makes a repost create nothing new.

The clinical codes live in one table, `CODES`; the way a kind becomes Observations lives in one
small function per kind, registered in `_KIND_MAPPERS`. Adding a kind is rows in `CODES` plus
one function. Resources are validated with the fhir.resources R4B models before they leave here.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from fhir.resources.R4B.device import Device
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.provenance import Provenance
from pydantic import ValidationError

from contract.wire import RESIDENT_ID_SYSTEMS, Measurement, Reading

__all__ = [
    "CODES",
    "DEVICE_SYSTEM",
    "FLAGS",
    "GATEWAY_SYSTEM",
    "ID_NAMESPACE",
    "READING_SYSTEM",
    "Code",
    "FhirMappingError",
    "Flag",
    "TransactionEntry",
    "format_token",
    "map_reading",
    "parse_token",
    "resource_id",
]

# Never change: every resource id the bridge has ever written derives from it.
ID_NAMESPACE = uuid.UUID("b3ef8c0d-e43e-4ee2-9202-5ee2196eca72")

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
SIGNATURE_TYPE = "urn:iso-astm:E1762-95:2013"
BP_PROFILE = "http://hl7.org/fhir/StructureDefinition/bp"
HEART_RATE_PROFILE = "http://hl7.org/fhir/StructureDefinition/heartrate"

READING_SYSTEM = "urn:kiosk:reading"
DEVICE_SYSTEM = "urn:kiosk:device"
GATEWAY_SYSTEM = "urn:kiosk:gateway"
BATCH_SYSTEM = "urn:kiosk:batch-sha256"
TIME_QUALITY_EXTENSION = "urn:kiosk:fhir:time-quality"
SIGNATURE_FORMAT = "application/cbor+ed25519"


@dataclass(frozen=True, slots=True)
class Code:
    """A concept the bridge emits: its LOINC code and, for a quantity, the UCUM unit it must carry."""

    loinc: str
    display: str
    ucum: str | None = None  # the reading's unit must equal this UCUM code
    unit: str | None = None  # human-readable unit written to Quantity.unit
    profile: str | None = None  # FHIR profile of a standalone Observation of this concept


# The one table of clinical codes. Keys are the wire's measurement names, plus one key per panel.
CODES: dict[str, Code] = {
    "bp_panel": Code("85354-9", "Blood pressure panel with all children optional", profile=BP_PROFILE),
    "systolic": Code("8480-6", "Systolic blood pressure", ucum="mm[Hg]", unit="mmHg"),
    "diastolic": Code("8462-4", "Diastolic blood pressure", ucum="mm[Hg]", unit="mmHg"),
    "mean_arterial": Code("8478-0", "Mean blood pressure", ucum="mm[Hg]", unit="mmHg"),
    "pulse_rate": Code("8867-4", "Heart rate", ucum="/min", unit="/min", profile=HEART_RATE_PROFILE),
}


@dataclass(frozen=True, slots=True)
class Flag:
    """What a device flag means to a clinician; `abnormal` names the CODES key it marks abnormal."""

    note: str
    abnormal: str | None = None


FLAGS: dict[str, Flag] = {
    "irregular_pulse": Flag("Irregular pulse detected by the device during the measurement.", "pulse_rate"),
    "body_movement": Flag("Body movement during the measurement; the values may be inaccurate."),
    "cuff_loose": Flag("The cuff was loose during the measurement; the values may be inaccurate."),
}
UNSYNCED_NOTE = "Measurement time comes from an unsynchronised clock and may be wrong."


class FhirMappingError(ValueError):
    """A reading that cannot become valid FHIR resources; the message names gateway and sequence."""


@dataclass(frozen=True, slots=True)
class TransactionEntry:
    """One conditional create: the resource, and the search that finds it if it already exists."""

    resource_type: str
    resource: dict[str, Any]
    if_none_exist: str


_MODELS: dict[str, Any] = {
    "Patient": Patient,
    "Device": Device,
    "Observation": Observation,
    "Provenance": Provenance,
}


def resource_id(system: str, value: str) -> str:
    """Deterministic id from an identifier, so every replay of a reading names the same resources."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{system}|{value}"))


def _escape(part: str) -> str:
    for char in ("\\", "|", ",", "$"):
        part = part.replace(char, "\\" + char)
    return part


def format_token(system: str, value: str) -> str:
    """FHIR token search value `system|value`, escaping the characters search syntax reserves."""
    return f"{_escape(system)}|{_escape(value)}"


def parse_token(token: str) -> tuple[str, str]:
    """Inverse of `format_token`; only the exact `system|value` form (no OR lists) is accepted."""
    parts: list[str] = [""]
    chars = iter(token)
    for char in chars:
        if char == "\\":
            parts[-1] += next(chars, "")
        elif char == "|" and len(parts) == 1:
            parts.append("")
        elif char in "|,$":
            raise ValueError(f"unsupported token syntax {char!r}")
        else:
            parts[-1] += char
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ValueError("expected a token of the form system|value")
    return parts[0], parts[1]


def _if_none_exist(param: str, system: str, value: str) -> str:
    return f"{param}={quote(format_token(system, value), safe=':/|')}"


def _instant(ms: int) -> str:
    """Epoch milliseconds as a FHIR instant in UTC, always with milliseconds."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _concept(code: Code) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code.loinc, "display": code.display}]}


@dataclass(frozen=True, slots=True)
class _Context:
    """What every Observation of one reading shares."""

    reading: Reading
    effective: str
    subject: dict[str, str] | None
    device: dict[str, str]
    notes: tuple[str, ...]

    def fail(self, message: str) -> FhirMappingError:
        return FhirMappingError(f"reading {self.reading.gateway_id}/{self.reading.seq}: {message}")

    def quantity(self, measurement: Measurement) -> dict[str, Any]:
        code = CODES[measurement.name]
        if measurement.unit != code.ucum:
            raise self.fail(f"{measurement.name} has unit {measurement.unit!r}, expected {code.ucum!r}")
        if not measurement.value.is_finite():
            raise self.fail(f"{measurement.name} is not a finite number")
        return {"value": measurement.value, "unit": code.unit, "system": UCUM, "code": code.ucum}

    def observation(self, key: str, **fields: Any) -> dict[str, Any]:
        code = CODES[key]
        reading_key = f"{self.reading.gateway_id}/{self.reading.seq}/{code.loinc}"
        resource: dict[str, Any] = {
            "resourceType": "Observation",
            "id": resource_id(READING_SYSTEM, reading_key),
            "identifier": [{"system": READING_SYSTEM, "value": reading_key}],
            "status": "final",
            "category": [
                {
                    "coding": [
                        {"system": OBSERVATION_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}
                    ]
                }
            ],
            "code": _concept(code),
            "effectiveDateTime": self.effective,
            "_effectiveDateTime": {
                "extension": [{"url": TIME_QUALITY_EXTENSION, "valueCode": self.reading.time_quality}]
            },
            "device": dict(self.device),
        }
        if code.profile is not None:
            resource["meta"] = {"profile": [code.profile]}
        if self.subject is not None:
            resource["subject"] = dict(self.subject)
        if self.notes:
            resource["note"] = [{"text": text} for text in self.notes]
        abnormal = [f for f in self.reading.flags if f in FLAGS and FLAGS[f].abnormal == key]
        if abnormal:
            resource["interpretation"] = [
                {
                    "coding": [{"system": INTERPRETATION, "code": "A", "display": "Abnormal"}],
                    "text": " ".join(FLAGS[f].note for f in abnormal),
                }
            ]
        resource.update(fields)
        return resource

    def require(self, name: str) -> Measurement:
        measurement = self.reading.value(name)
        if measurement is None:
            raise self.fail(f"{self.reading.kind} reading has no {name}")
        return measurement

    def check_names(self, allowed: tuple[str, ...]) -> None:
        names = [m.name for m in self.reading.values]
        unknown = sorted(set(names) - set(allowed))
        if unknown:
            raise self.fail(f"{self.reading.kind} reading has unmapped values {unknown}")
        if len(names) != len(set(names)):
            raise self.fail("reading repeats a measurement name")


def _map_bp(ctx: _Context) -> list[dict[str, Any]]:
    """One BP panel (systolic, diastolic, mean if present) and, if present, one heart rate."""
    ctx.check_names(("systolic", "diastolic", "mean_arterial", "pulse_rate"))
    parts = [ctx.require("systolic"), ctx.require("diastolic"), ctx.reading.value("mean_arterial")]
    components = [
        {"code": _concept(CODES[m.name]), "valueQuantity": ctx.quantity(m)} for m in parts if m is not None
    ]
    observations = [ctx.observation("bp_panel", component=components)]
    pulse = ctx.reading.value("pulse_rate")
    if pulse is not None:
        observations.append(ctx.observation("pulse_rate", valueQuantity=ctx.quantity(pulse)))
    return observations


_KIND_MAPPERS: dict[str, Callable[[_Context], list[dict[str, Any]]]] = {
    "bp": _map_bp,
}


def _entry(resource: dict[str, Any], system: str, value: str, param: str = "identifier") -> TransactionEntry:
    return TransactionEntry(resource["resourceType"], resource, _if_none_exist(param, system, value))


def _validate(reading: Reading, entries: list[TransactionEntry]) -> None:
    for entry in entries:
        try:
            _MODELS[entry.resource_type].model_validate(entry.resource)
        except ValidationError as exc:
            # Locations and messages only: the input values may hold a resident identifier.
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise FhirMappingError(
                f"reading {reading.gateway_id}/{reading.seq}: invalid {entry.resource_type}: {detail}"
            ) from None


def map_reading(
    reading: Reading,
    *,
    batch_hash: bytes,
    gateway_signature: bytes | None = None,
    recorded_at_ms: int | None = None,
) -> list[TransactionEntry]:
    """Resources for one reading, in the order they must be applied.

    Patient (if the reading names a resident), the peripheral Device, the gateway Device, the
    Observations, then a Provenance that ties them to the signed batch. `recorded_at_ms` is when
    the bridge recorded the reading (Provenance.recorded); it defaults to the measurement time so
    that, without it, the output depends on the reading alone.
    """
    where = f"reading {reading.gateway_id}/{reading.seq}"
    mapper = _KIND_MAPPERS.get(reading.kind)
    if mapper is None:
        raise FhirMappingError(f"{where}: kind {reading.kind} not mapped yet")
    if len(batch_hash) != 32:
        raise FhirMappingError(f"{where}: batch hash must be 32 bytes, got {len(batch_hash)}")
    try:
        effective = _instant(reading.measured_at_ms)
        recorded = _instant(reading.measured_at_ms if recorded_at_ms is None else recorded_at_ms)
    except OverflowError:
        raise FhirMappingError(f"{where}: time out of range") from None

    entries: list[TransactionEntry] = []
    subject = None
    if reading.resident is not None:
        system, value = RESIDENT_ID_SYSTEMS[reading.resident.system], reading.resident.value
        patient = {
            "resourceType": "Patient",
            "id": resource_id(system, value),
            "identifier": [{"system": system, "value": value}],
        }
        entries.append(_entry(patient, system, value))
        subject = {"reference": f"Patient/{patient['id']}"}

    peripheral: dict[str, Any] = {
        "resourceType": "Device",
        "id": resource_id(DEVICE_SYSTEM, reading.device.id),
        "identifier": [{"system": DEVICE_SYSTEM, "value": reading.device.id}],
    }
    if reading.device.model:  # FHIR has no empty strings; an unknown model is simply absent
        peripheral["modelNumber"] = reading.device.model
    if reading.device.firmware:
        peripheral["version"] = [{"type": {"text": "firmware"}, "value": reading.device.firmware}]
    gateway = {
        "resourceType": "Device",
        "id": resource_id(GATEWAY_SYSTEM, reading.gateway_id),
        "identifier": [{"system": GATEWAY_SYSTEM, "value": reading.gateway_id}],
        "type": {"text": "Health kiosk gateway"},
    }
    entries.append(_entry(peripheral, DEVICE_SYSTEM, reading.device.id))
    entries.append(_entry(gateway, GATEWAY_SYSTEM, reading.gateway_id))

    notes = [UNSYNCED_NOTE] if reading.time_quality == "unsynced" else []
    notes += [FLAGS[f].note if f in FLAGS else f"Device flag: {f}" for f in reading.flags]
    ctx = _Context(
        reading=reading,
        effective=effective,
        subject=subject,
        device={"reference": f"Device/{peripheral['id']}"},
        notes=tuple(notes),
    )
    observations = mapper(ctx)
    for observation in observations:
        identifier = observation["identifier"][0]
        entries.append(_entry(observation, identifier["system"], identifier["value"]))

    reading_key = f"{reading.gateway_id}/{reading.seq}"
    gateway_ref = {"reference": f"Device/{gateway['id']}"}
    signature: dict[str, Any] = {
        "type": [
            {"system": SIGNATURE_TYPE, "code": "1.2.840.10065.1.12.1.14", "display": "Source Signature"}
        ],
        "when": recorded,
        "who": dict(gateway_ref),
        "sigFormat": SIGNATURE_FORMAT,
    }
    if gateway_signature is not None:
        signature["data"] = base64.b64encode(gateway_signature).decode("ascii")
    provenance = {
        "resourceType": "Provenance",
        "id": resource_id(READING_SYSTEM, reading_key),
        "target": [{"reference": f"Observation/{o['id']}"} for o in observations],
        "occurredDateTime": effective,
        "recorded": recorded,
        "activity": {"coding": [{"system": DATA_OPERATION, "code": "CREATE", "display": "create"}]},
        "agent": [
            {
                "type": {
                    "coding": [{"system": PARTICIPANT_TYPE, "code": "assembler", "display": "Assembler"}]
                },
                "who": gateway_ref,
            }
        ],
        "entity": [
            {"role": "source", "what": {"identifier": {"system": READING_SYSTEM, "value": reading_key}}},
            {"role": "source", "what": {"identifier": {"system": BATCH_SYSTEM, "value": batch_hash.hex()}}},
        ],
        "signature": [signature],
    }
    # Provenance has no identifier element: it is found again by the reading it came from.
    entries.append(_entry(provenance, READING_SYSTEM, reading_key, param="entity:identifier"))

    _validate(reading, entries)
    return entries
