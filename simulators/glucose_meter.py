"""Simulated strip-meter module: the other end of firmware/glucose_meter.py's UART.

A resident (or the village doctor with control solution) inserts a strip, applies blood, the
meter counts down and shows a result, which it also keeps in its memory of past tests, as a
hand-held glucometer does. The board asks for that memory over the same UART, so the simulator
answers READ_INFO and READ_RECORD from it. `store` puts records in the memory without any UART
traffic: tests done while the board was off or unplugged.

Faults, injected per test: the meter's E-1 (used or damaged strip, shown as soon as the strip
goes in), E-2 (temperature out of range, also at insertion), E-3 (not enough blood, shown when
the countdown would start), an E-code the board does not know, a corrupt result frame (the
record is stored all the same), a result with an impossible value, and a meter that stops
answering commands (`silent`, e.g. its battery connector came loose).
"""

from __future__ import annotations

import os
import random
import selectors
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from firmware.glucose_meter import (
    CMD_READ_INFO,
    CMD_READ_RECORD,
    FLAG_AFTER_MEAL,
    FLAG_CONTROL,
    FLAG_FASTING,
    FLAG_HI,
    FLAG_LO,
    RANGE_HIGH,
    RANGE_LOW,
    RSP_COUNTDOWN,
    RSP_ERROR,
    RSP_INFO,
    RSP_NO_RECORD,
    RSP_RECORD,
    RSP_RESULT,
    RSP_STRIP_IN,
    RSP_STRIP_OUT,
    SYNC,
    encode_frame,
    pack_record,
)
from simulators.pty_port import PtyPort

Meal = Literal["fasting", "after_meal"] | None
Fault = Literal[
    "used_strip", "temperature", "insufficient_sample", "unknown_error", "corrupt_frame", "invalid_value"
]

# Meter E-codes as the module reports them (firmware/glucose_meter.py).
FAULT_CODES = {"used_strip": 1, "temperature": 2, "insufficient_sample": 3, "unknown_error": 9}


@dataclass(frozen=True, slots=True)
class GlucoseResident:
    """Typical capillary glucose of one kind of resident, in mmol/L x 10 (what the meter sends)."""

    name: str
    fasting: int
    after_meal: int
    spread: int  # standard deviation between tests

    def glucose(self, rng: random.Random, meal: Meal = "fasting") -> int:
        mean = self.after_meal if meal == "after_meal" else self.fasting
        return max(5, round(rng.gauss(mean, self.spread)))


# Chinese primary-care thresholds: fasting >= 7.0 diabetic, < 3.9 hypoglycaemia, < 3.0 severe.
GLUCOSE_RESIDENTS = {
    "normal": GlucoseResident("normal", fasting=52, after_meal=68, spread=3),
    "diabetic": GlucoseResident("diabetic", fasting=84, after_meal=132, spread=6),
    "hypoglycaemic": GlucoseResident("hypoglycaemic", fasting=31, after_meal=44, spread=2),
    "severe-hypoglycaemia": GlucoseResident("severe-hypoglycaemia", fasting=26, after_meal=30, spread=2),
}


@dataclass(frozen=True, slots=True)
class Record:
    """One result in the meter's memory, as the module sends it."""

    index: int
    glucose: int  # mmol/L x 10; the range limit when HI or LO
    flags: int
    time: int  # seconds since 1970 from the meter's clock, 0 when its clock is not set


