"""map_reading for spo2, temperature, weight and glucose: each fixed reading against the whole
Observation written out by hand.

Where the values come from: the FHIR R4 vital-signs profiles (oxygensat: 2708-6 fixed in
Observation.code, here with 59408-5 beside it; bodytemp: 8310-5 in Cel; bodyweight: 29463-7 in
kg; heartrate: 8867-4 in /min), LOINC long names (14743-9 and 41653-7, capillary glucose by
glucometer, molar and mass), the observation-category and v3 ObservationInterpretation code
systems, and Quantity.comparator for a value the device could only bound (HI / LO).
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from cloud_bridge.fhir_map import FhirMappingError, map_reading
from contract.wire import DeviceRef, Measurement, Reading, ResidentRef
from tests.unit.fhir_ids import reading_uid as _reading_uid
from tests.unit.fhir_ids import uid

GATEWAY = "gw-zj-0042"
SEQ = 2310
RESIDENT = "330781-2026-000123"
PATIENT = {"reference": f"Patient/{uid(f'urn:kiosk:sid:resident-health-record|{RESIDENT}')}"}
# 2026-03-14 08:30:15.250 UTC (16:30 in Beijing).
MEASURED_AT_MS = 1_773_477_015_250
EFFECTIVE = "2026-03-14T08:30:15.250Z"


def reading_uid(name: str) -> str:
    return _reading_uid(name, MEASURED_AT_MS)


BATCH_HASH = bytes(range(32))
TIME_NTP = {"extension": [{"url": "urn:kiosk:fhir:time-quality", "valueCode": "ntp"}]}
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
VITAL_SIGNS = [{"coding": [{"system": CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}]
LABORATORY = [{"coding": [{"system": CATEGORY, "code": "laboratory", "display": "Laboratory"}]}]


def reading(device_id: str, model: str, kind: str, *values: Measurement, **changes: object) -> Reading:
    base = Reading(
        gateway_id=GATEWAY,
        seq=SEQ,
        device=DeviceRef(id=device_id, model=model, firmware="0.1.0"),
        kind=kind,
        values=values,
        measured_at_ms=MEASURED_AT_MS,
        time_quality="ntp",
        received_mono_ms=91_000,
        resident=ResidentRef("health-record", RESIDENT),
        operator="doctor-17",
        flags=(),
    )
    return dataclasses.replace(base, **changes)


def spo2_reading(**changes: object) -> Reading:
    values = (Measurement("spo2", Decimal("97"), "%"), Measurement("pulse_rate", Decimal("72"), "/min"))
    return reading("VS-0C11", "KX-VS300", "spo2", *values, **changes)


def temperature_reading(**changes: object) -> Reading:
    value = Measurement("body_temperature", Decimal("36.62"), "Cel")
    return reading("VS-0C11", "KX-VS300", "temperature", value, **changes)


def weight_reading(**changes: object) -> Reading:
    return reading(
        "WS-5E02", "KX-WS200", "weight", Measurement("body_weight", Decimal("68.4"), "kg"), **changes
    )


def glucose_reading(value: str = "6.1", unit: str = "mmol/L", **changes: object) -> Reading:
    return reading("GL-9B40", "KX-GLU100", "glucose", Measurement("glucose", Decimal(value), unit), **changes)


def observations(source: Reading) -> list[dict]:
    return [
        e.resource for e in map_reading(source, batch_hash=BATCH_HASH) if e.resource_type == "Observation"
    ]


VS_DEVICE = {"reference": f"Device/{uid('urn:kiosk:device|VS-0C11')}"}

EXPECTED_SPO2 = {
    "resourceType": "Observation",
    "id": reading_uid(f"urn:kiosk:reading|{GATEWAY}/{SEQ}/2708-6"),
    "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/oxygensat"]},
    "identifier": [{"system": "urn:kiosk:reading", "value": "gw-zj-0042/2310/2708-6"}],
    "status": "final",
    "category": VITAL_SIGNS,
    "code": {
        "coding": [
            {"system": LOINC, "code": "2708-6", "display": "Oxygen saturation in Arterial blood"},
            {
                "system": LOINC,
                "code": "59408-5",
                "display": "Oxygen saturation in Arterial blood by Pulse oximetry",
            },
        ]
    },
    "subject": PATIENT,
    "effectiveDateTime": EFFECTIVE,
    "_effectiveDateTime": TIME_NTP,
    "device": VS_DEVICE,
    "valueQuantity": {"value": Decimal("97"), "unit": "%", "system": UCUM, "code": "%"},
}

EXPECTED_SPO2_HEART_RATE = {
    "resourceType": "Observation",
    "id": reading_uid(f"urn:kiosk:reading|{GATEWAY}/{SEQ}/8867-4"),
    "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/heartrate"]},
    "identifier": [{"system": "urn:kiosk:reading", "value": "gw-zj-0042/2310/8867-4"}],
    "status": "final",
    "category": VITAL_SIGNS,
    "code": {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]},
    "subject": PATIENT,
    "effectiveDateTime": EFFECTIVE,
    "_effectiveDateTime": TIME_NTP,
    "device": VS_DEVICE,
    "valueQuantity": {"value": Decimal("72"), "unit": "/min", "system": UCUM, "code": "/min"},
}

EXPECTED_TEMPERATURE = {
    "resourceType": "Observation",
    "id": reading_uid(f"urn:kiosk:reading|{GATEWAY}/{SEQ}/8310-5"),
    "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/bodytemp"]},
    "identifier": [{"system": "urn:kiosk:reading", "value": "gw-zj-0042/2310/8310-5"}],
    "status": "final",
    "category": VITAL_SIGNS,
    "code": {"coding": [{"system": LOINC, "code": "8310-5", "display": "Body temperature"}]},
    "subject": PATIENT,
    "effectiveDateTime": EFFECTIVE,
    "_effectiveDateTime": TIME_NTP,
    "device": VS_DEVICE,
    "valueQuantity": {"value": Decimal("36.62"), "unit": "°C", "system": UCUM, "code": "Cel"},
}

EXPECTED_WEIGHT = {
    "resourceType": "Observation",
    "id": reading_uid(f"urn:kiosk:reading|{GATEWAY}/{SEQ}/29463-7"),
    "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/bodyweight"]},
    "identifier": [{"system": "urn:kiosk:reading", "value": "gw-zj-0042/2310/29463-7"}],
    "status": "final",
    "category": VITAL_SIGNS,
    "code": {"coding": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}]},
    "subject": PATIENT,
    "effectiveDateTime": EFFECTIVE,
    "_effectiveDateTime": TIME_NTP,
    "device": {"reference": f"Device/{uid('urn:kiosk:device|WS-5E02')}"},
    "valueQuantity": {"value": Decimal("68.4"), "unit": "kg", "system": UCUM, "code": "kg"},
}

# Not a vital sign: no profile in meta, category laboratory.
EXPECTED_GLUCOSE_MOLAR = {
    "resourceType": "Observation",
    "id": reading_uid(f"urn:kiosk:reading|{GATEWAY}/{SEQ}/14743-9"),
    "identifier": [{"system": "urn:kiosk:reading", "value": "gw-zj-0042/2310/14743-9"}],
    "status": "final",
    "category": LABORATORY,
    "code": {
        "coding": [
            {
                "system": LOINC,
                "code": "14743-9",
                "display": "Glucose [Moles/volume] in Capillary blood by Glucometer",
            }
        ]
    },
    "subject": PATIENT,
    "effectiveDateTime": EFFECTIVE,
    "_effectiveDateTime": TIME_NTP,
    "device": {"reference": f"Device/{uid('urn:kiosk:device|GL-9B40')}"},
    "valueQuantity": {"value": Decimal("6.1"), "unit": "mmol/L", "system": UCUM, "code": "mmol/L"},
}

EXPECTED_GLUCOSE_MASS = {
    "resourceType": "Observation",
    "id": reading_uid(f"urn:kiosk:reading|{GATEWAY}/{SEQ}/41653-7"),
    "identifier": [{"system": "urn:kiosk:reading", "value": "gw-zj-0042/2310/41653-7"}],
    "status": "final",
    "category": LABORATORY,
    "code": {
        "coding": [
            {
                "system": LOINC,
                "code": "41653-7",
                "display": "Glucose [Mass/volume] in Capillary blood by Glucometer",
            }
        ]
    },
    "subject": PATIENT,
    "effectiveDateTime": EFFECTIVE,
    "_effectiveDateTime": TIME_NTP,
    "device": {"reference": f"Device/{uid('urn:kiosk:device|GL-9B40')}"},
    "valueQuantity": {"value": Decimal("110"), "unit": "mg/dL", "system": UCUM, "code": "mg/dL"},
}

HI_NOTE = "The device showed HI: the true value is above its measuring range."
LO_NOTE = "The device showed LO: the true value is below its measuring range."
OFF_SCALE_HIGH = {
    "coding": [{"system": INTERPRETATION, "code": ">", "display": "Off scale high"}],
    "text": HI_NOTE,
}
OFF_SCALE_LOW = {
    "coding": [{"system": INTERPRETATION, "code": "<", "display": "Off scale low"}],
    "text": LO_NOTE,
}


# SpO2


def test_spo2_is_an_oxygensat_observation_and_a_heart_rate() -> None:
    assert observations(spo2_reading()) == [EXPECTED_SPO2, EXPECTED_SPO2_HEART_RATE]


def test_spo2_provenance_targets_both_observations() -> None:
    provenance = map_reading(spo2_reading(), batch_hash=BATCH_HASH)[-1].resource
    assert provenance["resourceType"] == "Provenance"
    assert provenance["target"] == [
        {"reference": f"Observation/{EXPECTED_SPO2['id']}"},
        {"reference": f"Observation/{EXPECTED_SPO2_HEART_RATE['id']}"},
    ]


def test_spo2_without_pulse_rate_is_one_observation() -> None:
    only_spo2 = spo2_reading(values=(Measurement("spo2", Decimal("97"), "%"),))
    assert observations(only_spo2) == [EXPECTED_SPO2]


def test_low_perfusion_is_a_note_on_both_and_no_interpretation() -> None:
    # A statement about the signal, not an assessment of the value: note only, on SpO2 and pulse.
    note = [{"text": "Low perfusion (weak pulse signal) at the probe; the values may be inaccurate."}]
    assert observations(spo2_reading(flags=("low_perfusion",))) == [
        {**EXPECTED_SPO2, "note": note},
        {**EXPECTED_SPO2_HEART_RATE, "note": note},
    ]


def test_spo2_below_range_is_less_than_the_floor_and_the_pulse_stays_plain() -> None:
    # The vitals board reports an SpO2 under 70 % as 70 with below_range.
    values = (Measurement("spo2", Decimal("70"), "%"), Measurement("pulse_rate", Decimal("118"), "/min"))
    note = [{"text": LO_NOTE}]
    assert observations(spo2_reading(values=values, flags=("below_range",))) == [
        {
            **EXPECTED_SPO2,
            "valueQuantity": {
                "value": Decimal("70"),
                "comparator": "<",
                "unit": "%",
                "system": UCUM,
                "code": "%",
            },
            "interpretation": [OFF_SCALE_LOW],
            "note": note,
        },
        {
            **EXPECTED_SPO2_HEART_RATE,
            "valueQuantity": {"value": Decimal("118"), "unit": "/min", "system": UCUM, "code": "/min"},
            "note": note,
        },
    ]


def test_spo2_in_another_unit_is_refused() -> None:
    values = (Measurement("spo2", Decimal("0.97"), "1"),)
    with pytest.raises(FhirMappingError, match=r"reading gw-zj-0042/2310: spo2 has unit '1', expected '%'"):
        map_reading(spo2_reading(values=values), batch_hash=BATCH_HASH)


# Temperature and weight


def test_temperature_is_a_bodytemp_observation_with_exact_digits() -> None:
    (temperature,) = observations(temperature_reading())
    assert temperature == EXPECTED_TEMPERATURE
    value = temperature["valueQuantity"]["value"]
    assert isinstance(value, Decimal)
    assert str(value) == "36.62"


def test_temperature_keeps_trailing_zeros() -> None:
    value = Measurement("body_temperature", Decimal("36.50"), "Cel")
    (temperature,) = observations(temperature_reading(values=(value,)))
    assert str(temperature["valueQuantity"]["value"]) == "36.50"


def test_temperature_in_fahrenheit_is_refused() -> None:
    value = Measurement("body_temperature", Decimal("97.9"), "[degF]")
    with pytest.raises(FhirMappingError, match=r"body_temperature has unit '\[degF\]', expected 'Cel'"):
        map_reading(temperature_reading(values=(value,)), batch_hash=BATCH_HASH)


def test_weight_is_a_bodyweight_observation() -> None:
    assert observations(weight_reading()) == [EXPECTED_WEIGHT]


def test_unstable_weight_is_a_note() -> None:
    note = [{"text": "The scale did not settle (the resident moved); the weight may be inaccurate."}]
    assert observations(weight_reading(flags=("unstable",))) == [{**EXPECTED_WEIGHT, "note": note}]


# Glucose


def test_glucose_in_mmol_per_litre_is_14743_9() -> None:
    assert observations(glucose_reading()) == [EXPECTED_GLUCOSE_MOLAR]


def test_glucose_in_mg_per_decilitre_is_41653_7() -> None:
    assert observations(glucose_reading("110", "mg/dL")) == [EXPECTED_GLUCOSE_MASS]


def test_glucose_hi_is_greater_than_the_meter_limit() -> None:
    (glucose,) = observations(glucose_reading("33.3", flags=("above_range",)))
    assert glucose == {
        **EXPECTED_GLUCOSE_MOLAR,
        "valueQuantity": {
            "value": Decimal("33.3"),
            "comparator": ">",
            "unit": "mmol/L",
            "system": UCUM,
            "code": "mmol/L",
        },
        "interpretation": [OFF_SCALE_HIGH],
        "note": [{"text": HI_NOTE}],
    }


def test_glucose_lo_is_less_than_the_meter_limit() -> None:
    (glucose,) = observations(glucose_reading("20", "mg/dL", flags=("below_range",)))
    assert glucose == {
        **EXPECTED_GLUCOSE_MASS,
        "valueQuantity": {
            "value": Decimal("20"),
            "comparator": "<",
            "unit": "mg/dL",
            "system": UCUM,
            "code": "mg/dL",
        },
        "interpretation": [OFF_SCALE_LOW],
        "note": [{"text": LO_NOTE}],
    }


@pytest.mark.parametrize("unit", ["mg/L", "umol/L", "mmol/l", "mg/dl", ""])
def test_glucose_in_any_other_unit_is_refused(unit: str) -> None:
    with pytest.raises(
        FhirMappingError,
        match=rf"reading gw-zj-0042/2310: glucose has unit '{unit}', expected one of 'mmol/L', 'mg/dL'",
    ):
        map_reading(glucose_reading("6.1", unit), batch_hash=BATCH_HASH)


@pytest.mark.parametrize(
    "flags",
    [("control_solution",), ("control_solution", "above_range"), ("below_range", "control_solution")],
)
def test_control_solution_produces_no_resources(flags: tuple[str, ...]) -> None:
    with pytest.raises(FhirMappingError) as refused:
        map_reading(glucose_reading(flags=flags), batch_hash=BATCH_HASH)
    assert str(refused.value) == (
        "reading gw-zj-0042/2310: control-solution result is a device check, not a resident measurement"
    )


def test_control_solution_without_a_resident_is_refused_too() -> None:
    with pytest.raises(FhirMappingError, match="control-solution result is a device check"):
        map_reading(glucose_reading(resident=None, flags=("control_solution",)), batch_hash=BATCH_HASH)


# HI / LO never become a plain value


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            glucose_reading(flags=("above_range", "below_range")),
            r"flags \['above_range', 'below_range'\] contradict",
        ),
        (
            weight_reading(flags=("above_range",)),
            "above_range flag on a weight reading with no value it can bound",
        ),
        (
            spo2_reading(flags=("above_range",)),
            "above_range flag on a spo2 reading with no value it can bound",
        ),
        (
            temperature_reading(flags=("below_range",)),
            "below_range flag on a temperature reading with no value it can bound",
        ),
    ],
)
def test_range_flag_without_a_value_to_bound_is_refused(source: Reading, message: str) -> None:
    with pytest.raises(FhirMappingError, match=f"reading gw-zj-0042/2310: {message}"):
        map_reading(source, batch_hash=BATCH_HASH)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (glucose_reading(values=()), "glucose reading has no glucose"),
        (
            glucose_reading(values=(Measurement("glucose", Decimal("6.1"), "mmol/L"),) * 2),
            "reading repeats a measurement name",
        ),
        (
            weight_reading(
                values=(
                    Measurement("body_weight", Decimal("68.4"), "kg"),
                    Measurement("bmi", Decimal("22"), "kg/m2"),
                )
            ),
            r"weight reading has unmapped values \['bmi'\]",
        ),
        (
            spo2_reading(values=(Measurement("pulse_rate", Decimal("72"), "/min"),)),
            "spo2 reading has no spo2",
        ),
    ],
)
def test_incomplete_or_foreign_readings_are_refused(source: Reading, message: str) -> None:
    with pytest.raises(FhirMappingError, match=f"reading gw-zj-0042/2310: {message}"):
        map_reading(source, batch_hash=BATCH_HASH)


def test_ecg_without_waveform_is_refused() -> None:
    ecg = reading("EC-1D07", "KX-ECG", "ecg", Measurement("heart_rate", Decimal("72"), "/min"))
    with pytest.raises(FhirMappingError, match=r"reading gw-zj-0042/2310: ecg reading has no waveform"):
        map_reading(ecg, batch_hash=BATCH_HASH)


def test_a_temperature_sent_as_nres_is_data_absent_with_the_device_reason() -> None:
    value = Measurement("body_temperature", None, "Cel", "nres")
    (temperature,) = observations(temperature_reading(values=(value,)))
    assert "valueQuantity" not in temperature
    assert temperature["dataAbsentReason"] == {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "error"}]
    }
    assert {"text": "body_temperature: no value, the device reported NRes (not representable at its "
                    "resolution)."} in temperature["note"]  # fmt: skip


def test_a_pulse_sent_as_nan_is_data_absent_and_the_spo2_keeps_its_value() -> None:
    values = (Measurement("spo2", Decimal("97"), "%"), Measurement("pulse_rate", None, "/min", "nan"))
    spo2, pulse = observations(spo2_reading(values=values))
    assert spo2["valueQuantity"]["value"] == Decimal("97")
    assert pulse["dataAbsentReason"]["coding"][0]["code"] == "not-a-number"
    assert "valueQuantity" not in pulse


def test_a_heart_rate_strap_reading_is_a_heartrate_observation() -> None:
    value = Measurement("pulse_rate", Decimal("64"), "/min")
    (heart,) = observations(reading("HR-0A01", "Polar H10", "heart_rate", value))
    assert heart["code"]["coding"][0]["code"] == "8867-4"
    assert heart["meta"] == {"profile": ["http://hl7.org/fhir/StructureDefinition/heartrate"]}
    assert heart["valueQuantity"]["value"] == Decimal("64")
