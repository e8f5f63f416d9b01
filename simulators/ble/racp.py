"""Record Access Control Point 0x2A52, the server's side: read a request, pick records, answer.

Written from the Glucose Service specification (GLS 1.0, section 3.6 / Tables 3.x) and the GSS
RACP characteristic, independently of ``gateway.ble.glucose`` (the client's side).

A request is ``op code (u8) | operator (u8) | operand (0..n bytes)``:

========  ============================  ==================================================
Op code   Meaning                       Operand
========  ============================  ==================================================
0x01      Report stored records         filter, per the operator (below)
0x02      Delete stored records         filter, per the operator
0x03      Abort operation               none (operator must be Null)
0x04      Report number of records      filter, per the operator
0x05      Number of records response    (server → client) u16 count, operator Null
0x06      Response code                 (server → client) request op code u8, code u8
========  ============================  ==================================================

========  ==================  ==============================================================
Operator  Meaning             Operand (filter type 0x01 = sequence number, u16 values)
========  ==================  ==============================================================
0x00      Null                —  (only for abort and the two responses)
0x01      All records         none
0x02      ≤                   filter type u8, maximum u16
0x03      ≥                   filter type u8, minimum u16
0x04      Within range of     filter type u8, minimum u16, maximum u16 (inclusive)
0x05      First record        none (the oldest)
0x06      Last record         none (the most recent)
========  ==================  ==============================================================
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "FILTER_SEQUENCE_NUMBER",
    "OpCode",
    "Operator",
    "RacpRefused",
    "RacpRequest",
    "ResponseCode",
    "check_record_op_code",
    "encode_number_of_records",
    "encode_request",
    "encode_response_code",
    "parse_request",
    "select",
    "sequence_filter",
    "sequence_range_filter",
]


class OpCode(enum.IntEnum):
    REPORT_STORED_RECORDS = 0x01
    DELETE_STORED_RECORDS = 0x02
    ABORT_OPERATION = 0x03
    REPORT_NUMBER_OF_STORED_RECORDS = 0x04
    NUMBER_OF_STORED_RECORDS_RESPONSE = 0x05
    RESPONSE_CODE = 0x06


class Operator(enum.IntEnum):
    NULL = 0x00
    ALL_RECORDS = 0x01
    LESS_THAN_OR_EQUAL_TO = 0x02
    GREATER_THAN_OR_EQUAL_TO = 0x03
    WITHIN_RANGE_OF = 0x04
    FIRST_RECORD = 0x05
    LAST_RECORD = 0x06


class ResponseCode(enum.IntEnum):
    SUCCESS = 0x01
    OP_CODE_NOT_SUPPORTED = 0x02
    INVALID_OPERATOR = 0x03
    OPERATOR_NOT_SUPPORTED = 0x04
    INVALID_OPERAND = 0x05
    NO_RECORDS_FOUND = 0x06
    ABORT_UNSUCCESSFUL = 0x07
    PROCEDURE_NOT_COMPLETED = 0x08
    OPERAND_NOT_SUPPORTED = 0x09


FILTER_SEQUENCE_NUMBER = 0x01  # the only filter type GLS requires ("user facing time" 0x02 is optional)

_RECORD_OP_CODES = frozenset(
    {OpCode.REPORT_STORED_RECORDS, OpCode.DELETE_STORED_RECORDS, OpCode.REPORT_NUMBER_OF_STORED_RECORDS}
)


class RacpRefused(Exception):
    """The request gets a Response Code indication other than Success."""

    def __init__(self, code: ResponseCode, why: str) -> None:
        super().__init__(f"{code.name}: {why}")
        self.code = code


@dataclass(frozen=True, slots=True)
class RacpRequest:
    op_code: int
    operator: int
    operand: bytes


def parse_request(data: bytes) -> RacpRequest:
    """Split a written value; an empty value is an invalid op code (refused as not supported)."""
    if not data:
        raise RacpRefused(ResponseCode.OP_CODE_NOT_SUPPORTED, "empty request")
    if len(data) < 2:
        raise RacpRefused(ResponseCode.INVALID_OPERATOR, "no operator byte")
    return RacpRequest(data[0], data[1], bytes(data[2:]))


def encode_request(op_code: int, operator: int, operand: bytes = b"") -> bytes:
    """A client's request, byte for byte (tests use it to send odd requests on purpose)."""
    return bytes([op_code, operator]) + operand