@dataclass
class SimulatedMeter:
    port: PtyPort = field(default_factory=PtyPort.open)
    capacity: int = 500  # records the memory holds; the oldest is overwritten
    first_index: int = 1
    countdown_seconds: int = 5
    countdown_step_s: float = 0.02  # 1 s on the real meter; shortened for tests
    clock_set: bool = True
    silent: bool = False
    seed: int = 1

    def __post_init__(self) -> None:
        self.memory: deque[Record] = deque(maxlen=self.capacity)
        self.next_index = self.first_index
        self.commands_received = 0
        self.rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rx = bytearray()
        self._thread = threading.Thread(target=self._serve, name="sim-glucose", daemon=True)
        self._thread.start()

    @property
    def path(self) -> str:
        return self.port.path

    # what a user does at the meter -----------------------------------------------------------
    def resident_value(self, resident: str, meal: Meal = "fasting") -> int:
        return GLUCOSE_RESIDENTS[resident].glucose(self.rng, meal)

    def store(
        self, glucose: int, *, meal: Meal = None, control: bool = False, at: int | None = None
    ) -> Record:
        """Put a result in memory silently (a test done while the board was not listening)."""
        with self._lock:
            return self._new_record(glucose, meal, control, at)

    def measure(
        self, glucose: int | None = None, *, resident: str | None = None, meal: Meal = None,
        control: bool = False, fault: Fault | None = None,
    ) -> Record | None:  # fmt: skip
        """Insert a strip and apply a sample: events on the UART, then the result (or an E-code).

        Returns the record the meter will store, or None when the fault means no result.
        """
        if glucose is None:
            glucose = self.resident_value(resident or "normal", meal or "fasting")
        record = None
        if fault not in FAULT_CODES:
            with self._lock:
                value = 0 if fault == "invalid_value" else glucose
                record = self._new_record(value, meal, control, None, hold=True)
        threading.Thread(target=self._run_test, args=(record, fault), daemon=True).start()
        return record

    def clear_memory(self) -> None:
        """The technician clears the memory; the index counter starts again too."""
        with self._lock:
            self.memory.clear()
            self.next_index = self.first_index

    # the meter -------------------------------------------------------------------------------
    def _new_record(
        self, glucose: int, meal: Meal, control: bool, at: int | None, hold: bool = False
    ) -> Record:
        flags = FLAG_CONTROL if control else 0
        flags |= FLAG_FASTING if meal == "fasting" else FLAG_AFTER_MEAL if meal == "after_meal" else 0
        if glucose > RANGE_HIGH:
            flags, glucose = flags | FLAG_HI, RANGE_HIGH
        elif 0 < glucose < RANGE_LOW:
            flags, glucose = flags | FLAG_LO, RANGE_LOW
        when = at if at is not None else (int(time.time()) if self.clock_set else 0)
        record = Record(self.next_index, glucose, flags, when)
        self.next_index += 1
        if not hold:
            self.memory.append(record)
        return record

    def _run_test(self, record: Record | None, fault: Fault | None) -> None:
        self._send(encode_frame(RSP_STRIP_IN))
        if fault in ("used_strip", "temperature", "unknown_error"):
            self._send(encode_frame(RSP_ERROR, bytes((FAULT_CODES[fault],))))
            self._send(encode_frame(RSP_STRIP_OUT))
            return
        time.sleep(self.countdown_step_s)  # waiting for blood
        if fault == "insufficient_sample":
            self._send(encode_frame(RSP_ERROR, bytes((FAULT_CODES[fault],))))
            self._send(encode_frame(RSP_STRIP_OUT))
            return
        for seconds in range(self.countdown_seconds, 0, -1):
            self._send(encode_frame(RSP_COUNTDOWN, bytes((seconds,))))
            time.sleep(self.countdown_step_s)
        assert record is not None
        with self._lock:
            self.memory.append(record)  # stored when shown, whether or not the board hears it
        frame = bytearray(encode_frame(RSP_RESULT, self._pack(record)))
        if fault == "corrupt_frame":
            frame[-1] ^= 0xFF
        self._send(bytes(frame))
        self._send(encode_frame(RSP_STRIP_OUT))

    @staticmethod
    def _pack(record: Record) -> bytes:
        return pack_record(record.index, record.glucose, record.flags, record.time)

    def _answer(self, cmd: int, payload: bytes) -> None:
        self.commands_received += 1
        if self.silent:
            return
        with self._lock:
            if cmd == CMD_READ_INFO:
                newest = self.memory[-1].index if self.memory else 0
                reply = encode_frame(RSP_INFO, struct.pack("<HH", newest, len(self.memory)))
            elif cmd == CMD_READ_RECORD and len(payload) == 2:
                (index,) = struct.unpack("<H", payload)
                found = next((r for r in self.memory if r.index == index), None)
                reply = (
                    encode_frame(RSP_RECORD, self._pack(found))
                    if found
                    else encode_frame(RSP_NO_RECORD, payload)
                )
            else:
                return  # the module ignores what it does not understand
        self._send(reply)

    def _send(self, data: bytes) -> None:
        with self._lock:
            os.write(self.port.master_fd, data)

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.port.master_fd, selectors.EVENT_READ)
        while not self._stop.is_set():
            if not selector.select(timeout=0.1):
                continue
            try:
                self._rx += os.read(self.port.master_fd, 256)
            except (BlockingIOError, OSError):
                continue
            while len(self._rx) >= 4:
                if self._rx[0] != SYNC:
                    del self._rx[0]
                    continue
                length = self._rx[1]
                if not 1 <= length <= 32:
                    del self._rx[0]
                    continue
                if len(self._rx) < length + 3:
                    break
                body = bytes(self._rx[2 : 2 + length])
                check = self._rx[2 + length]
                del self._rx[: length + 3]
                expected = length
                for byte in body:
                    expected ^= byte
                if check == expected:
                    self._answer(body[0], body[1:])
        selector.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.port.close()
