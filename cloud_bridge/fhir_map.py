"""Map one accepted reading to the FHIR R4 resources the health community's record receives.

Pure functions: a `Reading` in, a list of `TransactionEntry` out, no I/O and no clock, so the
same reading always maps to the same resources with the same ids. Every entry is a conditional
create (`ifNoneExist` on a stable identifier), which is what makes a repost create nothing new.

The clinical codes live in one table, `CODES`; what a device flag means lives in another,
`FLAGS`; the way a kind becomes Observations lives in one small function per kind, registered in
`_KIND_MAPPERS`. Adding a kind is rows in `CODES` plus one function. Resources are validated with
the fhir.resources R4B models before they leave here.

Mapped kinds: bp, spo2, temperature, weight and heart_rate (a chest strap) as the FHIR R4 vital-
signs profiles (bp, oxygensat, bodytemp, bodyweight, heartrate); glucose as a laboratory
Observation coded by its unit; ECG as an EKG-study Observation with valueSampledData per lead. A
value the device could only bound (it showed HI or LO) is written as a Quantity with a
comparator, never as a plain value; a field the device sent without a number (an IEEE 11073 NaN,
NRes or infinity) is written as `dataAbsentReason` with a note naming the device's special
value, never as a number.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import uuid
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from fhir.resources.R4B.device import Device
from fhir.resources.R4B.flag import Flag as FhirFlag
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.task import Task
from pydantic import ValidationError

from cloud_bridge.alert_rules import AlertText
from contract.wire import RESIDENT_ID_SYSTEMS, Measurement, Reading

__all__ = [
    "CARE_TEAM_SYSTEM",
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
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
# The wire's absent reasons (contract.wire.ABSENT_REASONS) -> data-absent-reason code, and what
# the device said, for the note.
ABSENT: dict[str, tuple[str, str]] = {
    "nan": ("not-a-number", "the device reported NaN (not a number)"),
    "nres": ("error", "the device reported NRes (not representable at its resolution)"),
    "+inf": ("positive-infinity", "the device reported +INFINITY (above what it can represent)"),
    "-inf": ("negative-infinity", "the device reported -INFINITY (below what it can represent)"),
    "reserved": ("error", "the device sent a reserved special value"),
    "unsuccessful": ("error", "the device reported the measurement unsuccessful"),
}
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
SIGNATURE_TYPE = "urn:iso-astm:E1762-95:2013"
BP_PROFILE = "http://hl7.org/fhir/StructureDefinition/bp"
HEART_RATE_PROFILE = "http://hl7.org/fhir/StructureDefinition/heartrate"
OXYGEN_SATURATION_PROFILE = "http://hl7.org/fhir/StructureDefinition/oxygensat"
BODY_TEMPERATURE_PROFILE = "http://hl7.org/fhir/StructureDefinition/bodytemp"
BODY_WEIGHT_PROFILE = "http://hl7.org/fhir/StructureDefinition/bodyweight"
CATEGORY_DISPLAYS = {"vital-signs": "Vital Signs", "laboratory": "Laboratory", "procedure": "Procedure"}
MDC = "urn:oid:2.16.840.1.113883.6.24"  # ISO/IEEE 11073-10101 nomenclature

READING_SYSTEM = "urn:kiosk:reading"
DEVICE_SYSTEM = "urn:kiosk:device"
GATEWAY_SYSTEM = "urn:kiosk:gateway"
BATCH_SYSTEM = "urn:kiosk:batch-sha256"
ALERT_FLAG_SYSTEM = "urn:kiosk:alert-flag"  # value: gateway/seq/rule
REFERRAL_SYSTEM = "urn:kiosk:referral"  # value: gateway/seq/rule
ALERT_RULE_SYSTEM = "urn:kiosk:alert-rule"
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
CARE_TEAM_SYSTEM = "urn:kiosk:care-team"  # Task.owner of a referral: value the team's id (referral_routes)
# Alert severity -> Task.priority: the team sees "refer today" first.
TASK_PRIORITY = {"urgent": "stat", "warn": "urgent", "info": "routine"}
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
    category: str = "vital-signs"  # observation-category code of a standalone Observation
    also: tuple[tuple[str, str], ...] = ()  # further LOINC (code, display) codings of the concept


# The one table of clinical codes. Keys are the wire's measurement names, plus one key per panel
# and, where the code depends on the unit, one key per unit (glucose).
CODES: dict[str, Code] = {
    "bp_panel": Code("85354-9", "Blood pressure panel with all children optional", profile=BP_PROFILE),
    "systolic": Code("8480-6", "Systolic blood pressure", ucum="mm[Hg]", unit="mmHg"),
    "diastolic": Code("8462-4", "Diastolic blood pressure", ucum="mm[Hg]", unit="mmHg"),
    "mean_arterial": Code("8478-0", "Mean blood pressure", ucum="mm[Hg]", unit="mmHg"),
    "pulse_rate": Code("8867-4", "Heart rate", ucum="/min", unit="/min", profile=HEART_RATE_PROFILE),
    # The oxygensat profile fixes 2708-6 in Observation.code; 59408-5 says how it was measured.
    "spo2": Code(
        "2708-6",
        "Oxygen saturation in Arterial blood",
        ucum="%",
        unit="%",
        profile=OXYGEN_SATURATION_PROFILE,
        also=(("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),),
    ),
    "body_temperature": Code(
        "8310-5", "Body temperature", ucum="Cel", unit="°C", profile=BODY_TEMPERATURE_PROFILE
    ),
    "body_weight": Code("29463-7", "Body weight", ucum="kg", unit="kg", profile=BODY_WEIGHT_PROFILE),
    # Capillary glucose is not a vital sign: no profile, category laboratory, LOINC by unit.
    "glucose_molar": Code(
        "14743-9",
        "Glucose [Moles/volume] in Capillary blood by Glucometer",
        ucum="mmol/L",
        unit="mmol/L",
        category="laboratory",
    ),
    "glucose_mass": Code(
        "41653-7",
        "Glucose [Mass/volume] in Capillary blood by Glucometer",
        ucum="mg/dL",
        unit="mg/dL",
        category="laboratory",
    ),
}
CODES["ecg"] = Code("11524-6", "EKG study", category="procedure")

# ECG leads as named in device profiles -> MDC electric-potential codes (IEEE 11073-10101, as in
# the FHIR R4 EKG example: 131329 = MDC_ECG_ELEC_POTL_I). A lead not in this table is refused.
ECG_LEADS: dict[str, tuple[str, str]] = {
    "MDC_ECG_LEAD_I": ("131329", "MDC_ECG_ELEC_POTL_I"),
    "MDC_ECG_LEAD_II": ("131330", "MDC_ECG_ELEC_POTL_II"),
    "MDC_ECG_LEAD_III": ("131389", "MDC_ECG_ELEC_POTL_III"),
    "MDC_ECG_LEAD_AVR": ("131390", "MDC_ECG_ELEC_POTL_AVR"),
    "MDC_ECG_LEAD_AVL": ("131391", "MDC_ECG_ELEC_POTL_AVL"),
    "MDC_ECG_LEAD_AVF": ("131392", "MDC_ECG_ELEC_POTL_AVF"),
    **{f"MDC_ECG_LEAD_V{n}": (str(131330 + n), f"MDC_ECG_ELEC_POTL_V{n}") for n in range(1, 7)},
}

# The wire's glucose unit picks the CODES key; any other unit is refused.
_GLUCOSE_BY_UNIT = {CODES[key].ucum: key for key in ("glucose_molar", "glucose_mass")}


@dataclass(frozen=True, slots=True)
class Flag:
    """What a device flag means to a clinician.

    Every flag becomes a note on each Observation of the reading. The Observation of a value the
    flag `marks` (wire measurement names) also gets `interpretation` (a v3 ObservationInterpretation
    code and display) and, when `comparator` is set, a Quantity.comparator: the value is then the
    device's limit, not a measurement. A `refuse` flag means the reading is not a measurement of a
    resident: no resources at all, the note is the reason given.
    """

    note: str
    marks: tuple[str, ...] = ()
    interpretation: tuple[str, str] = ("A", "Abnormal")
    comparator: str | None = None
    refuse: bool = False


FLAGS: dict[str, Flag] = {
    "irregular_pulse": Flag(
        "Irregular pulse detected by the device during the measurement.", marks=("pulse_rate",)
    ),
    "body_movement": Flag("Body movement during the measurement; the values may be inaccurate."),
    "cuff_loose": Flag("The cuff was loose during the measurement; the values may be inaccurate."),
    # Weak pulsatile signal at the probe: a statement about the measurement's reliability, not an
    # assessment of the value, so a note only (an interpretation such as "A" would say the SpO2
    # itself is abnormal). It applies to the pulse rate as much as to the SpO2.
    "low_perfusion": Flag("Low perfusion (weak pulse signal) at the probe; the values may be inaccurate."),
    "unstable": Flag("The scale did not settle (the resident moved); the weight may be inaccurate."),
    "improper_position": Flag(
        "The cuff reported an improper measurement position; the values may be inaccurate."
    ),
    "pulse_above_range": Flag("The cuff reported the pulse rate above its range.", marks=("pulse_rate",)),
    "pulse_below_range": Flag("The cuff reported the pulse rate below its range.", marks=("pulse_rate",)),
    "questionable_measurement": Flag(
        "The device flagged the measurement as questionable (poor or irregular signal)."
    ),
    "lead_off": Flag("An electrode lost contact during the recording; the trace may be unusable."),
    "fasting": Flag("Fasting sample."),
    "after_meal": Flag("Sample taken after a meal."),
    # HI / LO: the reading carries the device's limit; v3 "<" / ">" are the off-scale codes.
    "above_range": Flag(
        "The device showed HI: the true value is above its measuring range.",
        marks=("glucose",),
        interpretation=(">", "Off scale high"),
        comparator=">",
    ),
    "below_range": Flag(
        "The device showed LO: the true value is below its measuring range.",
        marks=("glucose", "spo2"),
        interpretation=("<", "Off scale low"),
        comparator="<",
    ),
    # See _map_glucose for why this refuses the reading rather than mapping it without a subject.
    "control_solution": Flag(
        "control-solution result is a device check, not a resident measurement", refuse=True
    ),
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
    # `system|value` of the identifier `if_none_exist` searches for, when the mapper knows it (the
    # store then need not parse the search back); None for entries read from a posted Bundle.
    key: str | None = None
    # A resource many readings name (a resident, a peripheral, a gateway), not one reading's own.
    shared: bool = False


_MODELS: dict[str, Any] = {
    "Patient": Patient,
    "Device": Device,
    "Observation": Observation,
    "Provenance": Provenance,
    "Flag": FhirFlag,
    "Task": Task,
}


@functools.lru_cache(maxsize=65536)  # devices, gateways and residents recur in every batch
def resource_id(system: str, value: str) -> str:
    """Deterministic id from an identifier, so every replay of a reading names the same resources.

    It is `uuid.uuid5(ID_NAMESPACE, "system|value")`, computed without the UUID object (a third
    of the cost, which counts at several ids per reading); the unit tests hold it to uuid5.
    """
    digest = bytearray(hashlib.sha1(_ID_NAMESPACE_BYTES + f"{system}|{value}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_ID_NAMESPACE_BYTES = ID_NAMESPACE.bytes


def reading_resource_id(system: str, value: str, measured_at_ms: int) -> str:
    """The id of one of a reading's own resources (its Observations, its Provenance).

    Still fixed by the reading: `resource_id`'s digest, with the measurement time in its first
    48 bits (a version 8 UUID, RFC 9562's custom layout), so the ids of readings measured close
    in time sort close together. A store indexes resources by id: with ids spread at random over
    the index, every batch's new resources landed on pages all over it, which a commit then wrote
    out whole, and the bridge grew slower with every reading it held (at 100,000 readings stored,
    a third slower than with these ids).
    """
    digest = bytearray(hashlib.sha1(_ID_NAMESPACE_BYTES + f"{system}|{value}".encode()).digest()[:16])
    digest[:6] = (measured_at_ms % (1 << 48)).to_bytes(6, "big")
    digest[6] = (digest[6] & 0x0F) | 0x80  # version 8
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _escape(part: str) -> str:
    if _NEEDS_ESCAPE.search(part) is None:  # nearly always
        return part
    for char in ("\\", "|", ",", "$"):
        part = part.replace(char, "\\" + char)
    return part


_NEEDS_ESCAPE = re.compile(r"[\\|,$]")


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
    token = format_token(system, value)
    if _URL_SAFE.fullmatch(token) is None:  # `quote` would change it
        token = quote(token, safe=":/|")
    return f"{param}={token}"


_URL_SAFE = re.compile(r"[A-Za-z0-9_.~:/|-]*")  # what `quote(..., safe=":/|")` leaves as it is


def instant(ms: int) -> str:
    """Epoch milliseconds as a FHIR instant in UTC, always with milliseconds.

    Two per reading: built from the day's date (cached: a batch's readings share a few days) and
    integer arithmetic, a third of what datetime arithmetic and isoformat cost. Outside the years
    1-9999 it raises OverflowError, as datetime does.
    """
    seconds, millis = divmod(ms, 1000)
    day, second_of_day = divmod(seconds, 86_400)
    hour, second_of_hour = divmod(second_of_day, 3600)
    minute, second = divmod(second_of_hour, 60)
    return f"{_day(day)}T{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z"


@functools.lru_cache(maxsize=1024)
def _day(days_since_epoch: int) -> str:
    try:
        return date.fromordinal(_EPOCH_ORDINAL + days_since_epoch).isoformat()
    except ValueError:
        raise OverflowError("date value out of range") from None


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


# Parts every Observation of a concept repeats are built once and shared between resources: no
# code changes an entry's resource in place (the store copies it, a Bundle rewrites it).
@functools.cache
def _concept(code: Code) -> dict[str, Any]:
    codings = [(code.loinc, code.display), *code.also]
    return {"coding": [{"system": LOINC, "code": loinc, "display": display} for loinc, display in codings]}


@functools.cache
def _category(category: str) -> list[dict[str, Any]]:
    coding = {"system": OBSERVATION_CATEGORY, "code": category, "display": CATEGORY_DISPLAYS[category]}
    return [{"coding": [coding]}]


@functools.cache
def _profile_meta(profile: str) -> dict[str, Any]:
    return {"profile": [profile]}


@functools.lru_cache(maxsize=64)
def _time_quality(quality: str) -> dict[str, Any]:
    return {"extension": [{"url": TIME_QUALITY_EXTENSION, "valueCode": quality}]}


def _interpretation(flag: Flag) -> dict[str, Any]:
    code, display = flag.interpretation
    return {"coding": [{"system": INTERPRETATION, "code": code, "display": display}], "text": flag.note}


@dataclass(frozen=True, slots=True)
class _Context:
    """What every Observation of one reading shares."""

    reading: Reading
    effective: str
    subject: dict[str, str] | None
    device: dict[str, str]
    notes: list[dict[str, str]] | None  # Observation.note of every Observation of the reading

    def fail(self, message: str) -> FhirMappingError:
        return FhirMappingError(f"reading {self.reading.gateway_id}/{self.reading.seq}: {message}")

    def marking(self, name: str) -> list[Flag]:
        """The reading's flags that mark the value `name`, in the reading's order."""
        return [FLAGS[f] for f in self.reading.flags if f in FLAGS and name in FLAGS[f].marks]

    def quantity(self, measurement: Measurement, key: str | None = None) -> dict[str, Any]:
        """The value as a UCUM Quantity of CODES[key] (default: the measurement's own name)."""
        code = CODES[measurement.name if key is None else key]
        if measurement.unit != code.ucum:
            raise self.fail(f"{measurement.name} has unit {measurement.unit!r}, expected {code.ucum!r}")
        if measurement.value is None:
            raise self.fail(f"{measurement.name} has no value")
        quantity: dict[str, Any] = {"value": measurement.value}
        comparators = [f.comparator for f in self.marking(measurement.name) if f.comparator]
        if comparators:  # map_reading has refused a reading with both HI and LO
            quantity["comparator"] = comparators[0]
        quantity.update(unit=code.unit, system=UCUM, code=code.ucum)
        return quantity

    def value_fields(self, measurement: Measurement, key: str | None = None) -> dict[str, Any]:
        """{"valueQuantity": ...}, or {"dataAbsentReason": ...} for a field sent without a number."""
        if measurement.absent_reason is None:
            return {"valueQuantity": self.quantity(measurement, key)}
        code, _ = ABSENT[measurement.absent_reason]
        return {"dataAbsentReason": {"coding": [{"system": DATA_ABSENT_REASON, "code": code}]}}

    def observation(self, key: str, measurement: Measurement | None = None, **fields: Any) -> dict[str, Any]:
        """An Observation of CODES[key]; with `measurement`, its valueQuantity and interpretation."""
        code = CODES[key]
        reading_key = f"{self.reading.gateway_id}/{self.reading.seq}/{code.loinc}"
        resource: dict[str, Any] = {
            "resourceType": "Observation",
            "id": reading_resource_id(READING_SYSTEM, reading_key, self.reading.measured_at_ms),
            "identifier": [{"system": READING_SYSTEM, "value": reading_key}],
            "status": "final",
            "category": _category(code.category),
            "code": _concept(code),
            "effectiveDateTime": self.effective,
            "_effectiveDateTime": _time_quality(self.reading.time_quality),
            "device": self.device,
        }
        if code.profile is not None:
            resource["meta"] = _profile_meta(code.profile)
        if self.subject is not None:
            resource["subject"] = self.subject
        if self.notes:
            resource["note"] = self.notes
        if measurement is not None:
            resource.update(self.value_fields(measurement, key))
            marking = self.marking(measurement.name)
            if marking and measurement.value is not None:
                resource["interpretation"] = [_interpretation(flag) for flag in marking]
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

    def check_flags(self) -> None:
        """Refuse a flag that says the reading is no resident's, and a HI/LO with nothing to bound."""
        flags = [(name, FLAGS[name]) for name in self.reading.flags if name in FLAGS]
        refused = next((flag for _, flag in flags if flag.refuse), None)
        if refused is not None:
            raise self.fail(refused.note)
        names = {m.name for m in self.reading.values}
        bounds = [name for name, flag in flags if flag.comparator]
        if len(set(bounds)) > 1:
            raise self.fail(f"flags {sorted(set(bounds))} contradict each other")
        for name in bounds:
            if not names & set(FLAGS[name].marks):
                # The value is the device's limit; written plainly it would be a false measurement.
                raise self.fail(f"{name} flag on a {self.reading.kind} reading with no value it can bound")


def _heart_rate(ctx: _Context) -> list[dict[str, Any]]:
    """The heartrate-profile Observation of the reading's pulse_rate, if it has one."""
    pulse = ctx.reading.value("pulse_rate")
    return [] if pulse is None else [ctx.observation("pulse_rate", pulse)]


def _map_bp(ctx: _Context) -> list[dict[str, Any]]:
    """One BP panel (systolic, diastolic, mean if present) and, if present, one heart rate."""
    ctx.check_names(("systolic", "diastolic", "mean_arterial", "pulse_rate"))
    parts = [ctx.require("systolic"), ctx.require("diastolic"), ctx.reading.value("mean_arterial")]
    components = [{"code": _concept(CODES[m.name]), **ctx.value_fields(m)} for m in parts if m is not None]
    return [ctx.observation("bp_panel", component=components), *_heart_rate(ctx)]


def _map_heart_rate(ctx: _Context) -> list[dict[str, Any]]:
    """One heartrate Observation (8867-4) from a heart-rate sensor's pulse_rate."""
    ctx.check_names(("pulse_rate",))
    return [ctx.observation("pulse_rate", ctx.require("pulse_rate"))]


def _map_spo2(ctx: _Context) -> list[dict[str, Any]]:
    """One oxygensat Observation (2708-6 with 59408-5) and, if present, one heart rate."""
    ctx.check_names(("spo2", "pulse_rate"))
    return [ctx.observation("spo2", ctx.require("spo2")), *_heart_rate(ctx)]


def _map_temperature(ctx: _Context) -> list[dict[str, Any]]:
    """One bodytemp Observation in Cel, the device's digits kept exactly."""
    ctx.check_names(("body_temperature",))
    return [ctx.observation("body_temperature", ctx.require("body_temperature"))]


def _map_weight(ctx: _Context) -> list[dict[str, Any]]:
    """One bodyweight Observation in kg."""
    ctx.check_names(("body_weight",))
    return [ctx.observation("body_weight", ctx.require("body_weight"))]


def _map_glucose(ctx: _Context) -> list[dict[str, Any]]:
    """One capillary glucose Observation, category laboratory, LOINC chosen by the unit.

    mmol/L is 14743-9 and mg/dL 41653-7; any other unit is refused rather than converted, since
    the record must hold what the meter showed. HI / LO arrive as the meter's limit with
    above_range / below_range and become a Quantity with comparator ">" / "<" (see FLAGS).

    Control solution. A reading flagged control_solution is refused by map_reading (before this
    function runs) with "control-solution result is a device check, not a resident measurement",
    so the bridge keeps it as a dead letter with that reason and nothing reaches the health
    record. The alternative, an Observation without subject (or with the meter as subject), was
    considered and not chosen: the record is the residents' record, and a population query on
    14743-9 that forgot to exclude such results would count a control solution as someone's
    blood glucose. Quality-control history of the meters belongs with the device fleet, not here;
    refusing is also the reversible choice, since dead letters can be mapped later and posted
    records cannot be taken back.
    """
    ctx.check_names(("glucose",))
    glucose = ctx.require("glucose")
    key = _GLUCOSE_BY_UNIT.get(glucose.unit)
    if key is None:
        expected = ", ".join(repr(unit) for unit in _GLUCOSE_BY_UNIT)
        raise ctx.fail(f"glucose has unit {glucose.unit!r}, expected one of {expected}")
    return [ctx.observation(key, glucose)]


def _map_ecg(ctx: _Context) -> list[dict[str, Any]]:
    """One EKG-study Observation with a valueSampledData component per lead.

    Samples stay the device's integers: value = origin + factor * sample, in µV (UCUM "uV"),
    one sample every 1000 / rate ms, so nothing is rounded on the way into the record.
    """
    wave = ctx.reading.waveform
    if wave is None:
        raise ctx.fail("ecg reading has no waveform")
    if ctx.reading.values:
        raise ctx.fail("ecg reading carries scalar values the mapping does not know")
    components = []
    for lead, samples in zip(wave.leads, wave.samples, strict=True):
        if lead not in ECG_LEADS:
            raise ctx.fail(f"ECG lead {lead!r} has no MDC code in ECG_LEADS")
        code, display = ECG_LEADS[lead]
        components.append(
            {
                "code": {"coding": [{"system": MDC, "code": code, "display": display}]},
                "valueSampledData": {
                    "origin": {"value": 0, "unit": "µV", "system": UCUM, "code": "uV"},
                    "period": Decimal(1000) / wave.sample_rate_hz,
                    "factor": wave.resolution_uv,
                    "dimensions": 1,
                    "data": " ".join(str(sample) for sample in samples),
                },
            }
        )
    return [ctx.observation("ecg", component=components)]


_KIND_MAPPERS: dict[str, Callable[[_Context], list[dict[str, Any]]]] = {
    "bp": _map_bp,
    "heart_rate": _map_heart_rate,
    "ecg": _map_ecg,
    "spo2": _map_spo2,
    "temperature": _map_temperature,
    "weight": _map_weight,
    "glucose": _map_glucose,
}
# Kinds whose mapping `_reading_shape` describes fully (see there); others are validated every time.
_KINDS_BY_SHAPE = frozenset(("bp", "heart_rate", "ecg", "spo2", "temperature", "weight", "glucose"))


def _flag_note(flag: str, alerts: Sequence[AlertText]) -> str:
    if flag in FLAGS:
        return FLAGS[flag].note
    if flag.startswith("alert:"):
        alert = next((a for a in alerts if a.rule_id == flag.removeprefix("alert:")), None)
        if alert is not None:
            return f"Alert: {alert.message_en} / {alert.message_zh}"
        return f"Alert raised by the gateway: {flag.removeprefix('alert:')}"
    if flag.startswith("implausible:"):
        field = flag.removeprefix("implausible:")
        return f"{field} is outside the device's plausible range; kept as measured, please check it."
    return f"Device flag: {flag}"


def _alert_entries(
    alert: AlertText, reading_key: str, subject: dict[str, Any], observation: dict[str, Any], when: str
) -> list[TransactionEntry]:
    """A Flag on the resident and a referral Task for the alert's care team, for one alert."""
    key = f"{reading_key}/{alert.rule_id}"
    rule = {"system": ALERT_RULE_SYSTEM, "code": alert.rule_id}
    flag = {
        "resourceType": "Flag",
        "id": resource_id(ALERT_FLAG_SYSTEM, key),
        "identifier": [{"system": ALERT_FLAG_SYSTEM, "value": key}],
        "status": "active",
        "category": [{"coding": [{"system": FLAG_CATEGORY, "code": "clinical", "display": "Clinical"}]}],
        "code": {"coding": [rule], "text": f"{alert.message_zh} / {alert.message_en}"},
        "subject": dict(subject),
        "period": {"start": when},
    }
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": resource_id(REFERRAL_SYSTEM, key),
        "identifier": [{"system": REFERRAL_SYSTEM, "value": key}],
        "status": "requested",
        "intent": "order",
        "priority": TASK_PRIORITY.get(alert.severity, "urgent"),
        "code": {"text": "Referral (转诊)"},
        "focus": {"reference": f"Observation/{observation['id']}"},
        "for": dict(subject),
        "authoredOn": when,
        "reasonCode": {"coding": [rule], "text": f"{alert.message_zh} / {alert.message_en}"},
    }
    if alert.team is not None:  # a logical reference: the team's id and names, from referral_routes
        team_id = {"system": CARE_TEAM_SYSTEM, "value": alert.team.id}
        task["owner"] = {"identifier": team_id, "display": alert.team.display}
    if alert.referral_zh or alert.referral_en:
        task["description"] = f"{alert.referral_zh}\n{alert.referral_en}".strip()
    return [_entry(flag, ALERT_FLAG_SYSTEM, key), _entry(task, REFERRAL_SYSTEM, key)]


