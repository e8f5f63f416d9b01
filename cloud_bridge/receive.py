"""Receive one batch message: verify, check the chain, store exactly once, map to FHIR, decide the ack.

`receive_batch` is the whole decision for one MQTT message, in one transaction that holds the
gateway's chain head (the write lock on SQLite, its row locked on PostgreSQL), so the ack it
returns is true of what is stored when the caller publishes it, and two workers given the same
batch store it once.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from cloud_bridge import fhir_map, fhir_post, fhir_store, gaps, store
from cloud_bridge.alert_rules import RuleText, alert_texts
from cloud_bridge.db import Database
from cloud_bridge.fhir_map import FhirMappingError, TransactionEntry, map_reading
from cloud_bridge.referral_routes import ReferralRoutes
from contract.wire import (
    Ack,
    Batch,
    ContractError,
    Reading,
    SignatureError,
    decode_batch,
    decode_time_probe,
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
    gaps_opened: int = 0
    probe: bool = False
    deferred: bool = False  # ahead of the chain; the caller asked to try again rather than refuse


def _iso(now_ms: int) -> str:
    return (
        datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """A batch makes tens of thousands of small objects (readings, FHIR resources), none in a
    reference cycle, that all live until the commit; the cyclic collector would walk them again
    and again as they pile up, which doubled the bridge's time per reading. Reference counting
    still frees everything as usual."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def receive_batch(
    conn: Database,
    topic: str,
    message: bytes,
    *,
    now_ms: int,
    post_to_remote: bool = False,
    alert_rules: Mapping[str, RuleText] | None = None,
    defer_ahead: bool = False,
    referral_routes: ReferralRoutes | None = None,
    map_fhir: bool = True,
) -> Outcome:
    """With `map_fhir` False the readings are stored, and the batch acked, without their FHIR
    resources: the FHIR stage (`cloud_bridge.fhir_stage`, another process) writes those after;
    except for readings with an alert, mapped here all the same, so no referral waits.

    With `post_to_remote`, each reading's transaction Bundle is queued for the health
    community's FHIR server (`cloud_bridge.fhir_post`) instead of written to the embedded store;
    either way in the same commit as the reading, before the ack.

    With `defer_ahead` (several workers), a batch that is ahead of the stored chain (its number is
    past the head's successor, so a batch between is missing, likely in another worker's hands)
    is neither stored nor refused: the outcome is `deferred`, with no ack and nothing recorded, and
    the caller tries again later. Anything else out of chain (a fork, a stale number) is refused
    as always.

    With `referral_routes`, each alert's referral Task goes to the care team routed for its rule,
    severity and the gateway's enrolled site (`cloud_bridge/referral_routes.py`)."""
    with cyclic_gc_paused():
        return _receive(
            conn, topic, message, now_ms, post_to_remote, alert_rules, defer_ahead, referral_routes, map_fhir
        )


