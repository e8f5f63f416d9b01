"""A vehicle back in coverage: a backlog stored offline syncs in full, once, through real parts.

The gateway's outbox holds readings taken while the link was down (scaled down here to
BACKLOG; `benchmarks/bench_offline.py` runs a week's worth, 1,000,000, and prints the gateway's
memory high-water mark against its 80 MB budget). Then the broker, the bridge and the gateway
process start: every reading is acked and in the bridge's store once, in sequence.
"""

from __future__ import annotations

import sqlite3

import pytest

from simulators.chain import Chain

pytestmark = pytest.mark.mosquitto

BACKLOG = 3000


def test_a_backlog_stored_offline_syncs_once_in_sequence(running_broker_chain: Chain) -> None:
    chain = running_broker_chain
    chain.prefill_outbox(BACKLOG)
    chain.start_bridge()
    chain.start_gateway()
    status = chain.wait_for_outbox(
        lambda outbox: outbox["synced"] >= BACKLOG, timeout=120, what=f"{BACKLOG} readings synced"
    )
    assert status["outbox"]["synced"] == BACKLOG and status["outbox"]["stored"] == 0
    with sqlite3.connect(chain.bridge_db) as conn:
        seqs = [row[0] for row in conn.execute("SELECT seq FROM readings ORDER BY seq")]
    assert seqs == list(range(1, BACKLOG + 1))
