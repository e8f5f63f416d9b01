"""Simulated BLE health devices (simulators.ble) read through SimulatedCentral and decoded by OUR parsers.

The simulators build every value from their own encoder (simulators/ble/payloads.py, ieee11073.py),
written from the Bluetooth SIG tables without gateway.ble; here each value goes through the
`BleCentral` / `GattConnection` interface the gateway uses and is decoded by gateway.ble, and the whole
decoded result is compared with ==. A disagreement between the two readings of the spec shows here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.ble.glucose import (
    Bound,
    DateTime,
    GlucoseConcentration,
    GlucoseMeasurement,
    GlucoseSampleLocation,
    GlucoseSampleType,
    GlucoseSensorStatus,
    RacpNumberOfRecords,
    RacpOpCode,
    RacpResponse,
    RacpResponseCode,
    encode_abort,
    encode_report_number_of_records,
    encode_report_records_greater_or_equal,
    parse_glucose_measurement,
    parse_racp_response,
)
from gateway.ble.health import (
    BloodPressureMeasurement,
    BloodPressureStatus,
    HeartRateMeasurement,
    PulseRateRange,
    SensorContact,
    TemperatureMeasurement,
    TemperatureType,
    WeightMeasurement,
    parse_blood_pressure,
    parse_heart_rate,
    parse_temperature,
    parse_weight,
)
from gateway.ble.ieee11073 import NoValue, NoValueReason, decode_float, decode_sfloat
from gateway.ble.plx import (
    PlxContinuous,
    PlxDeviceAndSensorStatus,
    PlxMeasurementStatus,
    PlxSpotCheck,
    Quantity,
    SpO2PulseRate,
    parse_plx_continuous,
    parse_plx_spot_check,
)
from gateway.transports.ble import BleUnavailable, uuid16
from simulators.ble import (
    BLOOD_PRESSURE_MEASUREMENT,
    CURRENT_TIME,
    GLUCOSE_MEASUREMENT,
    HEART_RATE_MEASUREMENT,
    PLX_CONTINUOUS_MEASUREMENT,
    PLX_SPOT_CHECK_MEASUREMENT,
    RACP,
    RESIDENTS,
    TEMPERATURE_MEASUREMENT,
    UNKNOWN_DATE_TIME,
    WEIGHT_MEASUREMENT,
    AttError,
    BloodPressureCuff,
    DeviceClock,
    GlucoseMeter,
    HeartRateMonitor,
    PulseOximeter,
    SimulatedCentral,
    SimulatedConnection,
    Special,
    Thermometer,
    WeightScale,
    blood_pressure_status,
    encode_current_time,
    encode_float,
    encode_sfloat,
)
from simulators.ble import GlucoseSensorStatus as SimGlucoseStatus
from simulators.ble import PlxDeviceAndSensorStatus as SimPlxDevice
from simulators.ble import PlxMeasurementStatus as SimPlxStatus
from simulators.ble import PulseRateRange as SimPulseRateRange
from simulators.ble import SensorContact as SimSensorContact
from simulators.ble.ieee11073 import float_bits, sfloat_bits
from simulators.ble.racp import (
    OpCode,
    Operator,
    encode_request,
    sequence_filter,
    sequence_range_filter,
)

NOW = datetime(2024, 5, 6, 7, 8, 9)
NOW_GATT = DateTime(2024, 5, 6, 7, 8, 9)
CUFF = "C0:FF:EE:00:00:01"
METER = "C0:FF:EE:00:00:02"
THERMOMETER = "C0:FF:EE:00:00:03"
OXIMETER = "C0:FF:EE:00:00:04"
SCALE = "C0:FF:EE:00:00:05"
STRAP = "C0:FF:EE:00:00:06"
TIMEOUT = 2.0


class Inbox:
    """A notify callback that keeps every value, in order, and lets the test wait for them."""

    def __init__(self) -> None:
        self.values: list[bytes] = []
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()

    def __call__(self, data: bytes) -> None:
        self.values.append(data)
        self._queue.put_nowait(data)

    async def get(self) -> bytes:
        return await asyncio.wait_for(self._queue.get(), TIMEOUT)

    async def take(self, count: int) -> list[bytes]:
        return [await self.get() for _ in range(count)]

    def pending(self) -> int:
        return self._queue.qsize()


@pytest.fixture
async def central() -> AsyncIterator[SimulatedCentral]:
    async with SimulatedCentral() as adapter:
        yield adapter


def clock() -> DeviceClock:
    return DeviceClock(NOW)


# ----------------------------------------------------------------------------- IEEE 11073 encoder


@pytest.mark.parametrize(
    ("value", "word"),
    [
        (Decimal("36.6"), 0xF16E),  # exponent -1, mantissa 366
        (Decimal("2.0"), 0xF014),
        (120, 0x0078),
        (Decimal("-1.5"), 0xFFF1),  # exponent -1 (0xF), mantissa -15 (0xFF1)
        (Decimal("0.0056"), 0xC038),  # exponent -4, mantissa 56
        (30000, 0x212C),  # 300 × 10^2: the smallest exponent at which the mantissa fits
    ],
)
def test_sfloat_vectors_decode_with_our_decoder(value: Decimal | int, word: int) -> None:
    assert sfloat_bits(value) == word
    assert encode_sfloat(value) == word.to_bytes(2, "little")
    assert decode_sfloat(word) == Decimal(value)


@pytest.mark.parametrize(
    ("special", "sfloat", "float_", "reason"),
    [
        (Special.NAN, 0x07FF, 0x007FFFFF, NoValueReason.NAN),
        (Special.NRES, 0x0800, 0x00800000, NoValueReason.NRES),
        (Special.POSITIVE_INFINITY, 0x07FE, 0x007FFFFE, NoValueReason.POSITIVE_INFINITY),
        (Special.NEGATIVE_INFINITY, 0x0802, 0x00800002, NoValueReason.NEGATIVE_INFINITY),
        (Special.RESERVED, 0x0801, 0x00800001, NoValueReason.RESERVED),
    ],
)
def test_special_values_are_no_value_with_reason(
    special: Special, sfloat: int, float_: int, reason: NoValueReason
) -> None:
    assert sfloat_bits(special) == sfloat
    assert float_bits(special) == float_
    assert decode_sfloat(sfloat) == NoValue(reason)
    assert decode_float(float_) == NoValue(reason)


@given(st.integers(-2045, 2045), st.integers(-8, 7))
def test_every_sfloat_number_round_trips(mantissa: int, exponent: int) -> None:
    value = Decimal(mantissa).scaleb(exponent)
    assert decode_sfloat(sfloat_bits(value)) == value


@given(st.integers(-(2**23) + 3, 2**23 - 3), st.integers(-128, 127))
def test_every_float_number_round_trips(mantissa: int, exponent: int) -> None:
    value = Decimal(mantissa).scaleb(exponent)
    assert decode_float(float_bits(value)) == value
    assert len(encode_float(value)) == 4


def test_a_value_the_mantissa_cannot_hold_is_refused_not_rounded() -> None:
    with pytest.raises(ValueError, match="exactly"):
        encode_sfloat(Decimal("123.45"))  # 12345 > 2045 and no trailing zero to drop
    with pytest.raises(ValueError, match="exactly"):
        encode_sfloat(Decimal("1.5"), exponent=0)  # a fixed exponent that would lose the .5
    assert sfloat_bits(10, exponent=1) == 0x1001  # mantissa 1, exponent 1


# ----------------------------------------------------------------------------- central: scan, connect


async def test_scan_lists_devices_in_range_advertising_a_wanted_service(central: SimulatedCentral) -> None:
    cuff = central.add(BloodPressureCuff(address=CUFF, clock=clock(), rssi=-55))
    central.add(GlucoseMeter(address=METER, clock=clock()))
    away = central.add(Thermometer(address=THERMOMETER, clock=clock()))
    away.move_out_of_range()

    found = await central.scan([uuid16(0x1810), uuid16(0x1809)], timeout_s=5)
    assert [(a.address, a.name, a.service_uuids, a.rssi) for a in found] == [
        (CUFF, "KX-BP BLE", (uuid16(0x1810),), -55)
    ]
    assert {a.address for a in await central.scan([], timeout_s=5)} == {CUFF, METER}

    link = await central.connect(CUFF, timeout_s=5, pair=True)
    assert CUFF not in {a.address for a in await central.scan([], timeout_s=5)}  # connected: silent
    assert cuff.is_connected and link.is_connected


async def test_out_of_range_or_powered_off_device_raises_ble_unavailable(central: SimulatedCentral) -> None:
    thermometer = central.add(Thermometer(address=THERMOMETER, clock=clock()))
    thermometer.move_out_of_range()
    with pytest.raises(BleUnavailable):
        await central.connect(THERMOMETER, timeout_s=1, pair=False)
    thermometer.come_into_range()
    thermometer.power_off()
    with pytest.raises(BleUnavailable):
        await central.connect(THERMOMETER, timeout_s=1, pair=False)
    with pytest.raises(BleUnavailable):
        await central.connect("C0:FF:EE:99:99:99", timeout_s=1, pair=False)
    thermometer.power_on()
    thermometer.faults.connect_failures = 2  # interference: two attempts fail, the third succeeds
    for _ in range(2):
        with pytest.raises(BleUnavailable):
            await central.connect(THERMOMETER, timeout_s=1, pair=False)
    link = await central.connect(THERMOMETER, timeout_s=1, pair=False)
    assert link.is_connected


async def test_unpaired_connect_to_a_device_requiring_bonding_is_refused(central: SimulatedCentral) -> None:
    cuff = central.add(BloodPressureCuff(address=CUFF, clock=clock(), requires_bonding=True))
    with pytest.raises(BleUnavailable) as refused:
        await central.connect(CUFF, timeout_s=1, pair=False)
    assert isinstance(refused.value, AttError) and refused.value.code == 0x05  # insufficient authentication

    link = await central.connect(CUFF, timeout_s=1, pair=True)
    await link.disconnect()
    link = await central.connect(CUFF, timeout_s=1, pair=False)  # bonded before: reconnects encrypted
    await link.disconnect()

    cuff.forget_bonds()
    with pytest.raises(BleUnavailable):
        await central.connect(CUFF, timeout_s=1, pair=False)
    cuff.faults.refuse_pairing = True
    with pytest.raises(BleUnavailable):
        await central.connect(CUFF, timeout_s=1, pair=True)


async def test_link_drop_is_seen_and_every_call_then_raises(central: SimulatedCentral) -> None:
    scale = central.add(
        WeightScale(address=SCALE, clock=clock(), manufacturer="ACME", firmware_revision="2.1")
    )
    link = await central.connect(SCALE, timeout_s=1, pair=False)
    assert await link.read(uuid16(0x2A29)) == b"ACME"
    assert await link.read(uuid16(0x2A26)) == b"2.1"
    with pytest.raises(AttError) as not_readable:
        await link.read(WEIGHT_MEASUREMENT)
    assert not_readable.value.code == 0x02
    with pytest.raises(AttError):
        await link.start_notify(uuid16(0x2A18), lambda _: None)  # no glucose service on a scale

    scale.power_off()
    await asyncio.wait_for(link.wait_disconnected(), TIMEOUT)
    assert not link.is_connected
    for call in (
        link.read(uuid16(0x2A29)),
        link.write(uuid16(0x2A29), b"x"),
        link.start_notify(WEIGHT_MEASUREMENT, lambda _: None),
    ):
        with pytest.raises(BleUnavailable):
            await call
    await link.disconnect()  # harmless when already down


async def test_a_raising_callback_goes_to_the_loop_handler_and_the_link_carries_on(
    central: SimulatedCentral,
) -> None:
    strap = central.add(HeartRateMonitor(address=STRAP, clock=clock()))
    link = await central.connect(STRAP, timeout_s=1, pair=False)
    errors: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        seen: list[bytes] = []

        def callback(data: bytes) -> None:
            seen.append(data)
            if len(seen) == 1:
                raise RuntimeError("bug in the gateway's callback")

        await link.start_notify(HEART_RATE_MEASUREMENT, callback)
        assert await strap.measure(heart_rate=70)
        assert await strap.measure(heart_rate=71)
    finally:
        loop.set_exception_handler(None)
    assert [parse_heart_rate(v).heart_rate for v in seen] == [70, 71]
    assert len(errors) == 1 and isinstance(errors[0]["exception"], RuntimeError)
    assert link.is_connected


# ----------------------------------------------------------------------------- blood pressure 0x2A35


async def test_blood_pressure_crisis_with_every_field(central: SimulatedCentral) -> None:
    cuff = central.add(BloodPressureCuff(address=CUFF, clock=clock()))
    link = await central.connect(CUFF, timeout_s=1, pair=True)
    inbox = Inbox()
    await link.start_notify(BLOOD_PRESSURE_MEASUREMENT, inbox)

    sent = await cuff.measure(
        systolic=182,
        diastolic=115,
        pulse_rate=88,
        user_id=3,
        status=blood_pressure_status(
            irregular_pulse=True, pulse_rate_range=SimPulseRateRange.EXCEEDS_UPPER_LIMIT, cuff_too_loose=True
        ),
    )
    assert await inbox.get() == sent
    assert parse_blood_pressure(sent) == BloodPressureMeasurement(
        systolic=Decimal(182),
        diastolic=Decimal(115),
        mean_arterial_pressure=Decimal(137),  # the cuff's (182 + 2 × 115) / 3 = 137.3 -> 137
        unit="mm[Hg]",
        time_stamp=NOW_GATT,
        pulse_rate=Decimal(88),
        user_id=3,
        status=BloodPressureStatus(
            body_movement=False,
            cuff_too_loose=True,
            irregular_pulse=True,
            pulse_rate_range=PulseRateRange.EXCEEDS_UPPER_LIMIT,
            improper_position=False,
            raw=0x000E,
        ),
    )
    assert sent[0] == 0x1E  # flags: time stamp | pulse rate | user id | status, mmHg


async def test_blood_pressure_in_kpa_without_optional_fields_and_a_failed_reading(
    central: SimulatedCentral,
) -> None:
    cuff = central.add(BloodPressureCuff(address=CUFF, clock=clock()))
    link = await central.connect(CUFF, timeout_s=1, pair=True)
    inbox = Inbox()
    await link.start_notify(BLOOD_PRESSURE_MEASUREMENT, inbox)

    await cuff.measure(systolic=Decimal("16.0"), diastolic=Decimal("10.5"), unit="kPa", time_stamp=False)
    await cuff.measure(
        systolic=Special.NAN,
        diastolic=Special.NAN,
        status=blood_pressure_status(body_movement=True, improper_position=True),
        at=datetime(2024, 5, 6, 7, 30, 0),
    )
    kpa, failed = (parse_blood_pressure(v) for v in await inbox.take(2))
    assert kpa == BloodPressureMeasurement(
        systolic=Decimal("16.0"),
        diastolic=Decimal("10.5"),
        mean_arterial_pressure=Decimal("12.3"),  # (16.0 + 21.0) / 3 = 12.33 -> 12.3
        unit="kPa",
    )
    nan = NoValue(NoValueReason.NAN)
    assert failed == BloodPressureMeasurement(
        systolic=nan,
        diastolic=nan,
        mean_arterial_pressure=nan,
        unit="mm[Hg]",
        time_stamp=DateTime(2024, 5, 6, 7, 30, 0),
        status=BloodPressureStatus.from_raw(0x0021),
    )
    assert failed.status is not None and failed.status.body_movement and failed.status.improper_position


async def test_readings_taken_while_the_gateway_was_away_arrive_and_survive_a_drop(
    central: SimulatedCentral,
) -> None:
    cuff = central.add(BloodPressureCuff(address=CUFF, clock=clock()))
    await cuff.measure(systolic=128, diastolic=82, pulse_rate=70)  # nobody connected: kept
    await cuff.measure(systolic=131, diastolic=84, pulse_rate=72)
    cuff.faults.drop_after_notifications = 1

    link = await central.connect(CUFF, timeout_s=1, pair=True)
    inbox = Inbox()
    await link.start_notify(BLOOD_PRESSURE_MEASUREMENT, inbox)
    first = parse_blood_pressure(await inbox.get())
    await asyncio.wait_for(link.wait_disconnected(), TIMEOUT)
    assert first.systolic == 128
    assert len(cuff.memory[BLOOD_PRESSURE_MEASUREMENT]) == 1  # the unconfirmed one is still kept

    link = await central.connect(CUFF, timeout_s=1, pair=False)
    again = Inbox()
    await link.start_notify(BLOOD_PRESSURE_MEASUREMENT, again)
    assert parse_blood_pressure(await again.get()).systolic == 131
    assert len(inbox.values) == 1 and len(again.values) == 1  # nothing lost, nothing doubled


# ----------------------------------------------------------------------------- thermometer 0x2A1C


async def test_temperature_celsius_fahrenheit_and_special_values(central: SimulatedCentral) -> None:
    thermometer = central.add(Thermometer(address=THERMOMETER, clock=clock()))
    link = await central.connect(THERMOMETER, timeout_s=1, pair=False)
    inbox = Inbox()
    await link.start_notify(TEMPERATURE_MEASUREMENT, inbox)

    await thermometer.measure(temperature=36.6, temperature_type=6)  # mouth
    await thermometer.measure(temperature=Decimal("101.3"), unit="F", time_stamp=False, temperature_type=9)
    await thermometer.measure(temperature=Special.POSITIVE_INFINITY)  # above the range it can measure
    await thermometer.measure(temperature=Special.NRES, temperature_type=1)
    celsius, fahrenheit, high, nres = (parse_temperature(v) for v in await inbox.take(4))

    assert celsius == TemperatureMeasurement(
        temperature=Decimal("36.6"), unit="Cel", time_stamp=NOW_GATT, temperature_type=TemperatureType.MOUTH
    )
    assert fahrenheit == TemperatureMeasurement(
        temperature=Decimal("101.3"), unit="[degF]", temperature_type=TemperatureType.TYMPANUM
    )
    assert high == TemperatureMeasurement(
        temperature=NoValue(NoValueReason.POSITIVE_INFINITY), unit="Cel", time_stamp=NOW_GATT
    )
    assert nres.temperature == NoValue(NoValueReason.NRES)

    await thermometer.measure(temperature=Decimal("37.95"), at=UNKNOWN_DATE_TIME)  # "date not known"
    unknown = parse_temperature(await inbox.get())
    assert unknown.temperature == Decimal("37.95")
    assert unknown.time_stamp == DateTime(0, 0, 0, 0, 0, 0)
    assert DateTime(0, 0, 0, 0, 0, 0).to_datetime() is None  # the gateway must not invent a date
    assert inbox.values[0] == bytes.fromhex("06 6e0100ff e807 05 06 07 08 09 06")  # spec layout by hand


# ----------------------------------------------------------------------------- pulse oximeter 0x2A5E / 0x2A5F


async def test_plx_spot_check_every_field(central: SimulatedCentral) -> None:
    oximeter = central.add(PulseOximeter(address=OXIMETER, clock=clock()))
    link = await central.connect(OXIMETER, timeout_s=1, pair=False)
    inbox = Inbox()
    await link.start_notify(PLX_SPOT_CHECK_MEASUREMENT, inbox)

    await oximeter.spot_check(
        spo2=97,
        pulse_rate=72,
        measurement_status=SimPlxStatus.VALIDATED_DATA | SimPlxStatus.FULLY_QUALIFIED_DATA,
        device_and_sensor_status=SimPlxDevice.LOW_PERFUSION_DETECTED | 0x010000,  # + reserved bit 16
        pulse_amplitude_index=Decimal("4.2"),
    )
    assert parse_plx_spot_check(await inbox.get()) == PlxSpotCheck(
        spo2=Quantity(Decimal(97), "%"),
        pulse_rate=Quantity(Decimal(72), "/min"),
        timestamp=NOW_GATT,
        measurement_status=PlxMeasurementStatus.VALIDATED_DATA | PlxMeasurementStatus.FULLY_QUALIFIED_DATA,
        device_and_sensor_status=PlxDeviceAndSensorStatus(0x010020),
        pulse_amplitude_index=Quantity(Decimal("4.2"), "%"),
        device_clock_not_set=False,
    )


async def test_plx_spot_check_from_a_device_whose_clock_is_not_set(central: SimulatedCentral) -> None:
    oximeter = central.add(PulseOximeter(address=OXIMETER, clock=DeviceClock(None)))
    link = await central.connect(OXIMETER, timeout_s=1, pair=False)
    inbox = Inbox()
    await link.start_notify(PLX_SPOT_CHECK_MEASUREMENT, inbox)

    await oximeter.spot_check(spo2=Special.NAN, pulse_rate=Special.NAN)  # finger out
    assert parse_plx_spot_check(await inbox.get()) == PlxSpotCheck(
        spo2=Quantity(NoValue(NoValueReason.NAN), "%"),
        pulse_rate=Quantity(NoValue(NoValueReason.NAN), "/min"),
        timestamp=DateTime(2000, 1, 1, 0, 0, 0),  # the free-running default: not a real time
        device_clock_not_set=True,
    )
    assert inbox.values[0][0] == 0x11  # flags: timestamp | device clock is not set

    # The gateway sets the clock through Current Time 0x2A2B; the next spot-check is stamped properly.
    await link.write(CURRENT_TIME, encode_current_time(NOW, adjust_reason=0x02))
    assert oximeter.clock.is_set
    assert await link.read(CURRENT_TIME) == bytes.fromhex("e807 05 06 07 08 09 01 00 00")  # Monday
    await oximeter.spot_check(spo2=96, pulse_rate=80)
    after = parse_plx_spot_check(await inbox.get())
    assert (after.timestamp, after.device_clock_not_set) == (NOW_GATT, False)


async def test_plx_continuous_normal_fast_slow_and_statuses(central: SimulatedCentral) -> None:
    oximeter = central.add(PulseOximeter(address=OXIMETER, clock=clock()))
    link = await central.connect(OXIMETER, timeout_s=1, pair=False)
    assert not await oximeter.continuous(spo2=98, pulse_rate=70)  # not subscribed: lost
    inbox = Inbox()
    await link.start_notify(PLX_CONTINUOUS_MEASUREMENT, inbox)

    assert await oximeter.continuous(
        spo2=96,
        pulse_rate=75,
        fast=(95, 77),
        slow=(Decimal("96.5"), Decimal("74.5")),
        measurement_status=SimPlxStatus.MEASUREMENT_ONGOING,
        device_and_sensor_status=SimPlxDevice.SENSOR_DISPLACED,
        pulse_amplitude_index=Special.NRES,
    )
    assert await oximeter.continuous(spo2=97, pulse_rate=74)
    full, plain = (parse_plx_continuous(v) for v in await inbox.take(2))
    assert full == PlxContinuous(
        normal=SpO2PulseRate(Quantity(Decimal(96), "%"), Quantity(Decimal(75), "/min")),
        fast=SpO2PulseRate(Quantity(Decimal(95), "%"), Quantity(Decimal(77), "/min")),
        slow=SpO2PulseRate(Quantity(Decimal("96.5"), "%"), Quantity(Decimal("74.5"), "/min")),
        measurement_status=PlxMeasurementStatus.MEASUREMENT_ONGOING,
        device_and_sensor_status=PlxDeviceAndSensorStatus.SENSOR_DISPLACED,
        pulse_amplitude_index=Quantity(NoValue(NoValueReason.NRES), "%"),
    )
    assert plain == PlxContinuous(
        normal=SpO2PulseRate(Quantity(Decimal(97), "%"), Quantity(Decimal(74), "/min"))
    )
    assert len(inbox.values[0]) == 20  # the longest PLX value still fits the default ATT_MTU of 23


# ----------------------------------------------------------------------------- weight scale 0x2A9D


async def test_weight_si_imperial_and_unsuccessful(central: SimulatedCentral) -> None:
    scale = central.add(WeightScale(address=SCALE, clock=clock()))
    link = await central.connect(SCALE, timeout_s=1, pair=False)
    inbox = Inbox()
    await link.start_notify(WEIGHT_MEASUREMENT, inbox)

    await scale.measure(weight=Decimal("72.35"), user_id=2, bmi=Decimal("24.5"), height=Decimal("1.718"))
    await scale.measure(
        weight=Decimal("159.5"), units="imperial", bmi=Decimal("24.5"), height=Decimal("67.5")
    )
    await scale.measure(weight=None, time_stamp=False)  # the resident stepped off too soon
    si, imperial, failed = (parse_weight(v) for v in await inbox.take(3))

    assert si == WeightMeasurement(
        weight=Decimal("72.35"),
        unit="kg",
        time_stamp=NOW_GATT,
        user_id=2,
        bmi=Decimal("24.5"),
        height=Decimal("1.718"),
        height_unit="m",
    )
    assert imperial == WeightMeasurement(
        weight=Decimal("159.5"),
        unit="[lb_av]",
        time_stamp=NOW_GATT,
        bmi=Decimal("24.5"),
        height=Decimal("67.5"),
        height_unit="[in_i]",
    )
    assert failed == WeightMeasurement(weight=NoValue(NoValueReason.MEASUREMENT_UNSUCCESSFUL), unit="kg")
    assert inbox.values[0][1:3] == (14470).to_bytes(2, "little")  # 72.35 kg / 0.005 kg
    with pytest.raises(ValueError, match="resolution"):
        await scale.measure(weight=Decimal("72.351"))


# ----------------------------------------------------------------------------- heart rate 0x2A37


async def test_heart_rate_formats_contact_energy_and_rr_intervals(central: SimulatedCentral) -> None:
    strap = central.add(HeartRateMonitor(address=STRAP, clock=clock()))
    link = await central.connect(STRAP, timeout_s=1, pair=False)
    assert await link.read(uuid16(0x2A38)) == b"\x01"  # body sensor location: chest
    inbox = Inbox()
    await link.start_notify(HEART_RATE_MEASUREMENT, inbox)

    await strap.measure(heart_rate=72, energy_expended_kj=120, rr_intervals_1024=(800, 832))
    await strap.measure(heart_rate=72, sensor_contact=SimSensorContact.NOT_DETECTED, uint16_format=True)
    await strap.measure(heart_rate=300, sensor_contact=SimSensorContact.NOT_SUPPORTED)
    first, wide, fast = (parse_heart_rate(v) for v in await inbox.take(3))

    assert first == HeartRateMeasurement(
        heart_rate=72,
        sensor_contact=SensorContact.DETECTED,
        energy_expended=120,
        rr_intervals_1024=(800, 832),
    )
    assert first.rr_intervals == (Decimal("0.78125"), Decimal("0.8125"))
    assert wide == HeartRateMeasurement(heart_rate=72, sensor_contact=SensorContact.NOT_DETECTED)
    assert inbox.values[1][0] & 0x01 and len(inbox.values[1]) == 3
    assert fast == HeartRateMeasurement(heart_rate=300, sensor_contact=SensorContact.NOT_SUPPORTED)

    await link.write(uuid16(0x2A39), b"\x01")  # reset energy expended
    assert strap.energy_expended_resets == 1
    with pytest.raises(AttError) as refused:
        await link.write(uuid16(0x2A39), b"\x02")
    assert refused.value.code == 0x80


# ----------------------------------------------------------------------------- glucose 0x2A18 + RACP 0x2A52


class MeterLink:
    """A connected, subscribed meter: records on 0x2A18, RACP answers on 0x2A52."""

    def __init__(self, link: SimulatedConnection, records: Inbox, answers: Inbox) -> None:
        self.link = link
        self.records = records
        self.answers = answers

    @classmethod
    async def open(cls, central: SimulatedCentral, *, pair: bool = True) -> MeterLink:
        link = await central.connect(METER, timeout_s=1, pair=pair)
        records, answers = Inbox(), Inbox()
        await link.start_notify(GLUCOSE_MEASUREMENT, records)
        await link.start_notify(RACP, answers)
        return cls(link, records, answers)

    async def ask(self, request: bytes) -> RacpNumberOfRecords | RacpResponse:
        await self.link.write(RACP, request)
        return parse_racp_response(await self.answers.get())

    def sequence_numbers(self) -> list[int]:
        return [parse_glucose_measurement(v).sequence_number for v in self.records.values]


def report(operator: int, operand: bytes = b"") -> bytes:
    return encode_request(OpCode.REPORT_STORED_RECORDS, operator, operand)


def fill(meter: GlucoseMeter, count: int) -> None:
    for i in range(count):
        meter.add_record(Decimal("5.0") + Decimal(i) / 10, at=datetime(2024, 5, 1, 7, i % 60, 0))


SUCCESS_REPORT = RacpResponse(RacpOpCode.REPORT_STORED_RECORDS, RacpResponseCode.SUCCESS)


async def test_glucose_measurement_units_sample_and_status(central: SimulatedCentral) -> None:
    meter = central.add(GlucoseMeter(address=METER, clock=clock(), first_sequence=7))
    await meter.measure(Decimal("5.6"), time_offset_minutes=-10)
    await meter.measure(
        101,
        unit="mg/dL",
        sample_type=2,  # capillary plasma
        sample_location=2,  # alternate site
        sensor_status=SimGlucoseStatus(0),
    )
    await meter.measure(
        Decimal("33.3"),
        sensor_status=SimGlucoseStatus.RESULT_ABOVE_DEVICE_RANGE | SimGlucoseStatus.DEVICE_BATTERY_LOW,
    )
    await meter.measure(Special.NAN, sensor_status=SimGlucoseStatus.SAMPLE_SIZE_INSUFFICIENT)
    await meter.measure(None, sensor_status=SimGlucoseStatus.STRIP_INSERTION_ERROR)
    await meter.measure(Decimal("6.8"), sample_type=0xA, sample_location=0x4)  # control solution check
    m = await MeterLink.open(central)

    assert await m.ask(report(Operator.ALL_RECORDS)) == SUCCESS_REPORT
    mmol, mgdl, high, nan, strip, control = (parse_glucose_measurement(v) for v in m.records.values)
    assert mmol == GlucoseMeasurement(
        sequence_number=7,
        base_time=NOW_GATT,
        time_offset_minutes=-10,
        concentration=GlucoseConcentration(
            si_value=Decimal("0.0056"), si_unit="mol/L", value=Decimal("5.6"), unit="mmol/L"
        ),
        sample_type=GlucoseSampleType.CAPILLARY_WHOLE_BLOOD,
        sample_location=GlucoseSampleLocation.FINGER,
    )
    assert mgdl == GlucoseMeasurement(
        sequence_number=8,
        base_time=NOW_GATT,
        concentration=GlucoseConcentration(
            si_value=Decimal("0.00101"), si_unit="kg/L", value=Decimal(101), unit="mg/dL"
        ),
        sample_type=GlucoseSampleType.CAPILLARY_PLASMA,
        sample_location=GlucoseSampleLocation.ALTERNATE_SITE_TEST,
        sensor_status=GlucoseSensorStatus(0),
    )
    assert high.concentration == GlucoseConcentration(
        si_value=Bound(">", Decimal("0.0333")),
        si_unit="mol/L",
        value=Bound(">", Decimal("33.3")),
        unit="mmol/L",
    )
    assert high.sensor_status == (
        GlucoseSensorStatus.RESULT_HIGHER_THAN_DEVICE_CAN_PROCESS | GlucoseSensorStatus.DEVICE_BATTERY_LOW
    )
    assert nan.concentration is not None and nan.concentration.value == NoValue(NoValueReason.NAN)
    assert strip == GlucoseMeasurement(
        sequence_number=11, base_time=NOW_GATT, sensor_status=GlucoseSensorStatus.STRIP_INSERTION_ERROR
    )
    assert m.records.values[-1][-1] == 0x4A  # high nibble location 4, low nibble type 0xA
    assert (control.sample_type, control.sample_location) == (
        GlucoseSampleType.CONTROL_SOLUTION,
        GlucoseSampleLocation.CONTROL_SOLUTION,
    )


async def test_racp_report_greater_or_equal_and_number_of_records(central: SimulatedCentral) -> None:
    meter = central.add(GlucoseMeter(address=METER, clock=clock(), first_sequence=100))
    fill(meter, 50)
    m = await MeterLink.open(central)

    assert await m.ask(encode_report_number_of_records()) == RacpNumberOfRecords(50)
    assert await m.ask(encode_report_number_of_records(greater_or_equal=140)) == RacpNumberOfRecords(10)
    assert await m.ask(encode_report_records_greater_or_equal(130)) == SUCCESS_REPORT
    assert m.sequence_numbers() == list(range(130, 150))  # every record before the response
    assert parse_glucose_measurement(m.records.values[0]).base_time == DateTime(2024, 5, 1, 7, 30, 0)

    m.records.values.clear()
    assert await m.ask(report(Operator.FIRST_RECORD)) == SUCCESS_REPORT
    assert await m.ask(report(Operator.LAST_RECORD)) == SUCCESS_REPORT
    assert await m.ask(report(Operator.LESS_THAN_OR_EQUAL_TO, sequence_filter(101))) == SUCCESS_REPORT
    assert await m.ask(report(Operator.WITHIN_RANGE_OF, sequence_range_filter(120, 122))) == SUCCESS_REPORT
    assert m.sequence_numbers() == [100, 149, 100, 101, 120, 121, 122]


async def test_racp_fifty_records_link_drops_after_25_then_the_rest(central: SimulatedCentral) -> None:
    meter = central.add(GlucoseMeter(address=METER, clock=clock(), first_sequence=1))
    fill(meter, 50)
    meter.faults.drop_after_notifications = 25
    m = await MeterLink.open(central)

    await m.link.write(RACP, encode_report_records_greater_or_equal(1))
    await asyncio.wait_for(m.link.wait_disconnected(), TIMEOUT)
    assert m.sequence_numbers() == list(range(1, 26))
    assert m.answers.values == []  # the procedure never finished: no response code

    high_water_mark = m.sequence_numbers()[-1]
    again = await MeterLink.open(central, pair=False)  # bonded: reconnects without pairing again
    assert await again.ask(encode_report_records_greater_or_equal(high_water_mark + 1)) == SUCCESS_REPORT
    assert again.sequence_numbers() == list(range(26, 51))
    assert len(meter.records) == 50  # reporting never deletes


async def test_racp_abort_stops_a_report(central: SimulatedCentral) -> None:
    meter = central.add(GlucoseMeter(address=METER, clock=clock(), record_interval_s=0.005))
    fill(meter, 50)
    m = await MeterLink.open(central)
    await m.link.write(RACP, report(Operator.ALL_RECORDS))
    await m.records.take(5)

    with pytest.raises(AttError) as busy:  # only abort may interrupt a running procedure
        await m.link.write(RACP, encode_report_number_of_records())
    assert busy.value.code == 0x80
    assert await m.ask(encode_abort()) == RacpResponse(RacpOpCode.ABORT_OPERATION, RacpResponseCode.SUCCESS)
    assert 5 <= len(m.records.values) < 50
    assert m.sequence_numbers() == list(range(len(m.records.values)))
    await asyncio.sleep(0.05)
    assert len(m.answers.values) == 1  # no "success" for the aborted report
    assert await m.ask(encode_report_number_of_records()) == RacpNumberOfRecords(50)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (report(Operator.NULL), RacpResponse(RacpOpCode(0x01), RacpResponseCode.INVALID_OPERATOR)),
        (report(0x07), RacpResponse(RacpOpCode(0x01), RacpResponseCode.INVALID_OPERATOR)),
        (
            report(Operator.WITHIN_RANGE_OF, sequence_range_filter(1, 3)),
            RacpResponse(RacpOpCode(0x01), RacpResponseCode.OPERATOR_NOT_SUPPORTED),
        ),
        (
            report(Operator.GREATER_THAN_OR_EQUAL_TO, b"\x01\x05"),  # u16 operand cut short
            RacpResponse(RacpOpCode(0x01), RacpResponseCode.INVALID_OPERAND),
        ),
        (
            report(Operator.ALL_RECORDS, b"\x01"),  # "all records" takes no operand
            RacpResponse(RacpOpCode(0x01), RacpResponseCode.INVALID_OPERAND),
        ),
        (
            report(Operator.GREATER_THAN_OR_EQUAL_TO, b"\x02" + bytes(7)),  # filter: user facing time
            RacpResponse(RacpOpCode(0x01), RacpResponseCode.OPERAND_NOT_SUPPORTED),
        ),
        (
            encode_report_records_greater_or_equal(9999),
            RacpResponse(RacpOpCode(0x01), RacpResponseCode.NO_RECORDS_FOUND),
        ),
        (
            encode_request(OpCode.DELETE_STORED_RECORDS, Operator.ALL_RECORDS),
            RacpResponse(RacpOpCode.DELETE_STORED_RECORDS, RacpResponseCode.OP_CODE_NOT_SUPPORTED),
        ),
        (
            encode_request(OpCode.ABORT_OPERATION, Operator.ALL_RECORDS),
            RacpResponse(RacpOpCode.ABORT_OPERATION, RacpResponseCode.INVALID_OPERATOR),
        ),
    ],
)
async def test_racp_response_codes(
    central: SimulatedCentral, request_: bytes, expected: RacpResponse
) -> None:
    meter = central.add(
        GlucoseMeter(
            address=METER, clock=clock(), unsupported_operators=frozenset({Operator.WITHIN_RANGE_OF})
        )
    )
    meter.faults.refused_op_codes = {OpCode.DELETE_STORED_RECORDS}  # a meter that cannot delete
    fill(meter, 3)
    m = await MeterLink.open(central)
    assert await m.ask(request_) == expected
    assert m.records.values == []


async def test_racp_op_code_not_supported_for_an_unknown_op_code(central: SimulatedCentral) -> None:
    meter = central.add(GlucoseMeter(address=METER, clock=clock()))
    fill(meter, 3)
    m = await MeterLink.open(central)
    await m.link.write(RACP, encode_request(0x07, Operator.ALL_RECORDS))
    raw = await m.answers.get()
    # Response Code | operator Null | request op code 0x07 | "op code not supported"
    assert raw == bytes([0x06, 0x00, 0x07, 0x02])
    response = parse_racp_response(raw)
    assert isinstance(response, RacpResponse)
    assert response.response_code == RacpResponseCode.OP_CODE_NOT_SUPPORTED
    assert response.request_op_code == 0x07


async def test_racp_abort_unsuccessful_and_procedure_not_completed(central: SimulatedCentral) -> None:
    meter = central.add(GlucoseMeter(address=METER, clock=clock()))
    fill(meter, 10)
    meter.faults.abort_unsuccessful = True
    meter.faults.report_fails_after = 4
    m = await MeterLink.open(central)
    assert await m.ask(encode_abort()) == RacpResponse(
        RacpOpCode.ABORT_OPERATION, RacpResponseCode.ABORT_UNSUCCESSFUL
    )
    assert await m.ask(report(Operator.ALL_RECORDS)) == RacpResponse(
        RacpOpCode.REPORT_STORED_RECORDS, RacpResponseCode.PROCEDURE_NOT_COMPLETED
    )
    assert m.sequence_numbers() == [0, 1, 2, 3]


async def test_racp_delete_then_nothing_left(central: SimulatedCentral) -> None:
    meter = central.add(GlucoseMeter(address=METER, clock=clock()))
    fill(meter, 5)
    m = await MeterLink.open(central)
    delete = encode_request(OpCode.DELETE_STORED_RECORDS, Operator.LESS_THAN_OR_EQUAL_TO, sequence_filter(2))
    assert await m.ask(delete) == RacpResponse(RacpOpCode.DELETE_STORED_RECORDS, RacpResponseCode.SUCCESS)
    assert [r.sequence_number for r in meter.records] == [3, 4]
    assert await m.ask(encode_request(OpCode.DELETE_STORED_RECORDS, Operator.ALL_RECORDS)) == RacpResponse(
        RacpOpCode.DELETE_STORED_RECORDS, RacpResponseCode.SUCCESS
    )
    assert await m.ask(encode_report_number_of_records()) == RacpNumberOfRecords(0)
    assert await m.ask(report(Operator.ALL_RECORDS)) == RacpResponse(
        RacpOpCode.REPORT_STORED_RECORDS, RacpResponseCode.NO_RECORDS_FOUND
    )


async def test_racp_needs_indications_enabled(central: SimulatedCentral) -> None:
    central.add(GlucoseMeter(address=METER, clock=clock()))
    link = await central.connect(METER, timeout_s=1, pair=True)
    with pytest.raises(AttError) as refused:
        await link.write(RACP, encode_report_number_of_records())
    assert refused.value.code == 0x81  # client characteristic configuration descriptor improperly configured
    assert await link.read(uuid16(0x2A51)) == (0x03FF).to_bytes(2, "little")


async def test_sequence_numbers_wrap_at_ffff_and_restart_after_a_reset(central: SimulatedCentral) -> None:
    meter = central.add(GlucoseMeter(address=METER, clock=clock(), first_sequence=0xFFFE))
    fill(meter, 4)
    m = await MeterLink.open(central)
    assert await m.ask(report(Operator.ALL_RECORDS)) == SUCCESS_REPORT
    assert m.sequence_numbers() == [0xFFFE, 0xFFFF, 0x0000, 0x0001]

    m.records.values.clear()
    # "≥ 0xFFFE" compares raw u16 numbers (as the spec says): the wrapped records are not included.
    assert await m.ask(encode_report_records_greater_or_equal(0xFFFE)) == SUCCESS_REPORT
    assert m.sequence_numbers() == [0xFFFE, 0xFFFF]

    meter.reset(first_sequence=0)
    await asyncio.wait_for(m.link.wait_disconnected(), TIMEOUT)
    await meter.measure(Decimal("6.1"))
    again = await MeterLink.open(central, pair=False)
    assert await again.ask(encode_report_number_of_records()) == RacpNumberOfRecords(1)
    assert await again.ask(encode_report_records_greater_or_equal(0)) == SUCCESS_REPORT
    assert again.sequence_numbers() == [0]  # below the gateway's old high-water mark of 0x0001


# ----------------------------------------------------------------------------- resident defaults


@pytest.mark.parametrize("resident", sorted(RESIDENTS))
async def test_resident_defaults_are_sent_exactly(central: SimulatedCentral, resident: str) -> None:
    typical = RESIDENTS[resident]
    cuff = central.add(BloodPressureCuff(address=CUFF, clock=clock()))
    scale = central.add(WeightScale(address=SCALE, clock=clock()))
    cuff_link = await central.connect(CUFF, timeout_s=1, pair=True)
    scale_link = await central.connect(SCALE, timeout_s=1, pair=False)
    pressures, weights = Inbox(), Inbox()
    await cuff_link.start_notify(BLOOD_PRESSURE_MEASUREMENT, pressures)
    await scale_link.start_notify(WEIGHT_MEASUREMENT, weights)

    await cuff.measure(
        **typical.blood_pressure(), status=blood_pressure_status(irregular_pulse=typical.irregular_pulse)
    )
    await scale.measure(**typical.weighing())
    pressure = parse_blood_pressure(await pressures.get())
    weight = parse_weight(await weights.get())
    assert (pressure.systolic, pressure.diastolic, pressure.pulse_rate) == (
        typical.systolic,
        typical.diastolic,
        typical.pulse_rate,
    )
    assert pressure.status is not None and pressure.status.irregular_pulse == typical.irregular_pulse
    assert (weight.weight, weight.bmi, weight.height) == (typical.weight, typical.bmi, typical.height)
