"""The whole chain on real parts.

MicroPython firmware → pty → gateway → SQLite → Mosquitto → bridge → FHIR record.
"""

from __future__ import annotations

import sqlite3
from decimal import Decimal

import pytest

from contract.wire import RESIDENT_ID_SYSTEMS
from simulators.chain import Chain, wait_for
from simulators.residents import BloodPressure
from tests.conftest import Mosquitto

pytestmark = [pytest.mark.mosquitto, pytest.mark.micropython]

RESIDENT = "330781-2026-000123"
SUBJECT = f"{RESIDENT_ID_SYSTEMS['health-record']}|{RESIDENT}"


@pytest.fixture
def chain(stopped_broker_chain: Chain) -> Chain:
    return stopped_broker_chain


def observations(chain: Chain) -> list[dict]:
    bundle = chain.bridge_get("/fhir/Observation", **{"subject:identifier": SUBJECT})
    return [entry["resource"] for entry in bundle.get("entry", [])]


def by_code(resources: list[dict], code: str) -> list[dict]:
    return [r for r in resources if r["code"]["coding"][0]["code"] == code]


def bridge_reading_count(chain: Chain) -> int:
    with sqlite3.connect(chain.bridge_db) as conn:
        return conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]


def start_all(chain: Chain) -> None:
    chain.start_bridge()
    chain.start_gateway()
    chain.start_firmware()
    chain.wait_until_device_connected()
    chain.check_in("health-record", RESIDENT, operator="doctor-wang")


def test_reading_taken_offline_arrives_once_when_broker_starts(
    chain: Chain, stopped_mosquitto: Mosquitto
) -> None:
    start_all(chain)
    chain.cuff.measure(BloodPressure(systolic=128, diastolic=82, pulse=71))
    status = chain.wait_for_outbox(
        lambda o: o["stored"] + o["batched"] == 1, timeout=30, what="reading stored"
    )
    assert status["link_up"] is False
    assert status["outbox"]["synced"] == 0
    assert bridge_reading_count(chain) == 0

    stopped_mosquitto.start()
    status = chain.wait_for_outbox(lambda o: o["synced"] == 1, timeout=60, what="bridge ack")
    assert status["outbox"]["stored"] + status["outbox"]["batched"] == 0

    resources = observations(chain)
    [bp] = by_code(resources, "85354-9")
    [heart_rate] = by_code(resources, "8867-4")
    components = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in bp["component"]}
    assert Decimal(str(components["8480-6"]["value"])) == 128
    assert Decimal(str(components["8462-4"]["value"])) == 82
    assert components["8480-6"]["code"] == "mm[Hg]"
    assert Decimal(str(heart_rate["valueQuantity"]["value"])) == 71
    assert heart_rate["valueQuantity"]["code"] == "/min"
    assert bp["status"] == "final"
    assert bp["identifier"][0]["value"].startswith(f"{chain.gateway_id}/1/")
    assert bridge_reading_count(chain) == 1

    # Restarting the gateway resends nothing new: still one reading, one BP Observation.
    chain.stop("gateway")
    chain.start_gateway()
    chain.wait_for_outbox(lambda o: o["synced"] == 1, timeout=30, what="gateway back up")
    assert bridge_reading_count(chain) == 1
    assert len(by_code(observations(chain), "85354-9")) == 1


def test_corrupt_frame_is_nakked_counted_and_link_recovers(
    chain: Chain, stopped_mosquitto: Mosquitto
) -> None:
    stopped_mosquitto.start()
    start_all(chain)
    chain.cable.corrupt_next_bytes_to_gateway(6)
    chain.cuff.measure(BloodPressure(systolic=151, diastolic=96, pulse=77))
    chain.wait_for_outbox(
        lambda o: o["synced"] == 1, timeout=60, what="first reading synced after corruption"
    )
    [port] = chain.gateway_get("/api/status")["peripherals"]
    assert port["counters"]["corrupt_frames"] >= 1
    assert port["counters"]["readings_stored"] == 1
    assert chain.cable.stats.corrupted == 6

    chain.cuff.measure(BloodPressure(systolic=122, diastolic=79, pulse=66))
    chain.wait_for_outbox(lambda o: o["synced"] == 2, timeout=60, what="next reading synced")
    systolics = sorted(
        Decimal(str(c["valueQuantity"]["value"]))
        for bp in by_code(observations(chain), "85354-9")
        for c in bp["component"]
        if c["code"]["coding"][0]["code"] == "8480-6"
    )
    assert systolics == [122, 151]
    assert bridge_reading_count(chain) == 2


def test_out_of_range_reading_is_rejected_with_reason(chain: Chain, stopped_mosquitto: Mosquitto) -> None:
    stopped_mosquitto.start()
    start_all(chain)
    chain.cuff.measure(BloodPressure(systolic=320, diastolic=82, pulse=71))
    wait_for(
        lambda: chain.gateway_get("/api/status")["outbox"]["rejections"] == 1,
        timeout=30,
        what="rejection counted",
    )
    assert "systolic = 320 mm[Hg] outside plausible 40..300" in chain.log("gateway")
    chain.cuff.measure(BloodPressure(systolic=118, diastolic=76, pulse=64))
    chain.wait_for_outbox(lambda o: o["synced"] == 1, timeout=60, what="the next, valid reading")
    assert bridge_reading_count(chain) == 1
