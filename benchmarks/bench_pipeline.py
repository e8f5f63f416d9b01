"""Throughput of each stage of a reading's path, each next to a raw baseline measured in the same run.

    .venv/bin/python benchmarks/bench_pipeline.py [--quick] [--dir DIR]

The project's rule: speed targets are checked here, by figures and ratios against a raw baseline
on the same machine in the same run, never by timed assertions in tests (a loaded CI machine
would make those flaky, and an absolute number means nothing without the machine's own floor).

Stages: the link codec (CPython and the MicroPython unix port), batch encode + sign, the
gateway outbox on a real SQLite file, and the bridge's receive (verify, store, map to FHIR).
Every figure is printed with `cost ×` = our time per item / the raw baseline's time per item,
so a cost of 3.0 means the stage does three times the work of its bare minimum. Functional
checks (round trips, stored counts) raise; timings never do. Read benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing
import os
import platform
import random
import re
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiosqlite
import cbor2
import cryptography
import zstandard
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table

from cloud_bridge import fhir_map, fhir_stage, fhir_store
from cloud_bridge import store as bridge_store
from cloud_bridge.fhir_map import map_reading
from cloud_bridge.receive import cyclic_gc_paused, receive_batch
from contract import wire
from contract.wire import (
    GENESIS_HASH,
    RESIDENT_ID_SYSTEMS,
    DeviceRef,
    Measurement,
    Reading,
    ResidentRef,
    decode_batch,
    encode_batch,
    peek_batch_gateway,
    up_topic,
)
from firmware import kiosk_link as link
from gateway import store as outbox_store
from gateway.keys import GatewayKeys, create_keys
from gateway.store import SCHEMA as OUTBOX_SCHEMA
from gateway.store import NewReading, Outbox
from gateway.sync_policy import sync_priority
from simulators.chain import micropython_binary

BENCH_DIR = Path(__file__).resolve().parent
FIRMWARE_DIR = BENCH_DIR.parent / "firmware"
GATEWAY_ID = "gw-bench"
DEVICE = DeviceRef("bp-0001", "KX-BP100", "0.1.0")
BATCH_SIZE = 500
UART_BAUD = 115_200  # the BP board's link; 10 bits on the wire per byte (8N1)
# Same level as contract.wire uses, so the zstd baseline compresses exactly as encode_batch does.
ZSTD_LEVEL = getattr(wire, "_ZSTD_LEVEL", 3)


@dataclass(frozen=True)
class Sizes:
    """How much work each stage does; --quick shrinks it so the whole run takes seconds."""

    codec_frames: int
    mp_frames: int
    batch_rounds: int
    outbox_readings: int
    bridge_batches: int
    rounds: int
    bridge_stored: int = 0  # readings the bridge holds before the "at scale" row is timed (0: no row)


FULL = Sizes(
    codec_frames=20_000,
    mp_frames=20_000,
    batch_rounds=20,
    outbox_readings=10_000,
    bridge_batches=10,
    rounds=5,
    bridge_stored=100_000,
)
QUICK = Sizes(
    codec_frames=3_000, mp_frames=3_000, batch_rounds=3, outbox_readings=1_000, bridge_batches=2, rounds=3
)


@dataclass(frozen=True)
class Figure:
    """One row of the results table: our rate next to its raw baseline's rate."""

    stage: str
    measured: str
    rate: float
    unit: str
    baseline: str
    baseline_rate: float | None

    @property
    def cost(self) -> float | None:
        """Our time per item over the baseline's time per item (higher = more overhead)."""
        return self.baseline_rate / self.rate if self.baseline_rate else None


