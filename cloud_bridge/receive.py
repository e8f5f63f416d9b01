"""Receive one batch message: verify, check the chain, store exactly once, map to FHIR, decide the ack.

`receive_batch` is the whole decision for one MQTT message, in one SQLite transaction, so the
ack it returns is true of what is on disk when the caller publishes it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from cloud_bridge import fhir_post, fhir_store, store
from cloud_bridge.alert_rules import RuleText, alert_texts
from cloud_bridge.fhir_map import FhirMappingError, map_reading
from contract.wire import (
    Ack,
    ContractError,
    SignatureError,
    decode_batch,
    gateway_id_from_topic,
    peek_batch_gateway,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one message; `ack` is None when nobody should be answered."""

    gateway_id: str | None
    ack: Ack | None
    stored: int = 0
    replay: bool = False
    refusal: str | None = None


def _iso(now_ms: int) -> str:
    return (
        datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def receive_batch(
    conn: sqlite3.Connection,
    topic: str,
    message: bytes,
    *,
    now_ms: int,
    post_to_remote: bool = False,
    alert_rules: Mapping[str, RuleText] | None = None,
) -> Outcome:
    """With `post_to_remote`, each reading's transaction Bundle is queued for the health
    community's FHIR server (`cloud_bridge.fhir_post`) instead of written to the embedded store;
    either way in the same commit as the reading, before the ack."""
    try:
        topic_gateway = gateway_id_from_topic(topic)
        gateway_id, _, signature = peek_batch_gateway(message)
    except ContractError as exc:
        return _refuse(conn, None, f"malformed message on {topic!r}: {exc}", now_ms, answer=False)
    if gateway_id != topic_gateway:
        return _refuse(
            conn, topic_gateway, f"batch names gateway {gateway_id!r} but came on {topic!r}", now_ms
        )
    record = store.get_gateway(conn, gateway_id)
    if record is None:
        return _refuse(conn, gateway_id, "unknown gateway (not enrolled)", now_ms)
    if record.status != "active":
        return _refuse(conn, gateway_id, f"gateway is {record.status}", now_ms)
    try:
        batch = decode_batch(message, record.public_key)
    except SignatureError:
        return _refuse(conn, gateway_id, "signature does not verify against the enrolled key", now_ms)
    except ContractError as exc:
        return _refuse(conn, gateway_id, f"malformed batch: {exc}", now_ms)

    known = store.batch_known(conn, batch.hash)
    if known is not None:
        store.touch_gateway(conn, gateway_id, now_ms)
        log.info("bridge: replay of %s batch %d..%d ignored", gateway_id, batch.first_seq, batch.last_seq)
        return Outcome(gateway_id, Ack(record.last_seq, record.last_hash, server_time_ms=now_ms), replay=True)
    if batch.prev_hash != record.last_hash or batch.first_seq != record.last_seq + 1:
        reason = (
            f"out of chain order: batch {batch.first_seq}..{batch.last_seq} does not follow "
            f"stored seq {record.last_seq}"
        )
        return _refuse(conn, gateway_id, reason, now_ms, acked=record.last_seq)

    stored = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for reading in batch.readings:
            fhir_error = None
            try:
                entries = map_reading(
                    reading,
                    batch_hash=batch.hash,
                    gateway_signature=signature,
                    recorded_at_ms=now_ms,
                    alerts=alert_texts(alert_rules, reading) if alert_rules else (),
                )
            except FhirMappingError as exc:
                fhir_error = str(exc)
                log.error("bridge: %s seq %d kept as dead letter: %s", gateway_id, reading.seq, exc)
            if store.insert_reading(
                conn, reading, batch_hash=batch.hash, now_ms=now_ms, fhir_error=fhir_error
            ):
                stored += 1
                if fhir_error is None and post_to_remote:
                    fhir_post.enqueue(
                        conn, gateway_id, reading.seq, fhir_store.to_transaction_bundle(entries)
                    )
                elif fhir_error is None:
                    fhir_store.apply_transaction(conn, entries, now_iso=_iso(now_ms))
        store.record_batch(
            conn,
            gateway_id=gateway_id,
            first_seq=batch.first_seq,
            last_seq=batch.last_seq,
            batch_hash=batch.hash,
            prev_hash=batch.prev_hash,
            signature=signature,
            now_ms=now_ms,
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    log.info("bridge: stored %s seq %d..%d (%d new)", gateway_id, batch.first_seq, batch.last_seq, stored)
    return Outcome(gateway_id, Ack(batch.last_seq, batch.hash, server_time_ms=now_ms), stored=stored)


def _refuse(
    conn: sqlite3.Connection,
    gateway_id: str | None,
    reason: str,
    now_ms: int,
    *,
    answer: bool = True,
    acked: int = 0,
) -> Outcome:
    log.warning("bridge: refused batch from %s: %s", gateway_id or "?", reason)
    store.record_refusal(conn, gateway_id, reason, now_ms)
    ack = Ack(acked, None, error=reason, server_time_ms=now_ms) if answer and gateway_id else None
    return Outcome(gateway_id, ack, refusal=reason)
