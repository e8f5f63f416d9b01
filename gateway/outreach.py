"""A vehicle's day of outreach: the queue of residents the crew will see, kept on the gateway.

The crew builds the day's queue on the kiosk screen, one resident at a time or from the CSV list
the township gives (name, ID-card or health-record number, village), and works through it with
the 4G link down: everything here is local. Each entry is waiting, checked (checked in at the
kiosk) or skipped (not seen today; it can be put back).

Entries live in their own SQLite file (`outreach.sqlite`, WAL, synchronous=FULL) beside the
outbox, as the operators' file does. Everything about the person (number, name, village) is
sealed with the gateway's storage key (AES-GCM, its own context), so the file alone names nobody;
a day's queue is small (a few hundred), so it is unsealed whole to list or to find duplicates.

`parse_queue_csv` is pure: bytes in (UTF-8, or GB18030 as Excel saves it on a Chinese Windows),
people and the rows it could not take out, each with its line and reason, never the number.
"""

from __future__ import annotations

import asyncio
import csv
import datetime
import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from contract.wire import ResidentRef
from gateway.errors import GatewayError
from gateway.keys import GatewayKeys
from gateway.resident_ids import ResidentIdError, parse_resident

__all__ = [
    "MAX_CSV_BYTES",
    "QUEUE_DB",
    "STATES",
    "CsvImport",
    "OutreachQueue",
    "Person",
    "QueueEntry",
    "QueueError",
    "RejectedRow",
    "check_day",
    "check_person_text",
    "parse_queue_csv",
]

QUEUE_DB = "outreach.sqlite"
STATES = ("waiting", "checked", "skipped")
MAX_CSV_BYTES = 1024 * 1024
MAX_ROWS = 2000  # a day of outreach is a few hundred residents at most
MAX_TEXT = 64  # characters of a name or a village
_CONTEXT = b"outreach-queue"

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    day TEXT NOT NULL,
    position INTEGER NOT NULL,
    person_sealed BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'waiting' CHECK (state IN ('waiting', 'checked', 'skipped')),
    added_ms INTEGER NOT NULL,
    added_by TEXT NOT NULL,
    changed_ms INTEGER,
    changed_by TEXT
);
CREATE INDEX IF NOT EXISTS queue_day ON queue (day, position);
"""


class QueueError(GatewayError):
    """A request about the queue that cannot be done; `code` names why for the kiosk's texts."""

    def __init__(self, code: str, message: str, **params: object) -> None:
        super().__init__(message)
        self.code = code
        self.params = params


@dataclass(frozen=True, slots=True)
class Person:
    resident: ResidentRef
    name: str = ""
    village: str = ""


@dataclass(frozen=True, slots=True)
class QueueEntry:
    id: int
    day: str
    position: int
    person: Person
    state: str
    changed_ms: int | None
    changed_by: str | None


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A CSV row not taken: its line in the file, a code for the kiosk's texts, the reason."""

    line: int
    code: str
    message: str
    name: str = ""
    params: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CsvImport:
    people: tuple[tuple[int, Person], ...]  # (line, person)
    rejected: tuple[RejectedRow, ...]


def check_day(day: str) -> str:
    """A day of outreach as the screen names it: YYYY-MM-DD."""
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
            raise ValueError
        datetime.date.fromisoformat(day)
    except ValueError:
        raise QueueError("queue_day", "the day must be a date such as 2026-11-25") from None
    return day


def check_person_text(value: str, what: str) -> str:
    """A name or a village: trimmed, at most MAX_TEXT characters, no control characters."""
    value = re.sub(r"[\s\u3000]+", " ", value).strip()
    if len(value) > MAX_TEXT or not value.isprintable():
        raise QueueError(f"queue_{what}", f"the {what} must be at most {MAX_TEXT} printable characters")
    return value


# --- the township's CSV ------------------------------------------------------------------------------

_HEADERS: dict[str, set[str]] = {
    "name": {"姓名", "名字", "居民姓名", "name", "fullname", "residentname"},
    "id-card": {
        "身份证", "身份证号", "身份证号码", "公民身份号码",
        "idcard", "idcardno", "idcardnumber", "sfz", "sfzh",
    },
    "health-record": {
        "健康档案号", "档案号", "居民健康档案号", "健康档案编号", "健康档案",
        "healthrecord", "healthrecordno", "healthrecordnumber", "jkdah", "jkda",
    },
    "number": {"号码", "证件号", "证件号码", "编号", "number", "id", "idno"},
    "village": {"村", "村名", "村庄", "所在村", "行政村", "自然村", "村组", "village"},
}  # fmt: skip
_COLUMN_OF = {name: column for column, names in _HEADERS.items() for name in names}
_DELIMITERS = (",", "\t", ";", "，")
_MANGLED = re.compile(r"^\d[.,]\d+E\+?\d+$", re.IGNORECASE)  # Excel's 1.10105E+17
_ID_CARD_SHAPE = re.compile(r"\d{17}[\dX]|\d{15}")


