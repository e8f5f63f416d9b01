"""Crash test at full size: the gateway SIGKILLed at 100+ random points while it ingests and syncs.

    .venv/bin/python benchmarks/bench_crash.py [--kills 100] [--seed N]

Runs tests/e2e/test_gateway_crash.py (real firmware on MicroPython, the gateway process,
Mosquitto, the bridge) with KIOSK_CRASH_POINTS set; CI runs the same test with 30. Prints the
number of kills and readings and whether every reading reached the bridge exactly once; exits
non-zero when one did not (a wrong result, not a slow one). About 1.5 s per kill.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    env = {**os.environ, "KIOSK_CRASH_POINTS": str(args.kills)}
    if args.seed is not None:
        env["KIOSK_CRASH_SEED"] = str(args.seed)
    started = time.monotonic()
    test = "tests/e2e/test_gateway_crash.py"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", test],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("crash test:")]
    for line in lines:
        print(line)
    verdict = "pass" if result.returncode == 0 else "FAIL"
    print(f"wall time {time.monotonic() - started:.0f} s; verdict: {verdict}")
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-2000:])
        raise SystemExit(1)


if __name__ == "__main__":
    main()
