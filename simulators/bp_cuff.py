"""Simulated oscillometric cuff module: the other end of firmware/bp_cuff.py's UART.

It answers START with inflation progress and a result, and can be "pressed" from its front panel
(`measure`) as a resident would. Faults (cuff leak, motion, over-pressure, a corrupt frame) are
injected per measurement.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from dataclasses import dataclass, field

from firmware.bp_cuff import CMD_START, CMD_STOP, RSP_ERROR, RSP_PROGRESS, RSP_RESULT, SYNC, encode_command
from simulators.pty_port import PtyPort
from simulators.residents import BloodPressure

FAULT_CODES = {"cuff_leak": 1, "motion": 2, "over_pressure": 3}


def result_frame(bp: BloodPressure, *, movement: bool = False) -> bytes:
    status = (0x01 if bp.irregular else 0) | (0x02 if movement else 0)
    payload = struct.pack("<HHHHB", bp.systolic, bp.diastolic, bp.mean_arterial, bp.pulse, status)
    return encode_command(RSP_RESULT, payload)


@dataclass
class SimulatedCuff:
    port: PtyPort = field(default_factory=PtyPort.open)
    next_result: BloodPressure = field(default_factory=lambda: BloodPressure(120, 80, 70))
    inflate_seconds: float = 0.2
    fault: str | None = None
    measurements: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._rx = bytearray()
        self._thread = threading.Thread(target=self._serve, name="sim-cuff", daemon=True)
        self._thread.start()

    @property
    def path(self) -> str:
        return self.port.path

    def measure(self, bp: BloodPressure | None = None, *, fault: str | None = None) -> None:
        """Front-panel start: inflate, then report `bp` (or the fault)."""
        if bp is not None:
            self.next_result = bp
        self.fault = fault
        threading.Thread(target=self._run_measurement, daemon=True).start()

    def _run_measurement(self) -> None:
        for pressure in (40, 100, 160, 190):
            self._send(encode_command(RSP_PROGRESS, struct.pack("<H", pressure)))
            time.sleep(self.inflate_seconds / 4)
        fault, self.fault = self.fault, None
        if fault == "corrupt_frame":
            frame = bytearray(result_frame(self.next_result))
            frame[-1] ^= 0xFF
            self._send(bytes(frame))
        elif fault:
            self._send(encode_command(RSP_ERROR, bytes((FAULT_CODES[fault],))))
        else:
            self._send(result_frame(self.next_result, movement=False))
        self.measurements += 1

    def _send(self, data: bytes) -> None:
        os.write(self.port.master_fd, data)

    def _serve(self) -> None:
        """Answer commands from the driver (start/stop)."""
        import selectors

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
                if len(self._rx) < length + 3:
                    break
                cmd = self._rx[2]
                del self._rx[: length + 3]
                if cmd == CMD_START:
                    self.measure()
                elif cmd == CMD_STOP:
                    self.fault = None
        selector.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.port.close()