def _header_key(cell: str) -> str:
    return re.sub(r"[\s_\-()（）:：*]+", "", cell).lower()


def _decode(data: bytes) -> str:
    if len(data) > MAX_CSV_BYTES:
        raise QueueError("csv_too_large", f"the file is larger than {MAX_CSV_BYTES // 1024} KB")
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise QueueError("csv_encoding", "the file is neither UTF-8 nor GBK text: save it as CSV again")


def _cell(row: list[str], index: int | None) -> str:
    if index is None or index >= len(row):
        return ""
    value = row[index].strip()
    if value.startswith('="') and value.endswith('"'):  # Excel's way of keeping a number as text
        value = value[2:-1]
    return value.lstrip("'").strip()


def _resident(column: str, value: str) -> ResidentRef:
    plain = re.sub(r"[\s\u3000]+", "", value).upper()
    if _MANGLED.match(plain):
        raise ResidentIdError(
            "number_mangled",
            "the number was turned into 1.23E+17 by a spreadsheet: format the column as text",
        )
    if column == "number":
        column = "id-card" if _ID_CARD_SHAPE.fullmatch(plain) else "health-record"
    return parse_resident(column, plain)


def parse_queue_csv(data: bytes) -> CsvImport:
    """People from the township's list. The first row names the columns (姓名 / 身份证号 /
    健康档案号 / 村, or their English names; a plain 号码 column is read as an ID-card number
    when it has that shape, else as a health-record number); without such a row the columns are
    name, number, village. A row whose number is wrong, missing or repeated is returned in
    `rejected` with its line; QueueError when the file as a whole cannot be read."""
    text = _decode(data)
    first_line = text.split("\n", 1)[0]
    delimiter = max(_DELIMITERS, key=first_line.count) if any(d in first_line for d in _DELIMITERS) else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    columns: dict[str, int] | None = None
    people: list[tuple[int, Person]] = []
    rejected: list[RejectedRow] = []
    seen: set[ResidentRef] = set()
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if columns is None:
                found = {
                    _COLUMN_OF[_header_key(c)]: i for i, c in enumerate(row) if _header_key(c) in _COLUMN_OF
                }
                columns = found or {"name": 0, "number": 1, "village": 2}
                if found:
                    if not {"id-card", "health-record", "number"} & set(found):
                        raise QueueError(
                            "csv_columns", "the file needs a column with the ID-card or health-record number"
                        )
                    continue
            if len(people) + len(rejected) >= MAX_ROWS:
                raise QueueError(
                    "csv_too_many", f"the file has more than {MAX_ROWS} residents", limit=MAX_ROWS
                )
            name = _cell(row, columns.get("name"))
            try:
                # The health-record number is the kiosk's usual key; an ID card is the fallback.
                column, value = next(
                    ((c, _cell(row, columns.get(c))) for c in ("health-record", "id-card", "number")
                     if _cell(row, columns.get(c))),
                    ("number", ""),
                )  # fmt: skip
                resident = _resident(column, value)
                person = Person(
                    resident,
                    check_person_text(name, "name"),
                    check_person_text(_cell(row, columns.get("village")), "village"),
                )
            except ResidentIdError as exc:
                rejected.append(RejectedRow(line, exc.code, str(exc), name[:MAX_TEXT], dict(exc.params)))
                continue
            except QueueError as exc:
                rejected.append(RejectedRow(line, exc.code, str(exc), name[:MAX_TEXT]))
                continue
            if resident in seen:
                rejected.append(RejectedRow(line, "duplicate", "this resident is already in the list", name))
                continue
            seen.add(resident)
            people.append((line, person))
    except csv.Error as exc:
        raise QueueError(
            "csv_format", f"the file is not a CSV table (line {reader.line_num}): {exc}"
        ) from None
    return CsvImport(tuple(people), tuple(rejected))


# --- the queue -------------------------------------------------------------------------------------


