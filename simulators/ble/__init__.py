"""Simulated Bluetooth LE health devices behind the gateway's `BleCentral` interface (CI without radios).

    central = SimulatedCentral([BloodPressureCuff(address="C0:FF:EE:00:00:01")])
    link = await central.connect("C0:FF:EE:00:00:01", timeout_s=10, pair=True)
    await link.start_notify(uuid16(0x2A35), on_value)
    await cuff.measure(systolic=182, diastolic=115, pulse_rate=88)

Values are built by `payloads` and `ieee11073`, written from the Bluetooth SIG tables independently of
``gateway.ble``, so the tests cross-check our parsers against a second reading of the specification.
"""

from simulators.ble.central import SimulatedCentral
from simulators.ble.devices import (
    BLOOD_PRESSURE_MEASUREMENT,
    HEART_RATE_MEASUREMENT,
    PLX_CONTINUOUS_MEASUREMENT,
    PLX_SPOT_CHECK_MEASUREMENT,
    TEMPERATURE_MEASUREMENT,
    WEIGHT_MEASUREMENT,
    BloodPressureCuff,
    HeartRateMonitor,
    PulseOximeter,
    Thermometer,
    WeightScale,
)
from simulators.ble.glucose import GLUCOSE_FEATURE, GLUCOSE_MEASUREMENT, RACP, GlucoseMeter, GlucoseRecord
from simulators.ble.ieee11073 import Special, encode_float, encode_sfloat
from simulators.ble.payloads import (
    UNKNOWN_DATE_TIME,
    DateTimeValue,
    GlucoseSampleLocation,
    GlucoseSampleType,
    GlucoseSensorStatus,
    PlxDeviceAndSensorStatus,
    PlxMeasurementStatus,
    PulseRateRange,
    SensorContact,
    TemperatureType,
    blood_pressure_status,
)
from simulators.ble.peripheral import (
    CURRENT_TIME,
    UNSET_CLOCK_EPOCH,
    AttError,
    DeviceClock,
    Faults,
    SimulatedConnection,
    SimulatedPeripheral,
    encode_current_time,
)
from simulators.ble.residents import RESIDENTS, BleResident

__all__ = [
    "BLOOD_PRESSURE_MEASUREMENT",
    "CURRENT_TIME",
    "GLUCOSE_FEATURE",
    "GLUCOSE_MEASUREMENT",
    "HEART_RATE_MEASUREMENT",
    "PLX_CONTINUOUS_MEASUREMENT",
    "PLX_SPOT_CHECK_MEASUREMENT",
    "RACP",
    "RESIDENTS",
    "TEMPERATURE_MEASUREMENT",
    "UNKNOWN_DATE_TIME",
    "UNSET_CLOCK_EPOCH",
    "WEIGHT_MEASUREMENT",
    "AttError",
    "BleResident",
    "BloodPressureCuff",
    "DateTimeValue",
    "DeviceClock",
    "Faults",
    "GlucoseMeter",
    "GlucoseRecord",
    "GlucoseSampleLocation",
    "GlucoseSampleType",
    "GlucoseSensorStatus",
    "HeartRateMonitor",
    "PlxDeviceAndSensorStatus",
    "PlxMeasurementStatus",
    "PulseOximeter",
    "PulseRateRange",
    "SensorContact",
    "SimulatedCentral",
    "SimulatedConnection",
    "SimulatedPeripheral",
    "Special",
    "TemperatureType",
    "Thermometer",
    "WeightScale",
    "blood_pressure_status",
    "encode_current_time",
    "encode_float",
    "encode_sfloat",
]