def _entry(
    resource: dict[str, Any], system: str, value: str, param: str = "identifier", *, shared: bool = False
) -> TransactionEntry:
    return TransactionEntry(
        resource["resourceType"], resource, _if_none_exist(param, system, value), f"{system}|{value}", shared
    )


# Residents, peripherals and gateways recur across readings and batches: their entries are built
# and validated once, then shared (entries are never changed in place; the store copies).
@functools.lru_cache(maxsize=16384)
def _patient_entry(system: str, value: str) -> TransactionEntry:
    patient = {
        "resourceType": "Patient",
        "id": resource_id(system, value),
        "identifier": [{"system": system, "value": value}],
    }
    return _checked(_entry(patient, system, value, shared=True), ("Patient", system), value)


@functools.lru_cache(maxsize=4096)
def _device_entry(device_id: str, model: str, firmware: str) -> TransactionEntry:
    peripheral: dict[str, Any] = {
        "resourceType": "Device",
        "id": resource_id(DEVICE_SYSTEM, device_id),
        "identifier": [{"system": DEVICE_SYSTEM, "value": device_id}],
    }
    if model:  # FHIR has no empty strings; an unknown model is simply absent
        peripheral["modelNumber"] = model
    if firmware:
        peripheral["version"] = [{"type": {"text": "firmware"}, "value": firmware}]
    return _checked(
        _entry(peripheral, DEVICE_SYSTEM, device_id, shared=True),
        ("Device", bool(model), bool(firmware)),
        device_id,
        model,
        firmware,
    )


