"""How fast `kiosk-bridge migrate` moves a bridge's SQLite store into PostgreSQL, next to a raw
baseline measured in the same run.

    .venv/bin/python benchmarks/bench_migrate.py --postgres postgresql://user@host/db [--readings 10000]

The database must be empty (the migration refuses one that is not); the baseline uses a scratch
table of its own in it and drops it. A SQLite store is filled through the bridge's own receive
path (signed batches of 500 BP readings, FHIR written), then migrated, copied, verified and
committed. Baseline: psycopg's COPY of the same number of rows, of the same average size, into a
plain table, in one transaction: what moving the bytes costs without reading SQLite, checking
the schema or verifying. Exits non-zero only when the migration fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import BATCH_SIZE, GATEWAY_ID, make_readings, public_pem_of

from cloud_bridge import migrate
from cloud_bridge import store as bridge_store
from cloud_bridge.receive import receive_batch
from contract.wire import GENESIS_HASH, encode_batch, up_topic


def fill_store(path: Path, readings: int) -> None:
    """A bridge store holding `readings` received the way the running bridge receives them."""
    key, rng, now_ms = Ed25519PrivateKey.generate(), random.Random(7), time.time_ns() // 1_000_000
    conn = bridge_store.connect(path)
    try:
        bridge_store.enrol_gateway(
            conn, GATEWAY_ID, public_pem_of(key), site="bench", kind="kiosk", now_ms=now_ms
        )
        prev = GENESIS_HASH
        for index in range(readings // BATCH_SIZE):
            batch = make_readings(BATCH_SIZE, 1 + index * BATCH_SIZE, rng)
            message, prev = encode_batch(batch, prev_hash=prev, signing_key=key, number=index + 1)
            outcome = receive_batch(conn, up_topic(GATEWAY_ID), message, now_ms=now_ms)
            if outcome.stored != BATCH_SIZE:
                raise RuntimeError(f"the bridge stored {outcome.stored} of {BATCH_SIZE}: {outcome.refusal}")
    finally:
        conn.close()


def rows_and_bytes(path: Path) -> tuple[int, int]:
    """Rows in every table of the store, and the bytes of its rows' values (roughly)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:  # closed: the migration wants it alone
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = size = 0
        for table in tables:
            if table.startswith("sqlite_"):
                continue
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
            total = " + ".join(f"COALESCE(LENGTH({column}), 0)" for column in columns)
            count, table_bytes = conn.execute(
                f"SELECT COUNT(*), COALESCE(SUM({total}), 0) FROM {table}"
            ).fetchone()
            rows, size = rows + count, size + table_bytes
    return rows, size


def raw_copy(url: str, rows: int, row_bytes: int) -> float:
    """Seconds for COPY of `rows` rows of `row_bytes` random bytes into a scratch table, committed."""
    payloads = [(os.urandom(row_bytes),) for _ in range(rows)]
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE bench_raw_copy (body BYTEA NOT NULL)")
        conn.commit()
        try:
            start = time.perf_counter()
            with conn.cursor() as cursor, cursor.copy("COPY bench_raw_copy (body) FROM STDIN") as copy:
                for payload in payloads:
                    copy.write_row(payload)
            conn.commit()
            return time.perf_counter() - start
        finally:
            conn.execute("DROP TABLE bench_raw_copy")
            conn.commit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres", required=True, help="an empty PostgreSQL database: postgresql://…")
    parser.add_argument("--readings", type=int, default=10_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "bridge.db"
        fill_store(path, args.readings)
        rows, size = rows_and_bytes(path)
        source, target = migrate.open_source(path), migrate.open_target(args.postgres)
        try:
            start = time.perf_counter()
            report = migrate.migrate(source, target)
            ours = time.perf_counter() - start
        finally:
            target.close()
            source.close()
    if report.rows != rows:
        print(f"the migration copied {report.rows} rows of {rows}", file=sys.stderr)
        return 1
    raw = raw_copy(args.postgres, rows, max(1, size // rows))
    print(f"store: {args.readings:,} readings = {rows:,} rows, {size / 1e6:.1f} MB of values")
    print(
        f"kiosk-bridge migrate (schema, copy, verify, commit): {ours:.2f} s = {rows / ours:,.0f} rows/s; "
        f"raw COPY of as many rows of the same average size, one commit: {raw:.2f} s = "
        f"{rows / raw:,.0f} rows/s; "
        f"cost x {ours / raw:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