def best_seconds(run: Callable[[], object], rounds: int) -> float:
    """Fastest of `rounds` runs: the least disturbed by the rest of the machine."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


# ---------------------------------------------------------------- synthetic readings


def make_readings(count: int, first_seq: int, rng: random.Random) -> list[Reading]:
    """Plausible, varied BP readings of distinct residents (identical ones would flatter zstd)."""
    readings = []
    measured = 1795564800000 + first_seq * 60_000
    for seq in range(first_seq, first_seq + count):
        measured += rng.randint(30_000, 900_000)
        systolic = rng.randint(95, 185)
        values = [
            Measurement("systolic", Decimal(systolic), "mm[Hg]"),
            Measurement("diastolic", Decimal(rng.randint(55, min(systolic - 20, 115))), "mm[Hg]"),
            Measurement("pulse_rate", Decimal(rng.randint(50, 110)), "/min"),
        ]
        readings.append(
            Reading(
                gateway_id=GATEWAY_ID,
                seq=seq,
                device=DEVICE,
                kind="bp",
                values=tuple(values),
                measured_at_ms=measured,
                time_quality="ntp",
                received_mono_ms=measured - 1795564000000 + rng.randint(50, 400),
                resident=ResidentRef("health-record", f"330781-2026-{rng.randint(0, 999_999):06d}"),
                operator=rng.choice(("doctor-wang", "doctor-li", "nurse-zhao")),
                flags=("irregular_pulse",) if rng.random() < 0.05 else (),
            )
        )
    return readings


def new_reading_of(reading: Reading, link_seq: int) -> NewReading:
    """The same reading as ingest would hand it to the outbox (before it has a sequence)."""
    return NewReading(
        device=reading.device,
        boot_id=7,
        link_seq=link_seq,
        kind=reading.kind,
        values=reading.values,
        measured_at_ms=reading.measured_at_ms,
        time_quality=reading.time_quality,
        received_mono_ms=reading.received_mono_ms,
        resident=reading.resident,
        operator=reading.operator,
        flags=reading.flags,
    )


def _json_number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def verbose_json(reading: Reading) -> bytes:
    """The reading as a typical IoT JSON message with full key names: the size we compare against."""
    return json.dumps(
        {
            "gateway_id": reading.gateway_id,
            "sequence": reading.seq,
            "device": {
                "id": reading.device.id,
                "model": reading.device.model,
                "firmware_version": reading.device.firmware,
            },
            "kind": reading.kind,
            "values": [
                {"name": m.name, "value": _json_number(m.value), "unit": m.unit} for m in reading.values
            ],
            "measured_at_ms": reading.measured_at_ms,
            "time_quality": reading.time_quality,
            "received_monotonic_ms": reading.received_mono_ms,
            "resident": (
                {"system": RESIDENT_ID_SYSTEMS[reading.resident.system], "value": reading.resident.value}
                if reading.resident
                else None
            ),
            "operator": reading.operator,
            "flags": list(reading.flags),
        }
    ).encode()


# ---------------------------------------------------------------- 1. link codec

BP_PAYLOAD = link.encode_reading(
    link.KIND_BP,
    link.FLAG_IRREGULAR_PULSE,
    1795564800,
    (
        (link.FIELD_SYSTOLIC, 128, 0),
        (link.FIELD_DIASTOLIC, 82, 0),
        (link.FIELD_MEAN_ARTERIAL, 97, 0),
        (link.FIELD_PULSE_RATE, 71, 0),
    ),
)


def codec_loop(count: int) -> None:
    """What board and gateway do per reading: frame it, cut it from the byte stream, check it."""
    splitter = link.FrameSplitter()
    decoded = 0
    for seq in range(count):
        for encoded in splitter.feed(link.encode_frame(link.MSG_READING, seq, BP_PAYLOAD)):
            if link.decode_frame(encoded)[2] != BP_PAYLOAD:
                raise RuntimeError("link codec round trip changed the payload")
            decoded += 1
    if decoded != count:
        raise RuntimeError(f"splitter returned {decoded} frames for {count}")


def raw_frame_loop(count: int) -> None:
    """The floor: the same header and payload with struct and C zlib.crc32, no stuffing, no split."""
    for seq in range(count):
        body = struct.pack("<BH", link.MSG_READING, seq & 0xFFFF) + BP_PAYLOAD
        wire_bytes = body + struct.pack("<I", zlib.crc32(body))
        struct.unpack_from("<BH", wire_bytes)
        if struct.unpack_from("<I", wire_bytes, len(wire_bytes) - 4)[0] != zlib.crc32(wire_bytes[:-4]):
            raise RuntimeError("raw CRC mismatch")


def bench_codec(sizes: Sizes) -> tuple[list[Figure], list[str]]:
    n = sizes.codec_frames
    ours = n / best_seconds(lambda: codec_loop(n), sizes.rounds)
    raw = n / best_seconds(lambda: raw_frame_loop(n), sizes.rounds)
    frame_len = len(link.encode_frame(link.MSG_READING, 1, BP_PAYLOAD))
    line_rate = UART_BAUD / 10 / frame_len
    figures = [
        Figure(
            "1 link codec",
            "encode+split+decode, CPython",
            ours,
            "frames/s",
            "struct + zlib.crc32 (CPython)",
            raw,
        )
    ]
    notes = [
        f"A BP READING frame is {frame_len} B on the wire; a {UART_BAUD} baud UART carries at most "
        f"{line_rate:,.0f} of them per second, so the CPython codec at full UART rate uses "
        f"{100 * line_rate / ours:.1f} % of one core.",
    ]
    mp_figure, mp_notes = bench_codec_micropython(sizes)
    if mp_figure is not None:
        figures.append(mp_figure)
    return figures, notes + mp_notes


def bench_codec_micropython(sizes: Sizes) -> tuple[Figure | None, list[str]]:
    """Same loop on the MicroPython unix port, in a child process; its output is `key value` lines."""
    try:
        result = subprocess.run(
            [
                micropython_binary(),
                str(BENCH_DIR / "mp_link_codec.py"),
                str(FIRMWARE_DIR),
                str(sizes.mp_frames),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, [f"MicroPython: not measured ({exc})."]
    found = dict(re.findall(r"^(\w+) (\S+)$", result.stdout, flags=re.MULTILINE))
    if "codec_frames_per_s" not in found:
        return None, [f"MicroPython: unexpected output {result.stdout!r}."]
    raw = float(found["raw_frames_per_s"]) if "raw_frames_per_s" in found else None
    figure = Figure(
        "1 link codec",
        f"same loop, MicroPython {found.get('version', '?')} unix port",
        float(found["codec_frames_per_s"]),
        "frames/s",
        "struct + binascii.crc32 (MicroPython)",
        raw,
    )
    notes = [
        f"MicroPython heap per frame: {found.get('heap_bytes_per_encode', '?')} B for encode_frame "
        f"alone (the board's side), {found.get('heap_bytes_per_frame', '?')} B for the whole "
        f"encode+split+decode loop; GC heap {int(found.get('heap_size', 0)) // 1024} KiB.",
        f"micropython.mem_peak() = {int(found.get('mem_peak', 0)):,} B: on the unix port GC sweeps "
        "are not subtracted, so this is ≈ all bytes allocated during the run, not a high-water mark.",
    ]
    return figure, notes


# ---------------------------------------------------------------- 2. batch encode + sign


def bench_batch(sizes: Sizes, rng: random.Random) -> tuple[list[Figure], list[str], float]:
    readings = make_readings(BATCH_SIZE, 1, rng)
    key = Ed25519PrivateKey.generate()
    message, _ = encode_batch(readings, prev_hash=GENESIS_HASH, signing_key=key, number=1)
    payload = cbor2.loads(message)["p"]
    body = cbor2.dumps([r.to_cbor_map() for r in readings], canonical=True)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)

    rounds = sizes.batch_rounds
    ours = best_seconds(
        lambda: encode_batch(readings, prev_hash=GENESIS_HASH, signing_key=key, number=1), rounds
    )
    sign = best_seconds(lambda: key.sign(payload), rounds * 20)
    compress = best_seconds(lambda: compressor.compress(body), rounds)
    figure = Figure(
        "2 batch",
        "encode_batch of 500 (CBOR + zstd + Ed25519)",
        BATCH_SIZE / ours,
        "readings/s",
        "Ed25519 sign + zstd of the same bytes",
        BATCH_SIZE / (sign + compress),
    )
    json_sizes = [len(verbose_json(r)) for r in readings]
    notes = [
        f"Per batch of {BATCH_SIZE}: encode_batch {ours * 1e3:.2f} ms = CBOR map building "
        f"{(ours - sign - compress) * 1e3:.2f} ms + zstd {compress * 1e3:.2f} ms "
        f"+ sign {sign * 1e3:.3f} ms (the sign is one per batch, not one per reading).",
    ]
    size_rows = [
        ("verbose JSON, one message per reading", statistics.fmean(json_sizes)),
        ("CBOR reading (canonical, short keys)", len(body) / BATCH_SIZE),
        (
            f"signed batch of {BATCH_SIZE}, zstd level {ZSTD_LEVEL} (whole MQTT message)",
            len(message) / BATCH_SIZE,
        ),
    ]
    notes.append(
        "Bytes per BP reading: "
        + "; ".join(f"{name}: {size:.1f} B" for name, size in size_rows)
        + f" → the batch is {size_rows[0][1] / size_rows[2][1]:.0f}× smaller than JSON on the 4G link."
    )
    return [figure], notes, BATCH_SIZE / ours


# ---------------------------------------------------------------- 3. gateway outbox


def raw_durable_inserts(path: Path, count: int, row_bytes: int) -> float:
    """The floor: one INSERT + COMMIT per row, WAL + synchronous=FULL, nothing else. Returns seconds."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE raw (seq INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL)")
        blob = os.urandom(row_bytes)
        start = time.perf_counter()
        for _ in range(count):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO raw (body) VALUES (?)", (blob,))
            conn.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        conn.close()


