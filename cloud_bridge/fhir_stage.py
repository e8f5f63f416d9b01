"""The FHIR stage apart from the receiver: FHIR resources written after the ack, in another process.

By default the bridge verifies, stores and maps each batch to FHIR in one transaction before it
acks (`receive_batch`). With `kiosk-bridge run --fhir-stage separate` the receiver only verifies
and stores the readings (queued as `fhir_status = 'pending'`) and acks at once; this stage, a
second process, maps the queued readings oldest first and writes their resources (or queues
their Bundles for the health community's server), marking each reading `stored` or, if it
cannot be mapped, `dead_letter` with the reason. So a backlog drains from the gateways at the
rate the bridge can store, while FHIR mapping runs on another core and catches up behind it.
Readings with an alert are the exception: the receiver maps them before the ack as always, so
a referral is raised at once, not behind the queue.

What the ack means does not change: the bridge holds the reading durably, exactly once. What
changes is when the record shows it: after the stage's lag (none when idle; during a
backlog drain, the time the stage needs for what is queued ahead). Each batch of work is one
transaction; a stage killed midway leaves its readings pending and the next start maps them.
On PostgreSQL several stages (one per worker) share the queue: rows are taken with `FOR UPDATE
SKIP LOCKED`, so no reading is mapped twice at once, and a repeat would create nothing anyway
(conditional creates on stable identifiers).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloud_bridge import store
from cloud_bridge.alert_rules import RuleText, load_rule_texts
from cloud_bridge.db import Database
from cloud_bridge.fhir_map import TransactionEntry
from cloud_bridge.receive import cyclic_gc_paused, map_readings, write_fhir
from cloud_bridge.referral_routes import ReferralRoutes, load_routes
from contract.wire import Reading, decode_reading

log = logging.getLogger(__name__)

BATCH_READINGS = 500  # readings mapped per transaction
IDLE_POLL_S = 0.2  # how often an idle stage looks for new work


def pending_count(conn: Database) -> int:
    """Readings stored and acked whose FHIR resources are not written yet."""
    (count,) = conn.execute("SELECT COUNT(*) FROM readings WHERE fhir_status = 'pending'").fetchone()
    return int(count)


def map_pending(
    conn: Database,
    *,
    now_ms: int,
    limit: int = BATCH_READINGS,
    post_to_remote: bool = False,
    alert_rules: Mapping[str, RuleText] | None = None,
    referral_routes: ReferralRoutes | None = None,
) -> int:
    """Map up to `limit` pending readings, oldest first -> how many.

    Each reading is mapped as the receiver would have mapped it: its batch's hash and
    signature in the Provenance, recorded when the bridge received it, alerts routed by its
    gateway's site. On SQLite the mapping is done before the write lock is taken (the receiver
    waits for that lock: holding it while mapping slowed the very drain this stage is for); a
    SQLite store has one stage, the only one to change pending rows. On PostgreSQL the rows are
    claimed (`FOR UPDATE SKIP LOCKED`) in the transaction that writes them, as several stages
    share the queue there."""

    def write(rows: list[Any], mapped: tuple[list[Any], list[Any]]) -> int:
        fresh, outcomes = mapped
        write_fhir(conn, fresh, post_to_remote=post_to_remote, now_ms=now_ms)
        conn.executemany(_SET_STATUS, outcomes)
        return len(rows)

    with cyclic_gc_paused():
        if conn.dialect == "sqlite":
            rows = conn.execute(_PENDING + " LIMIT ?", (limit,)).fetchall()
            if not rows:
                return 0
            mapped = _map_rows(rows, alert_rules, referral_routes)
            with conn.transaction():
                return write(rows, mapped)
        with conn.transaction():
            rows = conn.execute(_PENDING + " LIMIT ? FOR UPDATE OF r SKIP LOCKED", (limit,)).fetchall()
            return write(rows, _map_rows(rows, alert_rules, referral_routes)) if rows else 0


_SET_STATUS = "UPDATE readings SET fhir_status = ?, fhir_error = ? WHERE gateway_id = ? AND seq = ?"
_PENDING = (
    "SELECT r.gateway_id, r.seq, r.body, r.batch_hash, r.received_at_ms, b.signature, g.site"
    " FROM readings r JOIN batches b ON b.hash = r.batch_hash"
    " JOIN gateways g ON g.gateway_id = r.gateway_id"
    " WHERE r.fhir_status = 'pending' ORDER BY r.received_at_ms, r.gateway_id, r.seq"
)


def _map_rows(
    rows: list[Any], alert_rules: Mapping[str, RuleText] | None, referral_routes: ReferralRoutes | None
) -> tuple[list[tuple[Reading, list[TransactionEntry]]], list[tuple[str, str | None, str, int]]]:
    """The FHIR entries of the readings that map, and every reading's outcome (status, error,
    gateway, seq)."""
    outcomes: list[tuple[str, str | None, str, int]] = []
    fresh: list[tuple[Reading, list[TransactionEntry]]] = []
    for gateway_id, seq, body, batch_hash, received_at_ms, signature, site in rows:
        try:
            reading = decode_reading(bytes(body))
            [(entries, error)] = map_readings(
                [reading],
                batch_hash=bytes(batch_hash),
                signature=bytes(signature),
                recorded_at_ms=received_at_ms,
                alert_rules=alert_rules,
                routes=referral_routes,
                site=site,
            )
        except Exception as exc:  # one reading must not hold up the queue behind it
            log.exception("bridge FHIR stage: %s seq %d kept as dead letter", gateway_id, seq)
            entries, error = [], f"could not be mapped: {type(exc).__name__}: {exc}"
        if error is None:
            fresh.append((reading, entries))
        outcomes.append(("dead_letter" if error else "stored", error, gateway_id, seq))
    return fresh, outcomes


class FhirStage:
    """The stage's loop: map what is pending, sleep briefly when nothing is."""

    def __init__(
        self,
        db: str | Path,
        *,
        post_to_remote: bool = False,
        alert_rules: Path | None = None,
        referral_routes: Path | None = None,
    ) -> None:
        self._db = db
        self._post_to_remote = post_to_remote
        self._alert_rules = load_rule_texts(alert_rules) if alert_rules else None
        self._routes = load_routes(referral_routes) if referral_routes else None
        self.mapped = 0

    def run(self, stop: threading.Event | None = None) -> None:
        """Until `stop` is set (or for ever). Storage trouble is logged and retried after a pause:
        the readings stay pending, nothing is lost."""
        stop = stop or threading.Event()
        conn: Database | None = None
        while not stop.is_set():
            try:
                if conn is None or conn.broken:
                    conn = store.connect(self._db)
                done = map_pending(
                    conn,
                    now_ms=time.time_ns() // 1_000_000,
                    post_to_remote=self._post_to_remote,
                    alert_rules=self._alert_rules,
                    referral_routes=self._routes,
                )
            except Exception:  # the database went away, a bug in one reading's mapping...
                log.exception("bridge FHIR stage: could not map pending readings; trying again")
                if conn is not None:
                    conn.close()
                conn = None
                stop.wait(2.0)
                continue
            self.mapped += done
            if done == 0:
                stop.wait(IDLE_POLL_S)
        if conn is not None:
            conn.close()


def run_stage_process(
    db: str, post_to_remote: bool, alert_rules: Path | None, referral_routes: Path | None
) -> None:
    """Entry point of the stage's own process (`kiosk-bridge run --fhir-stage separate`)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s bridge-fhir %(levelname)s %(name)s: %(message)s"
    )
    FhirStage(
        db, post_to_remote=post_to_remote, alert_rules=alert_rules, referral_routes=referral_routes
    ).run()
