"""Who may call the bridge's HTTP API: named bearer tokens, each with one role.

A token is 32 random bytes (URL-safe base64 behind a `kb_` prefix, so a leaked one is easy to
recognise); it is shown once, when it is made (`kiosk-bridge token add NAME --role ROLE`). The
bridge keeps only its SHA-256, in the `api_tokens` table of the bridge's store, and compares
digests in constant time: a copy of the database gives no usable token. A revoked token stays in
the table (who had it, when it was revoked) and is refused from the next request on; the name can
then be given a new token. A token may carry an expiry time (`token add` sets one a year ahead
unless told otherwise): after it the token is refused as expired, and the name may be given a new
one straight away (the expired token is retired then).

What each role may do is the table `PERMISSIONS` below (README "Tokens and roles").
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from cloud_bridge.db import Database

__all__ = [
    "PERMISSIONS",
    "ROLES",
    "Principal",
    "Refusal",
    "TokenError",
    "TokenInfo",
    "add_token",
    "authenticate",
    "ensure_schema",
    "list_tokens",
    "revoke_token",
    "roles_for",
    "token_digest",
]

# technician: installs and enrols gateways; doctor: the county specialist team working referrals;
# health_manager: the county's figures and referral overview; admin: everything; bridge: a
# service account for another bridge posting transaction Bundles into this one's /fhir.
ROLES = ("technician", "doctor", "health_manager", "admin", "bridge")

# permission -> the roles that have it. /healthz, /metrics, /fhir/metadata and the OpenAPI pages
# need no token.
PERMISSIONS: dict[str, frozenset[str]] = {
    "referrals:read": frozenset({"doctor", "health_manager", "admin"}),
    "referrals:work": frozenset({"doctor", "admin"}),  # claim and close: clinical work
    "figures:read": frozenset({"health_manager", "admin"}),
    "fleet:read": frozenset({"technician", "admin"}),
    "fleet:enrol": frozenset({"technician", "admin"}),
    "fhir:read": frozenset({"doctor", "health_manager", "admin"}),
    "fhir:write": frozenset({"bridge", "admin"}),
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    token_sha256 BLOB NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER,
    expires_at_ms INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS api_tokens_live_name ON api_tokens (name) WHERE revoked_at_ms IS NULL
"""

TOKEN_PREFIX = "kb_"
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,100}$")


class TokenError(ValueError):
    """A token the bridge will not make or revoke; the message says why."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Whoever holds the token of a request: the token's name and its role."""

    name: str
    role: str


@dataclass(frozen=True, slots=True)
class TokenInfo:
    name: str
    role: str
    created_at_ms: int
    revoked_at_ms: int | None
    expires_at_ms: int | None = None

    def state(self, now_ms: int) -> str:
        """live, revoked or expired (a token revoked after it expired was retired: expired)."""
        ended_ms = self.revoked_at_ms if self.revoked_at_ms is not None else now_ms
        if self.expires_at_ms is not None and self.expires_at_ms <= min(now_ms, ended_ms):
            return "expired"
        return "revoked" if self.revoked_at_ms is not None else "live"


def ensure_schema(conn: Database) -> None:
    conn.ddl(SCHEMA)
    # A store made before tokens could expire: add the column in place (its tokens never expire).
    if conn.dialect == "sqlite":
        columns = {row[1] for row in conn.execute("PRAGMA table_info(api_tokens)")}
        if "expires_at_ms" not in columns:
            conn.execute("ALTER TABLE api_tokens ADD COLUMN expires_at_ms INTEGER")
    else:
        conn.ddl("ALTER TABLE api_tokens ADD COLUMN IF NOT EXISTS expires_at_ms INTEGER")


def roles_for(permission: str) -> frozenset[str]:
    return PERMISSIONS[permission]


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def add_token(conn: Database, name: str, role: str, *, now_ms: int, expires_at_ms: int | None = None) -> str:
    """A new token for `name` with `role`, valid until `expires_at_ms` (None: until revoked);
    returns it (the only time it exists in clear). Raises TokenError for an unknown role, a bad
    name, an expiry not after `now_ms`, or a name that has a live token (an expired one is
    retired here, so its holder can be given a new token without a revoke first)."""
    name = name.strip()
    if role not in ROLES:
        raise TokenError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if not _NAME.match(name):
        raise TokenError("name: 1-100 characters, no control characters")
    if expires_at_ms is not None and expires_at_ms <= now_ms:
        raise TokenError("expiry: must be after now")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        with conn.transaction():
            conn.execute(
                """UPDATE api_tokens SET revoked_at_ms = ?
                   WHERE name = ? AND revoked_at_ms IS NULL AND expires_at_ms <= ?""",
                (now_ms, name, now_ms),
            )
            conn.execute(
                """INSERT INTO api_tokens (name, role, token_sha256, created_at_ms, expires_at_ms)
                   VALUES (?, ?, ?, ?, ?)""",
                (name, role, token_digest(token), now_ms, expires_at_ms),
            )
    except conn.IntegrityError as exc:
        raise TokenError(f"{name} already has a token: revoke it first (kiosk-bridge token revoke)") from exc
    return token


def revoke_token(conn: Database, name: str, *, now_ms: int) -> bool:
    """Revoke `name`'s live token; False if it has none."""
    with conn.transaction():
        cursor = conn.execute(
            "UPDATE api_tokens SET revoked_at_ms = ? WHERE name = ? AND revoked_at_ms IS NULL",
            (now_ms, name.strip()),
        )
    return cursor.rowcount == 1


def list_tokens(conn: Database) -> list[TokenInfo]:
    """Every token ever made, live and revoked, by name: no secret, no digest."""
    rows = conn.execute(
        """SELECT name, role, created_at_ms, revoked_at_ms, expires_at_ms FROM api_tokens
           ORDER BY name, created_at_ms"""
    ).fetchall()
    return [TokenInfo(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a token was not accepted: `unknown`, `revoked` or `expired`."""

    reason: str


def authenticate(conn: Database, token: str, *, now_ms: int) -> Principal | Refusal:
    """The holder of `token`, or why it is refused."""
    digest = token_digest(token)
    row = conn.execute(
        """SELECT name, role, token_sha256, revoked_at_ms, expires_at_ms FROM api_tokens
           WHERE token_sha256 = ?""",
        (digest,),
    ).fetchone()
    if row is None or not hmac.compare_digest(bytes(row[2]), digest):
        return Refusal("unknown")
    if row[4] is not None and row[4] <= now_ms:
        return Refusal("expired")
    if row[3] is not None:
        return Refusal("revoked")
    return Principal(name=row[0], role=row[1])