def sequence_filter(sequence_number: int) -> bytes:
    """Operand for ≤ / ≥ on sequence numbers: filter type 0x01, u16."""
    return bytes([FILTER_SEQUENCE_NUMBER]) + sequence_number.to_bytes(2, "little")


def sequence_range_filter(minimum: int, maximum: int) -> bytes:
    """Operand for "within range of" on sequence numbers: filter type 0x01, u16 min, u16 max."""
    return bytes([FILTER_SEQUENCE_NUMBER]) + minimum.to_bytes(2, "little") + maximum.to_bytes(2, "little")


def encode_response_code(request_op_code: int, code: ResponseCode) -> bytes:
    """Response Code indication: 0x06, operator Null, request op code, response code value."""
    return bytes([OpCode.RESPONSE_CODE, Operator.NULL, request_op_code & 0xFF, code])


def encode_number_of_records(count: int) -> bytes:
    """Number of Stored Records Response: 0x05, operator Null, u16 count."""
    return bytes([OpCode.NUMBER_OF_STORED_RECORDS_RESPONSE, Operator.NULL]) + count.to_bytes(2, "little")


def _sequence_operand(operand: bytes, values: int) -> tuple[int, ...]:
    if not operand:
        raise RacpRefused(ResponseCode.INVALID_OPERAND, "the operator needs a filter operand")
    if operand[0] != FILTER_SEQUENCE_NUMBER:
        raise RacpRefused(ResponseCode.OPERAND_NOT_SUPPORTED, f"filter type {operand[0]:#04x}")
    if len(operand) != 1 + 2 * values:
        raise RacpRefused(ResponseCode.INVALID_OPERAND, f"filter of {len(operand)} bytes")
    return tuple(int.from_bytes(operand[1 + 2 * i : 3 + 2 * i], "little") for i in range(values))


def select(
    request: RacpRequest,
    sequence_numbers: Sequence[int],
    *,
    unsupported_operators: frozenset[int] = frozenset(),
) -> list[int]:
    """Positions (oldest first) of the stored records a record op code applies to.

    `sequence_numbers` are the stored records' numbers in storage order (oldest first). Comparisons
    are on the raw u16 values, as the spec defines them: after a wrap at 0xFFFF, "≥ 0xFFFE" does not
    include record 0x0000. Raises `RacpRefused` for a bad or unsupported operator or operand.
    """
    operator, operand = request.operator, request.operand
    if operator == Operator.NULL or operator not in Operator._value2member_map_:
        raise RacpRefused(ResponseCode.INVALID_OPERATOR, f"operator {operator:#04x}")
    if operator in unsupported_operators:
        raise RacpRefused(ResponseCode.OPERATOR_NOT_SUPPORTED, f"operator {Operator(operator).name}")
    everything = range(len(sequence_numbers))
    if operator in (Operator.ALL_RECORDS, Operator.FIRST_RECORD, Operator.LAST_RECORD):
        if operand:
            raise RacpRefused(ResponseCode.INVALID_OPERAND, f"{Operator(operator).name} takes no operand")
        if operator == Operator.ALL_RECORDS:
            return list(everything)
        if not sequence_numbers:
            return []
        return [0] if operator == Operator.FIRST_RECORD else [len(sequence_numbers) - 1]
    if operator == Operator.WITHIN_RANGE_OF:
        low, high = _sequence_operand(operand, 2)
        if low > high:
            raise RacpRefused(ResponseCode.INVALID_OPERAND, f"range {low}..{high} is empty")
        return [i for i in everything if low <= sequence_numbers[i] <= high]
    (bound,) = _sequence_operand(operand, 1)
    if operator == Operator.LESS_THAN_OR_EQUAL_TO:
        return [i for i in everything if sequence_numbers[i] <= bound]
    return [i for i in everything if sequence_numbers[i] >= bound]


def check_record_op_code(request: RacpRequest, refused: frozenset[int] | set[int]) -> OpCode:
    """The op code of a record request (1, 2 or 4); refuses others and those the device refuses."""
    if request.op_code in refused or request.op_code not in _RECORD_OP_CODES:
        raise RacpRefused(ResponseCode.OP_CODE_NOT_SUPPORTED, f"op code {request.op_code:#04x}")
    return OpCode(request.op_code)
