"""The gateway killed with SIGKILL at random points while it ingests and syncs, and restarted.

Real parts: the BP board's MicroPython firmware (flash journal on) on a pty, the gateway process,
Mosquitto, the bridge process. A thread keeps the cuff measuring, each result a different
systolic/diastolic pair; meanwhile the gateway is killed at a random moment (mid-commit,
mid-batch, mid-publish, mid-ack: wherever the kill lands) and started again, CRASH_POINTS times.
Afterwards every measurement the cuff made must be in the bridge's store exactly once: nothing
the gateway acked is lost, nothing resent is doubled.

`KIOSK_CRASH_POINTS` sets the number of kills (CI: 30; benchmarks/bench_crash.py runs more) and
`KIOSK_CRASH_SEED` the random seed (printed, so a failure can be replayed).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading
import time
from collections import Counter

import pytest

from contract.wire import decode_reading
from simulators.chain import Chain, wait_for
from simulators.residents import BloodPressure

pytestmark = [pytest.mark.mosquitto, pytest.mark.micropython]

CRASH_POINTS = int(os.environ.get("KIOSK_CRASH_POINTS", "30"))


def pair(n: int) -> tuple[int, int]:
    """The n-th measurement's (systolic, diastolic): distinct for 2,400 measurements."""
    return 100 + n % 80, 60 + (n // 80) % 30


def bridge_pairs(chain: Chain) -> Counter[tuple[int, int]]:
    with sqlite3.connect(chain.bridge_db) as conn:
        bodies = [row[0] for row in conn.execute("SELECT body FROM readings WHERE kind = 'bp'")]
    counts: Counter[tuple[int, int]] = Counter()
    for body in bodies:
        reading = decode_reading(body)
        values = {m.name: m.value for m in reading.values}
        counts[(int(values["systolic"]), int(values["diastolic"]))] += 1  # type: ignore[arg-type]
    return counts


class Presser(threading.Thread):
    """Presses the cuff's start button again as soon as the last measurement is done."""

    def __init__(self, chain: Chain) -> None:
        super().__init__(daemon=True)
        self.chain = chain
        self.made: list[tuple[int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        cuff = self.chain.cuff
        while not self.stop.is_set():
            n = len(self.made)
            systolic, diastolic = pair(n)
            done = cuff.measurements
            cuff.measure(BloodPressure(systolic, diastolic, 72))
            while cuff.measurements == done:
                time.sleep(0.01)
            self.made.append((systolic, diastolic))
            time.sleep(0.05)


def test_gateway_killed_at_random_points_loses_nothing_and_doubles_nothing(
    running_broker_chain: Chain,
) -> None:
    chain = running_broker_chain
    seed = int(os.environ.get("KIOSK_CRASH_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    print(f"crash test: {CRASH_POINTS} kills, seed {seed}")
    chain.start_bridge()
    chain.start_gateway()
    chain.start_firmware()
    chain.wait_until_device_connected()
    presser = Presser(chain)
    presser.start()
    try:
        for _ in range(CRASH_POINTS):
            time.sleep(rng.uniform(0.05, 1.5))
            assert chain.stop("gateway", signal.SIGKILL) == -signal.SIGKILL
            chain.start_gateway()
    finally:
        presser.stop.set()
        presser.join(10)
    made = Counter(presser.made)
    assert len(made) == len(presser.made) > CRASH_POINTS  # readings kept coming throughout
    wait_for(
        lambda: sum(bridge_pairs(chain).values()) >= len(made) or None,
        timeout=120,
        what=f"{len(made)} readings at the bridge (seed {seed})",
    )
    time.sleep(2)  # a late duplicate would land now
    stored = bridge_pairs(chain)
    missing = sorted(set(made) - set(stored))
    doubled = sorted(p for p, count in stored.items() if count > 1)
    foreign = sorted(set(stored) - set(made))
    assert (missing, doubled, foreign) == ([], [], []), f"seed {seed}"
    print(f"crash test: {CRASH_POINTS} kills, {len(made)} readings, each stored once at the bridge")
