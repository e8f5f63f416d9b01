"""Characteristic values of the Bluetooth SIG health services, built field by field from the tables of
the GATT Specification Supplement (GSS) and the service specifications (BLS, GLS, HTS, PLXS, WSS, HRS).

Every encoder takes the measurement's fields as keyword arguments, sets each flag bit from which
optional fields are present, and returns the value exactly as the peripheral sends it (little-endian).
A field the spec cannot carry (a weight that is not a multiple of the resolution, a status bit out of
range) raises `ValueError`: a simulated device sends what the test asked for or fails loudly.

This module is written independently of ``gateway.ble`` (our parsers): the tests use one to check the
other, so neither imports the other.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

from simulators.ble.ieee11073 import Number, Special, encode_float, encode_sfloat, to_decimal

__all__ = [
    "UNKNOWN_DATE_TIME",
    "WEIGHT_UNSUCCESSFUL",
    "DateTimeValue",
    "GlucoseSampleLocation",
    "GlucoseSampleType",
    "GlucoseSensorStatus",
    "PlxDeviceAndSensorStatus",
    "PlxMeasurementStatus",
    "PulseRateRange",
    "SensorContact",
    "TemperatureType",
    "blood_pressure_status",
    "encode_blood_pressure_measurement",
    "encode_date_time",
    "encode_glucose_measurement",
    "encode_heart_rate_measurement",
    "encode_plx_continuous",
    "encode_plx_spot_check",
    "encode_temperature_measurement",
    "encode_weight_measurement",
]

# ------------------------------------------------------------------------------------------- helpers


def _u8(value: int, what: str) -> bytes:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{what} = {value} does not fit in a uint8")
    return value.to_bytes(1, "little")


def _u16(value: int, what: str) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{what} = {value} does not fit in a uint16")
    return value.to_bytes(2, "little")


def _s16(value: int, what: str) -> bytes:
    if not -0x8000 <= value <= 0x7FFF:
        raise ValueError(f"{what} = {value} does not fit in a sint16")
    return value.to_bytes(2, "little", signed=True)


def _u24(value: int, what: str) -> bytes:
    if not 0 <= value <= 0xFFFFFF:
        raise ValueError(f"{what} = {value} does not fit in a uint24")
    return value.to_bytes(3, "little")


def _resolution(value: Number, step: Decimal, what: str) -> int:
    """The raw integer of a fixed-resolution field: value / step, which must be exact."""
    raw = to_decimal(value) / step
    if raw != raw.to_integral_value():
        raise ValueError(f"{what} = {value} is not a multiple of its resolution {step}")
    return int(raw)


# --------------------------------------------------------------------------- Date Time (GSS 0x2A08)


@dataclass(frozen=True, slots=True)
class DateTimeValue:
    """Date Time 0x2A08. Year 0, month 0 or day 0 means "not known" (GSS), so a device with no idea
    of the date can say so: `UNKNOWN_DATE_TIME`.
    """

    year: int  # 1582..9999, or 0 = not known
    month: int  # 1..12, or 0 = not known
    day: int  # 1..31, or 0 = not known
    hours: int = 0  # 0..23
    minutes: int = 0  # 0..59
    seconds: int = 0  # 0..59

    @classmethod
    def of(cls, value: datetime | DateTimeValue) -> DateTimeValue:
        if isinstance(value, DateTimeValue):
            return value
        return cls(value.year, value.month, value.day, value.hour, value.minute, value.second)


UNKNOWN_DATE_TIME = DateTimeValue(0, 0, 0)  # what a device sends when it has no idea of the date


def encode_date_time(value: datetime | DateTimeValue) -> bytes:
    """Date Time, 7 bytes.

    ======  ====  =====================
    Field   Type  Range
    ======  ====  =====================
    Year    u16   1582..9999, 0 unknown
    Month   u8    1..12, 0 unknown
    Day     u8    1..31, 0 unknown
    Hours   u8    0..23
    Minutes u8    0..59
    Seconds u8    0..59
    ======  ====  =====================
    """
    v = DateTimeValue.of(value)
    checks = (
        ("year", v.year, v.year == 0 or 1582 <= v.year <= 9999),
        ("month", v.month, 0 <= v.month <= 12),
        ("day", v.day, 0 <= v.day <= 31),
        ("hours", v.hours, 0 <= v.hours <= 23),
        ("minutes", v.minutes, 0 <= v.minutes <= 59),
        ("seconds", v.seconds, 0 <= v.seconds <= 59),
    )
    for name, got, ok in checks:
        if not ok:
            raise ValueError(f"Date Time {name} = {got} is out of range")
    return _u16(v.year, "year") + bytes([v.month, v.day, v.hours, v.minutes, v.seconds])


# --------------------------------------------------------------- Blood Pressure Measurement 0x2A35


class PulseRateRange(enum.IntEnum):
    """Measurement Status bits 3-4."""

    WITHIN_RANGE = 0
    EXCEEDS_UPPER_LIMIT = 1
    BELOW_LOWER_LIMIT = 2
    RESERVED = 3


def blood_pressure_status(
    *,
    body_movement: bool = False,
    cuff_too_loose: bool = False,
    irregular_pulse: bool = False,
    pulse_rate_range: PulseRateRange = PulseRateRange.WITHIN_RANGE,
    improper_position: bool = False,
) -> int:
    """Blood Pressure Measurement Status (u16), from its bit table.

    ====  ==========================================================================
    Bit   Meaning when set (value for bits 3-4)
    ====  ==========================================================================
    0     Body movement detected during measurement
    1     Cuff too loose (0: cuff fits properly)
    2     Irregular pulse detected
    3-4   Pulse rate range: 0 within, 1 exceeds upper limit, 2 below lower limit
    5     Improper measurement position (0: proper)
    6-15  Reserved for future use
    ====  ==========================================================================
    """
    return (
        (0x0001 if body_movement else 0)
        | (0x0002 if cuff_too_loose else 0)
        | (0x0004 if irregular_pulse else 0)
        | (int(pulse_rate_range) & 0x3) << 3
        | (0x0020 if improper_position else 0)
    )


def encode_blood_pressure_measurement(
    *,
    systolic: Number | Special,
    diastolic: Number | Special,
    mean_arterial_pressure: Number | Special,
    unit: Literal["mmHg", "kPa"] = "mmHg",
    time_stamp: datetime | DateTimeValue | None = None,
    pulse_rate: Number | Special | None = None,
    user_id: int | None = None,
    status: int | None = None,
) -> bytes:
    """Blood Pressure Measurement 0x2A35 (indicated).

    =====  ==============================  ==========  =========================
    Flag   Field                           Type        Present
    =====  ==============================  ==========  =========================
    —      Flags                           u8          always
    —      Systolic                        SFLOAT      always (unit: flag bit 0)
    —      Diastolic                       SFLOAT      always
    —      Mean Arterial Pressure          SFLOAT      always
    bit 1  Time Stamp                      Date Time   when set
    bit 2  Pulse Rate                      SFLOAT      when set (beats per minute)
    bit 3  User ID                         u8          when set (0xFF unknown user)
    bit 4  Measurement Status              u16         when set
    =====  ==============================  ==========  =========================

    Flag bit 0: 0 = mmHg, 1 = kPa. Bits 5-7 reserved.
    """
    if unit not in ("mmHg", "kPa"):
        raise ValueError(f"unit {unit!r}: blood pressure is in mmHg or kPa")
    flags = 0x01 if unit == "kPa" else 0x00
    body = encode_sfloat(systolic) + encode_sfloat(diastolic) + encode_sfloat(mean_arterial_pressure)
    if time_stamp is not None:
        flags |= 0x02
        body += encode_date_time(time_stamp)
    if pulse_rate is not None:
        flags |= 0x04
        body += encode_sfloat(pulse_rate)
    if user_id is not None:
        flags |= 0x08
        body += _u8(user_id, "user id")
    if status is not None:
        flags |= 0x10
        body += _u16(status, "measurement status")
    return bytes([flags]) + body


# --------------------------------------------------------------------- Glucose Measurement 0x2A18


class GlucoseSampleType(enum.IntEnum):
    """Type: the low nibble of the Type-Sample Location byte (0 and 11-15 reserved)."""

    CAPILLARY_WHOLE_BLOOD = 0x1
    CAPILLARY_PLASMA = 0x2
    VENOUS_WHOLE_BLOOD = 0x3
    VENOUS_PLASMA = 0x4
    ARTERIAL_WHOLE_BLOOD = 0x5
    ARTERIAL_PLASMA = 0x6
    UNDETERMINED_WHOLE_BLOOD = 0x7
    UNDETERMINED_PLASMA = 0x8
    INTERSTITIAL_FLUID = 0x9
    CONTROL_SOLUTION = 0xA


class GlucoseSampleLocation(enum.IntEnum):
    """Sample Location: the high nibble of the Type-Sample Location byte (0, 5-14 reserved)."""

    FINGER = 0x1
    ALTERNATE_SITE_TEST = 0x2
    EARLOBE = 0x3
    CONTROL_SOLUTION = 0x4
    NOT_AVAILABLE = 0xF


class GlucoseSensorStatus(enum.IntFlag):
    """Sensor Status Annunciation (u16); bits 12-15 reserved."""

    DEVICE_BATTERY_LOW = 0x0001
    SENSOR_MALFUNCTION = 0x0002
    SAMPLE_SIZE_INSUFFICIENT = 0x0004
    STRIP_INSERTION_ERROR = 0x0008
    STRIP_TYPE_INCORRECT = 0x0010
    RESULT_ABOVE_DEVICE_RANGE = 0x0020  # "sensor result higher than the device can process"
    RESULT_BELOW_DEVICE_RANGE = 0x0040  # "sensor result lower than the device can process"
    TEMPERATURE_TOO_HIGH = 0x0080
    TEMPERATURE_TOO_LOW = 0x0100
    READ_INTERRUPTED = 0x0200  # "sensor read interrupted because strip was pulled too soon"
    GENERAL_DEVICE_FAULT = 0x0400
    TIME_FAULT = 0x0800


def encode_glucose_measurement(
    *,
    sequence_number: int,
    base_time: datetime | DateTimeValue,
    time_offset_minutes: int | None = None,
    concentration: Number | Special | None = None,
    unit: Literal["kg/L", "mol/L"] = "mol/L",
    sample_type: int = GlucoseSampleType.CAPILLARY_WHOLE_BLOOD,
    sample_location: int = GlucoseSampleLocation.FINGER,
    sensor_status: int | None = None,
    context_follows: bool = False,
) -> bytes:
    """Glucose Measurement 0x2A18 (notified), concentration already in the SI unit on the wire.

    =====  ==========================================  =========  ==================
    Flag   Field                                       Type       Present
    =====  ==========================================  =========  ==================
    —      Flags                                       u8         always
    —      Sequence Number                             u16        always
    —      Base Time                                   Date Time  always
    bit 0  Time Offset (minutes)                       s16        when set
    bit 1  Glucose Concentration                       SFLOAT     when set
    bit 1  Type (low nibble) - Sample Location (high)  u8         when set
    bit 3  Sensor Status Annunciation                  u16        when set
    =====  ==========================================  =========  ==================

    Flag bit 2: concentration unit, 0 = kg/L, 1 = mol/L. Bit 4: Context Information Follows (a
    Glucose Measurement Context 0x2A34 notification comes next). Bits 5-7 reserved.
    """
    if unit not in ("kg/L", "mol/L"):
        raise ValueError(f"unit {unit!r}: the wire unit is kg/L or mol/L")
    flags = 0
    body = _u16(sequence_number, "sequence number") + encode_date_time(base_time)
    if time_offset_minutes is not None:
        flags |= 0x01
        body += _s16(time_offset_minutes, "time offset")
    if concentration is not None:
        flags |= 0x02
        if unit == "mol/L":
            flags |= 0x04
        if not (0 <= sample_type <= 0xF and 0 <= sample_location <= 0xF):
            raise ValueError(f"type {sample_type} / sample location {sample_location} must be nibbles")
        body += encode_sfloat(concentration) + bytes([(sample_location << 4) | sample_type])
    if sensor_status is not None:
        flags |= 0x08
        body += _u16(int(sensor_status), "sensor status annunciation")
    if context_follows:
        flags |= 0x10
    return bytes([flags]) + body


# ----------------------------------------------------------------- Temperature Measurement 0x2A1C


class TemperatureType(enum.IntEnum):
    """Temperature Type 0x2A1D (0 and 10-255 reserved)."""

    ARMPIT = 1
    BODY_GENERAL = 2
    EAR_LOBE = 3
    FINGER = 4
    GASTROINTESTINAL_TRACT = 5
    MOUTH = 6
    RECTUM = 7
    TOE = 8
    TYMPANUM = 9


def encode_temperature_measurement(
    *,
    temperature: Number | Special,
    unit: Literal["C", "F"] = "C",
    time_stamp: datetime | DateTimeValue | None = None,
    temperature_type: int | None = None,
) -> bytes:
    """Temperature Measurement 0x2A1C (indicated).

    =====  ======================  =========  ===========================
    Flag   Field                   Type       Present
    =====  ======================  =========  ===========================
    —      Flags                   u8         always
    —      Temperature Measurement FLOAT      always (unit: flag bit 0)
    bit 1  Time Stamp              Date Time  when set
    bit 2  Temperature Type        u8         when set
    =====  ======================  =========  ===========================

    Flag bit 0: 0 = Celsius, 1 = Fahrenheit. Bits 3-7 reserved.
    """
    if unit not in ("C", "F"):
        raise ValueError(f"unit {unit!r}: temperature is in C or F")
    flags = 0x01 if unit == "F" else 0x00
    body = encode_float(temperature)
    if time_stamp is not None:
        flags |= 0x02
        body += encode_date_time(time_stamp)
    if temperature_type is not None:
        flags |= 0x04
        body += _u8(temperature_type, "temperature type")
    return bytes([flags]) + body


# ---------------------------------------------------------- PLX Spot-check 0x2A5E / Continuous 0x2A5F


class PlxMeasurementStatus(enum.IntFlag):
    """PLX Measurement Status (u16); bits 0-4 reserved."""

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


class PlxDeviceAndSensorStatus(enum.IntFlag):
    """PLX Device and Sensor Status (u24); bits 16-23 reserved."""

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


def encode_plx_spot_check(
    *,
    spo2: Number | Special,
    pulse_rate: Number | Special,
    time_stamp: datetime | DateTimeValue | None = None,
    measurement_status: int | None = None,
    device_and_sensor_status: int | None = None,
    pulse_amplitude_index: Number | Special | None = None,
    device_clock_not_set: bool = False,
) -> bytes:
    """PLX Spot-check Measurement 0x2A5E (indicated).

    =====  ===============================  =========  =========
    Flag   Field                            Type       Present
    =====  ===============================  =========  =========
    —      Flags                            u8         always
    —      SpO2PR-Spot-Check - SpO2 (%)     SFLOAT     always
    —      SpO2PR-Spot-Check - PR (bpm)     SFLOAT     always
    bit 0  Timestamp                        Date Time  when set
    bit 1  Measurement Status               u16        when set
    bit 2  Device and Sensor Status         u24        when set
    bit 3  Pulse Amplitude Index (%)        SFLOAT     when set
    =====  ===============================  =========  =========

    Flag bit 4: Device Clock is Not Set (no field). Bits 5-7 reserved.
    """
    flags = 0
    body = encode_sfloat(spo2) + encode_sfloat(pulse_rate)
    if time_stamp is not None:
        flags |= 0x01
        body += encode_date_time(time_stamp)
    if measurement_status is not None:
        flags |= 0x02
        body += _u16(int(measurement_status), "measurement status")
    if device_and_sensor_status is not None:
        flags |= 0x04
        body += _u24(int(device_and_sensor_status), "device and sensor status")
    if pulse_amplitude_index is not None:
        flags |= 0x08
        body += encode_sfloat(pulse_amplitude_index)
    if device_clock_not_set:
        flags |= 0x10
    return bytes([flags]) + body


SpO2PR = tuple[Number | Special, Number | Special]  # (SpO2 %, pulse rate bpm)


def encode_plx_continuous(
    *,
    spo2: Number | Special,
    pulse_rate: Number | Special,
    fast: SpO2PR | None = None,
    slow: SpO2PR | None = None,
    measurement_status: int | None = None,
    device_and_sensor_status: int | None = None,
    pulse_amplitude_index: Number | Special | None = None,
) -> bytes:
    """PLX Continuous Measurement 0x2A5F (notified).

    =====  =========================  ======  =========
    Flag   Field                      Type    Present
    =====  =========================  ======  =========
    —      Flags                      u8      always
    —      SpO2PR-Normal - SpO2, PR   2 SFLOAT  always
    bit 0  SpO2PR-Fast - SpO2, PR     2 SFLOAT  when set
    bit 1  SpO2PR-Slow - SpO2, PR     2 SFLOAT  when set
    bit 2  Measurement Status         u16     when set
    bit 3  Device and Sensor Status   u24     when set
    bit 4  Pulse Amplitude Index (%)  SFLOAT  when set
    =====  =========================  ======  =========

    Bits 5-7 reserved.
    """
    flags = 0
    body = encode_sfloat(spo2) + encode_sfloat(pulse_rate)
    if fast is not None:
        flags |= 0x01
        body += encode_sfloat(fast[0]) + encode_sfloat(fast[1])
    if slow is not None:
        flags |= 0x02
        body += encode_sfloat(slow[0]) + encode_sfloat(slow[1])
    if measurement_status is not None:
        flags |= 0x04
        body += _u16(int(measurement_status), "measurement status")
    if device_and_sensor_status is not None:
        flags |= 0x08
        body += _u24(int(device_and_sensor_status), "device and sensor status")
    if pulse_amplitude_index is not None:
        flags |= 0x10
        body += encode_sfloat(pulse_amplitude_index)
    return bytes([flags]) + body


# ---------------------------------------------------------------------- Weight Measurement 0x2A9D

WEIGHT_UNSUCCESSFUL = 0xFFFF  # "Measurement Unsuccessful" special weight value

# Resolutions by unit system (flag bit 0): weight, height; BMI is 0.1 kg/m² in both.
_WEIGHT_STEP = {"SI": Decimal("0.005"), "imperial": Decimal("0.01")}  # kg / lb
_HEIGHT_STEP = {"SI": Decimal("0.001"), "imperial": Decimal("0.1")}  # m / inch
_BMI_STEP = Decimal("0.1")


def encode_weight_measurement(
    *,
    weight: Number | None,
    units: Literal["SI", "imperial"] = "SI",
    time_stamp: datetime | DateTimeValue | None = None,
    user_id: int | None = None,
    bmi: Number | None = None,
    height: Number | None = None,
) -> bytes:
    """Weight Measurement 0x2A9D (indicated). `weight=None` sends "Measurement Unsuccessful" (0xFFFF).

    =====  ===========  =========  ==============================================
    Flag   Field        Type       Present / resolution
    =====  ===========  =========  ==============================================
    —      Flags        u8         always
    —      Weight       u16        always; SI 0.005 kg, imperial 0.01 lb
    bit 1  Time Stamp   Date Time  when set
    bit 2  User ID      u8         when set (0xFF unknown user)
    bit 3  BMI          u16        when set; 0.1 kg/m²
    bit 3  Height       u16        when set; SI 0.001 m, imperial 0.1 inch
    =====  ===========  =========  ==============================================

    Flag bit 0: 0 = SI (kg, m), 1 = imperial (lb, inch). Bits 4-7 reserved.
    """
    if units not in ("SI", "imperial"):
        raise ValueError(f"units {units!r}: SI or imperial")
    flags = 0x01 if units == "imperial" else 0x00
    if weight is None:
        raw_weight = WEIGHT_UNSUCCESSFUL
    else:
        raw_weight = _resolution(weight, _WEIGHT_STEP[units], "weight")
        if raw_weight == WEIGHT_UNSUCCESSFUL:
            raise ValueError("weight raw 0xFFFF means 'measurement unsuccessful': pass weight=None")
    body = _u16(raw_weight, "weight")
    if time_stamp is not None:
        flags |= 0x02
        body += encode_date_time(time_stamp)
    if user_id is not None:
        flags |= 0x04
        body += _u8(user_id, "user id")
    if (bmi is None) != (height is None):
        raise ValueError("BMI and height travel together (one flag bit): give both or neither")
    if bmi is not None and height is not None:
        flags |= 0x08
        body += _u16(_resolution(bmi, _BMI_STEP, "BMI"), "BMI")
        body += _u16(_resolution(height, _HEIGHT_STEP[units], "height"), "height")
    return bytes([flags]) + body


# -------------------------------------------------------------------- Heart Rate Measurement 0x2A37


class SensorContact(enum.IntEnum):
    """Heart rate flags bits 1-2 (bit 2: contact feature supported, bit 1: contact detected)."""

    NOT_SUPPORTED = 0
    NOT_DETECTED = 2
    DETECTED = 3


def encode_heart_rate_measurement(
    *,
    heart_rate: int,
    sensor_contact: SensorContact = SensorContact.NOT_SUPPORTED,
    energy_expended_kj: int | None = None,
    rr_intervals_1024: Sequence[int] = (),
    uint16_format: bool | None = None,
) -> bytes:
    """Heart Rate Measurement 0x2A37 (notified).

    =====  ===================  ======  ===========================================
    Flag   Field                Type    Present
    =====  ===================  ======  ===========================================
    —      Flags                u8      always
    —      Heart Rate Value     u8      when bit 0 clear
    bit 0  Heart Rate Value     u16     when set
    bit 3  Energy Expended      u16     when set (kilojoules, 0xFFFF saturates)
    bit 4  RR-Interval          u16…    when set; one or more, 1/1024 s, oldest first
    =====  ===================  ======  ===========================================

    Flag bits 1-2: sensor contact status (0/1 not supported, 2 not detected, 3 detected). Bits 5-7
    reserved. `uint16_format=None` uses u16 only when the rate does not fit a u8.
    """
    wide = heart_rate > 0xFF if uint16_format is None else uint16_format
    flags = (0x01 if wide else 0x00) | (int(sensor_contact) & 0x3) << 1
    body = _u16(heart_rate, "heart rate") if wide else _u8(heart_rate, "heart rate")
    if energy_expended_kj is not None:
        flags |= 0x08
        body += _u16(energy_expended_kj, "energy expended")
    if rr_intervals_1024:
        flags |= 0x10
        body += b"".join(_u16(rr, "RR interval") for rr in rr_intervals_1024)
    return bytes([flags]) + body