@functools.lru_cache(maxsize=4096)
def _gateway_entry(gateway_id: str) -> TransactionEntry:
    gateway = {
        "resourceType": "Device",
        "id": resource_id(GATEWAY_SYSTEM, gateway_id),
        "identifier": [{"system": GATEWAY_SYSTEM, "value": gateway_id}],
        "type": {"text": "Health kiosk gateway"},
    }
    return _checked(_entry(gateway, GATEWAY_SYSTEM, gateway_id, shared=True), ("gateway",), gateway_id)


class _InvalidResource(Exception):
    """A resource fhir.resources refuses; map_reading names the reading it came from."""


def _checked(entry: TransactionEntry, shape: Hashable, *texts: str) -> TransactionEntry:
    """Validate `entry` unless one of the same `shape` was, and `texts` (its strings from the
    reading; an empty one is left out of the resource) are plain. See `_reading_shape`."""
    if VALIDATE_EVERY_RESOURCE or shape not in _VALID_SHAPES or not all(_plain(t) for t in texts if t):
        _validate([entry])
        if all(_plain(t) for t in texts if t) and len(_VALID_SHAPES) < _MAX_SHAPES:
            _VALID_SHAPES.add(shape)
    return entry


def _plain(text: str) -> bool:
    return bool(text) and text.isprintable() and text.strip() == text


