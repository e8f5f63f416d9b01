"""What a standard Bluetooth health device's notification means as a reading: pure mapping.

The parsers in `gateway.ble` decode a characteristic exactly as the Bluetooth SIG defines it;
this module turns their results into our field names, units and flags, the same vocabulary the
kiosk link uses, so validation, storage and the FHIR mapping do not care where a reading came
from. The profile then checks units and ranges (`gateway.validate`).

Rules kept here, in one place:
- IEEE 11073 special values (NaN, NRes, +/-INF, reserved) and a scale's "measurement
  unsuccessful" become a measurement without a value and with its reason, never a number.
- A glucose result the meter could only bound (sensor status "higher/lower than the device can
  process") keeps the meter's limit as its value, flagged above_range / below_range, as the kiosk
  link's HI / LO readings are; the bridge writes it as a Quantity with a comparator.
- A device status that says the result is not a resident's measurement (control solution,
  demonstration or test data, an invalid or unavailable measurement, a strip or sensor fault)
  refuses the reading with that reason (`NotAReading`), so it is logged and counted, not stored.
- Streams (heart rate, continuous SpO2) arrive every second or so; which of them become
  readings is the ingest's business (it keeps one per interval), not this module's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Final

from contract.wire import Measurement
from gateway.ble.glucose import (
    Bound,
    DateTime,
    GlucoseMeasurement,
    GlucoseSampleLocation,
    GlucoseSampleType,
    GlucoseSensorStatus,
    parse_glucose_measurement,
)
from gateway.ble.health import (
    PulseRateRange,
    SensorContact,
    parse_blood_pressure,
    parse_heart_rate,
    parse_temperature,
    parse_weight,
)
from gateway.ble.ieee11073 import NoValue, NoValueReason
from gateway.ble.plx import (
    PlxDeviceAndSensorStatus,
    PlxMeasurementStatus,
    parse_plx_continuous,
    parse_plx_spot_check,
)
from gateway.errors import GatewayError
from gateway.transports.ble import uuid16

__all__ = [
    "CHARACTERISTICS",
    "STREAMS",
    "DeviceReading",
    "NotAReading",
    "device_reading",
]

_ABSENT: Final[dict[NoValueReason, str]] = {
    NoValueReason.NAN: "nan",
    NoValueReason.NRES: "nres",
    NoValueReason.POSITIVE_INFINITY: "+inf",
    NoValueReason.NEGATIVE_INFINITY: "-inf",
    NoValueReason.RESERVED: "reserved",
    NoValueReason.MEASUREMENT_UNSUCCESSFUL: "unsuccessful",
    NoValueReason.CONTRADICTORY_RANGE: "unsuccessful",
}


class NotAReading(GatewayError):
    """The device sent a result that is not a resident's measurement; the reason says why."""


@dataclass(frozen=True, slots=True)
class DeviceReading:
    """One measurement as the device reported it, in our names, before the profile checks it."""

    kind: str
    values: tuple[Measurement, ...]  # in the device's units
    flags: tuple[str, ...] = ()
    device_time: DateTime | None = None  # the device's wall clock (local time); None: not sent or not set
    sequence: int | None = None  # a stored record's number (glucose), None for live measurements


def _measurement(name: str, value: Decimal | NoValue, unit: str) -> Measurement:
    if isinstance(value, NoValue):
        return Measurement(name, None, unit, _ABSENT[value.reason])
    return Measurement(name, value, unit)


def _blood_pressure(payload: bytes) -> DeviceReading:
    bp = parse_blood_pressure(payload)
    values = [
        _measurement("systolic", bp.systolic, bp.unit),
        _measurement("diastolic", bp.diastolic, bp.unit),
        _measurement("mean_arterial", bp.mean_arterial_pressure, bp.unit),
    ]
    if bp.pulse_rate is not None:
        values.append(_measurement("pulse_rate", bp.pulse_rate, bp.pulse_rate_unit))
    flags: list[str] = []
    status = bp.status
    if status is not None:
        if status.body_movement:
            flags.append("body_movement")
        if status.cuff_too_loose:
            flags.append("cuff_loose")
        if status.irregular_pulse:
            flags.append("irregular_pulse")
        if status.improper_position:
            flags.append("improper_position")
        if status.pulse_rate_range is PulseRateRange.EXCEEDS_UPPER_LIMIT:
            flags.append("pulse_above_range")
        elif status.pulse_rate_range is PulseRateRange.BELOW_LOWER_LIMIT:
            flags.append("pulse_below_range")
    return DeviceReading("bp", tuple(values), tuple(flags), bp.time_stamp)


