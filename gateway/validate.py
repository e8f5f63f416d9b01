"""Check a decoded link reading against its device profile -> measurements with UCUM units."""

from __future__ import annotations

from decimal import Decimal

from contract.wire import Measurement
from gateway.errors import RejectedReading
from gateway.link_names import FIELD_NAMES, FLAG_NAMES, KIND_NAMES
from gateway.profiles import DeviceProfile


def flag_names(flags: int) -> tuple[str, ...]:
    return tuple(name for bit, name in sorted(FLAG_NAMES.items()) if flags & bit)


def to_measurements(
    device_id: str, profile: DeviceProfile, kind_code: int, fields: list[tuple[int, int, int]]
) -> tuple[str, tuple[Measurement, ...]]:
    """-> (kind, measurements); raises RejectedReading saying which field and why."""
    kind = KIND_NAMES.get(kind_code)
    if kind is None:
        raise RejectedReading(device_id, f"unknown kind code {kind_code}")
    spec = profile.kinds.get(kind)  # type: ignore[call-overload]
    if spec is None:
        raise RejectedReading(device_id, f"model {profile.model} does not measure {kind}")
    measurements: list[Measurement] = []
    seen: set[str] = set()
    for field_code, mantissa, exponent in fields:
        name = FIELD_NAMES.get(field_code)
        if name is None or name not in spec.fields:
            raise RejectedReading(device_id, f"{kind}: unexpected field code {field_code}")
        if name in seen:
            raise RejectedReading(device_id, f"{kind}: field {name} sent twice")
        seen.add(name)
        value = Decimal(mantissa).scaleb(exponent)
        low, high = spec.fields[name].range
        if not low <= value <= high:
            raise RejectedReading(
                device_id, f"{kind}.{name} = {value} {spec.fields[name].unit} outside plausible {low}..{high}"
            )
        measurements.append(Measurement(name, value, spec.fields[name].unit))
    missing = [name for name in spec.required if name not in seen]
    if missing:
        raise RejectedReading(device_id, f"{kind}: missing {', '.join(missing)}")
    if kind == "bp":
        _check_bp(device_id, measurements)
    return kind, tuple(measurements)


def _check_bp(device_id: str, measurements: list[Measurement]) -> None:
    values = {m.name: m.value for m in measurements}
    if "systolic" not in values or "diastolic" not in values:
        return
    if values["systolic"] <= values["diastolic"]:
        raise RejectedReading(
            device_id, f"bp: systolic {values['systolic']} not above diastolic {values['diastolic']}"
        )
