"""Posting readings into the health community's FHIR server, with retry and dead letters.

When the bridge has a `fhir_base_url`, each reading's resources are not written to the bridge's
embedded store; its transaction Bundle (conditional creates, `ifNoneExist` on stable
identifiers) goes into the `fhir_posts` queue in the same commit that stores the reading, before
the gateway is acked. `FhirPoster` then posts the queue, oldest first:
- 2xx: posted;
- a network error, a time-out, 408, 429 or 5xx: tried again later, with exponential backoff and
  jitter (to `max_backoff_s`), for as long as it takes: the server being away loses nothing;
- 401 or 403: the server refuses this bridge's token (missing, revoked, a role that may not
  post), not the bundle: tried again the same way, with the answer in the log and in
  `last_error`, until the token is fixed (`--fhir-token`);
- any other 4xx: the server will not take it as it is; it becomes a dead letter with the
  server's answer (status and body), so a person can read why, fix it, and replay it
  (`kiosk-bridge fhir-posts replay`).
Because every entry is a conditional create, a bundle posted twice (a lost response, a replay)
creates nothing the second time.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from cloud_bridge.db import Database

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS fhir_posts (
    gateway_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    bundle TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'posted', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    last_status INTEGER,
    last_answer TEXT,
    PRIMARY KEY (gateway_id, seq)
);
CREATE INDEX IF NOT EXISTS fhir_posts_due ON fhir_posts (state, next_attempt_ms)
"""
_RETRIED = {401, 403, 408, 429}
_ANSWER_LIMIT = 4000  # characters of the server's answer kept with a dead letter


def ensure_schema(conn: Database) -> None:
    conn.ddl(SCHEMA)


def enqueue(conn: Database, bundles: Sequence[tuple[str, int, str]]) -> None:
    """Queue readings' transaction Bundles (gateway id, seq, Bundle JSON) in one statement;
    inside the caller's transaction (the one that stores the readings)."""
    if bundles:
        conn.executemany(
            "INSERT INTO fhir_posts (gateway_id, seq, bundle) VALUES (?, ?, ?)"
            " ON CONFLICT (gateway_id, seq) DO NOTHING",
            bundles,
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    gateway_id: str
    seq: int
    status: int | None
    answer: str | None
    attempts: int


def dead_letters(conn: Database) -> list[DeadLetter]:
    rows = conn.execute(
        """SELECT gateway_id, seq, last_status, last_answer, attempts FROM fhir_posts
           WHERE state = 'dead' ORDER BY gateway_id, seq"""
    ).fetchall()
    return [DeadLetter(*row) for row in rows]


def replay(conn: Database, gateway_id: str | None = None, seq: int | None = None) -> int:
    """Put dead letters (all, one gateway's, or one) back in the queue; returns how many."""
    where, args = "state = 'dead'", []
    if gateway_id is not None:
        where += " AND gateway_id = ?"
        args.append(gateway_id)
    if seq is not None:
        where += " AND seq = ?"
        args.append(seq)
    with conn.transaction():
        cursor = conn.execute(
            f"UPDATE fhir_posts SET state = 'pending', attempts = 0, next_attempt_ms = 0 WHERE {where}", args
        )
    return cursor.rowcount


def counts(conn: Database) -> dict[str, int]:
    out = {"pending": 0, "posted": 0, "dead": 0}
    for state, count in conn.execute("SELECT state, COUNT(*) FROM fhir_posts GROUP BY state"):
        out[state] = count
    return out


class FhirPoster:
    """Posts the queue to `base_url` from a thread of its own, until `stop()`."""

    def __init__(
        self,
        conn: Database,
        lock: threading.Lock,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        min_backoff_s: float = 1.0,
        max_backoff_s: float = 300.0,
        idle_s: float = 0.5,
        token: str | None = None,
    ) -> None:
        """`token`: sent as `Authorization: Bearer` (a bridge as the server: a token with role
        "bridge", `kiosk-bridge token add`)."""
        self._conn = conn
        self._lock = lock
        self.base_url = base_url.rstrip("/")
        headers = {"Content-Type": "application/fhir+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(timeout=timeout_s, headers=headers)
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.idle_s = idle_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fhir-poster", daemon=True)
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def use(self, conn: Database) -> None:
        """Post through another connection from now on (the consumer reconnected); under the lock."""
        self._conn = conn

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._http.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                posted = self.post_due()
            except self._conn.Error:
                log.exception("fhir poster: store error; will try again")
                posted = 0
            if not posted:
                self._stop.wait(self.idle_s)

    def post_due(self, limit: int = 50) -> int:
        """Post what is due now, oldest first; returns how many were attempted."""
        now_ms = time.time_ns() // 1_000_000
        with self._lock:
            rows = self._conn.execute(
                """SELECT gateway_id, seq, bundle, attempts FROM fhir_posts
                   WHERE state = 'pending' AND next_attempt_ms <= ?
                   ORDER BY gateway_id, seq LIMIT ?""",
                (now_ms, limit),
            ).fetchall()
        for gateway_id, seq, bundle, attempts in rows:
            if self._stop.is_set():
                break
            self._post_one(gateway_id, seq, bundle, attempts)
        return len(rows)

    def _post_one(self, gateway_id: str, seq: int, bundle: str, attempts: int) -> None:
        status: int | None = None
        try:
            response = self._http.post(self.base_url, content=bundle.encode("utf-8"))
            status, answer = response.status_code, response.text[:_ANSWER_LIMIT]
        except httpx.HTTPError as exc:
            answer = f"{type(exc).__name__}: {exc}"
        if status is not None and 200 <= status < 300:
            self._set(gateway_id, seq, "posted", attempts + 1, 0, status, None)
            self.last_error = None
            return
        if status is not None and 400 <= status < 500 and status not in _RETRIED:
            log.error(
                "fhir poster: %s seq %d refused by the server (%d): dead letter", gateway_id, seq, status
            )
            self._set(gateway_id, seq, "dead", attempts + 1, 0, status, answer)
            return
        backoff = min(self.max_backoff_s, self.min_backoff_s * 2**attempts) * (0.5 + random.random() / 2)
        if status in (401, 403):  # our token, not the bundle: say what the server said
            self.last_error = (
                f"{gateway_id} seq {seq}: the server refused our token ({status}): {answer[:300]}"
            )
        else:
            self.last_error = f"{gateway_id} seq {seq}: {status or answer}"
        log.warning("fhir poster: %s; retry in %.1f s", self.last_error, backoff)
        due = time.time_ns() // 1_000_000 + int(backoff * 1000)
        self._set(gateway_id, seq, "pending", attempts + 1, due, status, answer)

    def _set(
        self,
        gateway_id: str,
        seq: int,
        state: str,
        attempts: int,
        due_ms: int,
        status: int | None,
        answer: str | None,
    ) -> None:
        with self._lock, self._conn.transaction():
            self._conn.execute(
                """UPDATE fhir_posts SET state = ?, attempts = ?, next_attempt_ms = ?, last_status = ?,
                       last_answer = ? WHERE gateway_id = ? AND seq = ?""",
                (state, attempts, due_ms, status, answer, gateway_id, seq),
            )
