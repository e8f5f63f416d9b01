"""The vitals board firmware (KX-VS300) on the real MicroPython unix port.

The MAX30102 and MLX90614 are register-level models served on the simulated board bus
(simulators/bus_server.py); the firmware reaches them through hal_unix's I2C and pins. The
test holds the gateway's end of the serial cable and acks every message as the gateway does.
The oximeter's clock runs TIME_SCALE times faster than the wall clock, so a 1 s settle and
5 s window take 1 s; the firmware counts samples, so its results do not depend on it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import serial

from firmware import kiosk_link as link
from firmware import temp_mlx90614
from gateway.link_names import MESSAGE_NAMES
from simulators.bus_server import SimulatedBoard
from simulators.chain import REPO_ROOT, micropython_binary
from simulators.chips import max30102, mlx90614
from simulators.chips.max30102 import Max30102Chip
from simulators.chips.mlx90614 import BodyTemperature, Mlx90614Chip
from simulators.serial_cable import SerialCable

pytestmark = pytest.mark.micropython

INT_PIN = 4  # firmware/vitals_app.py BOARD["spo2_int"]
BUTTON_PIN = 5  # firmware/vitals_app.py BOARD["button"]
TIME_SCALE = 6.0
SPO2_TOLERANCE = 2  # % points: the integer estimate against the simulated truth
PULSE_TOLERANCE = 3  # /min


class GatewayEnd:
    """Reads frames on a thread and acks each as the gateway would after its commit."""

    def __init__(self, path: str) -> None:
        self.port = serial.Serial(path, 115200, timeout=0)
        self._splitter = link.FrameSplitter()
        self._lock = threading.Lock()
        self._frames: list[tuple[int, int, bytes]] = []
        self._taken = 0
        self.acking = True  # False: the gateway "crashed before its commit" and acks nothing
        self.raw: list[tuple[int, int, bytes]] = []  # every frame, retransmissions too
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        seen: set[tuple[int, int]] = set()
        while not self._stop.is_set():
            for encoded in self._splitter.feed(self.port.read(4096)):
                msg_type, seq, payload = link.decode_frame(encoded)
                if self.acking:
                    self.port.write(link.encode_frame(link.MSG_ACK, seq))
                with self._lock:
                    self.raw.append((msg_type, seq, payload))
                if (msg_type, seq) not in seen:  # a retransmission is not a new message
                    seen.add((msg_type, seq))
                    with self._lock:
                        self._frames.append((msg_type, seq, payload))
            time.sleep(0.005)

    def next(self, timeout: float) -> tuple[int, bytes] | None:
        """The next message the board sent, as (type, payload), or None after timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._taken < len(self._frames):
                    msg_type, _, payload = self._frames[self._taken]
                    self._taken += 1
                    return msg_type, payload
            time.sleep(0.01)
        return None

    def expect(self, timeout: float = 8.0) -> tuple[int, bytes]:
        message = self.next(timeout)
        if message is None:
            raise TimeoutError(f"the board sent nothing within {timeout}s")
        return message

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.port.close()


def reading(message: tuple[int, bytes]) -> tuple[int, int, int, list[tuple[int, int, int]]]:
    msg_type, payload = message
    assert msg_type == link.MSG_READING, (MESSAGE_NAMES[msg_type], payload)
    return link.decode_reading(payload)


def device_error(message: tuple[int, bytes]) -> tuple[int, int]:
    msg_type, payload = message
    assert msg_type == link.MSG_DEVICE_ERROR, (MESSAGE_NAMES[msg_type], payload)
    return link.decode_device_error(payload)


