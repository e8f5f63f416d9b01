"""The weight-scale board firmware on the real MicroPython unix port, clocking a simulated HX711.

The HX711 model sits behind the simulated board bus (two GPIO pins); the test holds the
gateway's end of the serial cable, speaks the link protocol itself and checks every decoded
message whole.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from firmware import kiosk_link as link
from simulators.bus_server import SimulatedBoard
from simulators.chain import REPO_ROOT, micropython_binary
from simulators.chips.hx711 import Hx711
from simulators.serial_cable import SerialCable
from tests.component.link_peer import GatewayEnd

pytestmark = pytest.mark.micropython

BOOT_S = 1.7  # reset, 400 ms settling, then one second of an empty platform to zero on


class Rig:
    def __init__(self, chip: Hx711, config: str | None = None, journal: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ws-"))  # short: a Unix socket path has 108 bytes
        self.chip = chip
        self.board = SimulatedBoard(str(self.dir / "bus"), chips=[chip])
        self.cable = SerialCable()
        self.gateway = GatewayEnd(serial.Serial(self.cable.gateway_path, 115200, timeout=0))
        self.argv = [micropython_binary(), str(REPO_ROOT / "firmware/host/run_weight.py"),
                     self.cable.device_path, self.board.path, "ws-0003", "115200"]  # fmt: skip
        if config is not None:
            (self.dir / "scale.cfg").write_text(config)
        if config is not None or journal:
            self.argv.append(str(self.dir / "scale.cfg") if config is not None else "-")
        if journal:
            self.argv.append(str(self.dir / "link.journal"))  # stands in for the board's flash
        self.output = ""
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def stop_firmware(self) -> str:
        """SIGKILL the firmware (power gone mid-whatever); everything it printed so far."""
        if self.process.stdout is not None and not self.process.stdout.closed:
            self.process.kill()
            self.output += self.process.communicate()[0].decode(errors="replace")
        return self.output

    def power_cut(self) -> None:
        """The power goes and comes back: the firmware boots again on the same flash."""
        self.stop_firmware()
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def hello(self, timeout: float = 5) -> tuple[int, str, str, str]:
        return self.gateway.hello(timeout)

    def messages(self, count: int, timeout: float = 5) -> list[tuple[int, tuple]]:
        return self.gateway.messages(count, timeout)

    def quiet(self, seconds: float) -> list[tuple[int, int, bytes]]:
        return self.gateway.quiet(seconds)

    def close(self) -> None:
        output = self.stop_firmware()
        self.gateway.port.close()
        self.cable.close()
        self.board.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        assert "Traceback" not in output, output


@pytest.fixture
def make_rig() -> Iterator:
    rigs: list[Rig] = []

    def make(chip: Hx711 | None = None, config: str | None = None, journal: bool = False) -> Rig:
        rigs.append(Rig(chip or Hx711(), config, journal))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def weight(value: int, flags: int = 0) -> tuple[int, tuple]:
    return link.MSG_READING, (link.KIND_WEIGHT, flags, 0, [(link.FIELD_BODY_WEIGHT, value, -1)])


def device_error(code: int) -> tuple[int, tuple]:
    return link.MSG_DEVICE_ERROR, (link.KIND_WEIGHT, code)


def test_one_exact_reading_per_resident_until_they_step_off(make_rig) -> None:
    # The platform's zero drifted 2.0 kg from the factory zero: only the boot zeroing of the
    # empty platform makes the readings exact.
    rig = make_rig(Hx711(zero_counts=84_000 + 21_480))
    assert rig.hello()[1:] == ("ws-0003", "KX-WS200", "0.1.0")
    time.sleep(BOOT_S)
    rig.chip.step_on(72.4)
    assert rig.messages(1) == [weight(724)]
    assert rig.quiet(0.5) == []  # still standing there: no second reading
    rig.chip.step_off()
    time.sleep(0.3)
    rig.chip.step_on(58.0)
    assert rig.messages(1) == [weight(580)]
    assert rig.chip.resets == 1  # the board power-cycled the HX711 once, at boot


def test_unacked_reading_survives_a_power_cut_and_an_acked_one_is_not_sent_again(make_rig) -> None:
    rig = make_rig(journal=True)
    assert rig.hello()[1:] == ("ws-0003", "KX-WS200", "0.1.0")
    time.sleep(BOOT_S)
    rig.chip.step_on(72.4)
    assert rig.messages(1) == [weight(724)]  # acked: stored at the gateway
    rig.chip.step_off()
    time.sleep(0.3)
    rig.chip.step_on(58.0)
    _, unacked_seq, unacked = rig.gateway.wait_for(link.MSG_READING)  # never acked
    assert link.decode_reading(unacked)[3] == [(link.FIELD_BODY_WEIGHT, 580, -1)]
    rig.chip.step_off()  # off the platform before the board comes back: nothing new to weigh

    rig.power_cut()
    session = rig.hello()[0]
    resent = rig.quiet(1.5)  # not acked yet: the board keeps retrying the journaled reading
    assert resent and set(resent) == {(link.MSG_READING, unacked_seq, unacked)}  # same seq, same bytes
    rig.gateway.send(link.MSG_ACK, unacked_seq)
    time.sleep(0.3)
    assert rig.quiet(1.0) == []  # 72.4 kg, acked before the cut, is not sent again
    rig.power_cut()
    assert rig.hello()[0] == session  # the journal keeps the session across boots
    assert rig.quiet(1.0) == []  # nothing left to resend
    assert rig.stop_firmware().count("resending 1 unacked message(s) from flash") == 1


def test_resident_who_keeps_moving_is_weighed_with_the_unstable_flag(make_rig) -> None:
    rig = make_rig(config="unstable_after_ms = 1500  # shortened for the test\n")
    rig.hello()
    rig.chip.step_on(81.2, moving=True)
    started = time.monotonic()
    assert rig.messages(1) == [weight(812, link.FLAG_UNSTABLE)]
    assert time.monotonic() - started > 1.4


def test_calibration_from_the_config_and_a_resident_on_the_platform_at_boot(make_rig) -> None:
    chip = Hx711(counts_per_kg=20_000, zero_counts=-150_000)
    chip.step_on(45.6)  # already standing there at boot: weighed, not tared away
    rig = make_rig(chip, config="counts_per_100g = 2000\nzero_counts = -150000\n")
    rig.hello()
    assert rig.messages(1, timeout=4) == [weight(456)]


def test_unusable_config_is_a_sensor_fault_not_a_guess(make_rig) -> None:
    rig = make_rig(config="counts_per_100g = lots\n")
    rig.chip.step_on(70.0)
    rig.hello()
    assert rig.messages(1) == [device_error(link.ERROR_SENSOR_FAULT)]
    assert rig.quiet(1.0) == []


def test_platform_reading_far_below_its_zero_stops_weighing(make_rig) -> None:
    rig = make_rig(Hx711(zero_counts=84_000 - 80_000))  # empty, it reads -7.4 kg
    rig.hello()
    assert rig.messages(1, timeout=4) == [device_error(link.ERROR_SENSOR_FAULT)]
    rig.chip.step_on(70.0)
    assert rig.quiet(1.4) == []  # 62.6 kg would be a silent wrong value


CHIP_FAULTS = [
    ("stuck_high", link.ERROR_SENSOR_TIMEOUT),
    ("stuck_low", link.ERROR_SENSOR_FAULT),
    ("saturated_high", link.ERROR_OVERLOAD),
    ("saturated_low", link.ERROR_SENSOR_FAULT),
]


@pytest.mark.parametrize(("fault", "code"), CHIP_FAULTS)
def test_chip_faults_become_typed_device_errors_once(make_rig, fault: str, code: int) -> None:
    chip = Hx711()
    chip.step_on(70.0)
    rig = make_rig(chip)
    chip.set_fault(fault)  # type: ignore[arg-type]
    rig.hello()
    assert rig.messages(1, timeout=4) == [device_error(code)]
    assert rig.quiet(0.3) == []


def test_overload_then_a_lost_sensor_then_recovery(make_rig) -> None:
    rig = make_rig()
    rig.hello()
    rig.chip.step_on(231.0)  # above the 200 kg capacity
    assert rig.messages(1) == [device_error(link.ERROR_OVERLOAD)]
    rig.chip.step_off()
    rig.chip.set_fault("stuck_high")  # the HX711 stops converting
    assert rig.messages(1) == [device_error(link.ERROR_SENSOR_TIMEOUT)]
    rig.chip.set_fault(None)
    rig.chip.step_on(66.6)
    assert rig.messages(1) == [weight(666)]


ALLOCATION_SCRIPT = """
import sys
sys.path.insert(0, "{firmware}")
sys.path.insert(0, "{firmware}/host")
import micropython
from weight_hx711 import DEFAULTS, UPDATE_SAMPLE, Hx711, Scale
from weight_app import Weigher

