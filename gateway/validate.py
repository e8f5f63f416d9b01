"""Check a reading against its device profile and the region's alert rules: one pure entry point.

`check_reading` serves every ingest: the kiosk link (through `check_link_reading`, which first
names the link's numeric codes) and Bluetooth devices (whose notifications
`gateway.ble_readings` has turned into measurements in our names). It refuses what cannot be a
resident's measurement (RejectedReading, saying which field and why) and returns the rest with
the flags that travel with the reading:

- the device's own flags, as sent;
- ``implausible:<field>`` for a value outside the profile's plausible range that the profile keeps
  (``out_of_range = "flag"``), with a note saying what was out of range;
- ``alert:<rule id>`` for every alert rule the reading crossed (see gateway.alerts).

No I/O, no clock, no logging: the caller logs the notes and counts the refusals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from contract.wire import Measurement
from gateway.alerts import Alert, AlertRules, evaluate
from gateway.errors import RejectedReading
from gateway.link_names import FIELD_NAMES, FLAG_NAMES, KIND_NAMES
from gateway.profiles import DeviceProfile, KindSpec, convert

__all__ = ["CheckedReading", "check_link_reading", "check_reading", "flag_names", "link_values"]


@dataclass(frozen=True, slots=True)
class CheckedReading:
    """A reading that passed its profile: what to store, the alerts it raised, notes for the log."""

    kind: str
    measurements: tuple[Measurement, ...]  # in the order the device sent them, units as sent
    flags: tuple[str, ...]  # device flags, then implausible:<field>, then alert:<rule id>
    alerts: tuple[Alert, ...]  # most severe first
    notes: tuple[str, ...]  # human-readable: values kept though implausible, values absent


def flag_names(flags: int) -> tuple[str, ...]:
    return tuple(name for bit, name in sorted(FLAG_NAMES.items()) if flags & bit)


def check_reading(
    device_id: str,
    profile: DeviceProfile,
    kind: str,
    values: Mapping[str, Decimal] | Sequence[Measurement],
    flags: Iterable[str] = (),
    rules: AlertRules | None = None,
) -> CheckedReading:
    """Check one reading; raises RejectedReading saying which field and why.

    `values` is either name -> value in the profile's unit of that field, or measurements that
    carry their own unit (one of the field's `unit` / `other_units`; kept as sent, converted only
    to compare) and may have no value (a device's NaN: kept, noted, never range-checked).
    Required fields, plausible ranges (refused or flagged per field), systolic above diastolic,
    then the alert rules (none when `rules` is None).
    """
    spec = _kind_spec(device_id, profile, kind)
    measurements = _measurements(device_id, kind, spec, values)
    added: list[str] = []
    notes: list[str] = []
    for measurement in measurements:
        field = spec.fields[measurement.name]
        where = f"{kind}.{measurement.name}"
        if measurement.unit not in field.units:
            raise RejectedReading(
                device_id,
                f"{where}: unit {measurement.unit} not accepted (profile: {', '.join(field.units)})",
            )
        if measurement.value is None:
            notes.append(f"{where}: no value ({measurement.absent_reason})")
            continue
        value = convert(measurement.value, measurement.unit, field.unit)
        low, high = field.range
        if not Fraction(low) <= value <= Fraction(high):
            shown = f"{measurement.value} {measurement.unit}"
            if measurement.unit != field.unit:
                shown += f" (= {float(value):.4g} {field.unit})"
            reason = f"{where} = {shown} outside plausible {low}..{high}"
            if field.out_of_range == "refuse":
                raise RejectedReading(device_id, reason)
            added.append(f"implausible:{measurement.name}")
            notes.append(f"{reason}: kept and flagged implausible:{measurement.name}")
    sent = {m.name for m in measurements}
    missing = [name for name in spec.required if name not in sent]
    if missing:
        raise RejectedReading(device_id, f"{kind}: missing {', '.join(missing)}")
    if kind == "bp":
        _check_bp(device_id, spec, measurements)
    device_flags = list(dict.fromkeys(flags))
    alerts = evaluate(rules, kind, measurements, [*device_flags, *added]) if rules else ()
    return CheckedReading(
        kind=kind,
        measurements=measurements,
        flags=(*device_flags, *added, *(alert.flag for alert in alerts)),
        alerts=alerts,
        notes=tuple(notes),
    )


def _kind_spec(device_id: str, profile: DeviceProfile, kind: str) -> KindSpec:
    spec = next((spec for name, spec in profile.kinds.items() if name == kind), None)
    if spec is None:
        raise RejectedReading(device_id, f"model {profile.model} does not measure {kind}")
    return spec


def _measurements(
    device_id: str, kind: str, spec: KindSpec, values: Mapping[str, Decimal] | Sequence[Measurement]
) -> tuple[Measurement, ...]:
    given: list[Measurement] = []
    if isinstance(values, Mapping):
        for name, value in values.items():
            field = spec.fields.get(name)
            if field is None:
                raise RejectedReading(device_id, f"{kind}: unexpected field {name}")
            if not isinstance(value, Decimal) or not value.is_finite():
                raise RejectedReading(device_id, f"{kind}.{name}: {value!r} is not a finite number")
            given.append(Measurement(name, value, field.unit))
        return tuple(given)
    seen: set[str] = set()
    for measurement in values:
        if measurement.name not in spec.fields:
            raise RejectedReading(device_id, f"{kind}: unexpected field {measurement.name}")
        if measurement.name in seen:
            raise RejectedReading(device_id, f"{kind}: field {measurement.name} sent twice")
        seen.add(measurement.name)
        given.append(measurement)
    return tuple(given)


def _check_bp(device_id: str, spec: KindSpec, measurements: tuple[Measurement, ...]) -> None:
    by_name = {m.name: m for m in measurements if m.value is not None}
    systolic, diastolic = by_name.get("systolic"), by_name.get("diastolic")
    if systolic is None or diastolic is None:
        return
    assert systolic.value is not None and diastolic.value is not None
    unit = spec.fields["systolic"].unit
    if convert(systolic.value, systolic.unit, unit) <= convert(diastolic.value, diastolic.unit, unit):
        raise RejectedReading(
            device_id, f"bp: systolic {systolic.value} not above diastolic {diastolic.value}"
        )


# --------------------------------------------------------------------------------------------
# The kiosk link: numeric codes -> names, then the common check


def link_values(
    device_id: str, profile: DeviceProfile, kind_code: int, fields: Iterable[tuple[int, int, int]]
) -> tuple[str, dict[str, Decimal]]:
    """A link reading's (field code, mantissa, exponent) triples -> (kind, name -> value)."""
    kind = KIND_NAMES.get(kind_code)
    if kind is None:
        raise RejectedReading(device_id, f"unknown kind code {kind_code}")
    spec = _kind_spec(device_id, profile, kind)
    values: dict[str, Decimal] = {}
    for field_code, mantissa, exponent in fields:
        name = FIELD_NAMES.get(field_code)
        if name is None or name not in spec.fields:
            raise RejectedReading(device_id, f"{kind}: unexpected field code {field_code}")
        if name in values:
            raise RejectedReading(device_id, f"{kind}: field {name} sent twice")
        values[name] = Decimal(mantissa).scaleb(exponent)
    return kind, values


def check_link_reading(
    device_id: str,
    profile: DeviceProfile,
    kind_code: int,
    fields: Iterable[tuple[int, int, int]],
    flags: int,
    rules: AlertRules | None,
) -> CheckedReading:
    """`check_reading` for a decoded kiosk-link READING message."""
    kind, values = link_values(device_id, profile, kind_code, fields)
    return check_reading(device_id, profile, kind, values, flag_names(flags), rules)
