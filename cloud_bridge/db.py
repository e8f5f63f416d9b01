"""One database interface for the bridge: SQLite by default, PostgreSQL for production.

Every SQL statement of the bridge is written once, in the SQL both engines accept (`?`
placeholders, `INSERT … ON CONFLICT … DO NOTHING / DO UPDATE`), and runs through a `Database`:
- SQLite (a file path): WAL, synchronous=FULL; `transaction()` is `BEGIN IMMEDIATE`, which takes
  the database's single write lock, so one writer at a time extends any gateway's chain. A new
  file gets 16 KiB pages (`SQLITE_PAGE_SIZE`); a writer a large cache and rare checkpoints.
- PostgreSQL (a `postgresql://` URL, driver psycopg 3): `?` becomes `%s` here, in one place;
  `transaction()` is a plain READ COMMITTED transaction, and the code that needs a row to stay
  put while it decides (the gateway's chain head) locks it with `lock_clause` (`FOR UPDATE`).
Schema text is written once in SQLite's words and translated by `ddl` (BLOB → BYTEA, INTEGER →
BIGINT, AUTOINCREMENT → identity column).

Statements run in autocommit unless inside `transaction()`, on both engines.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = ["Cursor", "Database", "Dialect", "connect", "driver_errors", "is_postgres_url"]

Dialect = Literal["sqlite", "postgresql"]
_POSTGRES_URL = re.compile(r"^postgres(?:ql)?://")
# A batch's commit writes every page it touched to the WAL, and a batch touches pages all over the
# FHIR table's indexes (resource ids are random): with 16 KiB pages rather than 4 KiB it writes
# fewer, fuller pages, and the bridge received a quarter more readings per second
# (benchmarks/bench_pipeline.py). Set only when a file is created; older stores keep theirs.
SQLITE_PAGE_SIZE = 16_384
# A writer's page cache, and how much WAL a commit may leave before SQLite copies it back into the
# database file. Both far above SQLite's defaults (2 MB, 1,000 pages), for the same reason: a store
# of a county's readings has indexes much larger than 2 MB, and each batch touches pages across
# them; a bigger cache keeps those pages, and rarer checkpoints write a page touched by many
# batches once. With 100,000 readings stored the bridge received a quarter more per second. The
# cache is taken as pages are used; the WAL file grows to about the threshold and is reused.
SQLITE_CACHE_BYTES = 256 * 1024 * 1024
SQLITE_CHECKPOINT_BYTES = 256 * 1024 * 1024
# Serialises schema creation across processes (CREATE TABLE IF NOT EXISTS races on PostgreSQL).
_SCHEMA_LOCK_KEY = 0x6B696F736B  # "kiosk"


class Cursor(Protocol):
    """What both drivers' cursors give: rows, one or all, by iteration, and the rows changed."""

    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


def is_postgres_url(target: str | Path) -> bool:
    return isinstance(target, str) and bool(_POSTGRES_URL.match(target))


def driver_errors(target: str | Path) -> type[Exception]:
    """The driver's root error for `target`, for the callers that catch a failure to connect."""
    if is_postgres_url(target):
        import psycopg

        return psycopg.Error
    return sqlite3.Error


