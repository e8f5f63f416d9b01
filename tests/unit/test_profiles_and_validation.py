"""Device profiles load and validate; readings are checked against them with reasons."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from contract.wire import Measurement
from firmware import kiosk_link as link
from gateway.errors import ProfileError, RejectedReading
from gateway.profiles import load_profile, load_profiles
from gateway.validate import flag_names, to_measurements

PROFILES_DIR = Path(__file__).resolve().parents[2] / "device_profiles"


@pytest.fixture(scope="module")
def bp_profile():
    return load_profiles(PROFILES_DIR)["KX-BP100"]


def test_every_profile_in_the_registry_loads() -> None:
    profiles = load_profiles(PROFILES_DIR)
    assert "KX-BP100" in profiles
    for profile in profiles.values():
        for kind in profile.kinds.values():
            for spec in kind.fields.values():
                assert spec.unit and spec.range[0] < spec.range[1]


def test_bad_profile_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(
        'model = "X"\nvendor = "v"\nname = "n"\ntransport = "usb"\nprotocol = "p"\n'
        '[kinds.bp.fields.systolic]\nunit = "mm[Hg]"\nrange = [300, 40]\n'
    )
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert str(path) in str(info.value)
    assert "transport" in str(info.value)
    assert "range 300..40 is empty" in str(info.value)


def test_valid_bp_reading(bp_profile) -> None:
    kind, values = to_measurements(
        "bp-1", bp_profile, link.KIND_BP, [(link.FIELD_SYSTOLIC, 1285, -1), (link.FIELD_DIASTOLIC, 82, 0)]
    )
    assert kind == "bp"
    assert values == (
        Measurement("systolic", Decimal("128.5"), "mm[Hg]"),
        Measurement("diastolic", Decimal(82), "mm[Hg]"),
    )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ([(1, 320, 0), (2, 80, 0)], "bp.systolic = 320 mm[Hg] outside plausible 40..300"),
        ([(1, 120, 0)], "bp: missing diastolic"),
        ([(1, 120, 0), (2, 80, 0), (99, 1, 0)], "bp: unexpected field code 99"),
        ([(1, 120, 0), (1, 121, 0), (2, 80, 0)], "bp: field systolic sent twice"),
        ([(1, 80, 0), (2, 90, 0)], "bp: systolic 80 not above diastolic 90"),
    ],
)
def test_invalid_bp_readings_say_why(bp_profile, fields, reason) -> None:
    with pytest.raises(RejectedReading) as info:
        to_measurements("bp-1", bp_profile, link.KIND_BP, fields)
    assert info.value.reason == reason


def test_kind_the_model_does_not_measure(bp_profile) -> None:
    with pytest.raises(RejectedReading, match="does not measure glucose"):
        to_measurements("bp-1", bp_profile, link.KIND_GLUCOSE, [(link.FIELD_GLUCOSE, 55, -1)])


def test_flag_names() -> None:
    assert flag_names(link.FLAG_IRREGULAR_PULSE | link.FLAG_CUFF_LOOSE) == ("irregular_pulse", "cuff_loose")
