"""The glucose board firmware on the real MicroPython unix port, wired by ptys to a simulated meter.

The test holds the gateway's end of the serial cable and speaks the link protocol itself: it
acks what it wants kept and checks every decoded message whole.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from firmware import kiosk_link as link
from simulators.chain import REPO_ROOT, micropython_binary, wait_for
from simulators.glucose_meter import GLUCOSE_RESIDENTS, SimulatedMeter
from simulators.serial_cable import SerialCable
from tests.component.link_peer import GatewayEnd

pytestmark = pytest.mark.micropython

Message = tuple[int, int, bytes]


class Rig:
    """Cable, meter and a firmware process that can be restarted with the same state file."""

    def __init__(self, state: Path) -> None:
        self.cable = SerialCable()
        self.meter = SimulatedMeter(countdown_step_s=0.01)
        self.state = state
        self.process: subprocess.Popen[bytes] | None = None
        self.gateway = GatewayEnd(serial.Serial(self.cable.gateway_path, 115200, timeout=0))

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                micropython_binary(),
                str(REPO_ROOT / "firmware/host/run_glucose.py"),
                self.cable.device_path,
                self.meter.path,
                "glu-0007",
                "115200",
                str(self.state),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            output = self.process.communicate()[0].decode(errors="replace")
            self.process = None
            assert "Traceback" not in output, output

    def hello(self, timeout: float = 5) -> tuple[int, str, str, str]:
        return self.gateway.hello(timeout)

    def messages(self, count: int, timeout: float = 5) -> list[tuple[int, tuple]]:
        return self.gateway.messages(count, timeout)

    def quiet(self, seconds: float) -> list[tuple[int, int, bytes]]:
        return self.gateway.quiet(seconds)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.gateway.port.close()
            self.meter.close()
            self.cable.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path / "glucose.state")
    rig.start()
    try:
        yield rig
    finally:
        rig.close()


def glucose(flags: int, value: int, at: int) -> tuple[int, tuple]:
    return link.MSG_READING, (link.KIND_GLUCOSE, flags, at, [(link.FIELD_GLUCOSE, value, -1)])


def device_error(code: int) -> tuple[int, tuple]:
    return link.MSG_DEVICE_ERROR, (link.KIND_GLUCOSE, code)


def test_residents_results_are_exact_tenths_of_mmol_per_litre(rig: Rig) -> None:
    assert rig.hello()[1:] == ("glu-0007", "KX-GLU100", "0.1.0")
    expected = []
    for name, meal in [("normal", "fasting"), ("diabetic", "fasting"), ("hypoglycaemic", "fasting"),
                       ("severe-hypoglycaemia", "fasting"), ("diabetic", "after_meal")]:  # fmt: skip
        resident = GLUCOSE_RESIDENTS[name]
        value = resident.after_meal if meal == "after_meal" else resident.fasting
        record = rig.meter.measure(value, meal=meal)
        assert record is not None
        meal_flag = link.FLAG_AFTER_MEAL if meal == "after_meal" else link.FLAG_FASTING
        expected.append(glucose(meal_flag, value, record.time))
        assert rig.messages(1) == expected[-1:]
    assert [v for _, (_, _, _, [(_, v, _)]) in expected] == [52, 84, 31, 26, 132]
    assert rig.quiet(0.8) == []  # each result sent once


def test_hi_lo_and_control_solution_are_flagged_bounds_not_values(rig: Rig) -> None:
    rig.hello()
    high = rig.meter.measure(412, meal="after_meal")  # true value unknown: above 33.3
    assert rig.messages(1) == [glucose(link.FLAG_ABOVE_RANGE | link.FLAG_AFTER_MEAL, 333, high.time)]
    low = rig.meter.measure(8)
    assert rig.messages(1) == [glucose(link.FLAG_BELOW_RANGE, 11, low.time)]
    control = rig.meter.measure(62, control=True)
    assert rig.messages(1) == [glucose(link.FLAG_CONTROL_SOLUTION, 62, control.time)]


METER_FAULTS = [
    ("used_strip", link.ERROR_STRIP),
    ("temperature", link.ERROR_TEMPERATURE),
    ("insufficient_sample", link.ERROR_SAMPLE_INSUFFICIENT),
    ("unknown_error", link.ERROR_SENSOR_FAULT),
    ("invalid_value", link.ERROR_SENSOR_FAULT),
]


@pytest.mark.parametrize(("fault", "code"), METER_FAULTS)
def test_meter_faults_become_typed_device_errors(rig: Rig, fault: str, code: int) -> None:
    rig.hello()
    rig.meter.measure(55, fault=fault)  # type: ignore[arg-type]
    assert rig.messages(1) == [device_error(code)]
    assert rig.quiet(0.5) == []  # and no reading


def test_corrupt_result_frame_is_recovered_from_meter_memory_once(rig: Rig) -> None:
    rig.hello()
    first = rig.meter.measure(61)
    assert rig.messages(1) == [glucose(0, 61, first.time)]
    lost = rig.meter.measure(77, fault="corrupt_frame")
    assert rig.messages(1) == [glucose(0, 77, lost.time)]
    assert rig.quiet(0.8) == []


def test_stored_records_are_downloaded_once_across_a_restart(rig: Rig) -> None:
    # Tests done while the board was off: the meter kept them with its clock's time.
    old = [rig.meter.store(v, at=1_700_000_000 + 60 * i) for i, v in enumerate((48, 93, 35))]
    rig.hello()
    assert rig.messages(3) == [glucose(0, r.glucose, r.time) for r in old]
    assert rig.quiet(0.5) == []
    # Saved once the gateway has acked all three.
    wait_for(lambda: rig.state.exists() and rig.state.read_text() == "3\n", timeout=3, what="state file")

    rig.stop()
    new = [rig.meter.store(v, at=1_700_100_000 + i) for i, v in enumerate((66, 140))]
    rig.start()
    rig.hello()
    assert rig.messages(2) == [glucose(0, r.glucose, r.time) for r in new]
    assert rig.quiet(0.5) == []
    assert [r.index for r in new] == [4, 5]


def test_meter_that_stops_answering_is_a_sensor_timeout_once(rig: Rig) -> None:
    rig.meter.silent = True
    rig.hello()
    assert rig.messages(1, timeout=4) == [device_error(link.ERROR_SENSOR_TIMEOUT)]
    assert rig.quiet(1.0) == []
    rig.meter.silent = False
    later = rig.meter.measure(58)
    assert rig.messages(1) == [glucose(0, 58, later.time)]


def test_cleared_meter_memory_is_downloaded_from_its_oldest_record(rig: Rig) -> None:
    rig.hello()
    for value in (50, 51):
        record = rig.meter.measure(value)
        assert rig.messages(1) == [glucose(0, value, record.time)]
    rig.meter.clear_memory()  # counter starts again at 1, below the last index sent (2)
    fresh = rig.meter.measure(70)
    assert fresh.index == 1
    assert rig.messages(1) == [glucose(0, 70, fresh.time)]


PARSER_SCRIPT = """
import sys
sys.path.insert(0, "{firmware}")
import micropython
from glucose_meter import GlucoseMeter, encode_frame, pack_record, RSP_RESULT, RSP_INFO, RSP_COUNTDOWN

