"""Who may see residents at the kiosk: operators, their sessions, lock-out, and the audit log.

An operator is a village doctor or a vehicle crew member with an id and a PIN. The PIN is kept
only as a salted scrypt hash and compared in constant time; hashing runs in a worker thread,
because the gateway's event loop also serves the boards' links. A session is a random token
held by the browser (an HttpOnly cookie); the database keeps only its SHA-256, so a copied
file opens no session. A session ends after `session_max_s`, or `session_idle_s` without use;
`lockout_after` wrong PINs in a row lock the operator for `lockout_s`.

The audit log says who signed in, who checked in which resident (whose readings they then
took) and who viewed which resident's readings. The resident is kept sealed with the gateway's
storage key and masked (first and last 4 characters), never in clear.

All of it lives in its own SQLite file (`operators.sqlite`, WAL) beside the outbox, so the
outbox's schema and its single connection stay the store's own business.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from contract.wire import ResidentRef
from gateway.config import KioskUiConfig
from gateway.errors import GatewayError
from gateway.resident_ids import mask

__all__ = [
    "OPERATORS_DB",
    "AuditRow",
    "Operator",
    "OperatorError",
    "Operators",
    "SessionEnded",
    "SignInRefused",
    "check_pin",
    "hash_pin",
]

OPERATORS_DB = "operators.sqlite"
Role = Literal["doctor", "crew"]
ROLES: tuple[str, ...] = ("doctor", "crew")
OPERATOR_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
PIN = re.compile(r"^\d{6,12}$")
# scrypt at 16 MiB: ~50 ms on a Raspberry-Pi-class CPU, so guessing offline costs too.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_SESSION_TOUCH_MS = 30_000  # write last-use at most this often per session
_DAY_MS = 86_400_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS operators (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('doctor', 'crew')),
    pin_hash TEXT NOT NULL,
    failed_pins INTEGER NOT NULL DEFAULT 0,
    locked_until_ms INTEGER,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_sha256 BLOB PRIMARY KEY,
    operator_id TEXT NOT NULL REFERENCES operators (id),
    started_ms INTEGER NOT NULL,
    last_used_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    end_reason TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    operator_id TEXT,
    action TEXT NOT NULL,
    resident_masked TEXT,
    resident_sealed BLOB,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at_ms);
"""


class OperatorError(GatewayError):
    """An operator cannot be added, signed in or served; `code` names why for the kiosk's texts."""

    code = "operator_error"