def _receive(
    conn: Database,
    topic: str,
    message: bytes,
    now_ms: int,
    post_to_remote: bool,
    alert_rules: Mapping[str, RuleText] | None,
    defer_ahead: bool,
    routes: ReferralRoutes | None = None,
    map_fhir: bool = True,
) -> Outcome:
    probe_gateway = decode_time_probe(message)
    if probe_gateway is not None:
        return answer_time_probe(conn, topic, probe_gateway, now_ms)
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

    # The mapping is the slow part: done before the write lock is taken, unless a look-up without
    # the lock already shows the batch will not be stored (a replay, out of chain).
    likely_new = store.batch_known(conn, batch.hash) is None and _chain_error(record, batch) is None

    # With the FHIR stage apart, a reading the gateway raised an alert for is still mapped here,
    # before the ack: its Flag and referral must not wait behind a backlog in the stage's queue.
    map_here = [map_fhir or any(flag.startswith("alert:") for flag in r.flags) for r in batch.readings]

    def mapping(site: str) -> list[tuple[list[TransactionEntry], str | None]]:
        chosen = [reading for reading, here in zip(batch.readings, map_here, strict=True) if here]
        done = iter(
            map_readings(
                chosen, batch_hash=batch.hash, signature=signature, recorded_at_ms=now_ms,
                alert_rules=alert_rules, routes=routes, site=site,
            )
        )  # fmt: skip
        return [next(done) if here else ([], None) for here in map_here]

    mapped = mapping(record.site) if likely_new else None
    stored = 0
    with conn.transaction():
        # The decision is made again on the gateway's row, locked until the commit: another
        # worker (PostgreSQL) may have extended this chain since the look-up above.
        record = store.get_gateway(conn, gateway_id, lock=True)
        if record is None or record.status != "active":
            why = "unknown gateway (not enrolled)" if record is None else f"gateway is {record.status}"
            return _refuse(conn, gateway_id, why, now_ms)
        if store.batch_known(conn, batch.hash) is not None:
            store.touch_gateway(conn, gateway_id, now_ms)
            log.info("bridge: replay of %s %s ignored", gateway_id, batch.describe())
            return Outcome(gateway_id, _head_ack(record, batch.hash, now_ms), replay=True)
        chain_error = _chain_error(record, batch)
        if chain_error is not None and defer_ahead and _ahead_of_chain(record, batch):
            log.info(
                "bridge: %s %s came before its predecessor; will try again", gateway_id, batch.describe()
            )
            return Outcome(gateway_id, None, deferred=True)
        if chain_error is not None:
            return _refuse(conn, gateway_id, chain_error, now_ms, ack=_head_ack(record, batch.hash, now_ms))
        if mapped is None:
            mapped = mapping(record.site)
        new = store.insert_readings(
            conn,
            batch.readings,
            fhir_errors=[fhir_error for _, fhir_error in mapped],
            batch_hash=batch.hash,
            now_ms=now_ms,
            fhir_pending=[not here for here in map_here],
            bodies=batch.reading_bytes,
        )
        stored = sum(new)
        fresh = [
            (reading, entries)
            for reading, (entries, fhir_error), is_new, here in zip(
                batch.readings, mapped, new, map_here, strict=True
            )
            if is_new and here and fhir_error is None
        ]
        write_fhir(conn, fresh, post_to_remote=post_to_remote, now_ms=now_ms)
        change = store.record_batch(
            conn,
            gateway_id=gateway_id,
            batch_no=batch.number,
            seq_ranges=batch.seq_ranges,
            batch_hash=batch.hash,
            prev_hash=batch.prev_hash,
            signature=signature,
            waiting=batch.waiting,
            now_ms=now_ms,
        )
    if stored < len(batch.readings):
        log.warning(
            "bridge: %s %s held %d reading(s) already stored; kept the first copies",
            gateway_id, batch.describe(), len(batch.readings) - stored,
        )  # fmt: skip
    log.info("bridge: stored %s %s (%d new)", gateway_id, batch.describe(), stored)
    _report_gaps(gateway_id, change, batch.waiting)
    high = max(record.last_seq, batch.last_seq)
    ack = Ack(batch.hash, batch.number, high, batch.hash, server_time_ms=now_ms)
    return Outcome(gateway_id, ack, stored=stored, gaps_opened=len(change.opened))


def answer_time_probe(conn: Database, topic: str, gateway_id: str, now_ms: int) -> Outcome:
    """A gateway that just connected asks for the bridge's clock: answer with it and the chain
    head (so it also learns what the bridge holds). Stores nothing."""
    try:
        topic_gateway = gateway_id_from_topic(topic)
    except ContractError as exc:
        return _refuse(conn, None, f"malformed message on {topic!r}: {exc}", now_ms, answer=False)
    if gateway_id != topic_gateway:
        return _refuse(conn, topic_gateway, f"time probe names {gateway_id!r} but came on {topic!r}", now_ms)
    record = store.get_gateway(conn, gateway_id)
    if record is None:
        return _refuse(conn, gateway_id, "unknown gateway (not enrolled)", now_ms)
    if record.status != "active":
        return _refuse(conn, gateway_id, f"gateway is {record.status}", now_ms)
    store.touch_gateway(conn, gateway_id, now_ms)
    return Outcome(
        gateway_id,
        Ack(record.last_hash, record.last_batch_no, record.last_seq, None, server_time_ms=now_ms),
        probe=True,
    )


def _chain_error(record: store.GatewayRecord, batch: Batch) -> str | None:
    """Why `batch` cannot be the next link of the gateway's chain, or None if it can."""
    if batch.prev_hash != record.last_hash:
        return (
            f"out of chain order: {batch.describe()} does not follow the newest stored batch "
            f"(number {record.last_batch_no}, seq up to {record.last_seq})"
        )
    if batch.number is None and batch.first_seq != record.last_seq + 1:
        return f"out of order: v1 {batch.describe()} does not follow stored seq {record.last_seq}"
    if batch.number is not None and batch.number <= record.last_batch_no:
        return f"batch number {batch.number} is not after the stored {record.last_batch_no}"
    return None