# Sensor status bits that mean the meter has no valid result for this record.
_GLUCOSE_FAULTS: Final = (
    GlucoseSensorStatus.SENSOR_MALFUNCTION,
    GlucoseSensorStatus.SAMPLE_SIZE_INSUFFICIENT,
    GlucoseSensorStatus.STRIP_INSERTION_ERROR,
    GlucoseSensorStatus.STRIP_TYPE_INCORRECT,
    GlucoseSensorStatus.TEMPERATURE_TOO_HIGH,
    GlucoseSensorStatus.TEMPERATURE_TOO_LOW,
    GlucoseSensorStatus.READ_INTERRUPTED,
    GlucoseSensorStatus.GENERAL_DEVICE_FAULT,
)


def glucose_reading(record: GlucoseMeasurement) -> DeviceReading:
    """A decoded Glucose Measurement -> reading (also used for stored records)."""
    where = f"glucose record {record.sequence_number}"
    if record.concentration is None:
        raise NotAReading(f"{where}: carries no concentration")
    status = record.sensor_status or GlucoseSensorStatus(0)
    faults = [fault.name or str(int(fault)) for fault in _GLUCOSE_FAULTS if status & fault]
    if faults:
        raise NotAReading(f"{where}: meter reported {', '.join(f.lower() for f in faults)}")
    if (
        record.sample_type is GlucoseSampleType.CONTROL_SOLUTION
        or record.sample_location is GlucoseSampleLocation.CONTROL_SOLUTION
    ):
        raise NotAReading(f"{where}: control-solution result, a meter check, not a resident's")
    concentration = record.concentration
    flags: list[str] = []
    value = concentration.value
    if isinstance(value, Bound):
        flags.append("above_range" if value.comparator == ">" else "below_range")
        measurement = (
            Measurement("glucose", value.limit, concentration.unit)
            if value.limit is not None
            else Measurement("glucose", None, concentration.unit, "unsuccessful")
        )
    else:
        measurement = _measurement("glucose", value, concentration.unit)
    base = record.base_time
    device_time = base
    if record.time_offset_minutes:
        moment = base.to_datetime()
        if moment is not None:
            shifted = moment + timedelta(minutes=record.time_offset_minutes)
            device_time = DateTime(
                shifted.year, shifted.month, shifted.day, shifted.hour, shifted.minute, shifted.second
            )
    return DeviceReading("glucose", (measurement,), tuple(flags), device_time, record.sequence_number)


def _glucose(payload: bytes) -> DeviceReading:
    return glucose_reading(parse_glucose_measurement(payload))


def _temperature(payload: bytes) -> DeviceReading:
    temperature = parse_temperature(payload)
    value = _measurement("body_temperature", temperature.temperature, temperature.unit)
    return DeviceReading("temperature", (value,), (), temperature.time_stamp)


# PLX statuses that mean the numbers are not a resident's valid measurement.
_PLX_REFUSED: Final = (
    PlxMeasurementStatus.MEASUREMENT_UNAVAILABLE,
    PlxMeasurementStatus.INVALID_MEASUREMENT_DETECTED,
    PlxMeasurementStatus.DATA_FOR_DEMONSTRATION,
    PlxMeasurementStatus.DATA_FOR_TESTING,
    PlxMeasurementStatus.CALIBRATION_ONGOING,
)
_PLX_SENSOR_REFUSED: Final = (
    PlxDeviceAndSensorStatus.EQUIPMENT_MALFUNCTION_DETECTED,
    PlxDeviceAndSensorStatus.SENSOR_UNCONNECTED_TO_USER,
    PlxDeviceAndSensorStatus.SENSOR_DISCONNECTED,
    PlxDeviceAndSensorStatus.SENSOR_MALFUNCTIONING,
    PlxDeviceAndSensorStatus.SENSOR_DISPLACED,
)