def _validate(entries: list[TransactionEntry]) -> None:
    """Validate each resource with fhir.resources; raise `_InvalidResource` naming what is wrong."""
    for entry in entries:
        try:
            _MODELS[entry.resource_type].model_validate(entry.resource)
        except ValidationError as exc:
            # Locations and messages only: the input values may hold a resident identifier.
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise _InvalidResource(f"invalid {entry.resource_type}: {detail}") from None


def _reading_shape(reading: Reading, alerts: Sequence[AlertText], signed: bool) -> Hashable | None:
    """What decides the structure of a reading's own resources, or None to validate them anyway.

    The running bridge validates a reading's resources with fhir.resources only for the first
    reading of each shape: validating every resource costs over 1 ms a reading, most of the
    bridge's time. Readings of one shape map to resources that differ only in leaf values, and
    every leaf comes from a typed, checked field (a finite Decimal, an instant formatted here, a
    code from a table, an id made by `resource_id`) or from a string of the reading that is
    checked here to be plain (not empty, not padded, printable). A kind this function does not
    know is validated every time. tests/unit/test_fhir_validation_cache.py checks, on generated
    readings, that one shape here means one JSON shape out; the other tests validate every
    resource they map (`VALIDATE_EVERY_RESOURCE`).
    """
    if reading.kind not in _KINDS_BY_SHAPE:
        return None
    texts = [reading.gateway_id, *reading.flags]
    for alert in alerts:
        texts += (alert.rule_id, alert.message_zh, alert.message_en)
        texts += [text for text in (alert.referral_zh, alert.referral_en) if text]
        if alert.team is not None:
            texts += (alert.team.id, alert.team.display)
    if not all(_plain(text) for text in texts):
        return None
    values = []
    for m in reading.values:
        if m.value is not None and not m.value.is_finite():
            return None
        values.append((m.name, m.unit, m.absent_reason))
    wave = reading.waveform
    wave_shape = None
    if wave is not None:
        if not wave.resolution_uv.is_finite() or not all(wave.samples):
            return None
        wave_shape = (wave.leads, wave.sample_rate_hz)
    alert_shapes = tuple(
        (a.rule_id, a.severity, bool(a.referral_zh), bool(a.referral_en), a.team is not None) for a in alerts
    )
    resident = None if reading.resident is None else reading.resident.system
    return (
        reading.kind, tuple(values), reading.flags, reading.time_quality, resident, wave_shape,
        alert_shapes, signed,
    )  # fmt: skip