class OutreachQueue:
    """The queue on its own SQLite connection; resident data sealed with the storage key."""

    def __init__(self, db: aiosqlite.Connection, keys: GatewayKeys) -> None:
        self._db = db
        self._keys = keys
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, keys: GatewayKeys) -> OutreachQueue:
        if not path.exists():  # sealed, but still the owner's only
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        db = await aiosqlite.connect(path, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA busy_timeout=5000")
        await db.executescript(SCHEMA)
        return cls(db, keys)

    async def close(self) -> None:
        await self._db.close()

    def _seal(self, person: Person) -> bytes:
        resident = person.resident
        plain = {"s": resident.system, "v": resident.value, "n": person.name, "l": person.village}
        return self._keys.seal(json.dumps(plain, ensure_ascii=False).encode(), _CONTEXT)

    def _unseal(self, sealed: bytes) -> Person:
        plain = json.loads(self._keys.unseal(sealed, _CONTEXT))
        return Person(ResidentRef(plain["s"], plain["v"]), plain["n"], plain["l"])

    def _entry(self, row: Sequence[Any]) -> QueueEntry:
        entry_id, day, position, sealed, state, changed_ms, changed_by = row
        return QueueEntry(entry_id, day, position, self._unseal(sealed), state, changed_ms, changed_by)

    _COLUMNS = "id, day, position, person_sealed, state, changed_ms, changed_by"

    async def entries(self, day: str) -> list[QueueEntry]:
        """The day's queue in its order."""
        async with (
            self._lock,
            self._db.execute(
                f"SELECT {self._COLUMNS} FROM queue WHERE day = ? ORDER BY position, id", (day,)
            ) as cursor,
        ):
            rows = await cursor.fetchall()
        return [self._entry(tuple(row)) for row in rows]

    async def entry(self, entry_id: int) -> QueueEntry | None:
        async with (
            self._lock,
            self._db.execute(f"SELECT {self._COLUMNS} FROM queue WHERE id = ?", (entry_id,)) as cursor,
        ):
            row = await cursor.fetchone()
        return self._entry(tuple(row)) if row else None

    async def add(
        self, day: str, people: Sequence[Person], operator: str, now_ms: int
    ) -> tuple[list[QueueEntry], list[int]]:
        """Append people to the day's queue in one durable commit. Returns the entries added and
        the indexes (in `people`) of those already in the day's queue, which are not added again."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                async with self._db.execute(
                    "SELECT person_sealed FROM queue WHERE day = ?", (day,)
                ) as cursor:
                    present = {self._unseal(row[0]).resident for row in await cursor.fetchall()}
                async with self._db.execute(
                    "SELECT COALESCE(MAX(position), 0) FROM queue WHERE day = ?", (day,)
                ) as cursor:
                    (position,) = await cursor.fetchone()  # type: ignore[misc]
                added_ids: list[int] = []
                duplicates: list[int] = []
                for index, person in enumerate(people):
                    if person.resident in present:
                        duplicates.append(index)
                        continue
                    present.add(person.resident)
                    position += 1
                    async with self._db.execute(
                        """INSERT INTO queue (day, position, person_sealed, added_ms, added_by)
                           VALUES (?, ?, ?, ?, ?)""",
                        (day, position, self._seal(person), now_ms, operator),
                    ) as cursor:
                        assert cursor.lastrowid is not None
                        added_ids.append(cursor.lastrowid)
            except BaseException:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")
        added = [entry for entry_id in added_ids if (entry := await self.entry(entry_id)) is not None]
        return added, duplicates

    async def set_state(self, entry_id: int, state: str, operator: str, now_ms: int) -> QueueEntry | None:
        """Mark an entry waiting, checked or skipped; None if there is no such entry."""
        if state not in STATES:
            raise QueueError("queue_state", f"state must be one of {', '.join(STATES)}")
        async with (
            self._lock,
            self._db.execute(
                "UPDATE queue SET state = ?, changed_ms = ?, changed_by = ? WHERE id = ?",
                (state, now_ms, operator, entry_id),
            ) as cursor,
        ):
            changed = cursor.rowcount
        return await self.entry(entry_id) if changed else None

    async def remove(self, entry_id: int) -> QueueEntry | None:
        """Take an entry off the queue (added by mistake); returns what it was."""
        entry = await self.entry(entry_id)
        if entry is not None:
            async with self._lock:
                await self._db.execute("DELETE FROM queue WHERE id = ?", (entry_id,))
        return entry
