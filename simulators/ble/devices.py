"""Simulated Bluetooth SIG health devices: blood pressure cuff, thermometer, pulse oximeter, weight
scale and heart-rate strap. (The glucose meter, with its record store and RACP, is in `glucose.py`.)

Each device advertises its health service, sends spec-exact values built by `simulators.ble.payloads`,
and is driven by the test: ``await cuff.measure(systolic=182, diastolic=115, pulse_rate=88)``. Every
value is passed explicitly; nothing is invented except what the device itself would compute (the
time stamp from its clock, the cuff's mean arterial pressure when not given).

Indicated measurements (blood pressure, temperature, spot-check SpO2, weight) are kept in the
device's memory until a subscribed central has received them, as these devices do: a reading taken
while the gateway was away is sent when it next subscribes. Notified streams (continuous SpO2, heart
rate) are sent only while someone listens, and otherwise lost.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal

from gateway.transports.ble import uuid16
from simulators.ble.ieee11073 import Number, Special, to_decimal
from simulators.ble.payloads import (
    DateTimeValue,
    SensorContact,
    SpO2PR,
    encode_blood_pressure_measurement,
    encode_heart_rate_measurement,
    encode_plx_continuous,
    encode_plx_spot_check,
    encode_temperature_measurement,
    encode_weight_measurement,
)
from simulators.ble.peripheral import (
    ATT_CONTROL_POINT_VALUE_NOT_SUPPORTED,
    AttError,
    Characteristic,
    Property,
    SimulatedPeripheral,
)

__all__ = [
    "BLOOD_PRESSURE_MEASUREMENT",
    "HEART_RATE_MEASUREMENT",
    "PLX_CONTINUOUS_MEASUREMENT",
    "PLX_SPOT_CHECK_MEASUREMENT",
    "TEMPERATURE_MEASUREMENT",
    "WEIGHT_MEASUREMENT",
    "BloodPressureCuff",
    "HeartRateMonitor",
    "PulseOximeter",
    "Thermometer",
    "WeightScale",
]

BLOOD_PRESSURE_MEASUREMENT = uuid16(0x2A35)
TEMPERATURE_MEASUREMENT = uuid16(0x2A1C)
PLX_SPOT_CHECK_MEASUREMENT = uuid16(0x2A5E)
PLX_CONTINUOUS_MEASUREMENT = uuid16(0x2A5F)
WEIGHT_MEASUREMENT = uuid16(0x2A9D)
HEART_RATE_MEASUREMENT = uuid16(0x2A37)

TimeStampArg = datetime | DateTimeValue | None


class _StoringDevice(SimulatedPeripheral):
    """A device that keeps indicated measurements until a subscribed central received them."""

    def __init__(self, *, memory_capacity: int = 100, **common: Any) -> None:
        super().__init__(**common)
        self.memory: dict[str, deque[bytes]] = {}
        self._memory_capacity = memory_capacity
        self._flush_lock = asyncio.Lock()

    def _store(self, characteristic: str) -> deque[bytes]:
        return self.memory.setdefault(characteristic, deque(maxlen=self._memory_capacity))

    def _time_stamp(self, at: TimeStampArg, time_stamp: bool) -> datetime | DateTimeValue | None:
        if not time_stamp:
            return None
        return at if at is not None else self.clock.now()

    async def _record(self, characteristic: str, data: bytes) -> bytes:
        """Keep `data`, then send whatever is waiting if a central listens; returns `data`."""
        self._store(characteristic).append(data)
        await self._flush(characteristic)
        return data

    async def _flush(self, characteristic: str) -> None:
        async with self._flush_lock:
            waiting = self._store(characteristic)
            while waiting and self.subscribed(characteristic):
                if not await self._send(characteristic, waiting[0]):
                    return
                waiting.popleft()

    def _on_subscribed(self, characteristic: str) -> None:
        if self.memory.get(characteristic):
            self._spawn(self._flush(characteristic))


# --------------------------------------------------------------------------------- blood pressure


class BloodPressureCuff(_StoringDevice):
    """Blood Pressure Service 0x1810: Blood Pressure Measurement 0x2A35 (indicate), BP Feature 0x2A49.

    `features` is the Blood Pressure Feature (u16): bit 0 body movement, 1 cuff fit, 2 irregular
    pulse, 3 pulse rate range, 4 measurement position detection, 5 multiple bonds.
    """

    service: ClassVar[int] = 0x1810

    def __init__(
        self,
        *,
        address: str,
        name: str = "KX-BP BLE",
        requires_bonding: bool = True,
        features: int = 0x001F,
        model: str = "SIM-BP-1810",
        **common: Any,
    ) -> None:
        super().__init__(address=address, name=name, requires_bonding=requires_bonding, model=model, **common)
        self.add_service(
            self.service,
            Characteristic(BLOOD_PRESSURE_MEASUREMENT, Property.INDICATE),
            Characteristic(uuid16(0x2A49), Property.READ, features.to_bytes(2, "little")),
        )

    async def measure(
        self,
        *,
        systolic: Number | Special,
        diastolic: Number | Special,
        mean_arterial_pressure: Number | Special | None = None,
        unit: Literal["mmHg", "kPa"] = "mmHg",
        pulse_rate: Number | Special | None = None,
        user_id: int | None = None,
        status: int | None = None,
        at: TimeStampArg = None,
        time_stamp: bool = True,
    ) -> bytes:
        """A cuff measurement; returns the value sent (or kept until a central subscribes).

        `mean_arterial_pressure` defaults to what the cuff computes, (systolic + 2 × diastolic) / 3
        rounded to the precision of the inputs (NaN when either is a special value).
        """
        if mean_arterial_pressure is None:
            mean_arterial_pressure = _mean_arterial(systolic, diastolic)
        data = encode_blood_pressure_measurement(
            systolic=systolic,
            diastolic=diastolic,
            mean_arterial_pressure=mean_arterial_pressure,
            unit=unit,
            time_stamp=self._time_stamp(at, time_stamp),
            pulse_rate=pulse_rate,
            user_id=user_id,
            status=status,
        )
        return await self._record(BLOOD_PRESSURE_MEASUREMENT, data)


def _mean_arterial(systolic: Number | Special, diastolic: Number | Special) -> Decimal | Special:
    if isinstance(systolic, Special) or isinstance(diastolic, Special):
        return Special.NAN
    s, d = to_decimal(systolic), to_decimal(diastolic)
    exponent = min(int(s.as_tuple().exponent), int(d.as_tuple().exponent))
    return ((s + 2 * d) / 3).quantize(Decimal(1).scaleb(exponent))


# ------------------------------------------------------------------------------------ thermometer


class Thermometer(_StoringDevice):
    """Health Thermometer Service 0x1809: Temperature Measurement 0x2A1C (indicate)."""

    service: ClassVar[int] = 0x1809

    def __init__(
        self,
        *,
        address: str,
        name: str = "KX-TH BLE",
        requires_bonding: bool = False,
        model: str = "SIM-TH-1809",
        **common: Any,
    ) -> None:
        super().__init__(address=address, name=name, requires_bonding=requires_bonding, model=model, **common)
        self.add_service(self.service, Characteristic(TEMPERATURE_MEASUREMENT, Property.INDICATE))

    async def measure(
        self,
        *,
        temperature: Number | Special,
        unit: Literal["C", "F"] = "C",
        temperature_type: int | None = None,
        at: TimeStampArg = None,
        time_stamp: bool = True,
    ) -> bytes:
        data = encode_temperature_measurement(
            temperature=temperature,
            unit=unit,
            time_stamp=self._time_stamp(at, time_stamp),
            temperature_type=temperature_type,
        )
        return await self._record(TEMPERATURE_MEASUREMENT, data)


# ---------------------------------------------------------------------------------- pulse oximeter


class PulseOximeter(_StoringDevice):
    """Pulse Oximeter Service 0x1822: PLX Spot-check 0x2A5E (indicate), PLX Continuous 0x2A5F
    (notify), PLX Features 0x2A60 (read).

    PLX Features: u16 supported features (bit 0 measurement status support present, bit 1 device and
    sensor status support present, bit 3 spot-check timestamp, bit 4 SpO2PR-Fast, bit 5 SpO2PR-Slow,
    bit 6 pulse amplitude index), then the Measurement Status Support (u16) and the Device and Sensor
    Status Support (u24) fields the bits 0 and 1 announce.
    """

    service: ClassVar[int] = 0x1822

    def __init__(
        self,
        *,
        address: str,
        name: str = "KX-PLX BLE",
        requires_bonding: bool = False,
        measurement_status_support: int = 0xFFE0,
        device_and_sensor_status_support: int = 0x00FFFF,
        model: str = "SIM-PLX-1822",
        **common: Any,
    ) -> None:
        super().__init__(address=address, name=name, requires_bonding=requires_bonding, model=model, **common)
        features = (
            (0x0001 | 0x0002 | 0x0008 | 0x0010 | 0x0020 | 0x0040).to_bytes(2, "little")
            + measurement_status_support.to_bytes(2, "little")
            + device_and_sensor_status_support.to_bytes(3, "little")
        )
        self.add_service(
            self.service,
            Characteristic(PLX_SPOT_CHECK_MEASUREMENT, Property.INDICATE),
            Characteristic(PLX_CONTINUOUS_MEASUREMENT, Property.NOTIFY),
            Characteristic(uuid16(0x2A60), Property.READ, features),
        )

    async def spot_check(
        self,
        *,
        spo2: Number | Special,
        pulse_rate: Number | Special,
        measurement_status: int | None = None,
        device_and_sensor_status: int | None = None,
        pulse_amplitude_index: Number | Special | None = None,
        at: TimeStampArg = None,
        time_stamp: bool = True,
        device_clock_not_set: bool | None = None,
    ) -> bytes:
        """One spot-check. `device_clock_not_set` defaults to "the device's clock is not set"."""
        clock_not_set = (not self.clock.is_set) if device_clock_not_set is None else device_clock_not_set
        data = encode_plx_spot_check(
            spo2=spo2,
            pulse_rate=pulse_rate,
            time_stamp=self._time_stamp(at, time_stamp),
            measurement_status=measurement_status,
            device_and_sensor_status=device_and_sensor_status,
            pulse_amplitude_index=pulse_amplitude_index,
            device_clock_not_set=clock_not_set,
        )
        return await self._record(PLX_SPOT_CHECK_MEASUREMENT, data)

    measure = spot_check

    async def continuous(
        self,
        *,
        spo2: Number | Special,
        pulse_rate: Number | Special,
        fast: SpO2PR | None = None,
        slow: SpO2PR | None = None,
        measurement_status: int | None = None,
        device_and_sensor_status: int | None = None,
        pulse_amplitude_index: Number | Special | None = None,
    ) -> bool:
        """One continuous sample; True when a subscribed central received it (else it is lost)."""
        data = encode_plx_continuous(
            spo2=spo2,
            pulse_rate=pulse_rate,
            fast=fast,
            slow=slow,
            measurement_status=measurement_status,
            device_and_sensor_status=device_and_sensor_status,
            pulse_amplitude_index=pulse_amplitude_index,
        )
        return await self._send(PLX_CONTINUOUS_MEASUREMENT, data)


# ------------------------------------------------------------------------------------ weight scale


class WeightScale(_StoringDevice):
    """Weight Scale Service 0x181D: Weight Measurement 0x2A9D (indicate), Weight Scale Feature 0x2A9E.

    Weight Scale Feature (u32): bit 0 time stamp, bit 1 multiple users, bit 2 BMI, bits 3-6 weight
    resolution (1 = 0.5 kg / 1 lb ... 7 = 0.005 kg / 0.01 lb), bits 7-9 height resolution
    (1 = 0.01 m / 1 in, 2 = 0.005 m / 0.5 in, 3 = 0.001 m / 0.1 in).
    """

    service: ClassVar[int] = 0x181D

    def __init__(
        self,
        *,
        address: str,
        name: str = "KX-WS BLE",
        requires_bonding: bool = False,
        features: int = 0x0001 | 0x0002 | 0x0004 | (7 << 3) | (3 << 7),
        model: str = "SIM-WS-181D",
        **common: Any,
    ) -> None:
        super().__init__(address=address, name=name, requires_bonding=requires_bonding, model=model, **common)
        self.add_service(
            self.service,
            Characteristic(WEIGHT_MEASUREMENT, Property.INDICATE),
            Characteristic(uuid16(0x2A9E), Property.READ, features.to_bytes(4, "little")),
        )

    async def measure(
        self,
        *,
        weight: Number | None,
        units: Literal["SI", "imperial"] = "SI",
        user_id: int | None = None,
        bmi: Number | None = None,
        height: Number | None = None,
        at: TimeStampArg = None,
        time_stamp: bool = True,
    ) -> bytes:
        """A weighing in kg (SI) or lb (imperial); `weight=None` is "measurement unsuccessful"."""
        data = encode_weight_measurement(
            weight=weight,
            units=units,
            time_stamp=self._time_stamp(at, time_stamp),
            user_id=user_id,
            bmi=bmi,
            height=height,
        )
        return await self._record(WEIGHT_MEASUREMENT, data)


# ------------------------------------------------------------------------------------ heart rate


class HeartRateMonitor(SimulatedPeripheral):
    """Heart Rate Service 0x180D: Heart Rate Measurement 0x2A37 (notify), Body Sensor Location 0x2A38
    (read: 0 other, 1 chest, 2 wrist, 3 finger, 4 hand, 5 ear lobe, 6 foot), Heart Rate Control
    Point 0x2A39 (write 0x01: reset energy expended; anything else: ATT error 0x80).
    """

    service: ClassVar[int] = 0x180D

    def __init__(
        self,
        *,
        address: str,
        name: str = "KX-HR BLE",
        requires_bonding: bool = False,
        body_sensor_location: int = 1,
        model: str = "SIM-HR-180D",
        **common: Any,
    ) -> None:
        super().__init__(address=address, name=name, requires_bonding=requires_bonding, model=model, **common)
        self.energy_expended_resets = 0
        self.add_service(
            self.service,
            Characteristic(HEART_RATE_MEASUREMENT, Property.NOTIFY),
            Characteristic(uuid16(0x2A38), Property.READ, bytes([body_sensor_location])),
            Characteristic(uuid16(0x2A39), Property.WRITE, on_write=self._control_point),
        )

    async def _control_point(self, data: bytes) -> None:
        if data != b"\x01" or 0x01 in self.faults.refused_op_codes:
            raise AttError(
                self.address, uuid16(0x2A39), ATT_CONTROL_POINT_VALUE_NOT_SUPPORTED, "value not supported"
            )
        self.energy_expended_resets += 1

    async def measure(
        self,
        *,
        heart_rate: int,
        sensor_contact: SensorContact = SensorContact.DETECTED,
        energy_expended_kj: int | None = None,
        rr_intervals_1024: Sequence[int] = (),
        uint16_format: bool | None = None,
    ) -> bool:
        """One measurement; True when a subscribed central received it (else it is lost)."""
        data = encode_heart_rate_measurement(
            heart_rate=heart_rate,
            sensor_contact=sensor_contact,
            energy_expended_kj=energy_expended_kj,
            rr_intervals_1024=rr_intervals_1024,
            uint16_format=uint16_format,
        )
        return await self._send(HEART_RATE_MEASUREMENT, data)
