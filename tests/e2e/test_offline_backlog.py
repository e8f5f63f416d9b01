"""A vehicle back in coverage: a backlog stored offline syncs in full, once, through real parts.

The gateway's outbox holds readings taken while the link was down (scaled down here to
BACKLOG; `benchmarks/bench_offline.py` runs a week's worth, 1,000,000, and prints the gateway's
memory high-water mark against its 80 MB budget). Then the broker, the bridge and the gateway
process start: every reading is acked and in the bridge's store once, in sequence.
"""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from simulators.chain import Chain, wait_for

pytestmark = pytest.mark.mosquitto

BACKLOG = 3000


@pytest.mark.parametrize("fhir_stage", ["inline", "separate"])
def test_a_backlog_stored_offline_syncs_once_in_sequence(
    running_broker_chain: Chain, fhir_stage: str
) -> None:
    """Also with the FHIR stage apart (`--fhir-stage separate`): the backlog is acked as it is
    stored, and the second process then gives every reading its FHIR resources, once."""
    chain = running_broker_chain
    chain.prefill_outbox(BACKLOG)
    chain.start_bridge(fhir_stage)
    chain.start_gateway()
    status = chain.wait_for_outbox(
        lambda outbox: outbox["synced"] >= BACKLOG, timeout=120, what=f"{BACKLOG} readings synced"
    )
    assert status["outbox"]["synced"] == BACKLOG and status["outbox"]["stored"] == 0
    with sqlite3.connect(chain.bridge_db) as conn:
        seqs = [row[0] for row in conn.execute("SELECT seq FROM readings ORDER BY seq")]
    assert seqs == list(range(1, BACKLOG + 1))
    metrics = httpx.get(f"http://127.0.0.1:{chain.bridge_port}/metrics", timeout=10).text
    assert ("kiosk_bridge_fhir_pending " in metrics) == (fhir_stage == "separate")  # the stage's queue
    wait_for(lambda: fhir_done(chain.bridge_db), timeout=120, what="the FHIR stage to map the backlog")
    with sqlite3.connect(chain.bridge_db) as conn:
        statuses = dict(conn.execute("SELECT fhir_status, COUNT(*) FROM readings GROUP BY fhir_status"))
        provenances = conn.execute(
            "SELECT COUNT(*) FROM fhir_resources WHERE resource_type = 'Provenance'"
        ).fetchone()[0]
    assert statuses == {"stored": BACKLOG}
    assert provenances == BACKLOG  # one per reading: each mapped once


def fhir_done(bridge_db: object) -> bool:
    with sqlite3.connect(str(bridge_db)) as conn:
        return conn.execute("SELECT COUNT(*) FROM readings WHERE fhir_status = 'pending'").fetchone()[0] == 0