def raw_batched_ingest(path: Path, count: int, row_bytes: int, key: Ed25519PrivateKey) -> float:
    """The floor of ingesting signed, durable readings in batches: per 500 rows one executemany
    INSERT + COMMIT (WAL, synchronous=FULL) and one Ed25519 signature over their bytes."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE raw (seq INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL)")
        blobs = [(os.urandom(row_bytes),) for _ in range(count)]
        start = time.perf_counter()
        for first in range(0, count, BATCH_SIZE):
            chunk = blobs[first : first + BATCH_SIZE]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO raw (body) VALUES (?)", chunk)
            conn.execute("COMMIT")
            key.sign(b"".join(blob for (blob,) in chunk))
        return time.perf_counter() - start
    finally:
        conn.close()


async def bulk_ingest_run(data_dir: Path, readings: list[NewReading]) -> float:
    """add_readings in calls of 500 (one durable commit each), then form_batches(500): readings
    stored durably, signed and chained, ready to send. Returns seconds."""
    create_keys(data_dir)
    box = await Outbox.open(data_dir / "gateway.db", GATEWAY_ID, GatewayKeys.load(data_dir))
    try:
        start = time.perf_counter()
        for first in range(0, len(readings), BATCH_SIZE):
            seqs = await box.add_readings(readings[first : first + BATCH_SIZE])
            if None in seqs:
                raise RuntimeError("outbox took a fresh reading for a duplicate")
        await box.form_batches(BATCH_SIZE)
        elapsed = time.perf_counter() - start
        if (await box.status()).batched != len(readings):
            raise RuntimeError("bulk ingest did not batch every reading")
        return elapsed
    finally:
        await box.close()


def outbox_rows(news: list[NewReading], keys: GatewayKeys, boot: str) -> list[tuple[object, ...]]:
    """The rows add_readings writes (store._COLUMNS), encoded and sealed beforehand."""
    return [
        (
            new.device.id, new.boot_id, new.link_seq, new.device.model, new.device.firmware, new.kind,
            wire.measurements_cbor(new.values), new.measured_at_ms, new.time_quality, new.received_mono_ms,
            keys.seal_resident(new.resident) if new.resident else None, new.operator,
            wire.flags_cbor(new.flags), None, time.time_ns() // 1_000_000,
            sync_priority(new.kind, new.flags, False), boot,
        )
        for new in news
    ]  # fmt: skip


def schema_sql_ingest(path: Path, rows: list[tuple[object, ...]], message_bytes: int) -> float:
    """The outbox schema's SQL alone: add_readings' and form_batches' own statements (from
    gateway.store) on plain sqlite3, same pragmas, in calls and batches of 500, on rows encoded and
    sealed beforehand, with a random message of a real batch's size for each batch. No AES, CBOR,
    zstd, signature or aiosqlite: what is left is what the schema's per-reading rows and indexes
    cost (the row, the unique and queue indexes, the state change when batched). Returns seconds."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(OUTBOX_SCHEMA)
        message = os.urandom(message_bytes)
        calls = []  # per call: its look-up, its rows with their sequences, its counts by priority
        for first in range(0, len(rows), BATCH_SIZE):
            chunk = rows[first : first + BATCH_SIZE]
            by_priority: dict[object, int] = {}
            for row in chunk:
                by_priority[row[15]] = by_priority.get(row[15], 0) + 1
            calls.append(
                (
                    (chunk[0][0], chunk[0][1], *(row[2] for row in chunk)),
                    [value for seq, row in enumerate(chunk, start=first + 1) for value in (seq, *row)],
                    [("stored", priority, n) for priority, n in by_priority.items()],
                )
            )
        width = 1 + outbox_store._ROW_VALUES  # a row's sequence and its values
        start = time.perf_counter()
        first = 0
        for lookup, params, counts in calls:
            conn.execute("BEGIN IMMEDIATE")
            if conn.execute(outbox_store.stored_link_seqs_sql(len(lookup) - 2), lookup).fetchall():
                raise RuntimeError("schema SQL run found a fresh reading stored")
            if conn.execute(outbox_store._LAST_SEQ).fetchone() != (first,):
                raise RuntimeError("schema SQL run: the sequence is not where the rows start")
            conn.execute(outbox_store._insert_readings_sql(len(params) // width), params)
            conn.executemany(outbox_store._ADJUST_COUNT, counts)
            conn.execute("COMMIT")
            first += len(params) // width
        while True:
            conn.execute("BEGIN IMMEDIATE")
            queued = conn.execute(outbox_store._QUEUED, (0, 2, BATCH_SIZE)).fetchall()
            if not queued:
                conn.execute("COMMIT")
                break
            _, _, last_number = conn.execute(outbox_store._CHAIN_HEAD).fetchone()
            number = last_number + 1
            seqs = sorted(row[0] for row in queued)
            conn.execute(
                """INSERT INTO batches (id, first_seq, last_seq, hash, message_sealed, created_at_ms,
                       readings) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (number, seqs[0], seqs[-1], os.urandom(32), message, 0, len(seqs)),
            )
            conn.executemany(outbox_store._MARK_BATCHED, [(number, a, b) for a, b in wire.seq_ranges(seqs)])
            by_priority = {}
            for row in queued:
                by_priority[row[-1]] = by_priority.get(row[-1], 0) + 1
            conn.executemany(
                outbox_store._ADJUST_COUNT,
                [(state, priority, sign * n) for priority, n in by_priority.items()
                 for state, sign in (("stored", -1), ("batched", 1))],
            )  # fmt: skip
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_batch_hash', ?)", (b"h" * 32,)
            )
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        (batched,) = conn.execute("SELECT COUNT(*) FROM readings WHERE state = 'batched'").fetchone()
        if batched != len(rows):
            raise RuntimeError(f"schema SQL run batched {batched} of {len(rows)}")
        return elapsed
    finally:
        conn.close()


def average_message_bytes(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        (size,) = conn.execute("SELECT AVG(LENGTH(message_sealed)) FROM batches").fetchone()
    return int(size)


def row_encoding(new: NewReading, keys: GatewayKeys) -> tuple[bytes, bytes | None, bytes]:
    """The CPU work add_reading does besides SQL: CBOR of values and flags, AES-GCM of the resident."""
    return (
        cbor2.dumps([[m.name, m.value, m.unit] for m in new.values]),
        keys.seal_resident(new.resident) if new.resident else None,
        cbor2.dumps(list(new.flags)),
    )


def same_schema_inserts(path: Path, news: list[NewReading], keys: GatewayKeys) -> float:
    """add_reading's own SQL (look-up, insert, commit) on plain sqlite3, values sealed beforehand.

    Splits the outbox's cost into SQLite's share (its indexes write more pages per commit) and
    the rest (asyncio + aiosqlite's thread hops, AES-GCM, CBOR). Returns seconds.
    """
    rows = []
    for new in news:
        values, sealed, flags = row_encoding(new, keys)
        rows.append(
            (
                new.device.id,
                new.boot_id,
                new.link_seq,
                new.device.model,
                new.device.firmware,
                new.kind,
                values,
                new.measured_at_ms,
                new.time_quality,
                new.received_mono_ms,
                sealed,
                new.operator,
                flags,
                0,
            )
        )
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(OUTBOX_SCHEMA)
        start = time.perf_counter()
        for row in rows:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "SELECT 1 FROM readings WHERE device_id = ? AND boot_id = ? AND link_seq = ?", row[:3]
            ).fetchone()
            conn.execute(
                """INSERT INTO readings (device_id, boot_id, link_seq, device_model,
                       device_firmware, kind, measurements, measured_at_ms, time_quality,
                       received_mono_ms, resident_sealed, operator, flags, stored_at_ms)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                row,
            )
            conn.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        conn.close()


async def outbox_run(data_dir: Path, readings: list[NewReading]) -> tuple[float, float, int]:
    """Durable add_reading for each, then form_batches(500) -> (add s, batch s, batches made)."""
    create_keys(data_dir)
    keys = GatewayKeys.load(data_dir)
    box = await Outbox.open(data_dir / "gateway.db", GATEWAY_ID, keys)
    try:
        start = time.perf_counter()
        for new in readings:
            if await box.add_reading(new) is None:
                raise RuntimeError("outbox took a fresh reading for a duplicate")
        added = time.perf_counter() - start
        start = time.perf_counter()
        made = await box.form_batches(BATCH_SIZE)
        batched = time.perf_counter() - start
        status = await box.status()
        if status.batched != len(readings):
            raise RuntimeError(f"form_batches batched {status.batched} of {len(readings)}")
        return added, batched, made
    finally:
        await box.close()


async def aiosqlite_round_trip(count: int) -> float:
    """Seconds for one awaited statement on aiosqlite's worker thread, with no I/O behind it."""
    db = await aiosqlite.connect(":memory:", isolation_level=None)
    try:
        start = time.perf_counter()
        for _ in range(count):
            await db.execute("SELECT 1")
        return (time.perf_counter() - start) / count
    finally:
        await db.close()


def average_row_bytes(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        (size,) = conn.execute(
            # + 80: the text and integer columns, roughly.
            "SELECT AVG(LENGTH(measurements) + LENGTH(resident_sealed) + LENGTH(flags) + 80) FROM readings"
        ).fetchone()
    return int(size)


def bench_outbox(
    sizes: Sizes, rng: random.Random, work: Path, encode_rate: float
) -> tuple[list[Figure], list[str]]:
    n = sizes.outbox_readings
    news = [new_reading_of(r, i) for i, r in enumerate(make_readings(n, 1, rng), start=1)]
    added, batched, made = asyncio.run(outbox_run(work / "gw", news))
    row_bytes = average_row_bytes(work / "gw" / "gateway.db")
    raw = raw_durable_inserts(work / "raw.db", n, row_bytes)
    keys = GatewayKeys.load(work / "gw")
    same_schema = same_schema_inserts(work / "schema.db", news, keys)
    encode_cpu = best_seconds(lambda: [row_encoding(new, keys) for new in news], sizes.rounds)
    hop = asyncio.run(aiosqlite_round_trip(2_000))
    bulk = asyncio.run(bulk_ingest_run(work / "gw-bulk", news))
    raw_bulk = raw_batched_ingest(work / "raw-bulk.db", n, row_bytes, Ed25519PrivateKey.generate())
    schema_sql = schema_sql_ingest(
        work / "schema-sql.db",
        outbox_rows(news, keys, "bench-boot"),
        average_message_bytes(work / "gw-bulk" / "gateway.db"),
    )
    residual = (added - same_schema - encode_cpu) / n
    figures = [
        Figure(
            "3 gateway outbox",
            "add_reading, durable commit each",
            n / added,
            "readings/s",
            "sqlite3 INSERT + COMMIT per row, WAL, sync=FULL",
            n / raw,
        ),
        Figure(
            "3 gateway outbox",
            f"ingest: add_readings({BATCH_SIZE}) + form_batches (durable, sealed, signed)",
            n / bulk,
            "readings/s",
            f"sqlite3 executemany({BATCH_SIZE}) + COMMIT + Ed25519 sign per {BATCH_SIZE}",
            n / raw_bulk,
        ),
        Figure(
            "3 gateway outbox",
            "ingest's SQL alone: the outbox schema on plain sqlite3, rows pre-encoded, no crypto",
            n / schema_sql,
            "readings/s",
            f"sqlite3 executemany({BATCH_SIZE}) + COMMIT + Ed25519 sign per {BATCH_SIZE}",
            n / raw_bulk,
        ),
        Figure(
            "3 gateway outbox",
            f"form_batches({BATCH_SIZE}) (read, unseal, sign, seal, commit)",
            n / batched,
            "readings/s",
            "encode_batch alone (figure 2, no SQLite/AES)",
            encode_rate,
        ),
    ]
    notes = [
        f"Outbox: {n} readings in {added:.2f} s → {made} batches in {batched:.2f} s; "
        f"raw baseline rows are {row_bytes} B, like an outbox row.",
        f"add_reading per reading: {added / n * 1e6:.0f} µs = raw durable commit {raw / n * 1e6:.0f} µs "
        f"{(same_schema - raw) / n * 1e6:+.0f} µs for the outbox schema's look-up and indexes "
        f"+ {encode_cpu / n * 1e6:.0f} µs AES-GCM seal and CBOR "
        f"+ {residual * 1e6:.0f} µs asyncio and aiosqlite's thread hops (one hop costs {hop * 1e6:.0f} µs "
        f"here, so ≈ {residual / hop:.0f} per reading).",
        f"Ingest per reading: {bulk / n * 1e6:.1f} µs = raw {raw_bulk / n * 1e6:.1f} µs "
        f"{(schema_sql - raw_bulk) / n * 1e6:+.1f} µs for the outbox schema's SQL (a row of 17 columns, "
        f"its unique and queue indexes, the state change when batched, the counts) "
        f"{(bulk - schema_sql) / n * 1e6:+.1f} µs in Python (AES-GCM seal and unseal, CBOR, zstd, "
        f"signing, aiosqlite's thread hops): the schema's SQL alone runs at "
        f"{raw_bulk / schema_sql:.0%} of raw, the whole ingest at {raw_bulk / bulk:.0%}.",
    ]
    return figures, notes


# ---------------------------------------------------------------- 4. bridge receive


def receive_all(
    target: Path | str,
    messages: list[bytes],
    public_pem: str,
    now_ms: int,
    *,
    post_to_remote: bool = False,
    map_fhir: bool = True,
    untimed: int = 0,
) -> float:
    """Seconds for the bridge to receive every batch into a new store at `target` (a SQLite file or
    an empty PostgreSQL database). `post_to_remote`: each reading's transaction Bundle queued for
    the health community's server instead of written to the embedded store; `map_fhir` False:
    stored and acked, the FHIR left to the stage (`kiosk-bridge run --fhir-stage separate`).
    The first `untimed` batches are received before the clock starts (a store already in use)."""
    conn = bridge_store.connect(target)
    try:
        bridge_store.enrol_gateway(conn, GATEWAY_ID, public_pem, site="bench", kind="kiosk", now_ms=now_ms)
        start = time.perf_counter()
        for index, message in enumerate(messages):
            if index == untimed:
                start = time.perf_counter()
            outcome = receive_batch(
                conn, up_topic(GATEWAY_ID), message, now_ms=now_ms, post_to_remote=post_to_remote,
                map_fhir=map_fhir,
            )  # fmt: skip
            if outcome.stored != BATCH_SIZE or outcome.refusal is not None:
                raise RuntimeError(f"bridge stored {outcome.stored} of {BATCH_SIZE}: {outcome.refusal}")
        return time.perf_counter() - start
    finally:
        conn.close()


def stage_all(target: Path, total: int, now_ms: int) -> float:
    """Seconds for the FHIR stage to map and write every reading `receive_all(map_fhir=False)`
    left pending in the store at `target`."""
    conn = bridge_store.connect(target)
    try:
        start = time.perf_counter()
        done = 0
        while (mapped := fhir_stage.map_pending(conn, now_ms=now_ms, limit=BATCH_SIZE)) > 0:
            done += mapped
        elapsed = time.perf_counter() - start
        if done != total or fhir_stage.pending_count(conn) != 0:
            raise RuntimeError(f"FHIR stage mapped {done} of {total}")
        return elapsed
    finally:
        conn.close()


def public_pem_of(key: Ed25519PrivateKey) -> str:
    """The gateway public key as the bridge's registry enrols it."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def bench_bridge(
    sizes: Sizes, rng: random.Random, work: Path, postgres: str | None = None
) -> tuple[list[Figure], list[str]]:
    key = Ed25519PrivateKey.generate()
    public_pem = public_pem_of(key)
    messages: list[bytes] = []
    prev = GENESIS_HASH
    for index in range(sizes.bridge_batches):
        readings = make_readings(BATCH_SIZE, 1 + index * BATCH_SIZE, rng)
        message, prev = encode_batch(readings, prev_hash=prev, signing_key=key, number=index + 1)
        messages.append(message)
    total = BATCH_SIZE * len(messages)
    now_ms = time.time_ns() // 1_000_000

    def verify_all() -> None:
        for message in messages:
            _, payload, signature = peek_batch_gateway(message)
            key.public_key().verify(signature, payload)

    verify = best_seconds(verify_all, sizes.rounds)
    decode = best_seconds(lambda: [decode_batch(m, key.public_key()) for m in messages], sizes.rounds)
    batch = decode_batch(messages[0], key.public_key())
    signature = peek_batch_gateway(messages[0])[2]

    def map_all() -> list[fhir_map.TransactionEntry]:
        return [
            entry
            for reading in batch.readings
            for entry in map_reading(
                reading, batch_hash=batch.hash, gateway_signature=signature, recorded_at_ms=now_ms
            )
        ]

    with cyclic_gc_paused():  # as the bridge maps (receive_batch, the FHIR stage): else the
        # collector walks whatever earlier rows of this run left alive, and the figure says so
        mapping = best_seconds(map_all, 2) / len(batch.readings)
    entries = map_all()
    to_json = best_seconds(lambda: [fhir_store.to_json(e.resource) for e in entries], 2) / len(batch.readings)

    received = receive_all(work / "bridge.db", messages, public_pem, now_ms)
    at_scale = None
    if sizes.bridge_stored:
        stored_batches = sizes.bridge_stored // BATCH_SIZE
        chain, prev = [], GENESIS_HASH
        for index in range(stored_batches + len(messages)):
            readings = make_readings(BATCH_SIZE, 1 + index * BATCH_SIZE, rng)
            message, prev = encode_batch(readings, prev_hash=prev, signing_key=key, number=index + 1)
            chain.append(message)
        at_scale = receive_all(work / "bridge-large.db", chain, public_pem, now_ms, untimed=stored_batches)
    posted = receive_all(work / "bridge-remote.db", messages, public_pem, now_ms, post_to_remote=True)
    acked = receive_all(work / "bridge-stage.db", messages, public_pem, now_ms, map_fhir=False)
    staged = stage_all(work / "bridge-stage.db", total, now_ms)

    per_reading = received / total
    rest = per_reading - decode / total - mapping
    figures = [
        Figure(
            "4 bridge",
            "receive_batch (verify, store, map + validate FHIR)",
            total / received,
            "readings/s",
            "Ed25519 verify of the same batches",
            total / verify,
        ),
        Figure(
            "4 bridge",
            "  of which map_reading (FHIR build + validate)",
            1 / mapping,
            "readings/s",
            "Ed25519 verify of the same batches",
            total / verify,
        ),
        *(
            [
                Figure(
                    "4 bridge",
                    f"the same with {sizes.bridge_stored:,} readings stored already",
                    total / at_scale,
                    "readings/s",
                    "Ed25519 verify of the same batches",
                    total / verify,
                )
            ]
            if at_scale is not None
            else []
        ),
        Figure(
            "4 bridge",
            "receive_batch posting to the health community (Bundles queued)",
            total / posted,
            "readings/s",
            "Ed25519 verify of the same batches",
            total / verify,
        ),
        Figure(
            "4 bridge",
            "FHIR stage apart: receive_batch (verify, store, ack)",
            total / acked,
            "readings/s",
            "Ed25519 verify of the same batches",
            total / verify,
        ),
        Figure(
            "4 bridge",
            "FHIR stage apart: the stage (map + validate + write FHIR)",
            total / staged,
            "readings/s",
            "Ed25519 verify of the same batches",
            total / verify,
        ),
    ]
    notes = [
        f"Bridge per reading: {per_reading * 1e6:.0f} µs = decode_batch {decode / total * 1e6:.1f} µs "
        f"(verify {verify / total * 1e6:.2f} µs of it) + map_reading {mapping * 1e6:.0f} µs "
        f"({100 * mapping / per_reading:.0f} %) + storing the reading and its FHIR resources "
        f"{rest * 1e6:.0f} µs (of which FHIR JSON serialisation {to_json * 1e6:.0f} µs for "
        f"{len(entries) // len(batch.readings)} resources); {len(messages)} chained batches, "
        "one durable commit each.",
        f"Bridge, FHIR stage apart: {acked / total * 1e6:.0f} µs per reading to store and ack + "
        f"{staged / total * 1e6:.0f} µs in the stage = {(acked + staged) / total * 1e6:.0f} µs of CPU per "
        f"reading on two cores (inline: {per_reading * 1e6:.0f} µs on one); the gateway's ack waits "
        "for the first part only.",
    ]
    if postgres is not None:
        on_postgres = receive_all(postgres, messages, public_pem, now_ms)
        figures.append(
            Figure(
                "4 bridge",
                "receive_batch on PostgreSQL (same batches)",
                total / on_postgres,
                "readings/s",
                "Ed25519 verify of the same batches",
                total / verify,
            )
        )
        notes.append(
            f"Bridge on PostgreSQL: {on_postgres / total * 1e6:.0f} µs per reading against "
            f"{per_reading * 1e6:.0f} µs on SQLite (one client connection, server on this machine)."
        )
        together, readings = workers_on_postgres(postgres, rng, now_ms, sizes)
        cores = min(WORKER_COUNT, os.cpu_count() or 1)
        figures.append(
            Figure(
                "4 bridge",
                f"{WORKER_COUNT} worker processes on one PostgreSQL, together",
                readings / together,
                "readings/s",
                "Ed25519 verify of the same batches",
                total / verify,
            )
        )
        notes.append(
            f"{WORKER_COUNT} workers: {readings:,} readings from {WORKER_GATEWAYS} gateways in "
            f"{together:.2f} s = {readings / together / cores:,.0f} readings/s per core over the "
            f"{cores} core(s) they share with the PostgreSQL server (each gateway's batches to one "
            "worker, in chain order: MQTT and the shared subscription are left out, "
            "tests/e2e/test_bridge_workers.py runs those)."
        )
    return figures, notes


WORKER_COUNT = 3
WORKER_GATEWAYS = 12


def _worker_receives(
    url: str, chains: list[list[bytes]], gateway_ids: list[str], now_ms: int, start: Any, done: Any
) -> None:
    """One worker process: its gateways' batches, each gateway's in chain order, once `start`
    is set; then the count it stored goes into `done`."""
    conn = bridge_store.connect(url)
    try:
        stored = 0
        start.wait()
        for step in range(max(len(chain) for chain in chains)):
            for gateway_id, chain in zip(gateway_ids, chains, strict=True):
                if step < len(chain):
                    outcome = receive_batch(conn, up_topic(gateway_id), chain[step], now_ms=now_ms)
                    if outcome.refusal is not None:
                        raise RuntimeError(f"{gateway_id}: {outcome.refusal}")
                    stored += outcome.stored
        done.put(stored)
    finally:
        conn.close()


def workers_on_postgres(url: str, rng: random.Random, now_ms: int, sizes: Sizes) -> tuple[float, int]:
    """Seconds for WORKER_COUNT processes to receive WORKER_GATEWAYS gateways' batches into one
    PostgreSQL (the gateways dealt out among them) -> (seconds, readings stored)."""
    per_gateway = max(1, sizes.bridge_batches // 2)
    gateway_ids = [f"gw-bench-w{index:02d}" for index in range(WORKER_GATEWAYS)]
    chains: dict[str, list[bytes]] = {}
    conn = bridge_store.connect(url)
    try:
        for gateway_id in gateway_ids:
            key = Ed25519PrivateKey.generate()
            pem = public_pem_of(key)
            bridge_store.enrol_gateway(conn, gateway_id, pem, site="bench", kind="kiosk", now_ms=now_ms)
            prev, chain = GENESIS_HASH, []
            for index in range(per_gateway):
                readings = [
                    dataclasses.replace(reading, gateway_id=gateway_id)
                    for reading in make_readings(BATCH_SIZE, 1 + index * BATCH_SIZE, rng)
                ]
                message, prev = encode_batch(readings, prev_hash=prev, signing_key=key, number=index + 1)
                chain.append(message)
            chains[gateway_id] = chain
    finally:
        conn.close()
    context = multiprocessing.get_context("spawn")
    start, done = context.Event(), context.Queue()
    processes = []
    for worker in range(WORKER_COUNT):
        mine = gateway_ids[worker::WORKER_COUNT]
        process = context.Process(
            target=_worker_receives, args=(url, [chains[g] for g in mine], mine, now_ms, start, done)
        )
        process.start()
        processes.append(process)
    time.sleep(2)  # every worker connected and waiting (spawned interpreters import the bridge)
    began = time.perf_counter()
    start.set()
    stored = sum(done.get(timeout=600) for _ in processes)
    elapsed = time.perf_counter() - began
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"a worker failed (exit code {process.exitcode})")
    if stored != WORKER_GATEWAYS * per_gateway * BATCH_SIZE:
        raise RuntimeError(f"workers stored {stored} readings")
    return elapsed, stored


# ---------------------------------------------------------------- report


def filesystem_of(path: Path) -> str:
    """Mount point and type holding `path`: on tmpfs fsync is free and the SQLite figures lie."""
    best = ("?", "?")
    resolved = str(path.resolve())
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                _, mount, fstype, *_ = line.split()
                if (resolved + "/").startswith(mount.rstrip("/") + "/") and len(mount) >= len(best[0]):
                    best = (mount, fstype)
    except OSError:
        pass
    return f"{best[1]} (mounted at {best[0]})"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def print_report(console: Console, figures: list[Figure], notes: list[str]) -> None:
    table = Table(title="kiosk-edge pipeline throughput (higher rate is better; cost × = ours / raw time)")
    table.add_column("stage")
    table.add_column("measured")
    table.add_column("rate", justify="right")
    table.add_column("raw baseline (same run)")
    table.add_column("baseline rate", justify="right")
    table.add_column("cost ×", justify="right")
    for fig in figures:
        table.add_row(
            fig.stage,
            fig.measured,
            f"{fig.rate:,.0f} {fig.unit}",
            fig.baseline,
            f"{fig.baseline_rate:,.0f}" if fig.baseline_rate else "n/a",
            f"{fig.cost:,.1f}" if fig.cost is not None else "n/a",
        )
    console.print(table)
    for note in notes:
        console.print(f"• {note}", highlight=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in seconds")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the SQLite files go (default: a new temp dir)"
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        default=None,
        help="also run the bridge row on PostgreSQL (postgresql://user@host/db, an empty database)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    console = Console(width=None if sys.stdout.isatty() else 140)
    rng = random.Random(20260705)  # fixed: the same readings, so sizes compare across runs
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="kiosk-bench-", dir=args.dir) as tmp:
        work = Path(tmp)
        console.print(
            f"[bold]kiosk-edge benchmarks[/] ({'quick' if args.quick else 'full'}) — "
            f"CPython {platform.python_version()}, {cpu_name()}, {os.cpu_count()} CPUs, "
            f"SQLite {sqlite3.sqlite_version}, cryptography {cryptography.__version__}; "
            f"SQLite files on {filesystem_of(work)}",
            highlight=False,
        )
        figures, notes = bench_codec(sizes)
        batch_figures, batch_notes, encode_rate = bench_batch(sizes, rng)
        outbox_figures, outbox_notes = bench_outbox(sizes, rng, work, encode_rate)
        bridge_figures, bridge_notes = bench_bridge(sizes, rng, work, args.postgres)
    figures += batch_figures + outbox_figures + bridge_figures
    notes += batch_notes + outbox_notes + bridge_notes
    print_report(console, figures, notes)
    console.print(f"done in {time.perf_counter() - started:.1f} s", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