class Uart:
    def __init__(self, data):
        self.data = data
        self.pos = 0
    def readinto(self, buf):
        n = min(len(buf), len(self.data) - self.pos)
        for i in range(n):
            buf[i] = self.data[self.pos + i]
        self.pos += n
        return n or None
    def write(self, data):
        return len(data)

stream = (b"\\x01\\x5a\\x00" + encode_frame(RSP_COUNTDOWN, b"\\x03")
          + encode_frame(RSP_RESULT, pack_record(12, 84, 0x08, 1700000000))
          + encode_frame(RSP_INFO, b"\\x0c\\x00\\x0c\\x00"))
meter = GlucoseMeter(Uart(stream))
events = [0] * 8
def drain():
    n = 0
    while True:
        event = meter.poll()
        if event is None:
            return n
        events[n] = event
        n += 1
micropython.heap_lock()
n = drain()
meter.request_record(12)
micropython.heap_unlock()
print(events[:n], meter.countdown, meter.index, meter.glucose, meter.flags, meter.time,
      meter.newest, meter.count)
"""


def test_parser_allocates_nothing_and_decodes_every_frame() -> None:
    script = PARSER_SCRIPT.format(firmware=REPO_ROOT / "firmware")
    result = subprocess.run([micropython_binary(), "-c", script], capture_output=True, timeout=10)
    # bad length, then countdown, result and info; decoded without touching the heap
    assert result.stdout.decode().split("\n")[0] == "[9, 2, 3, 6] 3 12 84 8 1700000000 12 12"
