"""A week offline: 1,000,000 readings buffered on the gateway, then the link comes back.

    .venv/bin/python benchmarks/bench_offline.py [--readings 1000000] [--dir DIR]

Real processes, as tests/e2e/test_offline_backlog.py runs them at 3,000: the gateway
(`kiosk-gateway run`), Mosquitto and the bridge (`kiosk-bridge run`). The backlog is written
through the gateway's own outbox while the gateway is down; then everything starts and the
gateway syncs it all. Prints:
- the backlog's size on disk;
- the sync rate (readings acked per second, end to end through the bridge's verification, store
  and FHIR mapping, which is the slower side);
- the gateway process's memory high-water mark (VmHWM) against its 80 MB budget, and against
  the raw baseline measured in the same run: the same gateway process started with an empty
  outbox and left idle for as long as it takes to settle.
Exits non-zero only on a wrong result (a reading missing or doubled at the bridge).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simulators.chain import Chain, free_port, port_open, wait_for  # noqa: E402

BUDGET_MB = 80


def vm_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise SystemExit("mosquitto is not installed: run ./dev test once, which installs it")
    port = free_port()
    config = workdir / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    process = subprocess.Popen(
        [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: port_open(port), timeout=10, what="mosquitto")
    return process, port


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go (default: a temp dir)")
    parser.add_argument(
        "--fhir-stage",
        choices=("inline", "separate"),
        default="inline",
        help="the bridge's FHIR stage (kiosk-bridge run --fhir-stage): separate also prints when the "
        "last reading's FHIR resources are written",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kiosk-offline-", dir=args.dir))
    broker, port = start_mosquitto(workdir)
    chain = Chain(workdir=workdir / "chain", broker_port=port)
    try:
        chain.provision()
        chain.start_gateway()  # raw baseline: the same process, nothing to sync
        time.sleep(5)
        baseline_kb = vm_kb(chain.processes["gateway"].pid, "VmHWM")
        chain.stop("gateway")
        started = time.monotonic()
        chain.prefill_outbox(args.readings)
        fill_s = time.monotonic() - started
        db_mb = (chain.gateway_dir / "gateway.db").stat().st_size / 1e6
        print(
            f"backlog: {args.readings:,} readings written offline in {fill_s:.0f} s, {db_mb:.0f} MB on disk"
        )
        chain.start_bridge(args.fhir_stage)
        chain.start_gateway()
        pid = chain.processes["gateway"].pid
        started = time.monotonic()
        peak_rss_kb = 0

        def synced() -> bool | None:
            nonlocal peak_rss_kb
            peak_rss_kb = max(peak_rss_kb, vm_kb(pid, "VmRSS"))
            return chain.gateway_get("/api/status")["outbox"]["synced"] >= args.readings or None

        wait_for(synced, timeout=max(600, args.readings / 50), what="the backlog synced", interval=1.0)
        sync_s = time.monotonic() - started
        hwm_kb = vm_kb(pid, "VmHWM")
        with sqlite3.connect(chain.bridge_db) as conn:
            count, low, high = conn.execute("SELECT COUNT(*), MIN(seq), MAX(seq) FROM readings").fetchone()
        rate = args.readings / sync_s
        print(
            f"sync: {args.readings:,} readings acked in {sync_s:.1f} s = {rate:,.0f} readings/s "
            f"(bridge FHIR stage: {args.fhir_stage})"
        )
        if args.fhir_stage == "separate":
            wait_for(lambda: fhir_pending(chain.bridge_db) == 0, timeout=max(600, args.readings / 50),
                     what="the FHIR stage", interval=0.5)  # fmt: skip
            fhir_s = time.monotonic() - started
            print(
                f"FHIR: every reading's resources written {fhir_s:.1f} s after the sync began "
                f"({args.readings / fhir_s:,.0f} readings/s), {fhir_s - sync_s:.1f} s after the last ack"
            )
        print(
            f"gateway memory high-water mark: {hwm_kb / 1024:.1f} MB (budget {BUDGET_MB} MB: "
            f"{'met' if hwm_kb / 1024 <= BUDGET_MB else 'NOT met'}); raw baseline, idle with an empty "
            f"outbox: {baseline_kb / 1024:.1f} MB; ratio {hwm_kb / baseline_kb:.2f}x"
        )
        if (count, low, high) != (args.readings, 1, args.readings):
            raise SystemExit(f"bridge holds {count} readings, seq {low}..{high}: expected 1..{args.readings}")
    finally:
        chain.close()
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def fhir_pending(bridge_db: Path) -> int:
    with sqlite3.connect(bridge_db) as conn:
        return conn.execute("SELECT COUNT(*) FROM readings WHERE fhir_status = 'pending'").fetchone()[0]


if __name__ == "__main__":
    main()
