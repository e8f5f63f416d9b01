"""Device profiles: one TOML file per model in device_profiles/, checked at start-up.

A profile says what a model is (vendor, name), how the gateway reaches it (transport and protocol;
for Bluetooth the GATT service, characteristics and pairing) and what it measures: per kind, the
fields with their UCUM unit, plausible range and what to do with a value outside it, and their
LOINC and IEEE 11073 MDC codes. The tables here are the vocabulary a profile may use:

- `PROTOCOLS`: what each protocol carries (transport, kinds, GATT service and characteristics);
- `KIND_FIELDS`: the field names of each kind;
- `FIELD_UNITS`: the UCUM units each field may be in (`UNITS` lists every unit and converts them).

A mistake in a file stops start-up with the file, the field and the reason. The format is
described for technicians in docs/device-profiles.md.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    model_validator,
)

from gateway.errors import ProfileError
from gateway.transports.ble import uuid16

__all__ = [
    "FIELD_UNITS",
    "KIND_FIELDS",
    "PROTOCOLS",
    "RACP",
    "UNITS",
    "BleSpec",
    "DeviceProfile",
    "FieldSpec",
    "FirmwareSpec",
    "Kind",
    "KindSpec",
    "Protocol",
    "WaveformSpec",
    "convert",
    "display_unit",
    "format_errors",
    "load_profile",
    "load_profiles",
    "read_toml",
    "short_uuid",
]

Kind = Literal["bp", "glucose", "ecg", "spo2", "temperature", "weight", "heart_rate"]
ProtocolName = Literal["kiosk-link/1", "ble-bls", "ble-gls", "ble-hts", "ble-plxs", "ble-wss", "ble-hrs"]

# --------------------------------------------------------------------------------------------
# Units (UCUM codes). Each unit: its dimension, and factor and offset to that dimension's base
# unit (base = value * factor + offset), as exact fractions so conversions compare exactly.

GLUCOSE_MG_PER_DL_PER_MMOL_PER_L = Fraction("18.0156")  # glucose molar mass 180.156 g/mol (≈ 18.016)


@dataclass(frozen=True, slots=True)
class Unit:
    dimension: str
    factor: Fraction
    offset: Fraction = Fraction(0)
    display: str = ""


UNITS: dict[str, Unit] = {
    "mm[Hg]": Unit("pressure", Fraction(1), display="mmHg"),
    # UCUM: 1 m[Hg] = 133.3220 kPa, so 1 kPa = 1 / 0.1333220 mm[Hg]
    "kPa": Unit("pressure", 1 / Fraction("0.1333220"), display="kPa"),
    "/min": Unit("rate", Fraction(1), display="/min"),
    "mmol/L": Unit("glucose concentration", Fraction(1), display="mmol/L"),
    # mg/dL <-> mmol/L depends on the substance: glucose is the only one measured here.
    "mg/dL": Unit("glucose concentration", 1 / GLUCOSE_MG_PER_DL_PER_MMOL_PER_L, display="mg/dL"),
    "%": Unit("fraction", Fraction(1), display="%"),
    "Cel": Unit("temperature", Fraction(1), display="°C"),
    "[degF]": Unit("temperature", Fraction(5, 9), Fraction(-160, 9), display="°F"),  # (F - 32) * 5/9
    "kg": Unit("mass", Fraction(1), display="kg"),
    "[lb_av]": Unit("mass", Fraction("0.45359237"), display="lb"),
    "kg/m2": Unit("mass per area", Fraction(1), display="kg/m²"),
    "m": Unit("length", Fraction(1), display="m"),
    "cm": Unit("length", Fraction(1, 100), display="cm"),
    "s": Unit("time", Fraction(1), display="s"),
    "ms": Unit("time", Fraction(1, 1000), display="ms"),
}

# The field names of each kind (the same names the kiosk link, the BLE mapping and the FHIR
# mapping use). ECG has no scalar fields: it is a waveform.
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "bp": ("systolic", "diastolic", "mean_arterial", "pulse_rate"),
    "glucose": ("glucose",),
    "ecg": (),
    "spo2": ("spo2", "pulse_rate"),
    "temperature": ("body_temperature",),
    "weight": ("body_weight",),
    "heart_rate": ("pulse_rate",),
}

# The units each field may be in: the first is the usual one.
FIELD_UNITS: dict[str, tuple[str, ...]] = {
    "systolic": ("mm[Hg]", "kPa"),
    "diastolic": ("mm[Hg]", "kPa"),
    "mean_arterial": ("mm[Hg]", "kPa"),
    "pulse_rate": ("/min",),
    "glucose": ("mmol/L", "mg/dL"),
    "spo2": ("%",),
    "body_temperature": ("Cel", "[degF]"),
    "body_weight": ("kg", "[lb_av]"),
}


def convert(value: Decimal, unit: str, to_unit: str) -> Fraction:
    """`value` in `unit` as an exact number in `to_unit`; ValueError if they measure different things."""
    source, target = UNITS.get(unit), UNITS.get(to_unit)
    if source is None or target is None:
        raise ValueError(f"cannot convert {unit} to {to_unit}: unknown unit")
    if source.dimension != target.dimension:
        raise ValueError(f"cannot convert {unit} ({source.dimension}) to {to_unit} ({target.dimension})")
    if unit == to_unit:
        return Fraction(value)
    base = Fraction(value) * source.factor + source.offset
    return (base - target.offset) / target.factor


def display_unit(unit: str) -> str:
    """How a unit is written for people (mmHg for mm[Hg], °C for Cel)."""
    known = UNITS.get(unit)
    return known.display if known else unit


# --------------------------------------------------------------------------------------------
# Protocols

RACP = uuid16(0x2A52)  # Record Access Control Point: download a device's stored records


@dataclass(frozen=True, slots=True)
class Protocol:
    """What a protocol carries. For a Bluetooth SIG service: its UUID and measurement characteristics."""

    transport: Literal["uart", "ble"]
    kinds: frozenset[str]
    title: str
    service: str | None = None
    measurements: frozenset[str] = frozenset()  # the characteristics a profile may subscribe to
    required: frozenset[str] = frozenset()  # of which these must be listed (none: at least one)
    racp: Literal["no", "optional", "required"] = "no"
    context: str | None = None  # an optional companion characteristic (Glucose Measurement Context)


PROTOCOLS: dict[str, Protocol] = {
    "kiosk-link/1": Protocol(
        "uart", frozenset({"bp", "glucose", "ecg", "spo2", "temperature", "weight"}), "our kiosk link (UART)"
    ),
    "ble-bls": Protocol(
        "ble",
        frozenset({"bp"}),
        "Bluetooth Blood Pressure Service",
        uuid16(0x1810),
        frozenset({uuid16(0x2A35)}),
        frozenset({uuid16(0x2A35)}),
    ),
    "ble-gls": Protocol(
        "ble",
        frozenset({"glucose"}),
        "Bluetooth Glucose Service",
        uuid16(0x1808),
        frozenset({uuid16(0x2A18)}),
        frozenset({uuid16(0x2A18)}),
        racp="required",  # GLS mandates the RACP: records are fetched through it
        context=uuid16(0x2A34),
    ),
    "ble-hts": Protocol(
        "ble",
        frozenset({"temperature"}),
        "Bluetooth Health Thermometer Service",
        uuid16(0x1809),
        frozenset({uuid16(0x2A1C)}),
        frozenset({uuid16(0x2A1C)}),
    ),
    "ble-plxs": Protocol(
        "ble",
        frozenset({"spo2"}),
        "Bluetooth Pulse Oximeter Service",
        uuid16(0x1822),
        frozenset({uuid16(0x2A5E), uuid16(0x2A5F)}),  # spot-check and/or continuous
        racp="optional",  # stored spot-check measurements
    ),
    "ble-wss": Protocol(
        "ble",
        frozenset({"weight"}),
        "Bluetooth Weight Scale Service",
        uuid16(0x181D),
        frozenset({uuid16(0x2A9D)}),
        frozenset({uuid16(0x2A9D)}),
    ),
    "ble-hrs": Protocol(
        "ble",
        frozenset({"heart_rate"}),
        "Bluetooth Heart Rate Service",
        uuid16(0x180D),
        frozenset({uuid16(0x2A37)}),
        frozenset({uuid16(0x2A37)}),
    ),
}

_UUID128 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_UUID16 = re.compile(r"^0x([0-9a-f]{4})$")
_BASE_SUFFIX = uuid16(0)[8:]


def _normalise_uuid(raw: Any) -> str:
    """'0x2A35' or a 128-bit UUID (any case) -> '00002a35-0000-1000-8000-00805f9b34fb'."""
    text = raw.strip().lower() if isinstance(raw, str) else None
    if text is not None:
        short = _UUID16.match(text)
        if short:
            return uuid16(int(short.group(1), 16))
        if _UUID128.match(text):
            return text
    raise ValueError(
        f'not a Bluetooth UUID: {raw!r} (write a 16-bit SIG number as "0x2A35" or a full 128-bit UUID)'
    )


def short_uuid(uuid: str) -> str:
    """'00002a35-0000-1000-8000-00805f9b34fb' -> '0x2A35'; other UUIDs unchanged."""
    if uuid.startswith("0000") and uuid.endswith(_BASE_SUFFIX):
        return "0x" + uuid[4:8].upper()
    return uuid


def _known_unit(unit: str) -> str:
    if unit not in UNITS:
        raise ValueError(f"unit {unit!r} is not a UCUM unit this gateway knows ({', '.join(UNITS)})")
    return unit


def _loinc(code: str) -> str:
    """A LOINC code: digits, a dash and the mod-10 check digit (which catches most typos)."""
    match = re.fullmatch(r"(\d{1,7})-(\d)", code)
    if not match:
        raise ValueError(f"LOINC code {code!r} is not of the form 12345-6")
    digits, check = match.groups()
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char) * (2 if position % 2 == 0 else 1)
        total += digit - 9 if digit > 9 else digit
    if (10 - total % 10) % 10 != int(check):
        raise ValueError(f"LOINC code {code!r} has a wrong check digit")
    return code


BleUuid = Annotated[str, BeforeValidator(_normalise_uuid)]
UcumUnit = Annotated[str, AfterValidator(_known_unit)]
Loinc = Annotated[str, AfterValidator(_loinc)]
Mdc = Annotated[str, Field(pattern=r"^MDC_[A-Z0-9_]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(_Strict):
    unit: UcumUnit
    range: tuple[Decimal, Decimal]  # plausible values, in `unit`, both ends included
    out_of_range: Literal["refuse", "flag"] = "refuse"
    other_units: tuple[UcumUnit, ...] = ()  # units the device may also send; kept as sent
    loinc: Loinc | None = None
    mdc: Mdc | None = None

    @model_validator(mode="after")
    def _range_ordered(self) -> FieldSpec:
        if self.range[0] >= self.range[1]:
            raise ValueError(f"range {self.range[0]}..{self.range[1]} is empty")
        if self.unit in self.other_units:
            raise ValueError(f"other_units repeats the unit {self.unit}")
        return self

    @property
    def units(self) -> tuple[str, ...]:
        return (self.unit, *self.other_units)


class WaveformSpec(_Strict):
    """A sampled signal (ECG): what the samples in ECG_CHUNK messages mean."""

    sample_rate_hz: int = Field(gt=0)
    resolution_uv: Decimal = Field(gt=0)  # microvolts per least significant bit
    leads: tuple[str, ...]  # one MDC code per channel, e.g. MDC_ECG_LEAD_I
    loinc: Loinc | None = None


class KindSpec(_Strict):
    required: tuple[str, ...] = ()
    fields: dict[str, FieldSpec] = {}
    waveform: WaveformSpec | None = None

    @model_validator(mode="after")
    def _required_known(self) -> KindSpec:
        missing = [name for name in self.required if name not in self.fields]
        if missing:
            raise ValueError(f"required fields not described: {', '.join(missing)}")
        return self


class FirmwareSpec(_Strict):
    image: str
    version: str


class BleSpec(_Strict):
    """How the gateway finds, pairs with and reads a Bluetooth device."""

    service: BleUuid
    measurements: tuple[BleUuid, ...] = Field(min_length=1)  # characteristics to subscribe to
    racp: BleUuid | None = None  # Record Access Control Point (0x2A52)
    context: BleUuid | None = None  # glucose: Glucose Measurement Context (0x2A34)
    bond: StrictBool  # pair (and bond) before reading
    name_prefix: str = Field(min_length=1)  # the advertised name starts with this
    stored_records: StrictBool = False  # download stored records through the RACP

    @property
    def characteristics(self) -> tuple[str, ...]:
        extra = tuple(uuid for uuid in (self.racp, self.context) if uuid)
        return (*self.measurements, *extra)


class DeviceProfile(_Strict):
    model: str = Field(min_length=1)
    vendor: str
    name: str
    transport: Literal["uart", "ble"]
    protocol: ProtocolName
    ble: BleSpec | None = None
    firmware: FirmwareSpec | None = None
    kinds: dict[Kind, KindSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> DeviceProfile:
        protocol = PROTOCOLS[self.protocol]
        if protocol.transport != self.transport:
            wanted = "kiosk-link/1" if self.transport == "uart" else "a ble-* protocol"
            raise ValueError(f"protocol: transport {self.transport!r} needs {wanted}, not {self.protocol!r}")
        foreign = [kind for kind in self.kinds if kind not in protocol.kinds]
        if foreign:
            raise ValueError(
                f"kinds: protocol {self.protocol} carries {', '.join(sorted(protocol.kinds))}, "
                f"not {', '.join(foreign)}"
            )
        for kind, spec in self.kinds.items():
            _check_kind(kind, spec)
        if self.transport == "ble":
            if self.ble is None:
                raise ValueError("ble: a [ble] table is required for transport 'ble'")
            _check_ble(self.protocol, protocol, self.ble)
        elif self.ble is not None:
            raise ValueError(f"ble: only transport 'ble' has a [ble] table, this is {self.transport!r}")
        return self


def _check_kind(kind: str, spec: KindSpec) -> None:
    where = f"kinds.{kind}"
    if kind == "ecg":
        if spec.waveform is None:
            raise ValueError(f"{where}.waveform: ecg needs a waveform table")
    elif spec.waveform is not None:
        raise ValueError(f"{where}.waveform: only ecg is a waveform")
    for name, field in spec.fields.items():
        if name not in KIND_FIELDS[kind]:
            known = ", ".join(KIND_FIELDS[kind]) or "none"
            raise ValueError(f"{where}.fields.{name}: not a {kind} field (known: {known})")
        for unit in field.units:
            if unit not in FIELD_UNITS[name]:
                raise ValueError(
                    f"{where}.fields.{name}.unit: {unit} does not measure {name} "
                    f"(use {' or '.join(FIELD_UNITS[name])})"
                )


def _check_ble(name: str, protocol: Protocol, ble: BleSpec) -> None:
    assert protocol.service is not None
    if ble.service != protocol.service:
        raise ValueError(
            f"ble.service: protocol {name} is the {protocol.title} {short_uuid(protocol.service)}, "
            f"not {short_uuid(ble.service)}"
        )
    allowed = ", ".join(sorted(short_uuid(u) for u in protocol.measurements))
    for uuid in ble.measurements:
        if uuid not in protocol.measurements:
            raise ValueError(
                f"ble.measurements: {short_uuid(uuid)} is not a measurement of {name} (known: {allowed})"
            )
    if len(set(ble.measurements)) != len(ble.measurements):
        raise ValueError("ble.measurements: a characteristic is listed twice")
    missing = [short_uuid(u) for u in sorted(protocol.required) if u not in ble.measurements]
    if missing:
        raise ValueError(f"ble.measurements: protocol {name} needs {', '.join(missing)}")
    if protocol.racp == "no" and ble.racp is not None:
        raise ValueError(f"ble.racp: protocol {name} has no record access control point")
    if protocol.racp == "required" and ble.racp is None:
        raise ValueError(
            f"ble.racp: protocol {name} needs its record access control point {short_uuid(RACP)}"
        )
    if ble.racp is not None and ble.racp != RACP:
        raise ValueError(f"ble.racp: the record access control point is {short_uuid(RACP)}")
    if ble.stored_records and ble.racp is None:
        raise ValueError("ble.stored_records: stored records are read through a racp, and none is given")
    if ble.context is not None and ble.context != protocol.context:
        expected = f"only {short_uuid(protocol.context)}" if protocol.context else "none"
        raise ValueError(f"ble.context: protocol {name} has {expected}, not {short_uuid(ble.context)}")


# --------------------------------------------------------------------------------------------
# Loading


def format_errors(exc: ValidationError) -> str:
    """Pydantic's errors as 'field.path: problem; ...' (a whole-profile check names its field itself)."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        inner = _INNER_PATH.match(message)
        if where and inner:  # a nested model's check that names its own field: one path
            where, message = f"{where}.{inner.group(1)}", inner.group(2)
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


_INNER_PATH = re.compile(r"^([a-z_]\w*(?:\.\w+)*): (.*)$", re.DOTALL)


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file with its decimals exact (3.9 is Decimal('3.9'), never a binary float)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(str(path), f"cannot read: {exc}") from exc


def load_profile(path: Path) -> DeviceProfile:
    raw = read_toml(path)
    try:
        return DeviceProfile.model_validate(raw)
    except ValidationError as exc:
        raise ProfileError(str(path), format_errors(exc)) from exc


def load_profiles(directory: Path) -> dict[str, DeviceProfile]:
    """All profiles by model; a duplicate model or a bad file stops start-up with its name."""
    profiles: dict[str, DeviceProfile] = {}
    for path in sorted(directory.glob("*.toml")):
        profile = load_profile(path)
        if profile.model in profiles:
            raise ProfileError(str(path), f"model {profile.model!r} is already defined")
        profiles[profile.model] = profile
    if not profiles:
        raise ProfileError(str(directory), "no device profiles found")
    return profiles
