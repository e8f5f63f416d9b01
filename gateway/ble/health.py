"""Pure parsers for the Bluetooth SIG health measurements: blood pressure, temperature, weight, heart rate.

Every parser takes the characteristic's value (``bytes``), returns a frozen dataclass, and raises
`BleParseError` (a `ValueError`) naming the missing or inconsistent field. No I/O, no clock, no
logging. All multi-byte fields are little-endian. The byte layouts are the tables below
(``*_LAYOUT``, read by `gateway.ble.common.read_layout`): a field is read when its flag bit is set (or
clear, for ``when_set=False``); ``flag=0`` means always present. These values are read strictly: bytes
after the last field are an error. Numbers are exact `Decimal` values with UCUM unit strings.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from gateway.ble.common import (
    FIELD_SIZE,
    BleParseError,
    DateTime,
    FieldKind,
    FieldSpec,
    Measured,
    exact_decimal,
    read_layout,
    reject_trailing,
)
from gateway.ble.ieee11073 import NoValue, NoValueReason

__all__ = [
    "BLOOD_PRESSURE_LAYOUT",
    "FIELD_SIZE",
    "HEART_RATE_LAYOUT",
    "TEMPERATURE_LAYOUT",
    "WEIGHT_LAYOUT",
    "BleParseError",
    "BloodPressureMeasurement",
    "BloodPressureStatus",
    "DateTime",
    "FieldKind",
    "FieldSpec",
    "HeartRateMeasurement",
    "PulseRateRange",
    "SensorContact",
    "TemperatureMeasurement",
    "TemperatureType",
    "WeightMeasurement",
    "parse_blood_pressure",
    "parse_heart_rate",
    "parse_temperature",
    "parse_weight",
    "rr_seconds",
]


# ---------------------------------------------------------------------------------------------
# Byte layouts

_F = FieldKind
_FLAGS = FieldSpec("flags", _F.U8)

# Blood Pressure Measurement 0x2A35 (Blood Pressure Service 0x1810).
_BP: Final = "blood pressure measurement"
BP_FLAG_KPA: Final = 0x01  # units: 0 = mmHg, 1 = kPa (systolic, diastolic, MAP)
BLOOD_PRESSURE_LAYOUT: tuple[FieldSpec, ...] = (
    _FLAGS,
    FieldSpec("systolic", _F.SFLOAT),
    FieldSpec("diastolic", _F.SFLOAT),
    FieldSpec("mean_arterial_pressure", _F.SFLOAT),
    FieldSpec("time_stamp", _F.DATE_TIME, flag=0x02),
    FieldSpec("pulse_rate", _F.SFLOAT, flag=0x04),
    FieldSpec("user_id", _F.U8, flag=0x08),
    FieldSpec("measurement_status", _F.U16, flag=0x10),
)
# Temperature Measurement 0x2A1C (Health Thermometer Service 0x1809).
_TEMP: Final = "temperature measurement"
TEMP_FLAG_FAHRENHEIT: Final = 0x01  # units: 0 = Celsius, 1 = Fahrenheit
TEMPERATURE_LAYOUT: tuple[FieldSpec, ...] = (
    _FLAGS,
    FieldSpec("temperature", _F.FLOAT),
    FieldSpec("time_stamp", _F.DATE_TIME, flag=0x02),
    FieldSpec("temperature_type", _F.U8, flag=0x04),
)
# Weight Measurement 0x2A9D (Weight Scale Service 0x181D).
_WEIGHT: Final = "weight measurement"
WEIGHT_FLAG_IMPERIAL: Final = 0x01  # units: 0 = SI (kg, m), 1 = imperial (lb, in)
WEIGHT_LAYOUT: tuple[FieldSpec, ...] = (
    _FLAGS,
    FieldSpec("weight", _F.U16),
    FieldSpec("time_stamp", _F.DATE_TIME, flag=0x02),
    FieldSpec("user_id", _F.U8, flag=0x04),
    FieldSpec("bmi", _F.U16, flag=0x08),
    FieldSpec("height", _F.U16, flag=0x08),
)
# Heart Rate Measurement 0x2A37 (Heart Rate Service 0x180D).
_HR: Final = "heart rate measurement"
HEART_RATE_LAYOUT: tuple[FieldSpec, ...] = (
    _FLAGS,
    FieldSpec("heart_rate", _F.U8, flag=0x01, when_set=False),
    FieldSpec("heart_rate", _F.U16, flag=0x01),
    # bits 1-2: sensor contact status (no field)
    FieldSpec("energy_expended", _F.U16, flag=0x08),
    FieldSpec("rr_intervals", _F.U16, flag=0x10, repeated=True),
)

# Weight Scale resolutions, by the flags' unit bit (0 = SI, 1 = imperial): (exponent, multiplier, UCUM).
# The value is raw × multiplier × 10**exponent, built exactly.
_WEIGHT_SCALE = {False: (-3, 5, "kg"), True: (-2, 1, "[lb_av]")}  # 0.005 kg, 0.01 lb
_HEIGHT_SCALE = {False: (-3, 1, "m"), True: (-1, 1, "[in_i]")}  # 0.001 m, 0.1 in
_BMI_SCALE = (-1, 1, "kg/m2")  # 0.1 kg/m2
_WEIGHT_UNSUCCESSFUL = 0xFFFF


def _scaled(raw: int, scale: tuple[int, int, str]) -> Decimal:
    exponent, multiplier, _unit = scale
    return exact_decimal(raw * multiplier, exponent)


# ---------------------------------------------------------------------------------------------
# Shared field types


class PulseRateRange(enum.IntEnum):
    """Blood pressure measurement status, bits 3–4."""

    WITHIN_RANGE = 0
    EXCEEDS_UPPER_LIMIT = 1
    BELOW_LOWER_LIMIT = 2
    RESERVED = 3


@dataclass(frozen=True, slots=True)
class BloodPressureStatus:
    """Blood pressure measurement status (u16); bits 6–15 are reserved and kept in ``raw``."""

    body_movement: bool  # bit 0
    cuff_too_loose: bool  # bit 1
    irregular_pulse: bool  # bit 2
    pulse_rate_range: PulseRateRange  # bits 3–4
    improper_position: bool  # bit 5
    raw: int

    @classmethod
    def from_raw(cls, raw: int) -> BloodPressureStatus:
        return cls(
            body_movement=bool(raw & 0x01),
            cuff_too_loose=bool(raw & 0x02),
            irregular_pulse=bool(raw & 0x04),
            pulse_rate_range=PulseRateRange((raw >> 3) & 0x03),
            improper_position=bool(raw & 0x20),
            raw=raw,
        )


class TemperatureType(enum.IntEnum):
    """Temperature Type (0x2A1D) codes; 0 and 10–255 are reserved (kept as a plain int)."""

    ARMPIT = 1
    BODY = 2  # "Body (general)"
    EAR = 3  # "Ear (usually earlobe)"
    FINGER = 4
    GASTROINTESTINAL_TRACT = 5
    MOUTH = 6
    RECTUM = 7
    TOE = 8
    TYMPANUM = 9  # "Tympanum (ear drum)"


class SensorContact(enum.IntEnum):
    """Heart rate flags bits 1–2 (values 0 and 1 both mean "not supported")."""

    NOT_SUPPORTED = 0
    NOT_DETECTED = 2
    DETECTED = 3


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True, kw_only=True)
class BloodPressureMeasurement:
    systolic: Measured
    diastolic: Measured
    mean_arterial_pressure: Measured
    unit: str  # "mm[Hg]" or "kPa"
    time_stamp: DateTime | None = None
    pulse_rate: Measured | None = None  # unit "/min"
    user_id: int | None = None  # 0xFF = unknown user
    status: BloodPressureStatus | None = None
    pulse_rate_unit: str = "/min"


@dataclass(frozen=True, slots=True, kw_only=True)
class TemperatureMeasurement:
    temperature: Measured
    unit: str  # "Cel" or "[degF]"
    time_stamp: DateTime | None = None
    temperature_type: TemperatureType | int | None = None  # int only for reserved codes


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightMeasurement:
    weight: Measured  # NoValue(MEASUREMENT_UNSUCCESSFUL) for 0xFFFF
    unit: str  # "kg" or "[lb_av]"
    time_stamp: DateTime | None = None
    user_id: int | None = None  # 0xFF = unknown user
    bmi: Decimal | None = None  # unit "kg/m2"
    height: Decimal | None = None
    height_unit: str | None = None  # "m" or "[in_i]" when height is present
    bmi_unit: str = "kg/m2"


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartRateMeasurement:
    heart_rate: int  # unit "/min"
    sensor_contact: SensorContact
    energy_expended: int | None = None  # kilojoules (UCUM "kJ")
    rr_intervals_1024: tuple[int, ...] = ()  # raw, in 1/1024 s, oldest first
    unit: str = "/min"

    @property
    def rr_intervals(self) -> tuple[Decimal, ...]:
        """RR intervals in seconds ("s"), exact (n/1024 always has a finite decimal expansion)."""
        return tuple(rr_seconds(raw) for raw in self.rr_intervals_1024)


def rr_seconds(raw: int) -> Decimal:
    """Exact seconds for a raw RR interval in 1/1024 s (1/1024 = 0.0009765625)."""
    return exact_decimal(raw * 9765625, -10)


def _read(characteristic: str, layout: tuple[FieldSpec, ...], payload: bytes) -> tuple[int, dict[str, Any]]:
    """Read flags then every present field; complain about truncation or trailing bytes."""
    fields, end = read_layout(characteristic, payload, layout)
    reject_trailing(characteristic, payload, end)
    return fields["flags"], fields


# ---------------------------------------------------------------------------------------------
# Parsers


def parse_blood_pressure(payload: bytes) -> BloodPressureMeasurement:
    """Blood Pressure Measurement (0x2A35)."""
    flags, f = _read(_BP, BLOOD_PRESSURE_LAYOUT, payload)
    status = f.get("measurement_status")
    return BloodPressureMeasurement(
        systolic=f["systolic"],
        diastolic=f["diastolic"],
        mean_arterial_pressure=f["mean_arterial_pressure"],
        unit="kPa" if flags & BP_FLAG_KPA else "mm[Hg]",
        time_stamp=f.get("time_stamp"),
        pulse_rate=f.get("pulse_rate"),
        user_id=f.get("user_id"),
        status=None if status is None else BloodPressureStatus.from_raw(status),
    )


def parse_temperature(payload: bytes) -> TemperatureMeasurement:
    """Temperature Measurement (0x2A1C)."""
    flags, f = _read(_TEMP, TEMPERATURE_LAYOUT, payload)
    code = f.get("temperature_type")
    kind: TemperatureType | int | None = code
    if code is not None and code in TemperatureType._value2member_map_:
        kind = TemperatureType(code)
    return TemperatureMeasurement(
        temperature=f["temperature"],
        unit="[degF]" if flags & TEMP_FLAG_FAHRENHEIT else "Cel",
        time_stamp=f.get("time_stamp"),
        temperature_type=kind,
    )


def parse_weight(payload: bytes) -> WeightMeasurement:
    """Weight Measurement (0x2A9D)."""
    flags, f = _read(_WEIGHT, WEIGHT_LAYOUT, payload)
    imperial = bool(flags & WEIGHT_FLAG_IMPERIAL)
    weight_scale = _WEIGHT_SCALE[imperial]
    raw_weight = f["weight"]
    weight: Measured = (
        NoValue(NoValueReason.MEASUREMENT_UNSUCCESSFUL)
        if raw_weight == _WEIGHT_UNSUCCESSFUL
        else _scaled(raw_weight, weight_scale)
    )
    has_bmi = "bmi" in f
    return WeightMeasurement(
        weight=weight,
        unit=weight_scale[2],
        time_stamp=f.get("time_stamp"),
        user_id=f.get("user_id"),
        bmi=_scaled(f["bmi"], _BMI_SCALE) if has_bmi else None,
        height=_scaled(f["height"], _HEIGHT_SCALE[imperial]) if has_bmi else None,
        height_unit=_HEIGHT_SCALE[imperial][2] if has_bmi else None,
    )


def parse_heart_rate(payload: bytes) -> HeartRateMeasurement:
    """Heart Rate Measurement (0x2A37)."""
    flags, f = _read(_HR, HEART_RATE_LAYOUT, payload)
    contact_bits = (flags >> 1) & 0x03
    return HeartRateMeasurement(
        heart_rate=f["heart_rate"],
        sensor_contact=SensorContact.NOT_SUPPORTED if contact_bits < 2 else SensorContact(contact_bits),
        energy_expended=f.get("energy_expended"),
        rr_intervals_1024=f.get("rr_intervals", ()),
    )