def _plx_flags(
    measurement: PlxMeasurementStatus | None, sensor: PlxDeviceAndSensorStatus | None, what: str
) -> tuple[str, ...]:
    measurement = measurement or PlxMeasurementStatus(0)
    sensor = sensor or PlxDeviceAndSensorStatus(0)
    refused = [s.name for s in _PLX_REFUSED if measurement & s] + [
        s.name for s in _PLX_SENSOR_REFUSED if sensor & s
    ]
    if refused:
        raise NotAReading(f"{what}: oximeter reported {', '.join(str(r).lower() for r in refused)}")
    flags = []
    if sensor & PlxDeviceAndSensorStatus.LOW_PERFUSION_DETECTED:
        flags.append("low_perfusion")
    if measurement & PlxMeasurementStatus.QUESTIONABLE_MEASUREMENT_DETECTED or sensor & (
        PlxDeviceAndSensorStatus.QUESTIONABLE_PULSE_DETECTED
        | PlxDeviceAndSensorStatus.POOR_SIGNAL_DETECTED
        | PlxDeviceAndSensorStatus.ERRATIC_SIGNAL_DETECTED
        | PlxDeviceAndSensorStatus.INADEQUATE_SIGNAL_DETECTED
    ):
        flags.append("questionable_measurement")
    return tuple(flags)


def _plx_spot_check(payload: bytes) -> DeviceReading:
    spot = parse_plx_spot_check(payload)
    flags = _plx_flags(spot.measurement_status, spot.device_and_sensor_status, "PLX spot-check")
    values = (
        _measurement("spo2", spot.spo2.value, spot.spo2.unit),
        _measurement("pulse_rate", spot.pulse_rate.value, spot.pulse_rate.unit),
    )
    # A timestamp from a clock the device says is not set is not a time at all.
    device_time = None if spot.device_clock_not_set else spot.timestamp
    return DeviceReading("spo2", values, flags, device_time)


def _plx_continuous(payload: bytes) -> DeviceReading:
    continuous = parse_plx_continuous(payload)
    flags = _plx_flags(
        continuous.measurement_status, continuous.device_and_sensor_status, "PLX continuous measurement"
    )
    if (
        continuous.measurement_status
        and continuous.measurement_status & PlxMeasurementStatus.MEASUREMENT_ONGOING
    ):
        raise NotAReading("PLX continuous measurement: still settling (measurement ongoing)")
    normal = continuous.normal
    values = (
        _measurement("spo2", normal.spo2.value, normal.spo2.unit),
        _measurement("pulse_rate", normal.pulse_rate.value, normal.pulse_rate.unit),
    )
    return DeviceReading("spo2", values, flags)


def _weight(payload: bytes) -> DeviceReading:
    weight = parse_weight(payload)
    # BMI and height are the scale's arithmetic on a height someone typed in; the record keeps the
    # measured weight only (the FHIR mapping of a weight reading refuses anything else).
    return DeviceReading(
        "weight", (_measurement("body_weight", weight.weight, weight.unit),), (), weight.time_stamp
    )


def _heart_rate(payload: bytes) -> DeviceReading:
    heart = parse_heart_rate(payload)
    if heart.sensor_contact is SensorContact.NOT_DETECTED:
        raise NotAReading("heart rate: the strap has no skin contact")
    return DeviceReading("heart_rate", (Measurement("pulse_rate", Decimal(heart.heart_rate), heart.unit),))


# characteristic UUID -> how its notifications become readings
CHARACTERISTICS: Final[dict[str, Callable[[bytes], DeviceReading]]] = {
    uuid16(0x2A35): _blood_pressure,
    uuid16(0x2A18): _glucose,
    uuid16(0x2A1C): _temperature,
    uuid16(0x2A5E): _plx_spot_check,
    uuid16(0x2A5F): _plx_continuous,
    uuid16(0x2A9D): _weight,
    uuid16(0x2A37): _heart_rate,
}
# Characteristics that notify continuously: the ingest keeps one reading per interval.
STREAMS: Final = frozenset({uuid16(0x2A5F), uuid16(0x2A37)})


def device_reading(characteristic: str, payload: bytes) -> DeviceReading:
    """Decode one notification of `characteristic` (full UUID); raises BleParseError or NotAReading."""
    try:
        adapter = CHARACTERISTICS[characteristic.lower()]
    except KeyError:
        raise NotAReading(f"characteristic {characteristic} carries no measurement we read") from None
    return adapter(payload)
