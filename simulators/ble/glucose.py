"""Simulated glucose meter: Glucose Service 0x1808 with its record store and RACP 0x2A52.

The meter keeps every result as a numbered record (Glucose Measurement 0x2A18). A central enables
notifications on 0x2A18 and indications on the RACP, writes a request (report records ≥ N, number of
records, delete, abort) and receives one notification per record, then a Response Code indication.

For the gateway's high-water-mark logic the record numbering can start anywhere (`first_sequence`,
e.g. 0xFFF0 to see the u16 wrap to 0x0000) and `reset()` clears the memory and restarts the
numbering, as a factory reset or a battery change does on some meters. Faults (in `faults`): drop
the link after K records (`drop_after_notifications`), refuse op codes (`refused_op_codes`: answered
"op code not supported"), an abort that fails (`abort_unsuccessful`), a report that stops with
"procedure not completed" (`report_fails_after`), plus the radio faults every device has.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal

from gateway.transports.ble import uuid16
from simulators.ble.ieee11073 import Number, Special, to_decimal
from simulators.ble.payloads import (
    DateTimeValue,
    GlucoseSampleLocation,
    GlucoseSampleType,
    encode_glucose_measurement,
)
from simulators.ble.peripheral import (
    ATT_CCCD_IMPROPERLY_CONFIGURED,
    ATT_INVALID_ATTRIBUTE_VALUE_LENGTH,
    ATT_PROCEDURE_ALREADY_IN_PROGRESS,
    AttError,
    Characteristic,
    Property,
    SimulatedPeripheral,
)
from simulators.ble.racp import (
    OpCode,
    Operator,
    RacpRefused,
    ResponseCode,
    check_record_op_code,
    encode_number_of_records,
    encode_response_code,
    parse_request,
    select,
)

__all__ = ["GLUCOSE_FEATURE", "GLUCOSE_MEASUREMENT", "RACP", "GlucoseMeter", "GlucoseRecord"]

GLUCOSE_MEASUREMENT = uuid16(0x2A18)
GLUCOSE_FEATURE = uuid16(0x2A51)
RACP = uuid16(0x2A52)

GlucoseUnit = Literal["mmol/L", "mg/dL", "mol/L", "kg/L"]
# What the meter shows -> (unit on the wire, power of ten from the shown unit to the wire unit).
_TO_WIRE: dict[str, tuple[Literal["mol/L", "kg/L"], int]] = {
    "mmol/L": ("mol/L", -3),  # 1 mmol/L = 10^-3 mol/L
    "mg/dL": ("kg/L", -5),  # 1 mg/dL = 10^-3 g / 10^-1 L = 10^-2 g/L = 10^-5 kg/L
    "mol/L": ("mol/L", 0),
    "kg/L": ("kg/L", 0),
}


@dataclass(frozen=True, slots=True)
class GlucoseRecord:
    """One stored result, with the concentration as it goes on the wire (mol/L or kg/L)."""

    sequence_number: int
    base_time: datetime | DateTimeValue
    concentration: Decimal | Special | None  # None: no concentration field (e.g. a strip error)
    unit: Literal["mol/L", "kg/L"]
    sample_type: int = GlucoseSampleType.CAPILLARY_WHOLE_BLOOD
    sample_location: int = GlucoseSampleLocation.FINGER
    sensor_status: int | None = None
    time_offset_minutes: int | None = None

    def payload(self) -> bytes:
        return encode_glucose_measurement(
            sequence_number=self.sequence_number,
            base_time=self.base_time,
            time_offset_minutes=self.time_offset_minutes,
            concentration=self.concentration,
            unit=self.unit,
            sample_type=self.sample_type,
            sample_location=self.sample_location,
            sensor_status=self.sensor_status,
        )


class GlucoseMeter(SimulatedPeripheral):
    """Glucose Service 0x1808: Glucose Measurement 0x2A18 (notify), Glucose Feature 0x2A51 (read),
    Record Access Control Point 0x2A52 (write, indicate).

    Glucose Feature (u16): bit 0 low battery detection, 1 sensor malfunction, 2 sample size,
    3 strip insertion error, 4 strip type error, 5 result high-low detection, 6 temperature high-low,
    7 read interrupted, 8 general device fault, 9 time fault, 10 multiple bond.
    """

    service: ClassVar[int] = 0x1808

    def __init__(
        self,
        *,
        address: str,
        name: str = "KX-GLU BLE",
        requires_bonding: bool = True,
        first_sequence: int = 0,
        capacity: int = 500,
        record_interval_s: float = 0.0,
        unsupported_operators: frozenset[int] = frozenset(),
        features: int = 0x03FF,
        model: str = "SIM-GLU-1808",
        **common: Any,
    ) -> None:
        super().__init__(address=address, name=name, requires_bonding=requires_bonding, model=model, **common)
        if not 0 <= first_sequence <= 0xFFFF:
            raise ValueError(f"first_sequence {first_sequence} is not a u16")
        self.first_sequence = first_sequence
        self.next_sequence = first_sequence
        self.record_interval_s = record_interval_s  # pause between two record notifications
        self.unsupported_operators = unsupported_operators
        self._records: deque[GlucoseRecord] = deque(maxlen=capacity)
        self._procedure: asyncio.Task[None] | None = None
        self._abort_requested = False
        self.requests: list[bytes] = []  # every RACP value written, for tests
        self.add_service(
            self.service,
            Characteristic(GLUCOSE_MEASUREMENT, Property.NOTIFY),
            Characteristic(GLUCOSE_FEATURE, Property.READ, features.to_bytes(2, "little")),
            Characteristic(RACP, Property.WRITE | Property.INDICATE, on_write=self._racp_written),
        )

    # ------------------------------------------------------------------ what happens at the meter

    @property
    def records(self) -> tuple[GlucoseRecord, ...]:
        """The stored records, oldest first."""
        return tuple(self._records)

    def add_record(
        self,
        concentration: Number | Special | None,
        *,
        unit: GlucoseUnit = "mmol/L",
        sample_type: int = GlucoseSampleType.CAPILLARY_WHOLE_BLOOD,
        sample_location: int = GlucoseSampleLocation.FINGER,
        sensor_status: int | None = None,
        at: datetime | DateTimeValue | None = None,
        time_offset_minutes: int | None = None,
    ) -> GlucoseRecord:
        """Store a result (a test done at the meter); the next sequence number is used, wrapping at
        0xFFFF. `concentration` is in `unit` as the meter shows it; it is sent in mol/L (for mmol/L)
        or kg/L (for mg/dL), exactly. None leaves the concentration field out."""
        wire_unit, power = _TO_WIRE[unit]
        value: Decimal | Special | None
        if concentration is None or isinstance(concentration, Special):
            value = concentration
        else:
            value = to_decimal(concentration).scaleb(power)
        record = GlucoseRecord(
            sequence_number=self.next_sequence,
            base_time=at if at is not None else self.clock.now(),
            concentration=value,
            unit=wire_unit,
            sample_type=sample_type,
            sample_location=sample_location,
            sensor_status=sensor_status,
            time_offset_minutes=time_offset_minutes,
        )
        record.payload()  # fail now, not during a report, when the fields cannot be sent
        self._records.append(record)
        self.next_sequence = (self.next_sequence + 1) & 0xFFFF
        return record

    async def measure(
        self,
        concentration: Number | Special | None,
        *,
        unit: GlucoseUnit = "mmol/L",
        sample_type: int = GlucoseSampleType.CAPILLARY_WHOLE_BLOOD,
        sample_location: int = GlucoseSampleLocation.FINGER,
        sensor_status: int | None = None,
        at: datetime | DateTimeValue | None = None,
        time_offset_minutes: int | None = None,
    ) -> GlucoseRecord:
        """A test at the meter: the result is stored (reported when a central asks through RACP)."""
        await asyncio.sleep(0)
        return self.add_record(
            concentration,
            unit=unit,
            sample_type=sample_type,
            sample_location=sample_location,
            sensor_status=sensor_status,
            at=at,
            time_offset_minutes=time_offset_minutes,
        )

    def reset(self, *, first_sequence: int | None = None, forget_bonds: bool = False) -> None:
        """Factory reset: the meter reboots (the link drops), its memory is cleared, and numbering
        restarts at `first_sequence` (by default where it first started)."""
        self.drop_link("meter reset")
        self._records.clear()
        self.next_sequence = self.first_sequence if first_sequence is None else first_sequence
        if forget_bonds:
            self.forget_bonds()

    # ------------------------------------------------------------------ RACP

    def _on_disconnected(self) -> None:
        if self._procedure is not None:
            self._procedure.cancel()
            self._procedure = None
        self._abort_requested = False

    async def _racp_written(self, data: bytes) -> None:
        """The write handler: ATT-level checks answer the write itself; the procedure runs after the
        write response, as a task, and ends with an indication."""
        self.requests.append(bytes(data))
        if not self.subscribed(RACP):
            raise AttError(self.address, RACP, ATT_CCCD_IMPROPERLY_CONFIGURED, "RACP indications are off")
        if not data:
            raise AttError(self.address, RACP, ATT_INVALID_ATTRIBUTE_VALUE_LENGTH, "empty write")
        if data[0] == OpCode.ABORT_OPERATION:
            self._spawn(self._abort(bytes(data)))
            return
        if self._procedure is not None and not self._procedure.done():
            raise AttError(
                self.address, RACP, ATT_PROCEDURE_ALREADY_IN_PROGRESS, "a RACP procedure is running"
            )
        self._abort_requested = False
        self._procedure = self._spawn(self._run(bytes(data)))

    async def _respond(self, request_op_code: int, code: ResponseCode) -> None:
        await self._send(RACP, encode_response_code(request_op_code, code))

    async def _abort(self, data: bytes) -> None:
        op = OpCode.ABORT_OPERATION
        if data[1:2] != bytes([Operator.NULL]):
            await self._respond(op, ResponseCode.INVALID_OPERATOR)
            return
        if len(data) > 2:
            await self._respond(op, ResponseCode.INVALID_OPERAND)
            return
        if op in self.faults.refused_op_codes:
            await self._respond(op, ResponseCode.OP_CODE_NOT_SUPPORTED)
            return
        if self.faults.abort_unsuccessful:
            await self._respond(op, ResponseCode.ABORT_UNSUCCESSFUL)
            return
        procedure = self._procedure
        if procedure is not None and not procedure.done():
            self._abort_requested = True
            await asyncio.wait([procedure])  # it stops after the record in flight
        await self._respond(op, ResponseCode.SUCCESS)

    async def _run(self, data: bytes) -> None:
        op_code = data[0]
        try:
            request = parse_request(data)
            op = check_record_op_code(request, self.faults.refused_op_codes)
            chosen = select(
                request,
                [record.sequence_number for record in self._records],
                unsupported_operators=self.unsupported_operators,
            )
        except RacpRefused as refused:
            await self._respond(op_code, refused.code)
            return
        if op == OpCode.REPORT_NUMBER_OF_STORED_RECORDS:
            await self._send(RACP, encode_number_of_records(len(chosen)))
            return
        if not chosen:
            await self._respond(op, ResponseCode.NO_RECORDS_FOUND)
            return
        records = [self._records[i] for i in chosen]
        if op == OpCode.DELETE_STORED_RECORDS:
            for record in records:
                self._records.remove(record)
            await self._respond(op, ResponseCode.SUCCESS)
            return
        for sent, record in enumerate(records):
            if self._abort_requested:
                return  # the abort's own response follows
            if sent == self.faults.report_fails_after:
                await self._respond(op, ResponseCode.PROCEDURE_NOT_COMPLETED)
                return
            await self._send(GLUCOSE_MEASUREMENT, record.payload())
            if not self.is_connected:
                return
            if self.record_interval_s:
                await asyncio.sleep(self.record_interval_s)
        if not self._abort_requested:
            await self._respond(op, ResponseCode.SUCCESS)
