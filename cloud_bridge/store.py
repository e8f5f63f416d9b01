"""The bridge's durable store: gateway registry, readings by (gateway, seq), batches, refusals.

SQLite by default, PostgreSQL for production: the same statements through `cloud_bridge.db`.
Exactly-once rests on two unique keys: a reading is (gateway_id, seq) and a batch is its hash.
A gateway's row keeps the head of its batch chain (`last_hash`, `last_batch_no`), the highest
sequence stored (`last_seq`) and, in `seq_gaps`, the sequences below it not stored yet; a writer
reads it with `get_gateway(…, lock=True)` inside its transaction so no other writer can extend the
same chain until it commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cloud_bridge import auth, fhir_post, fhir_store, gaps
from cloud_bridge import db as dbapi
from cloud_bridge.db import Database
from contract.wire import GENESIS_HASH, Reading, encode_reading

_READINGS_TABLE = """CREATE TABLE IF NOT EXISTS readings (
    gateway_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    batch_hash BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL,
    fhir_status TEXT NOT NULL CHECK (fhir_status IN ('stored', 'dead_letter', 'pending')),
    fhir_error TEXT,
    PRIMARY KEY (gateway_id, seq)
)"""
SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS gateways (
    gateway_id TEXT PRIMARY KEY,
    public_key_pem TEXT NOT NULL,
    site TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT 'kiosk' CHECK (kind IN ('kiosk', 'vehicle')),
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    enrolled_at_ms INTEGER NOT NULL,
    last_seen_ms INTEGER,
    last_seq INTEGER NOT NULL DEFAULT 0,
    last_hash BLOB NOT NULL,
    last_batch_no INTEGER NOT NULL DEFAULT 0,
    waiting INTEGER,
    waiting_at_ms INTEGER
);
"""
    + _READINGS_TABLE
    + """;
CREATE TABLE IF NOT EXISTS batches (
    hash BLOB PRIMARY KEY,
    gateway_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    prev_hash BLOB NOT NULL,
    signature BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS seq_gaps (
    gateway_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    opened_at_ms INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, first_seq)
);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    gateway_id TEXT,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS devices_seen (
    gateway_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    firmware TEXT NOT NULL,
    last_measured_ms INTEGER NOT NULL,
    readings INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (gateway_id, device_id)
);
"""
)


@dataclass(frozen=True, slots=True)
class GatewayRecord:
    gateway_id: str
    public_key: Ed25519PublicKey
    site: str
    kind: str
    status: str
    last_seq: int
    last_hash: bytes
    last_seen_ms: int | None
    last_batch_no: int = 0


def connect(target: Path | str, *, shared_across_threads: bool = False) -> Database:
    """The bridge's store with its schema in place: a SQLite file path (WAL, durable commits) or a
    `postgresql://` URL. Statements autocommit; the caller groups them with `transaction()`.

    `shared_across_threads` is for a connection created on one thread and used, under the
    caller's lock, on another (the MQTT network thread).
    """
    conn = dbapi.connect(target, shared_across_threads=shared_across_threads)
    conn.ddl(SCHEMA)
    if conn.dialect == "sqlite":
        _add_missing_columns(conn)  # a PostgreSQL store was created with every column
    _allow_pending_fhir(conn)
    conn.ddl(_PENDING_INDEX)
    fhir_store.ensure_schema(conn)
    fhir_post.ensure_schema(conn)
    auth.ensure_schema(conn)
    return conn


_ADDED_COLUMNS = {  # columns newer than the first release, added in place to an older store
    "gateways": {
        "last_batch_no": "INTEGER NOT NULL DEFAULT 0",
        "waiting": "INTEGER",
        "waiting_at_ms": "INTEGER",
    },
}


# The FHIR stage's queue: readings stored (and acked) whose FHIR resources are not written yet.
_PENDING_INDEX = (
    "CREATE INDEX IF NOT EXISTS readings_fhir_pending ON readings (received_at_ms, gateway_id, seq)"
    " WHERE fhir_status = 'pending'"
)