VALIDATE_EVERY_RESOURCE = False
_VALID_SHAPES: set[Hashable] = set()
_MAX_SHAPES = 4096  # a few dozen in practice (kinds x flags x with/without resident)


def provenance_resource(
    reading_key: str,
    *,
    measured_at_ms: int,
    targets: list[str],
    occurred: str,
    recorded: str,
    gateway_id: str,
    batch_hash: bytes,
    gateway_signature: bytes | None,
) -> dict[str, Any]:
    """The Provenance of one reading's resources (`targets`): assembled by the gateway (Device
    `gateway_id`), from the reading `reading_key` of the signed batch `batch_hash`, with the
    gateway's signature over that batch when given."""
    gateway_ref = {"reference": f"Device/{gateway_id}"}
    signature: dict[str, Any] = {
        "type": _SOURCE_SIGNATURE,
        "when": recorded,
        "who": dict(gateway_ref),
        "sigFormat": SIGNATURE_FORMAT,
    }
    if gateway_signature is not None:
        signature["data"] = _base64(gateway_signature)
    return {
        "resourceType": "Provenance",
        "id": reading_resource_id(READING_SYSTEM, reading_key, measured_at_ms),
        "target": [{"reference": target} for target in targets],
        "occurredDateTime": occurred,
        "recorded": recorded,
        "activity": _CREATE,
        "agent": [{"type": _ASSEMBLER, "who": gateway_ref}],
        "entity": [
            {"role": "source", "what": {"identifier": {"system": READING_SYSTEM, "value": reading_key}}},
            _batch_entity(batch_hash),
        ],
        "signature": [signature],
    }


