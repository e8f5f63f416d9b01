"""The link survives a stopped gateway and a killed firmware: every reading once, in order.

Real processes throughout: firmware on MicroPython (with its flash journal in a file), the
gateway and bridge commands, Mosquitto.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from contract.wire import decode_reading
from simulators.chain import Chain
from simulators.residents import BloodPressure
from tests.conftest import Mosquitto

pytestmark = [pytest.mark.mosquitto, pytest.mark.micropython]


@pytest.fixture
def chain(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Chain]:
    chain = Chain(workdir=tmp_path / "chain", broker_port=mosquitto.port)
    chain.provision()
    chain.start_bridge()
    chain.start_gateway()
    chain.start_firmware()
    chain.wait_until_device_connected()
    chain.check_in("health-record", "330781-2026-000777", operator="crew-zhao")
    try:
        yield chain
    finally:
        chain.close()


def bridge_systolics(chain: Chain) -> list[int]:
    """Systolic values stored at the bridge, in the gateway's sequence order."""
    with sqlite3.connect(chain.bridge_db) as conn:
        rows = conn.execute("SELECT body FROM readings ORDER BY seq").fetchall()
    return [int(decode_reading(body).value("systolic").value) for (body,) in rows]


def bridge_times(chain: Chain) -> list[int]:
    with sqlite3.connect(chain.bridge_db) as conn:
        rows = conn.execute("SELECT body FROM readings ORDER BY seq").fetchall()
    return [decode_reading(body).measured_at_ms for (body,) in rows]


def measure(chain: Chain, systolic: int) -> None:
    chain.cuff.measure(BloodPressure(systolic=systolic, diastolic=80, pulse=70))
    time.sleep(0.6)  # the cuff takes a moment; keep results in a known order


def test_gateway_stopped_30s_while_readings_keep_coming(chain: Chain) -> None:
    measure(chain, 120)
    chain.wait_for_outbox(lambda o: o["synced"] == 1, timeout=30, what="first reading synced")

    chain.stop("gateway")
    stopped_at = time.time()
    taken_at: list[float] = []
    systolic = 121
    while time.time() - stopped_at < 30:
        taken_at.append(time.time())
        measure(chain, systolic)
        systolic += 1
        time.sleep(2.4)
    expected = list(range(120, systolic))

    chain.start_gateway()
    chain.wait_for_outbox(lambda o: o["synced"] == len(expected), timeout=90, what="all readings synced")
    assert bridge_systolics(chain) == expected
    # Stamped by the board when taken (clock from the gateway's TIME_SYNC), not when the
    # restarted gateway finally heard them.
    times = bridge_times(chain)[1:]
    assert all(abs(stamp / 1000 - taken) < 3 for stamp, taken in zip(times, taken_at, strict=True))


def test_firmware_killed_mid_stream_loses_nothing_unacked_and_resends_nothing_acked(chain: Chain) -> None:
    measure(chain, 130)
    chain.wait_for_outbox(lambda o: o["synced"] == 1, timeout=30, what="acked reading synced")

    chain.stop("gateway")  # nothing below is acked before the kill
    for systolic in (131, 132, 133):
        measure(chain, systolic)
    time.sleep(0.5)
    chain.stop("firmware", sig=signal.SIGKILL)

    chain.start_firmware()  # reboots with its flash journal
    time.sleep(1)
    chain.start_gateway()
    chain.wait_for_outbox(lambda o: o["synced"] == 4, timeout=60, what="journaled readings synced")
    measure(chain, 134)  # the rebooted board carries on normally
    chain.wait_for_outbox(lambda o: o["synced"] == 5, timeout=60, what="new reading synced")
    time.sleep(2)  # would give a wrongly resent reading time to show up
    assert bridge_systolics(chain) == [130, 131, 132, 133, 134]
    status = chain.gateway_get("/api/status")
    assert status["outbox"]["synced"] == 5
    assert "resending 3 unacked message(s) from flash" in chain.log("firmware")
    values = [Decimal(r["values"]["systolic"].split()[0]) for r in chain.gateway_get("/api/readings")]
    assert sorted(values) == [130, 131, 132, 133, 134]