def _allow_pending_fhir(conn: Database) -> None:
    """A store made before the FHIR stage could run apart refuses fhir_status 'pending': widen
    its CHECK in place (SQLite cannot alter a CHECK, so the table is copied once)."""
    if conn.dialect == "sqlite":
        (sql,) = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'readings'"
        ).fetchone()
        if "'pending'" in sql:
            return
        with conn.transaction():
            conn.execute("ALTER TABLE readings RENAME TO readings_before_pending")
            conn.execute(_READINGS_TABLE)
            conn.execute("INSERT INTO readings SELECT * FROM readings_before_pending")
            conn.execute("DROP TABLE readings_before_pending")
        return
    row = conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'readings_fhir_status_check'"
    ).fetchone()
    if row is not None and "'pending'" not in row[0]:
        with conn.transaction():
            conn.execute("ALTER TABLE readings DROP CONSTRAINT readings_fhir_status_check")
            conn.execute(
                "ALTER TABLE readings ADD CONSTRAINT readings_fhir_status_check"
                " CHECK (fhir_status IN ('stored', 'dead_letter', 'pending'))"
            )


def _add_missing_columns(conn: Database) -> None:
    for table, columns in _ADDED_COLUMNS.items():
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, decl in columns.items():
            if name not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


def load_public_key(pem: bytes | str) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("gateway public key must be Ed25519")
    return key


def enrol_gateway(
    conn: Database, gateway_id: str, public_key_pem: str, *, site: str, kind: str, now_ms: int
) -> None:
    """Raises `conn.IntegrityError` when the gateway is already enrolled."""
    load_public_key(public_key_pem)  # refuse anything that is not an Ed25519 key
    conn.execute(
        """INSERT INTO gateways (gateway_id, public_key_pem, site, kind, enrolled_at_ms, last_hash)
           VALUES (?, ?, ?, ?, ?, ?)""",
        (gateway_id, public_key_pem, site, kind, now_ms, GENESIS_HASH),
    )


def revoke_gateway(conn: Database, gateway_id: str) -> bool:
    cursor = conn.execute("UPDATE gateways SET status = 'revoked' WHERE gateway_id = ?", (gateway_id,))
    return cursor.rowcount == 1


def get_gateway(conn: Database, gateway_id: str, *, lock: bool = False) -> GatewayRecord | None:
    """With `lock` (inside a transaction), no other writer changes the row until the commit."""
    row = conn.execute(
        """SELECT gateway_id, public_key_pem, site, kind, status, last_seq, last_hash, last_seen_ms,
                  last_batch_no
           FROM gateways WHERE gateway_id = ?"""
        + (conn.lock_clause if lock else ""),
        (gateway_id,),
    ).fetchone()
    if row is None:
        return None
    return GatewayRecord(
        row[0], load_public_key(row[1]), row[2], row[3], row[4], row[5], bytes(row[6]), row[7], row[8]
    )


def list_gateways(conn: Database) -> list[dict[str, object]]:
    rows = conn.execute(
        "SELECT gateway_id, site, kind, status, last_seq, last_seen_ms FROM gateways ORDER BY gateway_id"
    ).fetchall()
    keys = ("gateway_id", "site", "kind", "status", "last_seq", "last_seen_ms")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def batch_known(conn: Database, batch_hash: bytes) -> tuple[str, int] | None:
    row = conn.execute("SELECT gateway_id, last_seq FROM batches WHERE hash = ?", (batch_hash,)).fetchone()
    return (row[0], row[1]) if row else None