# What every reading's Provenance repeats, built once and shared (as `_concept`); the batch's
# parts once per batch.
_SOURCE_SIGNATURE = [
    {"system": SIGNATURE_TYPE, "code": "1.2.840.10065.1.12.1.14", "display": "Source Signature"}
]
_CREATE = {"coding": [{"system": DATA_OPERATION, "code": "CREATE", "display": "create"}]}
_ASSEMBLER = {"coding": [{"system": PARTICIPANT_TYPE, "code": "assembler", "display": "Assembler"}]}


@functools.lru_cache(maxsize=64)
def _batch_entity(batch_hash: bytes) -> dict[str, Any]:
    return {"role": "source", "what": {"identifier": {"system": BATCH_SYSTEM, "value": batch_hash.hex()}}}


@functools.lru_cache(maxsize=64)
def _base64(signature: bytes) -> str:
    return base64.b64encode(signature).decode("ascii")


def map_reading(
    reading: Reading,
    *,
    batch_hash: bytes,
    gateway_signature: bytes | None = None,
    recorded_at_ms: int | None = None,
    alerts: Sequence[AlertText] = (),
) -> list[TransactionEntry]:
    """Resources for one reading, in the order they must be applied.

    Patient (if the reading names a resident), the peripheral Device, the gateway Device, the
    Observations, for each alert the gateway raised (`alerts`, in words) a Flag on the resident
    and a referral Task owned by the alert's care team, then a Provenance that ties them to the signed
    batch. `recorded_at_ms` is when
    the bridge recorded the reading (Provenance.recorded); it defaults to the measurement time so
    that, without it, the output depends on the reading alone.
    """
    if reading.kind == "questionnaire":  # answers, not measurements: cloud_bridge/fhir_questionnaire.py
        from cloud_bridge.fhir_questionnaire import map_questionnaire

        return map_questionnaire(
            reading, batch_hash=batch_hash, gateway_signature=gateway_signature, recorded_at_ms=recorded_at_ms
        )
    where = f"reading {reading.gateway_id}/{reading.seq}"
    mapper = _KIND_MAPPERS.get(reading.kind)
    if mapper is None:
        raise FhirMappingError(f"{where}: kind {reading.kind} not mapped yet")
    if len(batch_hash) != 32:
        raise FhirMappingError(f"{where}: batch hash must be 32 bytes, got {len(batch_hash)}")
    try:
        effective = instant(reading.measured_at_ms)
        recorded = instant(reading.measured_at_ms if recorded_at_ms is None else recorded_at_ms)
    except OverflowError:
        raise FhirMappingError(f"{where}: time out of range") from None

    shared: list[TransactionEntry] = []
    subject = None
    try:
        if reading.resident is not None:
            patient = _patient_entry(RESIDENT_ID_SYSTEMS[reading.resident.system], reading.resident.value)
            shared.append(patient)
            subject = {"reference": f"Patient/{patient.resource['id']}"}
        peripheral = _device_entry(reading.device.id, reading.device.model, reading.device.firmware)
        gateway = _gateway_entry(reading.gateway_id)
    except _InvalidResource as exc:
        raise FhirMappingError(f"{where}: {exc}") from None
    shared += (peripheral, gateway)
    entries: list[TransactionEntry] = []  # this reading's own resources

    notes = [UNSYNCED_NOTE] if reading.time_quality == "unsynced" else []
    notes += [_flag_note(f, alerts) for f in reading.flags]
    notes += [f"{m.name}: no value, {ABSENT[m.absent_reason][1]}." for m in reading.values if m.absent_reason]
    ctx = _Context(
        reading=reading,
        effective=effective,
        subject=subject,
        device={"reference": f"Device/{peripheral.resource['id']}"},
        notes=[{"text": text} for text in notes] or None,
    )
    ctx.check_flags()
    observations = mapper(ctx)
    for observation in observations:
        identifier = observation["identifier"][0]
        entries.append(_entry(observation, identifier["system"], identifier["value"]))

    reading_key = f"{reading.gateway_id}/{reading.seq}"
    if subject is not None and observations:
        for alert in alerts:
            entries.extend(_alert_entries(alert, reading_key, subject, observations[0], effective))
    provenance = provenance_resource(
        reading_key,
        measured_at_ms=reading.measured_at_ms,
        targets=[f"Observation/{o['id']}" for o in observations],
        occurred=effective,
        recorded=recorded,
        gateway_id=gateway.resource["id"],
        batch_hash=batch_hash,
        gateway_signature=gateway_signature,
    )
    # Provenance has no identifier element: it is found again by the reading it came from.
    entries.append(_entry(provenance, READING_SYSTEM, reading_key, param="entity:identifier"))

    shape = (
        None if VALIDATE_EVERY_RESOURCE else _reading_shape(reading, alerts, gateway_signature is not None)
    )
    if shape is None or shape not in _VALID_SHAPES:
        try:
            _validate(entries)  # the shared ones were validated when built
        except _InvalidResource as exc:
            raise FhirMappingError(f"{where}: {exc}") from None
        if shape is not None and len(_VALID_SHAPES) < _MAX_SHAPES:
            _VALID_SHAPES.add(shape)
    return shared + entries
