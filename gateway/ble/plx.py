"""Pulse Oximeter Service 0x1822: PLX Spot-check 0x2A5E and PLX Continuous 0x2A5F measurements.

Pure: bytes in, frozen dataclasses out; no I/O, clock or logging. Layouts are tables
(`PLX_SPOT_CHECK_LAYOUT`, `PLX_CONTINUOUS_LAYOUT`) read by `gateway.ble.common.read_layout`; a truncated
payload raises `BleParseError` naming the field. Bytes after the last field are ignored. SFLOAT special
values come out as `NoValue`, never as a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag
from typing import Any, Final, Literal

from gateway.ble.common import BleParseError, DateTime, FieldKind, FieldSpec, Measured, read_layout
from gateway.ble.ieee11073 import NoValue

__all__ = [
    "PLX_CONTINUOUS_LAYOUT",
    "PLX_SPOT_CHECK_LAYOUT",
    "BleParseError",
    "DateTime",
    "NoValue",
    "PlxContinuous",
    "PlxDeviceAndSensorStatus",
    "PlxMeasurementStatus",
    "PlxSpotCheck",
    "Quantity",
    "SpO2PulseRate",
    "parse_plx_continuous",
    "parse_plx_spot_check",
]

_SPOT: Final = "PLX Spot-check Measurement 0x2A5E"
_CONT: Final = "PLX Continuous Measurement 0x2A5F"
_F = FieldKind

PLX_SPOT_CHECK_LAYOUT: Final[tuple[FieldSpec, ...]] = (
    FieldSpec("flags", _F.U8),
    FieldSpec("spo2", _F.SFLOAT),  # %
    FieldSpec("pulse_rate", _F.SFLOAT),  # /min
    FieldSpec("timestamp", _F.DATE_TIME, 0x01),
    FieldSpec("measurement_status", _F.U16, 0x02),
    FieldSpec("device_and_sensor_status", _F.U24, 0x04),
    FieldSpec("pulse_amplitude_index", _F.SFLOAT, 0x08),  # %
    # flag 0x10: device clock is not set (no field); bits 5-7 reserved
)
SPOT_FLAG_DEVICE_CLOCK_NOT_SET: Final = 0x10

PLX_CONTINUOUS_LAYOUT: Final[tuple[FieldSpec, ...]] = (
    FieldSpec("flags", _F.U8),
    FieldSpec("spo2_normal", _F.SFLOAT),
    FieldSpec("pulse_rate_normal", _F.SFLOAT),
    FieldSpec("spo2_fast", _F.SFLOAT, 0x01),
    FieldSpec("pulse_rate_fast", _F.SFLOAT, 0x01),
    FieldSpec("spo2_slow", _F.SFLOAT, 0x02),
    FieldSpec("pulse_rate_slow", _F.SFLOAT, 0x02),
    FieldSpec("measurement_status", _F.U16, 0x04),
    FieldSpec("device_and_sensor_status", _F.U24, 0x08),
    FieldSpec("pulse_amplitude_index", _F.SFLOAT, 0x10),
    # bits 5-7 reserved: 0x2A5F has no "device clock is not set" flag (it carries no timestamp)
)


class PlxMeasurementStatus(IntFlag):
    """Measurement Status (u16); bits 0-4 are reserved and kept as received."""

    MEASUREMENT_ONGOING = 1 << 5
    EARLY_ESTIMATED_DATA = 1 << 6
    VALIDATED_DATA = 1 << 7
    FULLY_QUALIFIED_DATA = 1 << 8
    DATA_FROM_MEASUREMENT_STORAGE = 1 << 9
    DATA_FOR_DEMONSTRATION = 1 << 10
    DATA_FOR_TESTING = 1 << 11
    CALIBRATION_ONGOING = 1 << 12
    MEASUREMENT_UNAVAILABLE = 1 << 13
    QUESTIONABLE_MEASUREMENT_DETECTED = 1 << 14
    INVALID_MEASUREMENT_DETECTED = 1 << 15


class PlxDeviceAndSensorStatus(IntFlag):
    """Device and Sensor Status (24 bits); bits 16-23 are reserved and kept as received."""

    EXTENDED_DISPLAY_UPDATE_ONGOING = 1 << 0
    EQUIPMENT_MALFUNCTION_DETECTED = 1 << 1
    SIGNAL_PROCESSING_IRREGULARITY_DETECTED = 1 << 2
    INADEQUATE_SIGNAL_DETECTED = 1 << 3
    POOR_SIGNAL_DETECTED = 1 << 4
    LOW_PERFUSION_DETECTED = 1 << 5
    ERRATIC_SIGNAL_DETECTED = 1 << 6
    NONPULSATILE_SIGNAL_DETECTED = 1 << 7
    QUESTIONABLE_PULSE_DETECTED = 1 << 8
    SIGNAL_ANALYSIS_ONGOING = 1 << 9
    SENSOR_INTERFERENCE_DETECTED = 1 << 10
    SENSOR_UNCONNECTED_TO_USER = 1 << 11
    UNKNOWN_SENSOR_CONNECTED = 1 << 12
    SENSOR_DISPLACED = 1 << 13
    SENSOR_MALFUNCTIONING = 1 << 14
    SENSOR_DISCONNECTED = 1 << 15


@dataclass(frozen=True, slots=True)
class Quantity:
    value: Measured
    unit: Literal["%", "/min"]


@dataclass(frozen=True, slots=True)
class SpO2PulseRate:
    spo2: Quantity  # %
    pulse_rate: Quantity  # /min


@dataclass(frozen=True, slots=True, kw_only=True)
class PlxSpotCheck:
    spo2: Quantity
    pulse_rate: Quantity
    timestamp: DateTime | None = None
    measurement_status: PlxMeasurementStatus | None = None  # None: field absent
    device_and_sensor_status: PlxDeviceAndSensorStatus | None = None
    pulse_amplitude_index: Quantity | None = None  # %
    device_clock_not_set: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PlxContinuous:
    normal: SpO2PulseRate
    fast: SpO2PulseRate | None = None
    slow: SpO2PulseRate | None = None
    measurement_status: PlxMeasurementStatus | None = None
    device_and_sensor_status: PlxDeviceAndSensorStatus | None = None
    pulse_amplitude_index: Quantity | None = None
    # 0x2A5F has no "device clock is not set" flag (it carries no timestamp): always False.
    device_clock_not_set: bool = False


def _pair(fields: dict[str, Any], suffix: str) -> SpO2PulseRate | None:
    if f"spo2{suffix}" not in fields:
        return None
    return SpO2PulseRate(
        spo2=Quantity(fields[f"spo2{suffix}"], "%"),
        pulse_rate=Quantity(fields[f"pulse_rate{suffix}"], "/min"),
    )


def _statuses(
    f: dict[str, Any],
) -> tuple[PlxMeasurementStatus | None, PlxDeviceAndSensorStatus | None, Quantity | None]:
    measurement = f.get("measurement_status")
    device = f.get("device_and_sensor_status")
    pai = f.get("pulse_amplitude_index")
    return (
        None if measurement is None else PlxMeasurementStatus(measurement),
        None if device is None else PlxDeviceAndSensorStatus(device),
        None if pai is None else Quantity(pai, "%"),
    )


def parse_plx_spot_check(payload: bytes) -> PlxSpotCheck:
    """Decode one PLX Spot-check Measurement 0x2A5E. Trailing bytes are ignored."""
    f, _end = read_layout(_SPOT, payload, PLX_SPOT_CHECK_LAYOUT)
    measurement, device, pai = _statuses(f)
    return PlxSpotCheck(
        spo2=Quantity(f["spo2"], "%"),
        pulse_rate=Quantity(f["pulse_rate"], "/min"),
        timestamp=f.get("timestamp"),
        measurement_status=measurement,
        device_and_sensor_status=device,
        pulse_amplitude_index=pai,
        device_clock_not_set=bool(f["flags"] & SPOT_FLAG_DEVICE_CLOCK_NOT_SET),
    )


def parse_plx_continuous(payload: bytes) -> PlxContinuous:
    """Decode one PLX Continuous Measurement 0x2A5F. Trailing bytes are ignored."""
    f, _end = read_layout(_CONT, payload, PLX_CONTINUOUS_LAYOUT)
    measurement, device, pai = _statuses(f)
    return PlxContinuous(
        normal=SpO2PulseRate(
            spo2=Quantity(f["spo2_normal"], "%"), pulse_rate=Quantity(f["pulse_rate_normal"], "/min")
        ),
        fast=_pair(f, "_fast"),
        slow=_pair(f, "_slow"),
        measurement_status=measurement,
        device_and_sensor_status=device,
        pulse_amplitude_index=pai,
    )