def insert_readings(
    conn: Database,
    readings: Sequence[Reading],
    *,
    fhir_errors: Sequence[str | None],
    batch_hash: bytes,
    now_ms: int,
    fhir_pending: Sequence[bool] | None = None,
    bodies: Sequence[bytes] = (),
) -> list[bool]:
    """Store one gateway's readings (a batch) -> for each, whether it is new.

    A reading whose `fhir_pending` is True has its FHIR resources left to the FHIR stage
    (`cloud_bridge.fhir_stage`): it is queued as 'pending' (its `fhir_errors` entry is None).

    Runs inside the transaction that holds the gateway's row, so no other writer stores this
    gateway's readings meanwhile and the look-up of the sequences already held is exact.

    `bodies` are the readings' CBOR as the gateway signed it (`Batch.reading_bytes`), stored as
    they are; without them each reading is encoded again.
    """
    if not readings:
        return []
    gateway_id = readings[0].gateway_id
    if any(reading.gateway_id != gateway_id for reading in readings):
        raise ValueError("insert_readings takes one gateway's readings")
    seqs = [reading.seq for reading in readings]
    held = {
        seq
        for (seq,) in conn.execute(
            "SELECT seq FROM readings WHERE gateway_id = ? AND seq BETWEEN ? AND ?",
            (gateway_id, min(seqs), max(seqs)),
        )
    }
    new = [reading.seq not in held for reading in readings]
    pending = fhir_pending if fhir_pending is not None else [False] * len(readings)
    if bodies and len(bodies) != len(readings):
        raise ValueError("insert_readings takes one body per reading")
    encoded = bodies or [encode_reading(reading) for reading in readings]
    rows = [
        (gateway_id, reading.seq, reading.kind, body, batch_hash, now_ms,
         "pending" if later else "dead_letter" if error else "stored", error)
        for reading, body, error, is_new, later
        in zip(readings, encoded, fhir_errors, new, pending, strict=True)
        if is_new
    ]  # fmt: skip
    if not rows:
        return new
    inserted = conn.executemany(
        """INSERT INTO readings
               (gateway_id, seq, kind, body, batch_hash, received_at_ms, fhir_status, fhir_error)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gateway_id, seq) DO NOTHING""",
        rows,
    ).rowcount
    if inserted != len(rows):  # the gateway's row lock was not held: nothing of this is kept
        raise RuntimeError(
            f"{gateway_id}: {len(rows) - inserted} reading(s) stored by another writer meanwhile"
        )
    devices: dict[str, tuple[Reading, int, int]] = {}  # device id -> (latest reading, count, newest time)
    for reading, is_new in zip(readings, new, strict=True):
        if is_new:
            _, count, newest = devices.get(reading.device.id, (reading, 0, reading.measured_at_ms))
            devices[reading.device.id] = (reading, count + 1, max(newest, reading.measured_at_ms))
    conn.executemany(
        """INSERT INTO devices_seen (gateway_id, device_id, model, firmware, last_measured_ms, readings)
           VALUES (?, ?, ?, ?, ?, ?)
           ON CONFLICT (gateway_id, device_id) DO UPDATE SET model = excluded.model,
               firmware = excluded.firmware, readings = devices_seen.readings + excluded.readings,
               last_measured_ms = CASE WHEN excluded.last_measured_ms > devices_seen.last_measured_ms
                   THEN excluded.last_measured_ms ELSE devices_seen.last_measured_ms END""",
        [(gateway_id, device_id, latest.device.model, latest.device.firmware, newest, count)
         for device_id, (latest, count, newest) in devices.items()],
    )  # fmt: skip
    return new


def record_batch(
    conn: Database,
    *,
    gateway_id: str,
    batch_no: int | None,
    seq_ranges: tuple[tuple[int, int], ...],
    batch_hash: bytes,
    prev_hash: bytes,
    signature: bytes,
    waiting: int | None,
    now_ms: int,
) -> GapChange:
    """The batch becomes the head of the gateway's chain, and its sequences fill or open gaps."""
    conn.execute(
        """INSERT INTO batches (hash, gateway_id, first_seq, last_seq, prev_hash, signature, received_at_ms)
           VALUES (?, ?, ?, ?, ?, ?, ?)""",
        (batch_hash, gateway_id, seq_ranges[0][0], seq_ranges[-1][1], prev_hash, signature, now_ms),
    )
    high, old_batch_no = conn.execute(
        "SELECT last_seq, last_batch_no FROM gateways WHERE gateway_id = ?", (gateway_id,)
    ).fetchone()
    old = {
        (first, last): opened
        for first, last, opened in conn.execute(
            "SELECT first_seq, last_seq, opened_at_ms FROM seq_gaps WHERE gateway_id = ? ORDER BY first_seq",
            (gateway_id,),
        )
    }
    new, new_high = gaps.after_batch(list(old), high, seq_ranges)
    if new != list(old):
        conn.execute("DELETE FROM seq_gaps WHERE gateway_id = ?", (gateway_id,))
        conn.executemany(
            "INSERT INTO seq_gaps (gateway_id, first_seq, last_seq, opened_at_ms) VALUES (?, ?, ?, ?)",
            [(gateway_id, first, last, _opened_at(old, first, now_ms)) for first, last in new],
        )
    conn.execute(
        """UPDATE gateways SET last_seq = ?, last_hash = ?, last_batch_no = ?, last_seen_ms = ?,
               waiting = ?, waiting_at_ms = ?
           WHERE gateway_id = ?""",
        (new_high, batch_hash, batch_no if batch_no is not None else old_batch_no, now_ms,
         waiting, now_ms if waiting is not None else None, gateway_id),
    )  # fmt: skip
    return GapChange(
        opened=[(first, last) for first, last in new if first > high],  # none was above the old high
        filled=[gap for gap in old if gap not in new],
        gaps=new,
    )


