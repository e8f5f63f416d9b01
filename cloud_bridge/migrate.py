"""Moving a bridge's store from its SQLite file to PostgreSQL, when a county outgrows one process.

The bridge starts on SQLite; running several workers needs PostgreSQL (README, "Several bridge
workers"). `migrate` copies every table of a stopped bridge's SQLite file into an empty PostgreSQL
database whose schema `store.connect` has just made, so the target is exactly what a bridge
started on PostgreSQL would have. What keeps the move safe:
- the source is read with `query_only` in SQLite's EXCLUSIVE locking mode, which cannot start
  while any other connection has the file open (a bridge, its API, its FHIR stage, even idle):
  a bridge still running on SQLite is found, not left storing readings the copy misses, and
  nothing can be written to the file while it is copied;
- the whole copy is one PostgreSQL transaction that first locks the bridge's tables and checks
  they are empty: a failed or refused run leaves no row in the target (only the bridge's empty
  tables), and can be run again;
- `fhir_resources` goes in SQLite rowid order, so PostgreSQL's `row_no` identity (its search
  order) follows the same order; copied ids (`refusals.id`, `api_tokens.id`) keep their values
  and each identity sequence is moved past them (and past SQLite's AUTOINCREMENT high-water mark),
  so the next insert does not collide and no id is ever handed out twice;
- before the commit, each table is read back from PostgreSQL and compared with the source: the
  row count, and a digest of every row (in insertion order for `fhir_resources`, otherwise
  independent of order). A difference rolls the whole copy back.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_bridge import db as dbapi
from cloud_bridge import store
from cloud_bridge.db import Database

__all__ = [
    "MigrationError",
    "MigrationReport",
    "SourceInUse",
    "TableCopied",
    "TargetNotEmpty",
    "UnknownTable",
    "VerificationFailed",
    "bridge_tables",
    "migrate",
    "open_source",
    "open_target",
    "verify",
]

CHUNK_ROWS = 5_000  # rows read from SQLite at a time (and fetched back from PostgreSQL to verify)
_DIGEST_MODULUS = 1 << 256
# The column PostgreSQL orders rows by where SQLite uses its implicit rowid (`Database.insertion_order`).
_ROW_NO = "row_no"
_PLAIN_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")  # the bridge's tables and columns: safe to put in SQL


class MigrationError(Exception):
    """The migration cannot start or did not finish; no row of it is in the PostgreSQL target."""


class SourceInUse(MigrationError):
    def __init__(self, path: Path) -> None:
        super().__init__(
            f"{path} is open in another process (the bridge, its API or FHIR stage, or another "
            "kiosk-bridge command): stop the bridge first, so nothing it stores after the copy is left behind"
        )
        self.path = path


class TargetNotEmpty(MigrationError):
    def __init__(self, table: str) -> None:
        super().__init__(
            f"the target already holds data (table {table} has rows): migrate into an empty database"
        )
        self.table = table


class UnknownTable(MigrationError):
    def __init__(self, table: str, detail: str) -> None:
        super().__init__(f"table {table}: {detail}; nothing was copied")
        self.table = table


class VerificationFailed(MigrationError):
    def __init__(self, table: str, detail: str) -> None:
        super().__init__(f"verification failed for table {table}: {detail}")
        self.table = table


@dataclass(frozen=True, slots=True)
class TableCopied:
    table: str
    rows: int
    next_id: int | None = None  # the identity's next value, where the table has a copied identity


@dataclass(frozen=True, slots=True)
class MigrationReport:
    tables: list[TableCopied]
    seconds: float

    @property
    def rows(self) -> int:
        return sum(table.rows for table in self.tables)


def open_source(path: Path) -> Database:
    """The SQLite store, read-only, held so that no other connection can open it until closed.

    Raises `SourceInUse` while any other process has the file open, and MigrationError when it
    is missing or not a bridge store.
    """
    if not path.is_file():  # sqlite3 would create an empty file
        raise MigrationError(f"{path}: no such file")
    try:
        source = dbapi.connect(path, read_only=True)
    except sqlite3.Error as exc:
        raise MigrationError(f"{path}: cannot open it: {exc}") from exc
    try:
        source.raw.execute("PRAGMA busy_timeout = 1000")  # a writer between two commits: wait a little
        source.raw.execute("PRAGMA locking_mode = EXCLUSIVE")
        source.raw.execute("BEGIN")  # one snapshot for the copy and its verification
        tables = _sqlite_tables(source)
    except sqlite3.OperationalError as exc:
        source.close()
        if "locked" in str(exc) or "busy" in str(exc):
            raise SourceInUse(path) from exc
        raise MigrationError(f"{path}: cannot read it: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        source.close()
        raise MigrationError(f"{path}: not a SQLite database: {exc}") from exc
    if "gateways" not in tables:
        source.close()
        raise MigrationError(f"{path}: not a bridge store (it has no gateways table)")
    return source


def open_target(url: str) -> Database:
    """The PostgreSQL store, with the schema the bridge itself creates (`store.connect`)."""
    if not dbapi.is_postgres_url(url):
        raise MigrationError("the target must be a postgresql:// URL")
    import psycopg

    try:
        return store.connect(url)
    except psycopg.Error as exc:
        raise MigrationError(f"cannot open the target database: {_first_line(exc)}") from exc


def bridge_tables() -> list[str]:
    """The tables the bridge's schema has, as this version of `store.connect` makes them."""
    scratch = store.connect(":memory:")
    try:
        return _sqlite_tables(scratch)
    finally:
        scratch.close()