@dataclass
class Rig:
    oximeter: Max30102Chip
    thermometer: Mlx90614Chip
    board: SimulatedBoard
    gateway: GatewayEnd
    log_path: Path
    argv: list[str]
    process: subprocess.Popen[bytes]
    hello: tuple[int, str, str, str] = field(default=(0, "", "", ""))

    def power_cut(self) -> None:
        """SIGKILL the firmware and boot it again on the same flash (journal file)."""
        self.process.kill()
        self.process.wait()
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(self.argv, stdout=log_file, stderr=subprocess.STDOUT)

    def press_button(self) -> None:
        """Press and release: two edges, one measurement (the firmware debounces)."""
        self.board.drive_pin(BUTTON_PIN, 0)
        time.sleep(0.03)
        self.board.drive_pin(BUTTON_PIN, 1)

    def stall_host(self, seconds: float) -> None:
        """Hold the bus: the firmware cannot read while the part keeps sampling.

        The stall starts between two FIFO reads (the FIFO just emptied), as a host stall of a
        board would: one between reading the pointers and popping the samples would let the
        pops clear OVF_COUNTER (the part resets it on every pop) before the firmware saw it."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self.board.lock:
                if self.oximeter.fifo_count == 0:
                    time.sleep(seconds)
                    return
            time.sleep(0.0002)
        raise AssertionError("the firmware never emptied the FIFO within 5 s")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def quiet_for(self, seconds: float) -> list[tuple[int, bytes]]:
        """Everything the board sends within `seconds` (expected: nothing)."""
        got = []
        deadline = time.monotonic() + seconds
        while (message := self.gateway.next(max(0.0, deadline - time.monotonic()))) is not None:
            got.append(message)
        return got


@pytest.fixture
def start_board() -> Iterator[Callable[..., Rig]]:
    """Start the firmware against a board holding the given chip models; yields a factory."""
    cleanups: list[Callable[[], None]] = []

    def start(
        oximeter: Max30102Chip | None = None, thermometer: Mlx90614Chip | None = None, journal: bool = False
    ) -> Rig:
        oximeter = oximeter or Max30102Chip(int_pin=INT_PIN, time_scale=TIME_SCALE)
        thermometer = thermometer or Mlx90614Chip()
        workdir = Path(tempfile.mkdtemp(prefix="vs-"))  # short: Unix socket paths are limited
        board = SimulatedBoard(str(workdir / "bus"), chips=[oximeter, thermometer])
        cable = SerialCable()
        log_path = workdir / "firmware.log"
        argv = [micropython_binary(), str(REPO_ROOT / "firmware/host/run_vitals.py"), cable.device_path,
                board.path, "vs-0007", "115200"]  # fmt: skip
        if journal:
            argv.append(str(workdir / "link.journal"))  # stands in for the board's flash
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
        gateway = GatewayEnd(cable.gateway_path)

        def stop() -> None:
            rig.process.kill()
            rig.process.wait()
            gateway.close()
            board.close()
            cable.close()
            output = log_path.read_text(errors="replace")
            shutil.rmtree(workdir, ignore_errors=True)
            assert "Traceback" not in output, output

        cleanups.append(stop)
        rig = Rig(oximeter, thermometer, board, gateway, log_path, argv, process)
        msg_type, payload = gateway.expect(timeout=10)
        assert msg_type == link.MSG_HELLO
        rig.hello = link.decode_hello(payload)
        return rig

    yield start
    for cleanup in reversed(cleanups):
        cleanup()


def spo2_reading(spo2: float, pulse: float, flags: int = 0) -> tuple[object, ...]:
    """The expected SPO2 reading: exact kind, flags and exponents; values within tolerance."""
    return (
        link.KIND_SPO2,
        flags,
        0,
        [(link.FIELD_SPO2, pytest.approx(spo2, abs=SPO2_TOLERANCE), 0),
         (link.FIELD_PULSE_RATE, pytest.approx(pulse, abs=PULSE_TOLERANCE), 0)],
    )  # fmt: skip


# --- pulse oximeter -------------------------------------------------------------------------


def test_hello_then_normal_resident_gives_spo2_and_pulse(start_board: Callable[..., Rig]) -> None:
    rig = start_board()
    assert rig.hello[1:] == ("vs-0007", "KX-VS300", "0.1.0")
    rig.oximeter.place_finger(max30102.NORMAL)
    assert reading(rig.gateway.expect()) == spo2_reading(98, 72)
    assert rig.quiet_for(0.3) == []  # one reading per finger placement


def test_unacked_reading_survives_a_power_cut_and_an_acked_one_is_not_sent_again(
    start_board: Callable[..., Rig],
) -> None:
    rig = start_board(journal=True)
    rig.oximeter.place_finger(max30102.NORMAL)
    assert reading(rig.gateway.expect()) == spo2_reading(98, 72)  # acked
    rig.oximeter.remove_finger()
    time.sleep(0.2)
    rig.gateway.acking = False
    rig.oximeter.place_finger(max30102.HYPOXAEMIC)
    assert reading(rig.gateway.expect()) == spo2_reading(88, 110)  # never acked
    unacked = [frame for frame in rig.gateway.raw if frame[0] == link.MSG_READING][-1]
    rig.oximeter.remove_finger()  # gone before the board comes back: nothing new to measure

    rig.gateway.acking = True
    before = len(rig.gateway.raw)
    rig.power_cut()
    assert rig.gateway.expect(timeout=10)[0] == link.MSG_HELLO
    assert rig.quiet_for(1.5) == []  # the resent reading is the same message, not a new one
    after = [frame for frame in rig.gateway.raw[before:] if frame[0] == link.MSG_READING]
    assert after and set(after) == {unacked}  # same seq, same bytes; the acked 98 % not again
    assert "resending 1 unacked message(s) from flash" in rig.log()


def test_hypoxaemic_resident_is_reported_low_by_value(start_board: Callable[..., Rig]) -> None:
    rig = start_board()
    rig.oximeter.place_finger(max30102.HYPOXAEMIC)
    got = reading(rig.gateway.expect())
    assert got == spo2_reading(88, 110)
    assert got[3][0][1] < 94  # below any normal value: the gateway's thresholds flag it


def test_next_resident_gets_a_new_measurement(start_board: Callable[..., Rig]) -> None:
    rig = start_board()
    rig.oximeter.place_finger(max30102.NORMAL)
    assert reading(rig.gateway.expect()) == spo2_reading(98, 72)
    rig.oximeter.remove_finger()
    time.sleep(0.2)
    rig.oximeter.place_finger(max30102.HYPOXAEMIC)
    assert reading(rig.gateway.expect()) == spo2_reading(88, 110)


def test_weak_pulse_reading_carries_low_perfusion(start_board: Callable[..., Rig]) -> None:
    rig = start_board()
    rig.oximeter.place_finger(max30102.LOW_PERFUSION)
    assert reading(rig.gateway.expect()) == spo2_reading(97, 84, flags=link.FLAG_LOW_PERFUSION)


def test_finger_withdrawn_during_the_window_is_no_finger(start_board: Callable[..., Rig]) -> None:
    rig = start_board()
    rig.oximeter.place_finger(max30102.NORMAL)
    time.sleep(0.5)  # settled (0.17 s) and well into the window (0.83 s)
    rig.oximeter.remove_finger()
    assert device_error(rig.gateway.expect()) == (link.KIND_SPO2, link.ERROR_NO_FINGER)
    assert rig.quiet_for(0.8) == []  # the window would have ended by now


def test_no_pulse_under_the_probe_is_an_error_not_a_value(start_board: Callable[..., Rig]) -> None:
    rig = start_board()
    rig.oximeter.place_finger(max30102.NO_PULSE)
    assert device_error(rig.gateway.expect()) == (link.KIND_SPO2, link.ERROR_MOTION)


def test_fifo_overflow_restarts_the_window_and_the_value_stays_right(
    start_board: Callable[..., Rig],
) -> None:
    rig = start_board()
    rig.oximeter.place_finger(max30102.NORMAL)
    time.sleep(0.4)  # inside the window
    rig.stall_host(0.2)  # 120 samples come due, 32 fit in the FIFO: the rest are lost
    assert reading(rig.gateway.expect()) == spo2_reading(98, 72)
    assert rig.oximeter.samples_lost > 0
    assert "spo2 fifo overflow #1" in rig.log() and "window restarted" in rig.log()


def test_wrong_part_on_the_bus_is_sensor_not_found(start_board: Callable[..., Rig]) -> None:
    rig = start_board(oximeter=Max30102Chip(int_pin=INT_PIN, part_id=0x11))  # a MAX30100 fitted
    assert device_error(rig.gateway.expect()) == (link.KIND_SPO2, link.ERROR_SENSOR_NOT_FOUND)
    assert rig.quiet_for(1.2) == []  # said once, not again at the next probe (1 s later)


def test_unplugged_oximeter_is_reported_and_recovers(start_board: Callable[..., Rig]) -> None:
    rig = start_board()
    time.sleep(0.3)
    rig.oximeter.unplug()
    assert device_error(rig.gateway.expect()) == (link.KIND_SPO2, link.ERROR_SENSOR_NOT_FOUND)
    rig.oximeter.plug_in()  # powers up with reset values: the firmware must set it up again
    rig.oximeter.place_finger(max30102.NORMAL)
    assert reading(rig.gateway.expect(timeout=10)) == spo2_reading(98, 72)


# --- thermometer ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resident", "centi_celsius"),
    # 36.6 C is raw 15487.5 (0.02 K units): the part's word is 15488 = 36.61 C. 38.7 -> 38.71.
    [(mlx90614.NORMAL, 3661), (mlx90614.FEVER, 3871)],
)
def test_button_measures_body_temperature_exactly(
    start_board: Callable[..., Rig], resident: BodyTemperature, centi_celsius: int
) -> None:
    rig = start_board()
    rig.thermometer.aim_at(resident)
    rig.press_button()
    assert reading(rig.gateway.expect()) == (
        link.KIND_TEMPERATURE, 0, 0, [(link.FIELD_BODY_TEMPERATURE, centi_celsius, -2)]
    )  # fmt: skip
    assert rig.quiet_for(0.4) == []  # press and release: one measurement


def test_a_corrupted_word_is_read_again(start_board: Callable[..., Rig]) -> None:
    rig = start_board()
    rig.thermometer.aim_at(mlx90614.NORMAL)
    rig.thermometer.set_fault("bad_pec_once")
    rig.press_button()
    assert reading(rig.gateway.expect()) == (
        link.KIND_TEMPERATURE, 0, 0, [(link.FIELD_BODY_TEMPERATURE, 3661, -2)]
    )  # fmt: skip
    assert rig.thermometer.reads == 3  # Tobj1 corrupted (0.16 K off), Tobj1 again, Ta


@pytest.mark.parametrize(
    ("fault", "ambient", "code"),
    [
        ("nack", 25.0, link.ERROR_SENSOR_NOT_FOUND),
        ("bad_pec", 25.0, link.ERROR_SENSOR_FAULT),
        ("error_flag", 25.0, link.ERROR_SENSOR_FAULT),
        (None, 55.0, link.ERROR_TEMPERATURE),  # kiosk in the sun
        (None, -5.0, link.ERROR_TEMPERATURE),  # unheated clinic in winter
    ],
)
def test_thermometer_faults_become_typed_device_errors(
    start_board: Callable[..., Rig], fault: mlx90614.Fault | None, ambient: float, code: int
) -> None:
    rig = start_board(thermometer=Mlx90614Chip(ambient_celsius=ambient))
    rig.thermometer.aim_at(mlx90614.NORMAL)
    rig.thermometer.set_fault(fault)
    rig.press_button()
    assert device_error(rig.gateway.expect()) == (link.KIND_TEMPERATURE, code)
    assert rig.quiet_for(0.2) == []


def test_pec_matches_the_datasheet_example() -> None:
    """MLX90614 datasheet, SMBus read word: Tobj1 (0x07) at 0x5A reads D2 3A with PEC 0x30."""
    wire = bytes((0xB4, 0x07, 0xB5, 0xD2, 0x3A))
    crc = 0
    for byte in wire:
        crc = temp_mlx90614.pec_update(crc, byte)
    assert (crc, mlx90614.pec(wire)) == (0x30, 0x30)


# --- allocation ---------------------------------------------------------------------------


def test_fifo_read_path_allocates_nothing() -> None:
    oximeter = Max30102Chip(int_pin=INT_PIN, time_scale=TIME_SCALE)
    oximeter.place_finger(max30102.NORMAL)
    workdir = Path(tempfile.mkdtemp(prefix="vs-"))
    board = SimulatedBoard(str(workdir / "bus"), chips=[oximeter])
    try:
        result = subprocess.run(
            [micropython_binary(), str(REPO_ROOT / "tests/micropython/vitals_heap.py"), str(REPO_ROOT),
             board.path],
            capture_output=True,
            text=True,
            timeout=20,
        )  # fmt: skip
    finally:
        board.close()
        shutil.rmtree(workdir, ignore_errors=True)
    assert result.returncode == 0, result.stdout + result.stderr
    words = dict(part.split("=") for part in result.stdout.split()[1:])
    assert int(words["reads"]) >= 20 and int(words["stored"]) == int(words["samples"]) >= 200, words
    spo2, pulse = (int(value) for value in words["result"].split("/"))
    assert (spo2, pulse) == (pytest.approx(98, abs=SPO2_TOLERANCE), pytest.approx(72, abs=PULSE_TOLERANCE))