class Wire:
    word = 0
    bit = 24
class Sck:
    def value(self, level=None):
        if level:
            Wire.bit -= 1
class Dout:
    IRQ_FALLING = 1
    def irq(self, handler, trigger):
        pass
    def value(self):
        if Wire.bit == 24:
            return 0  # data ready
        return (Wire.word >> Wire.bit) & 1 if Wire.bit >= 0 else 1

adc = Hx711(Sck(), Dout())
scale = Scale(adc, DEFAULTS)
weigher = Weigher(scale, DEFAULTS, lambda: 0, log=None)
noise = (0, 30, -40, 200, -200, 10, 0, -5, 90, -90, 3, 7)
loaded = [84000 + 724 * 1074 + d for d in noise]
empty = [84000 + 1500 + d for d in noise]  # an idle platform whose zero drifted by 0.14 kg
out = [0] * len(noise)
def run(words, weigh):
    for i in range(len(words)):
        Wire.word = words[i]
        Wire.bit = 24
        adc.flagged = True
        out[i] = scale.update(0)
        if weigh:
            weigher.sample(0)
micropython.heap_lock()
run(loaded, False)
micropython.heap_unlock()
print(out.count(UPDATE_SAMPLE), scale.weight, scale.stable, scale.fault)
scale.clear()
micropython.heap_lock()
run(empty, True)  # the empty-platform path: stability check and zero tracking
micropython.heap_unlock()
print(out.count(UPDATE_SAMPLE), scale.weight, scale.zero)
"""


def test_sample_path_allocates_nothing() -> None:
    script = ALLOCATION_SCRIPT.format(firmware=REPO_ROOT / "firmware")
    result = subprocess.run([micropython_binary(), "-c", script], capture_output=True, timeout=10)
    lines = result.stdout.decode().split("\n")
    assert lines[:2] == ["12 724 True 0", "12 0 85501"], result.stdout + result.stderr