def migrate(
    source: Database,
    target: Database,
    *,
    chunk_rows: int = CHUNK_ROWS,
    on_table: Callable[[TableCopied], None] | None = None,
) -> MigrationReport:
    """Copy every table of `source` (from `open_source`) into `target` (from `open_target`) in one
    transaction, verify, and commit -> what was copied. Raises MigrationError (and its
    subclasses) with none of its rows in the target."""
    started = time.perf_counter()
    copied: list[TableCopied] = []
    try:
        tables = _sqlite_tables(source)
        plans = [_plan(source, target, table) for table in tables]
        guarded = sorted(set(tables) | (set(bridge_tables()) & set(_postgres_tables(target))))
        with target.transaction():
            # Bridge workers already pointed at the target wait until the copy is committed; a
            # transaction of theirs that holds a table makes this one give up rather than hang.
            target.raw.execute("SET LOCAL lock_timeout = '30s'")
            target.raw.execute(f"LOCK TABLE {', '.join(guarded)} IN EXCLUSIVE MODE")
            for table in guarded:
                if target.raw.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]:
                    raise TargetNotEmpty(table)
            for plan in plans:
                rows, source_digest = _copy(source, target, plan, chunk_rows)
                _compare(target, plan, rows, source_digest, chunk_rows)
                done = TableCopied(plan.table, rows, _advance_identities(source, target, plan))
                copied.append(done)
                if on_table is not None:
                    on_table(done)
    except (target.Error, source.Error) as exc:  # a value PostgreSQL refuses, a lost connection
        raise MigrationError(f"the copy failed and was rolled back: {_first_line(exc)}") from exc
    return MigrationReport(copied, time.perf_counter() - started)


def verify(source: Database, target: Database, *, chunk_rows: int = CHUNK_ROWS) -> list[TableCopied]:
    """Compare every table of `source` with `target` again, after a migration -> the row counts.
    Raises VerificationFailed naming the first table that differs."""
    checked = []
    for plan in [_plan(source, target, table) for table in _sqlite_tables(source)]:
        digest = _Digest(ordered=plan.in_insertion_order)
        for chunk in _source_chunks(source, plan, chunk_rows):
            digest.add_rows(chunk)
        with target.transaction():  # a server-side cursor lives in a transaction
            _compare(target, plan, digest.rows, digest.value, chunk_rows)
        checked.append(TableCopied(plan.table, digest.rows))
    return checked


def _compare(target: Database, plan: _TablePlan, rows: int, source_digest: int, chunk_rows: int) -> None:
    target_rows, target_digest = _target_digest(target, plan, chunk_rows)
    if target_rows != rows:
        raise VerificationFailed(plan.table, f"{rows} rows in the source, {target_rows} in the target")
    if target_digest != source_digest:
        raise VerificationFailed(plan.table, f"the {rows} rows differ in content or order")


@dataclass(frozen=True, slots=True)
class _TablePlan:
    table: str
    columns: list[str]  # the source's, all present on the target
    in_insertion_order: bool  # the target orders this table by `row_no`: keep SQLite's rowid order
    identities: list[str]  # the target's identity columns that take copied values


