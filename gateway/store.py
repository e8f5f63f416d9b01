"""The gateway's durable outbox in SQLite (WAL, synchronous=FULL).

A reading is acked to its peripheral only after the transaction that stores it has committed,
so an acked reading survives a crash or power cut. Its sequence number is the table's
AUTOINCREMENT key: per gateway, strictly increasing, never reused. Readings are grouped into
signed batches once, just before they are sent (so what is urgent when the link returns goes
first: gateway/sync_policy.py); a batch's exact bytes are kept (sealed with the storage key,
since they carry resident identifiers) and resent unchanged until the bridge acks them, which
keeps the hash chain stable across retries and restarts.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import functools
import os
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import aiosqlite
import cbor2

from contract.wire import (
    GENESIS_HASH,
    DeviceRef,
    Measurement,
    Reading,
    ResidentRef,
    Waveform,
    encode_batch_of_encoded,
    encode_reading_parts,
    flags_cbor,
    measurements_cbor,
    seq_ranges,
)
from gateway.ecg import EcgChunk
from gateway.errors import StorageFullError
from gateway.keys import GatewayKeys
from gateway.sync_policy import PRIORITY_WAVEFORM, sync_priority

_TABLES = """
CREATE TABLE IF NOT EXISTS readings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    boot_id INTEGER NOT NULL,
    link_seq INTEGER NOT NULL,
    device_model TEXT NOT NULL,
    device_firmware TEXT NOT NULL,
    kind TEXT NOT NULL,
    measurements BLOB NOT NULL,
    measured_at_ms INTEGER NOT NULL,
    time_quality TEXT NOT NULL,
    received_mono_ms INTEGER NOT NULL,
    resident_sealed BLOB,
    operator TEXT,
    flags BLOB NOT NULL,
    waveform BLOB,
    state TEXT NOT NULL DEFAULT 'stored' CHECK (state IN ('stored', 'batched', 'synced')),
    batch_id INTEGER,
    stored_at_ms INTEGER NOT NULL,
    priority INTEGER NOT NULL DEFAULT 1,
    gateway_boot TEXT,
    UNIQUE (device_id, boot_id, link_seq)
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    message_sealed BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'acked')),
    created_at_ms INTEGER NOT NULL,
    acked_at_ms INTEGER,
    readings INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    firmware TEXT NOT NULL,
    boot_id INTEGER NOT NULL,
    port TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS link_usage (day TEXT PRIMARY KEY, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ble_cursors (
    device_id TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    last_time TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ecg_chunks (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    boot_id INTEGER NOT NULL,
    link_seq INTEGER NOT NULL,
    device_model TEXT NOT NULL,
    device_firmware TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    first_sample INTEGER NOT NULL,
    channels INTEGER NOT NULL,
    lead_off INTEGER NOT NULL,
    samples BLOB NOT NULL,
    consumed INTEGER NOT NULL DEFAULT 0,
    UNIQUE (device_id, boot_id, link_seq)
);
CREATE TABLE IF NOT EXISTS checkins (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    resident_sealed BLOB NOT NULL,
    operator TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER
);
"""

# How many readings are in each state and priority, so the counts the sync engine and the
# screen ask for all the time cost nothing with a week's backlog (COUNT(*) over a million rows
# took longer than forming the batch it was for). Every statement that inserts readings,
# changes their state or priority, or deletes them adjusts these in the same transaction, once
# per statement (`_adjust_counts`): per-row triggers did it once per row, about a fifth of the
# SQL time of storing and batching a reading.
_READING_COUNTS = """
CREATE TABLE IF NOT EXISTS reading_counts (
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (state, priority)
);
"""

# Only the indexes a query needs: each one is written for every reading stored and again when
# the reading is batched. (`readings_state (state, seq)` and the full `readings_batch
# (batch_id)` of older releases are dropped on open: no query needs the first, and the second
# held an entry for every reading not in a batch yet.)
_INDEXES = """
-- form_batch: the stored readings, most urgent and oldest first
CREATE INDEX IF NOT EXISTS readings_queue ON readings (priority, seq) WHERE state = 'stored';
-- mark_acked and pruning: a batch's readings
CREATE INDEX IF NOT EXISTS readings_in_batch ON readings (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS batches_state ON batches (state, id);
"""

SCHEMA = _TABLES + _READING_COUNTS + _INDEXES  # a new outbox file, complete
_DROPPED_INDEXES = ("readings_state", "readings_batch")
_COUNT_TRIGGERS = ("reading_counts_insert", "reading_counts_delete", "reading_counts_update")


async def _migrate(db: aiosqlite.Connection) -> None:
    """Bring an outbox made by an older release up to this schema, in place, keeping its data,
    in one transaction (a crash leaves the old file, which the next open upgrades)."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        columns = {row[1] for row in await db.execute_fetchall("PRAGMA table_info(readings)")}
        if "priority" not in columns:
            await db.execute("ALTER TABLE readings ADD COLUMN priority INTEGER NOT NULL DEFAULT 1")
            await db.execute(
                "UPDATE readings SET priority = ? WHERE waveform IS NOT NULL AND state = 'stored'",
                (PRIORITY_WAVEFORM,),
            )
        if "gateway_boot" not in columns:  # older readings: their boot is unknown, their time stays
            await db.execute("ALTER TABLE readings ADD COLUMN gateway_boot TEXT")
        batch_columns = {row[1] for row in await db.execute_fetchall("PRAGMA table_info(batches)")}
        if "readings" not in batch_columns:  # counted once here, then written when a batch is formed
            await db.execute("ALTER TABLE batches ADD COLUMN readings INTEGER NOT NULL DEFAULT 0")
            await db.execute(
                "UPDATE batches SET readings = (SELECT COUNT(*) FROM readings WHERE batch_id = batches.id)"
            )
        present = {
            str(row[0])
            for row in await db.execute_fetchall(
                "SELECT name FROM sqlite_master WHERE name IN (?, ?, ?, ?)",
                ("reading_counts", *_COUNT_TRIGGERS),
            )
        }
        if "reading_counts" not in present or present & set(_COUNT_TRIGGERS):
            # No counts yet, or counts kept by the triggers of the previous release: count afresh
            # and drop the triggers, in this transaction (no reading changes in between).
            for trigger in _COUNT_TRIGGERS:
                await db.execute(f"DROP TRIGGER IF EXISTS {trigger}")
            await db.execute(_READING_COUNTS)  # one statement: executescript would commit first
            await db.execute("DELETE FROM reading_counts")
            await db.execute(
                """INSERT INTO reading_counts (state, priority, n)
                   SELECT state, priority, COUNT(*) FROM readings GROUP BY state, priority"""
            )
        for index in _DROPPED_INDEXES:
            await db.execute(f"DROP INDEX IF EXISTS {index}")
    except BaseException:
        if db.in_transaction:
            await db.execute("ROLLBACK")
        raise
    await db.execute("COMMIT")


def current_boot_id() -> str:
    """This boot of the machine: monotonic times compare only within one (Linux's boot id; a
    random one elsewhere, which only makes the time correction more cautious)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return uuid.uuid4().hex


class _StoredRow(NamedTuple):
    """A reading's row as the batch and history queries select it (the order of their columns)."""

    seq: int
    device_id: str
    model: str
    firmware: str
    kind: str
    values: bytes  # CBOR, as `measurements_cbor` wrote it
    measured_at_ms: int
    time_quality: str
    received_mono_ms: int
    resident_sealed: bytes | None
    operator: str | None
    flags: bytes  # CBOR
    waveform: bytes | None  # CBOR


@dataclass(frozen=True, slots=True)
class NewReading:
    """What ingest hands the store; the store gives it its sequence number."""

    device: DeviceRef
    boot_id: int
    link_seq: int
    kind: str
    values: tuple[Measurement, ...]
    measured_at_ms: int
    time_quality: str
    received_mono_ms: int
    resident: ResidentRef | None
    operator: str | None
    flags: tuple[str, ...]
    waveform: Waveform | None = None


@dataclass(frozen=True, slots=True)
class BleCursor:
    """A BLE meter's record numbering as last seen: `epoch` counts the times it started over
    (reset, or its 16-bit sequence wrapped); `last_seq` and `last_time` identify the newest
    record stored, so the next download asks for what follows and can tell a reset meter."""

    epoch: int
    last_seq: int
    last_time: str  # the record's device time, ISO 8601 (device-local)


@dataclass(frozen=True, slots=True)
class StagedChunk:
    key: int
    device: DeviceRef
    boot_id: int
    received_at_ms: int
    chunk: EcgChunk


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """A signed batch waiting for the bridge's ack; `id` is its number in the gateway's chain."""

    id: int
    first_seq: int
    last_seq: int
    hash: bytes
    message: bytes
    readings: int = 0


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    stored: int
    batched: int
    synced: int
    pending_batches: int
    last_synced_seq: int
    last_synced_at_ms: int | None
    rejections: int
    waveforms_waiting: int = 0  # ECG strips stored, not in a batch yet (held back by the budget)


@dataclass(frozen=True, slots=True)
class PruneResult:
    readings: int
    batches: int
    ecg_chunks: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


MB = 1024 * 1024
_BULK_FROM = 4  # readings in one add_readings call from which the bulk path pays off
_LOOKUP_CHUNK = 500  # link seqs per look-up statement (SQLite allows 32766 parameters)
_INSERT_CHUNK = 500  # rows per multi-row INSERT (18 parameters each)


def stored_link_seqs_sql(count: int) -> str:
    """Which of `count` link seqs of one device and boot are stored already (on the unique index)."""
    return (
        "SELECT link_seq FROM readings WHERE device_id = ? AND boot_id = ?"
        f" AND link_seq IN ({','.join('?' * count)})"
    )


_COLUMNS = """device_id, boot_id, link_seq, device_model, device_firmware, kind, measurements,
    measured_at_ms, time_quality, received_mono_ms, resident_sealed, operator, flags, waveform,
    stored_at_ms, priority, gateway_boot"""
_ROW_VALUES = 17
_ROW_PLACEHOLDERS = ", ".join("?" * _ROW_VALUES)

_INSERT_READING = f"INSERT INTO readings ({_COLUMNS}) VALUES ({_ROW_PLACEHOLDERS})"

# One reading, unless its link message is stored already: look-up and insert in one statement.
# A SELECT of no row inserts nothing and takes no AUTOINCREMENT value (INSERT OR IGNORE would
# burn one and leave a gap in the gateway's sequence, which batches must not have).
_INSERT_READING_IF_NEW = f"""INSERT INTO readings ({_COLUMNS}) SELECT {_ROW_PLACEHOLDERS}
    WHERE NOT EXISTS (SELECT 1 FROM readings WHERE device_id = ? AND boot_id = ? AND link_seq = ?)"""

# The sequence AUTOINCREMENT would hand out last: the larger of the table's sqlite_sequence
# entry and its largest key, exactly as SQLite chooses the next one.
_LAST_SEQ = """SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'readings'), 0),
                        COALESCE((SELECT MAX(seq) FROM readings), 0))"""


@functools.lru_cache(maxsize=8)
def _insert_readings_sql(rows: int) -> str:
    """`rows` readings with their sequences given, in one statement: SQLite sets up the
    statement (cursors on the table and each index) once, where executemany did it per row."""
    one = f"(?, {_ROW_PLACEHOLDERS})"
    return f"INSERT INTO readings (seq, {_COLUMNS}) VALUES " + ", ".join([one] * rows)


_ADJUST_COUNT = """INSERT INTO reading_counts (state, priority, n) VALUES (?, ?, ?)
    ON CONFLICT (state, priority) DO UPDATE SET n = n + excluded.n"""

# The sync class of a reading depends on its kind, flags and waveform only, and readings repeat
# a few combinations: worked out once each.
_priority_of = functools.lru_cache(maxsize=1024)(sync_priority)

# What form_batch reads (on readings_queue): the most urgent stored readings, oldest first, with
# their raw size (for the byte cap) and priority (for the counts).
_QUEUED = """SELECT seq, device_id, device_model, device_firmware, kind, measurements, measured_at_ms,
        time_quality, received_mono_ms, resident_sealed, operator, flags, waveform,
        length(measurements) + COALESCE(length(waveform), 0), priority
    FROM readings WHERE state = 'stored' AND priority BETWEEN ? AND ?
    ORDER BY priority, seq LIMIT ?"""

# A run of consecutive sequences a batch took (every reading in it), on the primary key.
_MARK_BATCHED = (
    "UPDATE readings SET state = 'batched', batch_id = ? WHERE seq BETWEEN ? AND ? AND state = 'stored'"
)

# The readings an ack of batch ? makes synced, and those pruning may delete (acked before ?,
# older than batch ?): both found through readings_in_batch.
_IN_ACKED_BATCHES = """state = 'batched'
    AND batch_id IN (SELECT id FROM batches WHERE state = 'pending' AND id <= ?)"""
_IN_PRUNABLE_BATCHES = """state = 'synced'
    AND batch_id IN (SELECT id FROM batches WHERE state = 'acked' AND acked_at_ms < ? AND id < ?)"""

# correct_unsynced_time's update. The priorities (every one a stored reading has is counted) let
# it seek readings_queue per priority from the last sequence it saw: the stored readings after
# it, not every row after it (all of them, at the first correction after a restart).
_CORRECT_TIMES = """UPDATE readings
    SET measured_at_ms = measured_at_ms + (? - (? - received_mono_ms)) - stored_at_ms,
        time_quality = 'bridge'
    WHERE seq > ? AND state = 'stored' AND time_quality = 'unsynced' AND gateway_boot = ?
        AND priority IN (SELECT priority FROM reading_counts WHERE state = 'stored')"""

# The rest a batch needs, in one statement: readings still waiting, the chain's last hash (NULL
# before the first batch) and the last batch number.
_CHAIN_HEAD = """SELECT (SELECT COALESCE(SUM(n), 0) FROM reading_counts WHERE state = 'stored'),
        (SELECT value FROM meta WHERE key = 'last_batch_hash'),
        COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'batches'), 0)"""


@dataclass
class StorageGuard:
    """Keeps the outbox from filling the disk it shares with the system: below
    `min_free_waveforms_mb` of free space new ECG is refused (a waveform is large and a gap in it
    is visible); below `min_free_readings_mb` new readings are refused too (the boards keep them,
    NAK busy, and resend). Synced data ages out by retention; accepting resumes by itself once
    space returns. `free_bytes` is the probe (the file system's free space by default)."""

    directory: Path
    min_free_waveforms_mb: float = 200.0
    min_free_readings_mb: float = 50.0
    free_bytes: Callable[[], int] | None = None
    state: str = "ok"  # ok | waveforms_refused | readings_refused

    def free(self) -> int:
        if self.free_bytes is not None:
            return self.free_bytes()
        stats = os.statvfs(self.directory)
        return stats.f_bavail * stats.f_frsize

    def assess(self) -> float:
        """Set `state` from the free space now; returns the free MB."""
        free_mb = self.free() / MB
        if free_mb < self.min_free_readings_mb:
            self.state = "readings_refused"
        elif free_mb < self.min_free_waveforms_mb:
            self.state = "waveforms_refused"
        else:
            self.state = "ok"
        return free_mb

    def check(self, what: str) -> None:
        """Raise StorageFullError when `what` ("waveform" or "reading") may not be stored now."""
        free_mb = self.assess()
        if self.state == "readings_refused" or (what == "waveform" and self.state == "waveforms_refused"):
            raise StorageFullError(self.message(free_mb))

    def message(self, free_mb: float | None = None) -> str:
        free_mb = self.free() / MB if free_mb is None else free_mb
        if self.state == "readings_refused":
            return (
                f"storage full ({free_mb:.0f} MB free): new readings wait on the devices until space "
                "returns; connect the link so synced data can be removed, or free space"
            )
        if self.state == "waveforms_refused":
            return f"storage nearly full ({free_mb:.0f} MB free): ECG recording refused, readings still taken"
        return f"storage ok ({free_mb:.0f} MB free)"


class Outbox:
    def __init__(
        self, db: aiosqlite.Connection, gateway_id: str, keys: GatewayKeys, guard: StorageGuard | None = None
    ) -> None:
        self._db = db
        self._gateway_id = gateway_id
        self._keys = keys
        self.guard = guard
        self.boot_id = current_boot_id()
        # One connection serves ingest, sync and the API: the lock keeps one coroutine's
        # transaction from swallowing (or reading half of) another's.
        self._lock = asyncio.Lock()
        self._devices: dict[tuple[str, str, str], DeviceRef] = {}

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                # SQLite may have rolled back already (a full disk, SQLITE_FULL, ends the whole
                # transaction): a second ROLLBACK would raise and hide the real error.
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    @classmethod
    async def open(
        cls, path: Path, gateway_id: str, keys: GatewayKeys, guard: StorageGuard | None = None
    ) -> Outbox:
        db = await aiosqlite.connect(path, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA busy_timeout=5000")
        try:
            await db.executescript(_TABLES)  # an older file: the tables it lacks; its own are upgraded
            await _migrate(db)
            await db.executescript(_INDEXES)  # after the upgrade: they index its new columns
        except BaseException:
            await db.close()
            raise
        return cls(db, gateway_id, keys, guard)

    async def close(self) -> None:
        await self._db.close()

    async def add_reading(self, new: NewReading) -> int | None:
        """Store durably; returns the sequence, or None if this link message was already stored."""
        (seq,) = await self.add_readings((new,))
        return seq

    async def add_readings(self, news: Sequence[NewReading]) -> list[int | None]:
        """Store readings in one durable commit (synchronous=FULL) before the caller acks any:
        one fsync for many (a meter's record download, an import). Returns each one's sequence,
        or None for one already stored (same device, boot and link seq)."""
        if self.guard is not None:
            self.guard.check("reading")
        sealed = [self._keys.seal_resident(new.resident) if new.resident else None for new in news]
        now_ms = _now_ms()
        try:
            async with self._transaction():
                if len(news) >= _BULK_FROM:
                    return await self._insert_many(news, sealed, now_ms)
                return [
                    await self._insert(new, resident, now_ms, only_if_new=True)
                    for new, resident in zip(news, sealed, strict=True)
                ]
        except sqlite3.OperationalError as exc:
            if "full" in str(exc):
                raise StorageFullError(f"outbox cannot store more: {exc}") from exc
            raise

    async def _insert_many(
        self, news: Sequence[NewReading], sealed: list[bytes | None], now_ms: int
    ) -> list[int | None]:
        """Many readings in a few statements (each await is a hop to aiosqlite's thread): one
        look-up of those already stored, the last sequence, one multi-row INSERT per 500 with
        the sequences given (the write lock is ours, so nothing can take them in between), the
        counts."""
        keys = [(new.device.id, new.boot_id, new.link_seq) for new in news]
        stored: set[tuple[str, int, int]] = set()
        # One look-up per device and boot (a call's readings nearly always share both), on the
        # unique index: a row-value IN (VALUES ...) would scan the whole table, which at a
        # week's backlog (a million rows) made every call slower than the last.
        by_boot: dict[tuple[str, int], list[int]] = {}
        for device_id, boot_id, link_seq in keys:
            by_boot.setdefault((device_id, boot_id), []).append(link_seq)
        for (device_id, boot_id), link_seqs in by_boot.items():
            for start in range(0, len(link_seqs), _LOOKUP_CHUNK):
                chunk = link_seqs[start : start + _LOOKUP_CHUNK]
                found = await self._db.execute_fetchall(
                    stored_link_seqs_sql(len(chunk)), (device_id, boot_id, *chunk)
                )
                stored.update((device_id, boot_id, row[0]) for row in found)
        out: list[int | None] = []
        params: list[object] = []
        added: Counter[tuple[str, int]] = Counter()
        [(seq,)] = await self._db.execute_fetchall(_LAST_SEQ)
        for key, new, resident in zip(keys, news, sealed, strict=True):
            if key in stored:
                out.append(None)
                continue
            stored.add(key)  # the same message twice in one call: stored once
            seq += 1
            priority = _priority_of(new.kind, new.flags, new.waveform is not None)
            params.append(seq)
            params.extend(self._row(new, resident, now_ms, priority))
            added["stored", priority] += 1
            out.append(seq)
        width = 1 + _ROW_VALUES  # the sequence, then the row
        for start in range(0, len(params), _INSERT_CHUNK * width):
            chunk = params[start : start + _INSERT_CHUNK * width]
            await self._db.execute(_insert_readings_sql(len(chunk) // width), chunk)
        await self._adjust_counts(added)
        return out

    async def _insert(
        self, new: NewReading, sealed: bytes | None, now_ms: int, *, only_if_new: bool
    ) -> int | None:
        """One reading; with `only_if_new`, None (and nothing stored) when its link message is."""
        priority = _priority_of(new.kind, new.flags, new.waveform is not None)
        row = self._row(new, sealed, now_ms, priority)
        if only_if_new:
            cursor = await self._db.execute(
                _INSERT_READING_IF_NEW, (*row, new.device.id, new.boot_id, new.link_seq)
            )
            if cursor.rowcount == 0:
                return None
        else:
            cursor = await self._db.execute(_INSERT_READING, row)
        await self._adjust_counts({("stored", priority): 1})
        return cursor.lastrowid

    async def _count_by_priority(self, where: str, params: Sequence[object]) -> dict[int, int]:
        """How many readings `where` selects, per priority: what a statement about to change or
        delete them takes from the counts (read in its transaction, before it runs)."""
        rows = await self._db.execute_fetchall(
            f"SELECT priority, COUNT(*) FROM readings WHERE {where} GROUP BY priority", params
        )
        return {int(priority): int(n) for priority, n in rows}

    async def _adjust_counts(self, deltas: Mapping[tuple[str, int], int]) -> None:
        """Add `deltas` (state, priority) -> change to the kept counts, in the caller's transaction."""
        changes = [(state, priority, n) for (state, priority), n in deltas.items() if n]
        if changes:
            await self._db.executemany(_ADJUST_COUNT, changes)

    def _row(self, new: NewReading, sealed: bytes | None, now_ms: int, priority: int) -> tuple[object, ...]:
        """The values of _COLUMNS for a new reading."""
        waveform = new.waveform
        return (
            new.device.id,
            new.boot_id,
            new.link_seq,
            new.device.model,
            new.device.firmware,
            new.kind,
            measurements_cbor(new.values),
            new.measured_at_ms,
            new.time_quality,
            new.received_mono_ms,
            sealed,
            new.operator,
            flags_cbor(new.flags),
            None if waveform is None else cbor2.dumps(waveform.to_cbor()),
            now_ms,
            priority,
            self.boot_id,
        )

    async def ble_cursor(self, device_id: str) -> BleCursor | None:
        """Where a BLE meter's stored-record download stopped (survives restarts)."""
        async with (
            self._lock,
            self._db.execute(
                "SELECT epoch, last_seq, last_time FROM ble_cursors WHERE device_id = ?", (device_id,)
            ) as cursor,
        ):
            row = await cursor.fetchone()
        return None if row is None else BleCursor(int(row[0]), int(row[1]), str(row[2]))

    async def set_ble_cursor(self, device_id: str, cursor: BleCursor) -> None:
        async with self._transaction():
            await self._db.execute(
                """INSERT INTO ble_cursors (device_id, epoch, last_seq, last_time) VALUES (?, ?, ?, ?)
                   ON CONFLICT (device_id) DO UPDATE SET epoch = excluded.epoch,
                       last_seq = excluded.last_seq, last_time = excluded.last_time""",
                (device_id, cursor.epoch, cursor.last_seq, cursor.last_time),
            )

    async def record_rejection(self, source: str, reason: str) -> None:
        async with self._transaction():
            await self._db.execute(
                "INSERT INTO rejections (at_ms, source, reason) VALUES (?, ?, ?)", (_now_ms(), source, reason)
            )

    async def note_device(self, device: DeviceRef, boot_id: int, port: str) -> None:
        async with self._transaction():
            await self._db.execute(
                """INSERT INTO devices (device_id, model, firmware, boot_id, port, last_seen_ms)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT (device_id) DO UPDATE SET model = excluded.model,
                       firmware = excluded.firmware, boot_id = excluded.boot_id,
                       port = excluded.port, last_seen_ms = excluded.last_seen_ms""",
                (device.id, device.model, device.firmware, boot_id, port, _now_ms()),
            )

    # ECG: chunks are staged durably (acked after commit), strips become readings ----------------
    async def stage_ecg_chunk(
        self, device: DeviceRef, boot_id: int, link_seq: int, received_at_ms: int, chunk: EcgChunk
    ) -> int | None:
        """Keep a chunk durably before its ack; returns its staging key, None if already staged.
        Refused (StorageFullError) first of all when the disk runs low.

        One statement in autocommit mode is its own durable transaction (synchronous=FULL): one
        round trip to the database thread per chunk, where look-then-insert took four. The lock
        keeps it out of another task's open transaction on the same connection.
        """
        if self.guard is not None:
            self.guard.check("waveform")
        samples = array.array("i", chunk.samples)
        try:
            async with (
                self._lock,
                self._db.execute(
                    """INSERT OR IGNORE INTO ecg_chunks (device_id, boot_id, link_seq, device_model,
                           device_firmware, received_at_ms, first_sample, channels, lead_off, samples)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (device.id, boot_id, link_seq, device.model, device.firmware, received_at_ms,
                     chunk.first_sample, chunk.channels, chunk.lead_off, samples.tobytes()),
                ) as cursor,
            ):  # fmt: skip
                return cursor.lastrowid if cursor.rowcount else None
        except sqlite3.OperationalError as exc:
            if "full" in str(exc):
                raise StorageFullError(f"outbox cannot stage more ECG: {exc}") from exc
            raise

    async def staged_ecg_chunks(self) -> list[StagedChunk]:
        """Chunks not yet in a strip (after a restart), in stream order per device."""
        async with (
            self._lock,
            self._db.execute(
                """SELECT key, device_id, device_model, device_firmware, boot_id, received_at_ms,
                      first_sample, channels, lead_off, samples
               FROM ecg_chunks WHERE consumed = 0 ORDER BY device_id, boot_id, first_sample"""
            ) as cursor,
        ):
            rows = await cursor.fetchall()
        staged = []
        for key, device_id, model, firmware, boot_id, received, first, channels, lead_off, raw in rows:
            samples = array.array("i")
            samples.frombytes(raw)
            staged.append(
                StagedChunk(
                    key, DeviceRef(device_id, model, firmware), boot_id, received,
                    EcgChunk(first, channels, lead_off, tuple(samples)),
                )
            )  # fmt: skip
        return staged

    async def store_ecg_strip(self, new: NewReading, chunk_keys: tuple[int, ...]) -> int:
        """The strip becomes a reading and its chunks are consumed, in one transaction.

        A consumed chunk keeps its identity (samples dropped), so a late resend of it by the
        board is still recognised as a duplicate instead of starting a second copy of the strip.
        """
        sealed = self._keys.seal_resident(new.resident) if new.resident else None
        async with self._transaction():
            seq = await self._insert(new, sealed, _now_ms(), only_if_new=False)
            assert seq is not None
            await self._db.executemany(
                "UPDATE ecg_chunks SET consumed = 1, samples = x'' WHERE key = ?",
                [(key,) for key in chunk_keys],
            )
        return seq

    # check-ins: which resident a reading belongs to -------------------------------------------
    async def start_checkin(self, resident: ResidentRef, operator: str, at_ms: int) -> None:
        """A resident sits down at the kiosk; ends whoever was checked in before."""
        async with self._transaction():
            await self._db.execute("UPDATE checkins SET ended_ms = ? WHERE ended_ms IS NULL", (at_ms,))
            await self._db.execute(
                "INSERT INTO checkins (resident_sealed, operator, started_ms) VALUES (?, ?, ?)",
                (self._keys.seal_resident(resident), operator, at_ms),
            )

    async def end_checkin(self, at_ms: int) -> None:
        async with self._transaction():
            await self._db.execute("UPDATE checkins SET ended_ms = ? WHERE ended_ms IS NULL", (at_ms,))

    async def checkin_at(self, at_ms: int) -> tuple[ResidentRef, str] | None:
        """Who was checked in when a reading was *taken* (not when the gateway heard it: a board
        may hold readings while the gateway is away, and the next resident may be seated by then)."""
        async with (
            self._lock,
            self._db.execute(
                """SELECT resident_sealed, operator FROM checkins
                   WHERE started_ms <= ? AND (ended_ms IS NULL OR ended_ms > ?)
                   ORDER BY started_ms DESC LIMIT 1""",
                (at_ms, at_ms),
            ) as cursor,
        ):
            row = await cursor.fetchone()
        return (self._keys.unseal_resident(row[0]), row[1]) if row else None

    async def current_checkin(self) -> tuple[ResidentRef, str] | None:
        detail = await self.current_checkin_detail()
        return (detail[1], detail[2]) if detail else None

    # batches -----------------------------------------------------------------------------------
    def _reading_from_row(self, row: aiosqlite.Row | tuple) -> Reading:
        r = _StoredRow(*row)
        return Reading(
            gateway_id=self._gateway_id,
            seq=r.seq,
            device=DeviceRef(r.device_id, r.model, r.firmware),
            kind=r.kind,
            values=tuple(Measurement.from_cbor(m) for m in cbor2.loads(r.values)),
            measured_at_ms=r.measured_at_ms,
            time_quality=r.time_quality,
            received_mono_ms=r.received_mono_ms,
            resident=self._keys.unseal_resident(r.resident_sealed) if r.resident_sealed else None,
            operator=r.operator,
            flags=tuple(cbor2.loads(r.flags)),
            waveform=Waveform.from_cbor(cbor2.loads(r.waveform)) if r.waveform else None,
        )

    def _encoded_from_row(self, row: tuple[Any, ...]) -> tuple[int, bytes]:
        """(seq, the reading as the batch carries it), from a row of _QUEUED without building a
        `Reading`: measurements, flags and waveform are stored as CBOR already."""
        (seq, device_id, model, firmware, kind, values, measured_at_ms, time_quality, received_mono_ms,
         resident_sealed, operator, flags, waveform, _size, _priority) = row  # fmt: skip
        device = self._devices.get((device_id, model, firmware))
        if device is None:  # a gateway has a handful of devices: each DeviceRef is made once
            if len(self._devices) >= 1024:
                self._devices.clear()
            device = self._devices[device_id, model, firmware] = DeviceRef(device_id, model, firmware)
        return seq, encode_reading_parts(
            gateway_id=self._gateway_id,
            seq=seq,
            device=device,
            kind=kind,
            values_cbor=values,
            measured_at_ms=measured_at_ms,
            time_quality=time_quality,
            received_mono_ms=received_mono_ms,
            resident=self._keys.unseal_resident(resident_sealed) if resident_sealed else None,
            operator=operator,
            flags_cbor=flags,
            waveform_cbor=waveform,
        )

    async def form_batches(self, max_readings: int) -> int:
        """Seal every stored reading into batches now, most urgent first; returns how many batches.
        (The sync engine forms one at a time, as the link takes them: `form_batch`.)"""
        made = 0
        while await self.form_batch(max_readings) is not None:
            made += 1
        return made

    async def form_batch(
        self,
        max_readings: int,
        *,
        max_bytes: int | None = None,
        priorities: tuple[int, int] = (0, PRIORITY_WAVEFORM),
        accept: Callable[[bytes], bool] | None = None,
    ) -> PendingBatch | None:
        """Sign the most urgent stored readings (lowest priority class, then oldest) as the next
        batch of the chain, or return None when there are none in `priorities` (low, high).

        At most `max_readings`, and no more raw bytes than `max_bytes` (but always one reading).
        `accept` sees the signed message before anything is written: False (e.g. it would
        overrun today's byte budget) leaves the readings waiting and the chain as it was.
        """
        low, high = priorities
        async with self._transaction():
            rows = await self._db.execute_fetchall(_QUEUED, (low, high, max_readings))
            if not rows:
                return None
            taken: list[tuple[Any, ...]] = []
            size = 0
            for row in rows:
                if taken and max_bytes is not None and size + row[13] > max_bytes:
                    break
                taken.append(tuple(row))
                size += row[13]
            [(stored, prev_hash, last_number)] = await self._db.execute_fetchall(_CHAIN_HEAD)
            number = last_number + 1  # the table's next AUTOINCREMENT id, set explicitly
            encoded = sorted(self._encoded_from_row(row) for row in taken)  # by seq
            message, digest = encode_batch_of_encoded(
                self._gateway_id,
                encoded,
                prev_hash=GENESIS_HASH if prev_hash is None else bytes(prev_hash),
                signing_key=self._keys.signing,
                number=number,
                waiting=stored - len(encoded),
            )
            if accept is not None and not accept(message):
                return None  # nothing written: the transaction commits no change
            first, last = encoded[0][0], encoded[-1][0]
            await self._db.execute(
                """INSERT INTO batches (id, first_seq, last_seq, hash, message_sealed, created_at_ms,
                       readings) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (number, first, last, digest, self._keys.seal(message, b"batch"), _now_ms(), len(encoded)),
            )
            # Per run of consecutive sequences, not per reading: one statement for a backlog's
            # batch, where a statement per row added a third to the rows' own update.
            cursor = await self._db.executemany(
                _MARK_BATCHED,
                [
                    (number, run_first, run_last)
                    for run_first, run_last in seq_ranges(seq for seq, _ in encoded)
                ],
            )
            if cursor.rowcount != len(encoded):  # the runs hold exactly the rows read: never seen
                raise RuntimeError(f"batch {number}: {cursor.rowcount} readings marked of {len(encoded)}")
            moved: Counter[tuple[str, int]] = Counter()
            for row in taken:
                moved["stored", row[14]] -= 1
                moved["batched", row[14]] += 1
            await self._adjust_counts(moved)
            await self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_batch_hash', ?)", (digest,)
            )
        return PendingBatch(number, first, last, digest, message, len(encoded))

    async def pending_batches(self, limit: int) -> list[PendingBatch]:
        """Formed batches the bridge has not acked, in chain order (the order they must arrive)."""
        async with (
            self._lock,
            self._db.execute(
                """SELECT id, first_seq, last_seq, hash, message_sealed, readings
                   FROM batches WHERE state = 'pending' ORDER BY id LIMIT ?""",
                (limit,),
            ) as cursor,
        ):
            rows = await cursor.fetchall()
        return [
            PendingBatch(row[0], row[1], row[2], bytes(row[3]), self._keys.unseal(row[4], b"batch"), row[5])
            for row in rows
        ]

    async def mark_acked(self, head_hash: bytes) -> int | None:
        """Apply the bridge's ack: it holds the batch `head_hash` and, the chain being in order,
        every batch before it. Returns the readings newly marked synced, or None when `head_hash`
        is none of this gateway's pending or acked batches (the genesis hash, or pruned long ago)."""
        now = _now_ms()
        async with self._transaction():
            async with self._db.execute("SELECT id FROM batches WHERE hash = ?", (head_hash,)) as cursor:
                row = await cursor.fetchone()
            if row is None:
                return None
            (head_id,) = row
            moving = await self._count_by_priority(_IN_ACKED_BATCHES, (head_id,))
            cursor = await self._db.execute(
                f"UPDATE readings SET state = 'synced' WHERE {_IN_ACKED_BATCHES}", (head_id,)
            )
            count = cursor.rowcount
            await self._adjust_counts(
                {
                    **{("batched", p): -n for p, n in moving.items()},
                    **{("synced", p): n for p, n in moving.items()},
                }
            )
            await self._db.execute(
                "UPDATE batches SET state = 'acked', acked_at_ms = ? WHERE id <= ? AND state = 'pending'",
                (now, head_id),
            )
            if count:
                await self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_synced_at_ms', ?)", (now,)
                )
        return count

    async def correct_unsynced_time(self, bridge_ms: int, mono_ms: int, after_seq: int) -> tuple[int, int]:
        """Put the bridge's clock on readings stamped by this gateway's unsynced clock.

        The bridge's time was `bridge_ms` when this boot's monotonic clock read `mono_ms`. A
        reading received at monotonic `received_mono_ms` was therefore received at
        `bridge_ms - (mono_ms - received_mono_ms)`, while our wall clock said `stored_at_ms`;
        its measured-at moves by the difference and its time quality becomes `bridge`. Only
        readings of this boot (monotonic time means nothing across a reboot), not yet in a batch
        (a signed batch never changes), after `after_seq`. Returns (corrected, newest seq seen).
        """
        async with self._transaction():
            async with self._db.execute(
                _CORRECT_TIMES, (bridge_ms, mono_ms, after_seq, self.boot_id)
            ) as cursor:
                corrected = cursor.rowcount
            async with self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM readings") as cursor:
                (newest,) = await cursor.fetchone()  # type: ignore[misc]
        return corrected, int(newest)

    async def add_link_usage(self, day: str, nbytes: int) -> int:
        """Count bytes sent or received over the uplink on `day` (local date); returns the day's
        total. Durable, so a restart cannot reset a metered link's budget."""
        async with self._transaction():
            await self._db.execute(
                """INSERT INTO link_usage (day, bytes) VALUES (?, ?)
                   ON CONFLICT (day) DO UPDATE SET bytes = bytes + excluded.bytes""",
                (day, nbytes),
            )
            async with self._db.execute("SELECT bytes FROM link_usage WHERE day = ?", (day,)) as cursor:
                (total,) = await cursor.fetchone()  # type: ignore[misc]
        return int(total)

    async def link_usage(self, day: str) -> int:
        async with (
            self._lock,
            self._db.execute("SELECT bytes FROM link_usage WHERE day = ?", (day,)) as cursor,
        ):
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def prune_synced(self, before_ms: int) -> PruneResult:
        """Delete what the bridge acked before `before_ms`: synced readings, their batches, used
        ECG chunks, old rejections. Never a reading that is not synced, and never the newest
        acked batch (its hash chains the next batch)."""
        async with self._transaction():
            async with self._db.execute(
                "SELECT COALESCE(MAX(id), 0) FROM batches WHERE state = 'acked'"
            ) as cursor:
                (newest,) = await cursor.fetchone()  # type: ignore[misc]
            leaving = await self._count_by_priority(_IN_PRUNABLE_BATCHES, (before_ms, newest))
            cursor = await self._db.execute(
                f"DELETE FROM readings WHERE {_IN_PRUNABLE_BATCHES}", (before_ms, newest)
            )
            readings = cursor.rowcount
            await self._adjust_counts({("synced", p): -n for p, n in leaving.items()})
            async with self._db.execute(
                "DELETE FROM batches WHERE state = 'acked' AND acked_at_ms < ? AND id < ?",
                (before_ms, newest),
            ) as cursor:
                batches = cursor.rowcount
            async with self._db.execute(
                "DELETE FROM ecg_chunks WHERE consumed = 1 AND received_at_ms < ?", (before_ms,)
            ) as cursor:
                chunks = cursor.rowcount
            await self._db.execute("DELETE FROM rejections WHERE at_ms < ?", (before_ms,))
            await self._db.execute(
                "DELETE FROM link_usage WHERE day < date(? / 1000, 'unixepoch', '-1 day')", (before_ms,)
            )
        return PruneResult(readings, batches, chunks)

    async def status(self) -> OutboxStatus:
        async with self._lock:
            return await self._status()

    async def _status(self) -> OutboxStatus:
        counts = {"stored": 0, "batched": 0, "synced": 0}
        async with self._db.execute("SELECT state, SUM(n) FROM reading_counts GROUP BY state") as cursor:
            for state, count in await cursor.fetchall():
                counts[state] = count
        async with self._db.execute("SELECT COUNT(*) FROM batches WHERE state = 'pending'") as cursor:
            (pending,) = await cursor.fetchone()  # type: ignore[misc]
        # From the acked batches, not the readings: synced readings are pruned after a while.
        async with self._db.execute(
            "SELECT COALESCE(MAX(last_seq), 0) FROM batches WHERE state = 'acked'"
        ) as cursor:
            (last_synced,) = await cursor.fetchone()  # type: ignore[misc]
        async with self._db.execute("SELECT value FROM meta WHERE key = 'last_synced_at_ms'") as cursor:
            row = await cursor.fetchone()
        async with self._db.execute("SELECT COUNT(*) FROM rejections") as cursor:
            (rejections,) = await cursor.fetchone()  # type: ignore[misc]
        async with self._db.execute(
            "SELECT COALESCE(SUM(n), 0) FROM reading_counts WHERE state = 'stored' AND priority = ?",
            (PRIORITY_WAVEFORM,),
        ) as cursor:
            (waveforms_waiting,) = await cursor.fetchone()  # type: ignore[misc]
        return OutboxStatus(
            stored=counts["stored"],
            batched=counts["batched"],
            synced=counts["synced"],
            pending_batches=pending,
            last_synced_seq=last_synced,
            last_synced_at_ms=int(row[0]) if row else None,
            rejections=rejections,
            waveforms_waiting=waveforms_waiting,
        )

    async def recent_readings(self, limit: int = 20) -> list[tuple[Reading, str]]:
        async with (
            self._lock,
            self._db.execute(
                """SELECT seq, device_id, device_model, device_firmware, kind, measurements,
                          measured_at_ms, time_quality, received_mono_ms, resident_sealed, operator,
                          flags, waveform, state
                   FROM readings ORDER BY seq DESC LIMIT ?""",
                (limit,),
            ) as cursor,
        ):
            rows = await cursor.fetchall()
        return [(self._reading_from_row(row[:-1]), row[-1]) for row in rows]

    # kiosk UI queries ---
    # For the kiosk screen (gateway/api.py): readings without their waveform (has_waveform says
    # whether one is kept), new readings after a sequence, one resident's readings, the
    # residents seen here. Residents are sealed with a random nonce, so finding one means
    # unsealing rows: the check-ins table is small, and readings are scanned newest first, capped.
    _UI_COLUMNS = """seq, device_id, device_model, device_firmware, kind, measurements, measured_at_ms,
                     time_quality, received_mono_ms, resident_sealed, operator, flags, NULL,
                     state, waveform IS NOT NULL"""

    def _ui_rows(self, rows: Sequence[Sequence[object]]) -> list[tuple[Reading, str, bool]]:
        return [(self._reading_from_row(tuple(row[:13])), str(row[13]), bool(row[14])) for row in rows]

    async def latest_seq(self) -> int:
        """The newest reading's sequence (0 when there is none): where a live view starts."""
        async with self._lock, self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM readings") as cursor:
            (seq,) = await cursor.fetchone()  # type: ignore[misc]
        return int(seq)

    async def readings_after(self, after_seq: int, limit: int = 50) -> list[tuple[Reading, str, bool]]:
        """Readings stored after `after_seq`, oldest first: (reading, state, has_waveform)."""
        async with (
            self._lock,
            self._db.execute(
                f"SELECT {self._UI_COLUMNS} FROM readings WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ) as cursor,
        ):
            rows = await cursor.fetchall()
        return self._ui_rows(rows)

    async def reading(self, seq: int) -> Reading | None:
        """One reading with its waveform (the ECG strip to draw)."""
        async with (
            self._lock,
            self._db.execute(
                """SELECT seq, device_id, device_model, device_firmware, kind, measurements,
                          measured_at_ms, time_quality, received_mono_ms, resident_sealed, operator,
                          flags, waveform
                   FROM readings WHERE seq = ?""",
                (seq,),
            ) as cursor,
        ):
            row = await cursor.fetchone()
        return self._reading_from_row(tuple(row)) if row else None

    async def resident_readings(
        self, resident: ResidentRef, *, limit: int = 50, scan: int = 5000
    ) -> list[tuple[Reading, str, bool]]:
        """The resident's readings on this gateway, newest first, among the newest `scan`
        readings that name a resident (retention removes older synced ones anyway)."""
        async with (
            self._lock,
            self._db.execute(
                """SELECT seq, resident_sealed FROM readings WHERE resident_sealed IS NOT NULL
                   ORDER BY seq DESC LIMIT ?""",
                (scan,),
            ) as cursor,
        ):
            candidates = await cursor.fetchall()
        seqs = [seq for seq, sealed in candidates if self._keys.unseal_resident(sealed) == resident][:limit]
        if not seqs:
            return []
        async with (
            self._lock,
            self._db.execute(
                f"""SELECT {self._UI_COLUMNS} FROM readings
                    WHERE seq IN ({", ".join("?" * len(seqs))}) ORDER BY seq DESC""",
                seqs,
            ) as cursor,
        ):
            rows = await cursor.fetchall()
        return self._ui_rows(rows)

    async def seen_residents(self) -> list[tuple[int, ResidentRef, int, int]]:
        """Every resident checked in on this gateway, newest visit first: (id of their latest
        check-in, resident, visits, latest visit's start in ms)."""
        async with (
            self._lock,
            self._db.execute(
                "SELECT id, resident_sealed, started_ms FROM checkins ORDER BY id DESC"
            ) as cursor,
        ):
            rows = await cursor.fetchall()
        seen: dict[ResidentRef, list[int]] = {}
        for checkin_id, sealed, started_ms in rows:
            resident = self._keys.unseal_resident(sealed)
            if resident in seen:
                seen[resident][1] += 1
            else:
                seen[resident] = [checkin_id, 1, started_ms]
        return [(entry[0], resident, entry[1], entry[2]) for resident, entry in seen.items()]

    async def checkin_resident(self, checkin_id: int) -> ResidentRef | None:
        """The resident of one check-in (how the kiosk checks in a resident found by a search
        without the full number ever reaching the browser)."""
        async with (
            self._lock,
            self._db.execute("SELECT resident_sealed FROM checkins WHERE id = ?", (checkin_id,)) as cursor,
        ):
            row = await cursor.fetchone()
        return self._keys.unseal_resident(row[0]) if row else None

    async def current_checkin_detail(self) -> tuple[int, ResidentRef, str, int] | None:
        """The open check-in: (id, resident, operator, started_ms), or None."""
        async with (
            self._lock,
            self._db.execute(
                """SELECT id, resident_sealed, operator, started_ms FROM checkins
                   WHERE ended_ms IS NULL ORDER BY id DESC LIMIT 1"""
            ) as cursor,
        ):
            row = await cursor.fetchone()
        return (row[0], self._keys.unseal_resident(row[1]), row[2], row[3]) if row else None

    async def rejections_after(self, after_id: int, limit: int = 20) -> list[tuple[int, int, str, str]]:
        """Refusals recorded after `after_id`: (id, at_ms, source, reason), oldest first."""
        async with (
            self._lock,
            self._db.execute(
                "SELECT id, at_ms, source, reason FROM rejections WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ) as cursor,
        ):
            rows = await cursor.fetchall()
        return [(int(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in rows]

    async def latest_rejection_id(self) -> int:
        async with self._lock, self._db.execute("SELECT COALESCE(MAX(id), 0) FROM rejections") as cursor:
            (last,) = await cursor.fetchone()  # type: ignore[misc]
        return int(last)