@dataclass(frozen=True, slots=True)
class GapChange:
    """What one batch did to a gateway's gaps: the runs it opened, the old runs it touched (filled
    wholly or in part), and every gap now."""

    opened: list[gaps.Gap]
    filled: list[gaps.Gap]
    gaps: list[gaps.Gap]


def _opened_at(old: dict[gaps.Gap, int], first: int, now_ms: int) -> int:
    """A gap that is what is left of an older one keeps the time that one opened."""
    return next((opened for (a, b), opened in old.items() if a <= first <= b), now_ms)


def gateway_gaps(conn: Database, gateway_id: str) -> list[gaps.Gap]:
    return [
        (first, last)
        for first, last in conn.execute(
            "SELECT first_seq, last_seq FROM seq_gaps WHERE gateway_id = ? ORDER BY first_seq", (gateway_id,)
        )
    ]


def touch_gateway(conn: Database, gateway_id: str, now_ms: int) -> None:
    conn.execute("UPDATE gateways SET last_seen_ms = ? WHERE gateway_id = ?", (now_ms, gateway_id))


def record_refusal(conn: Database, gateway_id: str | None, reason: str, now_ms: int) -> None:
    conn.execute(
        "INSERT INTO refusals (at_ms, gateway_id, reason) VALUES (?, ?, ?)", (now_ms, gateway_id, reason)
    )


def count_readings(conn: Database, gateway_id: str | None = None) -> int:
    if gateway_id is None:
        return conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
    return conn.execute("SELECT COUNT(*) FROM readings WHERE gateway_id = ?", (gateway_id,)).fetchone()[0]


def fleet(conn: Database, *, now_ms: int) -> list[dict[str, object]]:
    """Every enrolled gateway: site, kind, status, when it was last heard, how far it has synced,
    the sequences it has not delivered yet (gaps) against the readings it says it still holds
    (its backlog, as of its last batch), its refusals in the last 24 h, and the peripherals
    (model, firmware) its readings came from."""
    since = now_ms - 86_400_000
    out = []
    rows = conn.execute(
        """SELECT gateway_id, site, kind, status, last_seq, last_seen_ms, enrolled_at_ms, waiting,
                  waiting_at_ms
           FROM gateways ORDER BY gateway_id"""
    ).fetchall()
    for gateway_id, site, kind, status, last_seq, last_seen_ms, enrolled_ms, waiting, waiting_ms in rows:
        open_gaps = gateway_gaps(conn, gateway_id)
        refusals = conn.execute(
            "SELECT COUNT(*) FROM refusals WHERE gateway_id = ? AND at_ms >= ?", (gateway_id, since)
        ).fetchone()[0]
        devices = [
            {"device_id": d, "model": m, "firmware": f, "last_measured_ms": t, "readings": n}
            for d, m, f, t, n in conn.execute(
                """SELECT device_id, model, firmware, last_measured_ms, readings FROM devices_seen
                   WHERE gateway_id = ? ORDER BY device_id""",
                (gateway_id,),
            )
        ]
        out.append(
            {
                "gateway_id": gateway_id,
                "site": site,
                "kind": kind,
                "status": status,
                "enrolled_at_ms": enrolled_ms,
                "last_seen_ms": last_seen_ms,
                "last_seq": last_seq,
                "missing": gaps.missing(open_gaps),
                "missing_seqs": gaps.describe(open_gaps) or None,
                "backlog": waiting,
                "backlog_at_ms": waiting_ms,
                "silent_s": None if last_seen_ms is None else max(0, (now_ms - last_seen_ms) // 1000),
                "refusals_24h": refusals,
                "devices": devices,
            }
        )
    return out