def _plan(source: Database, target: Database, table: str) -> _TablePlan:
    if not _PLAIN_NAME.match(table):
        raise UnknownTable(table, "not a name the bridge's schema uses")
    target_columns = {
        name: identity
        for name, identity in target.execute(
            "SELECT column_name, is_identity FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        )
    }
    if not target_columns:
        raise UnknownTable(table, "in the source but not in the bridge's PostgreSQL schema")
    columns = [row[1] for row in source.execute(f"PRAGMA table_info({table})")]
    for column in columns:
        if column not in target_columns or not _PLAIN_NAME.match(column):
            raise UnknownTable(table, f"column {column} is not in the bridge's PostgreSQL schema")
    return _TablePlan(
        table,
        columns,
        in_insertion_order=_ROW_NO in target_columns and _ROW_NO not in columns,
        identities=[column for column in columns if target_columns[column] == "YES"],
    )


def _copy(source: Database, target: Database, plan: _TablePlan, chunk_rows: int) -> tuple[int, int]:
    """COPY the table's rows into the target, in rowid order -> (rows, the source's digest)."""
    names = ", ".join(plan.columns)
    digest = _Digest(ordered=plan.in_insertion_order)
    with target.raw.cursor() as cursor, cursor.copy(f"COPY {plan.table} ({names}) FROM STDIN") as copy:
        for chunk in _source_chunks(source, plan, chunk_rows):
            for row in chunk:
                copy.write_row(row)
            digest.add_rows(chunk)
    return digest.rows, digest.value


def _source_chunks(source: Database, plan: _TablePlan, chunk_rows: int) -> Iterator[list[Any]]:
    """The table's rows in SQLite's insertion (rowid) order, `chunk_rows` at a time."""
    reader = source.raw.execute(f"SELECT {', '.join(plan.columns)} FROM {plan.table} ORDER BY rowid")
    while chunk := reader.fetchmany(chunk_rows):
        yield chunk


def _target_digest(target: Database, plan: _TablePlan, chunk_rows: int) -> tuple[int, int]:
    """The rows as PostgreSQL now holds them, read back through a server-side cursor."""
    order = f" ORDER BY {_ROW_NO}" if plan.in_insertion_order else ""
    digest = _Digest(ordered=plan.in_insertion_order)
    with target.raw.cursor(name=f"verify_{plan.table}") as cursor:
        cursor.itersize = chunk_rows
        cursor.execute(f"SELECT {', '.join(plan.columns)} FROM {plan.table}{order}")
        while chunk := cursor.fetchmany(chunk_rows):
            digest.add_rows(chunk)
    return digest.rows, digest.value


def _advance_identities(source: Database, target: Database, plan: _TablePlan) -> int | None:
    """Move each copied identity's sequence past the largest id copied and past SQLite's
    AUTOINCREMENT mark (ids of deleted rows are not handed out again either) -> the next id."""
    next_id = None
    for column in plan.identities:
        (copied_max,) = target.raw.execute(f"SELECT MAX({column}) FROM {plan.table}").fetchone()
        used = max(copied_max or 0, _sqlite_sequence(source, plan.table))
        if used > 0:
            target.raw.execute(
                "SELECT setval(pg_get_serial_sequence(%s, %s), %s)", (plan.table, column, used)
            )
        next_id = used + 1
    return next_id


def _sqlite_sequence(source: Database, table: str) -> int:
    try:
        row = source.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    except sqlite3.OperationalError:  # no AUTOINCREMENT table in this store
        return 0
    return 0 if row is None else int(row[0])


class _Digest:
    """SHA-256 of each row, in sequence (`ordered`) or summed modulo 2**256 (any order, still
    counting a row held twice)."""

    def __init__(self, *, ordered: bool) -> None:
        self.ordered = ordered
        self.rows = 0
        self._sum = 0
        self._sequence = hashlib.sha256()

    def add_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        for row in rows:
            encoded = _encode_row(row)
            if self.ordered:
                self._sequence.update(hashlib.sha256(encoded).digest())
            else:
                self._sum += int.from_bytes(hashlib.sha256(encoded).digest(), "big")
            self.rows += 1

    @property
    def value(self) -> int:
        if self.ordered:
            return int.from_bytes(self._sequence.digest(), "big")
        return self._sum % _DIGEST_MODULUS


def _encode_row(row: Sequence[Any]) -> bytes:
    """Each value with its type and length, so 1 and '1', or b'' and NULL, never look alike."""
    parts = []
    for value in row:
        if value is None:
            parts.append(b"N")
            continue
        if isinstance(value, int):
            tag, data = b"I", str(value).encode()
        elif isinstance(value, float):  # no bridge column holds one; PostgreSQL would refuse it
            tag, data = b"F", repr(value).encode()
        elif isinstance(value, str):
            tag, data = b"T", value.encode("utf-8", "surrogatepass")
        else:
            tag, data = b"B", bytes(value)
        parts.append(tag + len(data).to_bytes(8, "big") + data)
    return b"".join(parts)


def _sqlite_tables(conn: Database) -> list[str]:
    return [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
            " ORDER BY name"
        )
    ]


def _postgres_tables(conn: Database) -> list[str]:
    return [
        name
        for (name,) in conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        )
    ]


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