class Database:
    """A connection to either engine; see the module docstring. Not for concurrent use by several
    threads at once (the caller holds a lock, as the consumer does)."""

    dialect: Dialect
    Error: type[Exception]
    IntegrityError: type[Exception]
    OperationalError: type[Exception]

    def __init__(self, conn: Any, dialect: Dialect) -> None:
        self.raw = conn
        self.dialect = dialect
        if dialect == "sqlite":
            self.Error, self.IntegrityError = sqlite3.Error, sqlite3.IntegrityError
            self.OperationalError = sqlite3.OperationalError
            # The default path pays nothing for the interface: the driver's own methods.
            self.execute = conn.execute  # type: ignore[method-assign]
            self.executemany = conn.executemany  # type: ignore[method-assign]
        else:
            import psycopg

            self.Error, self.IntegrityError = psycopg.Error, psycopg.IntegrityError
            self.OperationalError = psycopg.OperationalError
        self._sql: dict[str, str] = {}

    @property
    def lock_clause(self) -> str:
        """Appended to a SELECT inside `transaction()` to hold the rows until the commit: nothing
        on SQLite (BEGIN IMMEDIATE already holds the only write lock), `FOR UPDATE` on PostgreSQL."""
        return "" if self.dialect == "sqlite" else " FOR UPDATE"

    @property
    def insertion_order(self) -> str:
        """The column that orders rows by insertion in tables that declare `row_no` for
        PostgreSQL (SQLite has its implicit rowid)."""
        return "rowid" if self.dialect == "sqlite" else "row_no"

    def _translate(self, sql: str) -> str:
        translated = self._sql.get(sql)
        if translated is None:  # no statement of the bridge has a `?` or `%` inside a literal
            translated = self._sql[sql] = sql.replace("%", "%%").replace("?", "%s")
        return translated

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self.raw.execute(self._translate(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Cursor:
        cursor = self.raw.cursor()
        cursor.executemany(self._translate(sql), rows)
        return cursor

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """All or nothing, holding the write lock (SQLite) or row locks taken inside (PostgreSQL)."""
        if self.dialect == "sqlite":
            self.raw.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self.raw.execute("ROLLBACK")
                raise
            self.raw.execute("COMMIT")
        else:
            with self.raw.transaction():
                yield self

    def ddl(self, script: str) -> None:
        """Run schema statements written in SQLite's words (`;`-separated, no `;` in literals)."""
        statements = [s.strip() for s in script.split(";") if s.strip()]
        if self.dialect == "sqlite":
            for statement in statements:
                self.raw.execute(statement)
            return
        with self.raw.transaction():
            self.raw.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
            for statement in statements:
                self.raw.execute(_postgres_ddl(statement))

    @property
    def broken(self) -> bool:
        """The server went away (PostgreSQL): this connection will not work again."""
        return self.dialect == "postgresql" and bool(self.raw.closed or self.raw.broken)

    def close(self) -> None:
        self.raw.close()


_DDL_WORDS = (
    (
        re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"),
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    ),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),  # milliseconds since 1970 do not fit PostgreSQL's INTEGER
    (re.compile(r"\bBLOB\b"), "BYTEA"),
)


def _postgres_ddl(statement: str) -> str:
    for pattern, replacement in _DDL_WORDS:
        statement = pattern.sub(replacement, statement)
    return statement


def connect(target: str | Path, *, shared_across_threads: bool = False, read_only: bool = False) -> Database:
    """A path opens (or creates) a SQLite file in WAL mode with durable commits; a
    `postgresql://user@host/dbname` URL connects to PostgreSQL. `shared_across_threads` is for a
    SQLite connection made on one thread and used, under the caller's lock, on another;
    `read_only` refuses every write (the API's read side)."""
    if is_postgres_url(target):
        import psycopg

        options = "-c default_transaction_read_only=on" if read_only else ""
        return Database(psycopg.connect(str(target), autocommit=True, options=options), "postgresql")
    sqlite_conn = sqlite3.connect(
        target, isolation_level=None, timeout=10, check_same_thread=not shared_across_threads
    )
    if read_only:
        sqlite_conn.execute("PRAGMA query_only=ON")
    else:
        sqlite_conn.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")  # no effect on an existing file
        sqlite_conn.execute("PRAGMA journal_mode=WAL")
        sqlite_conn.execute("PRAGMA synchronous=FULL")
        sqlite_conn.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_BYTES // 1024}")  # negative: KiB
        (page_size,) = sqlite_conn.execute("PRAGMA page_size").fetchone()  # an older file's own
        sqlite_conn.execute(f"PRAGMA wal_autocheckpoint={SQLITE_CHECKPOINT_BYTES // page_size}")
    return Database(sqlite_conn, "sqlite")
