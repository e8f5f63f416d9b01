"""The running bridge validates each FHIR resource shape once; anything unusual every time."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_bridge import fhir_map
from cloud_bridge.alert_rules import AlertText
from cloud_bridge.fhir_map import map_reading
from contract.wire import Reading
from tests.component.bridge_readings import bp_reading
from tests.unit.generated_readings import readings

BATCH_HASH = bytes(32)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr(fhir_map, "VALIDATE_EVERY_RESOURCE", False)
    monkeypatch.setattr(fhir_map, "_VALID_SHAPES", set())
    for built_once in (fhir_map._patient_entry, fhir_map._device_entry, fhir_map._gateway_entry):
        built_once.cache_clear()
    seen: list[str] = []
    for name, model in list(fhir_map._MODELS.items()):

        class Counting:
            @staticmethod
            def model_validate(resource: dict[str, Any], _model: Any = model, _name: str = name) -> Any:
                seen.append(_name)
                return _model.model_validate(resource)

        monkeypatch.setitem(fhir_map._MODELS, name, Counting)
    return seen


def test_a_shape_is_validated_once(counted: list[str]) -> None:
    map_reading(bp_reading("gw-1", 1, 120, 80), batch_hash=BATCH_HASH)
    first = len(counted)
    assert first >= 4  # Patient, two Devices, Observation, Provenance
    map_reading(bp_reading("gw-1", 2, 141, 93), batch_hash=BATCH_HASH)  # other values, same shape
    assert len(counted) == first


def test_a_new_shape_is_validated(counted: list[str]) -> None:
    map_reading(bp_reading("gw-1", 1, 120, 80), batch_hash=BATCH_HASH)
    before = len(counted)
    map_reading(bp_reading("gw-1", 2, 120, 80, resident=None), batch_hash=BATCH_HASH)  # no Patient
    assert len(counted) > before


def test_readings_with_unusual_strings_have_no_shape() -> None:
    plain = bp_reading("gw-1", 1, 120, 80)
    assert fhir_map._reading_shape(plain, (), True) is not None
    for flag in ("", " padded", "line\nbreak", "nul\x00"):
        odd = dataclasses.replace(plain, flags=(flag,))
        assert fhir_map._reading_shape(odd, (), True) is None, repr(flag)
    odd_alert = AlertText("bp_crisis", "urgent", "高血压危象", "Crisis\n", "", "")
    assert fhir_map._reading_shape(plain, (odd_alert,), True) is None


def test_a_kind_the_shape_does_not_describe_is_validated_every_time(
    counted: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fhir_map, "_KINDS_BY_SHAPE", frozenset())  # as for a kind added later
    for seq in (1, 2):
        map_reading(bp_reading("gw-1", seq, 120, 80), batch_hash=BATCH_HASH)
    assert counted.count("Observation") == 2  # the BP panel, both times (no pulse in these)


# --- the oracle: one reading shape means one resource shape -------------------------------------


def json_shape(node: Any) -> Any:
    """Keys, structure and leaf types of a JSON-like value, strings plain or not (test's own)."""
    if isinstance(node, dict):
        return ("{", tuple((key, json_shape(value)) for key, value in node.items()))
    if isinstance(node, list):
        return ("[", tuple(json_shape(value) for value in node))
    if isinstance(node, str):
        return "s" if node and node.isprintable() and node.strip() == node else ("odd", node)
    if isinstance(node, bool):
        return "b"
    if isinstance(node, int):
        return "i" if node >= 0 else "-i"
    if isinstance(node, Decimal):
        return "d"  # FHIR decimal: any sign
    return ("?", type(node).__name__)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(readings(), min_size=2, max_size=6))
def test_one_reading_shape_maps_to_one_resource_shape(examples: list[tuple[Reading, Any, bool]]) -> None:
    """What lets the running bridge skip validating a reading whose shape it has validated: any
    two readings `_reading_shape` calls alike give resources of the same JSON shape."""
    seen: dict[Any, Any] = {}
    for reading, alerts, signed in examples:
        try:
            entries = map_reading(
                reading, batch_hash=BATCH_HASH, gateway_signature=bytes(64) if signed else None, alerts=alerts
            )
        except fhir_map.FhirMappingError:
            continue  # refused readings are never stored, shape or not
        shape = fhir_map._reading_shape(reading, alerts, signed)
        if shape is None:
            continue
        own = [json_shape(e.resource) for e in entries if e.resource_type not in ("Patient", "Device")]
        assert seen.setdefault(shape, own) == own


def test_a_resource_with_an_unusual_leaf_is_validated_every_time(counted: list[str]) -> None:
    reading = bp_reading("gw-1", 1, 120, 80)
    for seq in (1, 2, 3):
        odd = dataclasses.replace(reading.device, model=f" KX-BP10{seq}")  # padded: not plain
        map_reading(dataclasses.replace(reading, seq=seq, device=odd), batch_hash=BATCH_HASH)
    assert counted.count("Device") == 1 + 3  # the gateway Device once; each odd one


def test_a_recurring_device_or_resident_is_built_and_validated_once(counted: list[str]) -> None:
    first = map_reading(bp_reading("gw-1", 1, 120, 80), batch_hash=BATCH_HASH)
    before = {name: counted.count(name) for name in ("Patient", "Device")}
    second = map_reading(bp_reading("gw-1", 2, 141, 93), batch_hash=BATCH_HASH)
    assert {name: counted.count(name) for name in ("Patient", "Device")} == before
    assert [e.resource for e in first[:3]] == [e.resource for e in second[:3]]