def _ahead_of_chain(record: store.GatewayRecord, batch: Batch) -> bool:
    """A v2 batch numbered past the head's successor: one before it has not been stored yet."""
    return batch.number is not None and batch.number > record.last_batch_no + 1


def _head_ack(record: store.GatewayRecord, answered: bytes, now_ms: int) -> Ack:
    """What the bridge holds of this gateway's chain: its newest batch vouches for all before it."""
    return Ack(record.last_hash, record.last_batch_no, record.last_seq, answered, server_time_ms=now_ms)


def _report_gaps(gateway_id: str, change: store.GapChange, waiting: int | None) -> None:
    """Say which sequences have not arrived; loudly when the gateway does not hold that many back."""
    if change.filled:
        log.info("bridge: %s: sequences %s arrived (gaps filled)", gateway_id, gaps.describe(change.filled))
    if not change.opened:
        return
    missing = gaps.missing(change.gaps)
    if waiting is not None and missing <= waiting:
        log.info(
            "bridge: %s: sequences %s not received yet (%d missing in all; the gateway holds %d back)",
            gateway_id, gaps.describe(change.opened), missing, waiting,
        )  # fmt: skip
    else:
        log.warning(
            "bridge: %s: sequences %s missing (%d missing in all, the gateway reports %s waiting)",
            gateway_id, gaps.describe(change.opened), missing, "?" if waiting is None else waiting,
        )  # fmt: skip


def map_readings(
    readings: Sequence[Reading],
    *,
    batch_hash: bytes,
    signature: bytes,
    recorded_at_ms: int,
    alert_rules: Mapping[str, RuleText] | None,
    routes: ReferralRoutes | None = None,
    site: str = "",
) -> list[tuple[list[TransactionEntry], str | None]]:
    """Each reading's FHIR entries, or why it cannot be mapped (it is then kept as a dead letter)."""
    out: list[tuple[list[TransactionEntry], str | None]] = []
    for reading in readings:
        try:
            entries = map_reading(
                reading,
                batch_hash=batch_hash,
                gateway_signature=signature,
                recorded_at_ms=recorded_at_ms,
                alerts=alert_texts(alert_rules, reading, routes=routes, site=site) if alert_rules else (),
            )
        except FhirMappingError as exc:
            log.error("bridge: %s seq %d kept as dead letter: %s", reading.gateway_id, reading.seq, exc)
            out.append(([], str(exc)))
            continue
        out.append((entries, None))
    return out


def write_fhir(
    conn: Database,
    fresh: Sequence[tuple[Reading, list[TransactionEntry]]],
    *,
    post_to_remote: bool,
    now_ms: int,
) -> None:
    """The FHIR resources of readings stored for the first time: into the embedded store, or each
    reading's transaction Bundle queued for the health community's server. In the caller's
    transaction."""
    if post_to_remote:
        # The mapper validated every resource (fhir_map); the Bundle around them is not
        # validated again here unless the tests ask for everything to be (VALIDATE_EVERY_RESOURCE).
        validate = fhir_map.VALIDATE_EVERY_RESOURCE
        bundles = [
            (reading.gateway_id, reading.seq, fhir_store.transaction_bundle_json(entries, validate=validate))
            for reading, entries in fresh
        ]
        fhir_post.enqueue(conn, bundles)
    elif fresh:
        fhir_store.apply_transactions(
            conn, [entries for _, entries in fresh], now_iso=_iso(now_ms), first_time=True
        )


def _refuse(
    conn: Database,
    gateway_id: str | None,
    reason: str,
    now_ms: int,
    *,
    answer: bool = True,
    ack: Ack | None = None,
) -> Outcome:
    """Log and count the refusal; answer the gateway (when it can be named) with the reason and,
    for a batch out of chain order, what the bridge does hold so it resends the right ones."""
    log.warning("bridge: refused batch from %s: %s", gateway_id or "?", reason)
    store.record_refusal(conn, gateway_id, reason, now_ms)
    if not answer or gateway_id is None:
        return Outcome(gateway_id, None, refusal=reason)
    base = ack if ack is not None else Ack(None, server_time_ms=now_ms)
    return Outcome(gateway_id, dataclasses.replace(base, error=reason), refusal=reason)