class SignInRefused(OperatorError):
    """Wrong id or PIN (`code` "wrong_pin"), or locked out ("locked", with `retry_after_s`)."""

    def __init__(self, code: str, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_s = retry_after_s


class SessionEnded(OperatorError):
    """No session, or one that ended: "no_session", "expired" (idle or too long), "signed_out"."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Operator:
    id: str
    name: str
    role: str


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at_ms: int
    operator_id: str | None
    action: str
    resident_masked: str | None
    detail: str | None


def hash_pin(pin: str, salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$salt$hash` (hex), with a fresh 16-byte salt per operator."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(pin.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_pin(pin: str, stored: str) -> bool:
    """Whether `pin` matches the stored hash, compared in constant time."""
    scheme, n, r, p, salt, digest = stored.split("$")
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(
        pin.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=len(digest) // 2
    )
    return hmac.compare_digest(candidate, bytes.fromhex(digest))


# Compared against when the id is unknown, so a wrong id takes as long as a wrong PIN.
@functools.cache
def _dummy_hash() -> str:
    """Made at the first unknown id, not at import: scrypt takes 16 MB for a moment, which every
    process that imports this module (the gateway service, each CLI call) would otherwise pay."""
    return hash_pin("000000", salt=bytes(16))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Operators:
    """Operators, sessions and audit on their own SQLite connection."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        policy: KioskUiConfig,
        *,
        seal: Callable[[ResidentRef], bytes] | None = None,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._db = db
        self.policy = policy
        self._seal = seal
        self._clock_ms = clock_ms
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        path: Path,
        policy: KioskUiConfig | None = None,
        *,
        seal: Callable[[ResidentRef], bytes] | None = None,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> Operators:
        """`seal` encrypts a resident for the audit log (the gateway's storage key)."""
        if not path.exists():  # PIN hashes and sealed residents: the owner's only (SQLite keeps the mode)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        db = await aiosqlite.connect(path, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA busy_timeout=5000")
        await db.executescript(SCHEMA)
        return cls(db, policy or KioskUiConfig(), seal=seal, clock_ms=clock_ms)

    async def close(self) -> None:
        await self._db.close()

    async def _one(self, sql: str, args: tuple[object, ...]) -> tuple[Any, ...] | None:
        async with self._lock, self._db.execute(sql, args) as cursor:
            row = await cursor.fetchone()
        return tuple(row) if row is not None else None

    async def _write(self, sql: str, args: tuple[object, ...]) -> int:
        async with self._lock, self._db.execute(sql, args) as cursor:
            return cursor.rowcount

    # operators -----------------------------------------------------------------------------
    async def add(self, operator_id: str, name: str, role: str, pin: str) -> Operator:
        """A new operator (the technician's `kiosk-gateway operator add`)."""
        if not OPERATOR_ID.match(operator_id):
            raise OperatorError(f"operator id {operator_id!r}: 1-64 letters, digits, '.', '_' or '-'")
        if role not in ROLES:
            raise OperatorError(f"role {role!r}: one of {', '.join(ROLES)}")
        if not name.strip():
            raise OperatorError("the operator's name is empty")
        if not PIN.match(pin):
            raise OperatorError("a PIN is 6 to 12 digits")
        pin_hash = await asyncio.to_thread(hash_pin, pin)
        try:
            await self._write(
                "INSERT INTO operators (id, name, role, pin_hash, created_ms) VALUES (?, ?, ?, ?, ?)",
                (operator_id, name.strip(), role, pin_hash, self._clock_ms()),
            )
        except aiosqlite.IntegrityError as exc:
            raise OperatorError(f"operator {operator_id!r} exists already") from exc
        await self.audit(operator_id, "operator_added", detail=role)
        return Operator(operator_id, name.strip(), role)

    async def set_pin(self, operator_id: str, pin: str) -> None:
        """A new PIN; also lifts a lock-out and ends the operator's sessions."""
        if not PIN.match(pin):
            raise OperatorError("a PIN is 6 to 12 digits")
        pin_hash = await asyncio.to_thread(hash_pin, pin)
        changed = await self._write(
            "UPDATE operators SET pin_hash = ?, failed_pins = 0, locked_until_ms = NULL WHERE id = ?",
            (pin_hash, operator_id),
        )
        if not changed:
            raise OperatorError(f"no operator {operator_id!r}")
        await self._write(
            """UPDATE sessions SET ended_ms = ?, end_reason = 'pin_reset'
               WHERE operator_id = ? AND ended_ms IS NULL""",
            (self._clock_ms(), operator_id),
        )
        await self.audit(operator_id, "pin_reset")

    async def roster(self) -> list[tuple[Operator, int | None]]:
        """Every operator with the time a lock-out ends (None: not locked)."""
        async with (
            self._lock,
            self._db.execute("SELECT id, name, role, locked_until_ms FROM operators ORDER BY id") as cursor,
        ):
            rows = await cursor.fetchall()
        now = self._clock_ms()
        return [(Operator(r[0], r[1], r[2]), r[3] if r[3] and r[3] > now else None) for r in rows]

    # sessions --------------------------------------------------------------------------------
    async def sign_in(self, operator_id: str, pin: str) -> tuple[str, Operator]:
        """A new session token for the operator; SignInRefused for a wrong id or PIN, or a lock."""
        row = await self._one(
            "SELECT name, role, pin_hash, failed_pins, locked_until_ms FROM operators WHERE id = ?",
            (operator_id,),
        )
        now = self._clock_ms()
        if row is None:
            await asyncio.to_thread(check_pin, pin, _dummy_hash())
            await self.audit(None, "sign_in_refused", detail="unknown operator")
            raise SignInRefused("wrong_pin", "wrong operator id or PIN")
        name, role, pin_hash, failed, locked_until = row
        if locked_until is not None and locked_until > now:
            retry = -(-(locked_until - now) // 1000)
            raise SignInRefused("locked", f"too many wrong PINs: locked for {retry} s more", retry)
        if not await asyncio.to_thread(check_pin, pin, pin_hash):
            # Counted in one statement: two guesses at once must both count.
            counted = await self._one(
                "UPDATE operators SET failed_pins = failed_pins + 1 WHERE id = ? RETURNING failed_pins",
                (operator_id,),
            )
            failed = counted[0] if counted else failed + 1
            if failed >= self.policy.lockout_after:
                until = now + int(self.policy.lockout_s * 1000)
                await self._write(
                    "UPDATE operators SET failed_pins = 0, locked_until_ms = ? WHERE id = ?",
                    (until, operator_id),
                )
                await self.audit(operator_id, "locked_out", detail=f"{failed} wrong PINs")
                retry = int(self.policy.lockout_s)
                raise SignInRefused("locked", f"too many wrong PINs: locked for {retry} s", retry)
            await self.audit(operator_id, "sign_in_refused", detail="wrong PIN")
            raise SignInRefused("wrong_pin", "wrong operator id or PIN")
        token = secrets.token_urlsafe(32)
        long_over = now - int(self.policy.session_max_s * 1000) - _DAY_MS  # of no use to anyone
        await self._write("DELETE FROM sessions WHERE started_ms < ?", (long_over,))
        await self._write(
            "UPDATE operators SET failed_pins = 0, locked_until_ms = NULL WHERE id = ?", (operator_id,)
        )
        await self._write(
            "INSERT INTO sessions (token_sha256, operator_id, started_ms, last_used_ms) VALUES (?, ?, ?, ?)",
            (_token_hash(token), operator_id, now, now),
        )
        await self.audit(operator_id, "sign_in")
        return token, Operator(operator_id, name, role)

    async def session(self, token: str | None, *, touch: bool = True) -> Operator:
        """The operator of a live session; SessionEnded otherwise. `touch` counts this as use
        (a live event stream does not: an unattended screen must still time out)."""
        if not token:
            raise SessionEnded("no_session", "sign in first")
        key = _token_hash(token)
        row = await self._one(
            """SELECT s.operator_id, s.started_ms, s.last_used_ms, s.ended_ms, s.end_reason, o.name, o.role
               FROM sessions s JOIN operators o ON o.id = s.operator_id WHERE s.token_sha256 = ?""",
            (key,),
        )
        if row is None:
            raise SessionEnded("no_session", "sign in first")
        operator_id, started, last_used, ended, reason, name, role = row
        if ended is not None:
            code = "signed_out" if reason == "signed_out" else "expired"
            raise SessionEnded(code, "the session has ended: sign in again")
        now = self._clock_ms()
        too_long = now - started >= self.policy.session_max_s * 1000
        idle = now - last_used >= self.policy.session_idle_s * 1000
        if too_long or idle:
            why = "max_age" if too_long else "idle"
            await self._write(
                "UPDATE sessions SET ended_ms = ?, end_reason = ? WHERE token_sha256 = ?", (now, why, key)
            )
            await self.audit(operator_id, "session_expired", detail=why)
            raise SessionEnded("expired", "the session has expired: sign in again")
        if touch and now - last_used >= _SESSION_TOUCH_MS:
            await self._write("UPDATE sessions SET last_used_ms = ? WHERE token_sha256 = ?", (now, key))
        return Operator(operator_id, name, role)

    async def sign_out(self, token: str) -> None:
        key = _token_hash(token)
        row = await self._one("SELECT operator_id FROM sessions WHERE token_sha256 = ?", (key,))
        await self._write(
            """UPDATE sessions SET ended_ms = ?, end_reason = 'signed_out'
               WHERE token_sha256 = ? AND ended_ms IS NULL""",
            (self._clock_ms(), key),
        )
        if row is not None:
            await self.audit(row[0], "sign_out")

    # audit -----------------------------------------------------------------------------------
    async def audit(
        self,
        operator_id: str | None,
        action: str,
        *,
        resident: ResidentRef | None = None,
        detail: str | None = None,
    ) -> None:
        """One line of the audit log; the resident sealed and masked, never in clear."""
        sealed = self._seal(resident) if resident is not None and self._seal is not None else None
        masked = f"{resident.system}:{mask(resident.value)}" if resident is not None else None
        await self._write(
            """INSERT INTO audit (at_ms, operator_id, action, resident_masked, resident_sealed, detail)
               VALUES (?, ?, ?, ?, ?, ?)""",
            (self._clock_ms(), operator_id, action, masked, sealed, detail),
        )

    async def audit_many(
        self, operator_id: str, action: str, residents: Sequence[ResidentRef], *, detail: str | None = None
    ) -> None:
        """One line per resident in one durable commit (a list shows many residents at once:
        one fsync, not one each)."""
        if not residents:
            return
        now = self._clock_ms()
        rows = [
            (
                now,
                operator_id,
                action,
                f"{resident.system}:{mask(resident.value)}",
                self._seal(resident) if self._seal is not None else None,
                detail,
            )
            for resident in residents
        ]
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                await self._db.executemany(
                    """INSERT INTO audit
                           (at_ms, operator_id, action, resident_masked, resident_sealed, detail)
                       VALUES (?, ?, ?, ?, ?, ?)""",
                    rows,
                )
            except BaseException:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    async def audit_rows(self, limit: int = 100) -> list[AuditRow]:
        """The newest audit lines first (residents masked)."""
        async with (
            self._lock,
            self._db.execute(
                """SELECT id, at_ms, operator_id, action, resident_masked, detail
                   FROM audit ORDER BY id DESC LIMIT ?""",
                (limit,),
            ) as cursor,
        ):
            rows = await cursor.fetchall()
        return [AuditRow(*row) for row in rows]


def operator_dict(operator: Operator) -> dict[str, str]:
    return dataclasses.asdict(operator)
