"""The running bridge validates each FHIR resource shape once; anything unusual every time."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest

from cloud_bridge import fhir_map
from cloud_bridge.fhir_map import map_reading
from tests.component.bridge_readings import bp_reading

BATCH_HASH = bytes(32)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr(fhir_map, "VALIDATE_EVERY_RESOURCE", False)
    monkeypatch.setattr(fhir_map, "_VALID_SHAPES", set())
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


def test_shapes_with_unusual_leaves_are_not_trusted() -> None:
    assert fhir_map._shape({"a": ["x", 1, Decimal("1.5"), True]}) == ("{", ("a", ("[", "s", "i", "d", "b")))
    for odd in ("", " padded", "line\nbreak", "nul\x00", Decimal("NaN"), 1.5, None):
        assert fhir_map._shape({"a": odd}) is None, odd


def test_a_resource_with_an_unusual_leaf_is_validated_every_time(counted: list[str]) -> None:
    reading = bp_reading("gw-1", 1, 120, 80)
    odd = dataclasses.replace(reading.device, model=" KX-BP100")  # padded: not plain
    for seq in (1, 2, 3):
        map_reading(dataclasses.replace(reading, seq=seq, device=odd), batch_hash=BATCH_HASH)
    assert counted.count("Device") == 1 + 3  # the gateway Device once; the odd one each time
