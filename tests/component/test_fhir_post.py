"""Posting into the health community's FHIR server: retry while it is away, dead letters with
its answer, replay, and no doubles on a repost.

The community's server is a second bridge's FHIR API over real HTTP (uvicorn on a loopback
port, its own store); the posting bridge stores verified batches in its own store and queues each
reading's transaction Bundle in the same commit. Each test runs on SQLite files and on PostgreSQL
databases.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from cloud_bridge import fhir_post, store
from cloud_bridge.api import create_app
from cloud_bridge.cli import app as bridge_cli
from cloud_bridge.db import Database
from cloud_bridge.fhir_post import FhirPoster
from cloud_bridge.receive import receive_batch
from contract.wire import GENESIS_HASH, Reading, ResidentRef, encode_batch, up_topic
from simulators.chain import free_port, port_open, wait_for
from tests.component.bridge_auth import bearer
from tests.component.bridge_readings import bp_reading

GATEWAY = "gw-post-01"
RESIDENT = ResidentRef("health-record", "330781-2026-000789")


def reading(seq: int) -> Reading:
    return bp_reading(
        GATEWAY, seq, 120 + seq, 80, resident=RESIDENT, measured_at_ms=1795564800000 + seq * 60_000
    )


class CommunityServer:
    """A bridge's FHIR API on its own store (SQLite file or PostgreSQL database), served over HTTP
    from a thread."""

    def __init__(self, db: Path | str, port: int) -> None:
        self.db = db
        self.port = port
        self.url = f"http://127.0.0.1:{port}/fhir"
        # What the posting bridge is given (--fhir-token): a service token with role "bridge".
        self.headers = bearer(db, "bridge", "county bridge")
        self.token = self.headers["Authorization"].removeprefix("Bearer ")
        self.reader = bearer(db, "doctor", "county doctor")
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server = uvicorn.Server(
            uvicorn.Config(create_app(str(self.db)), host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_for(lambda: port_open(self.port), timeout=10, what="the community FHIR server")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            assert self._thread is not None
            self._thread.join(10)
            self._server = None

    def observations(self) -> int:
        conn = store.connect(self.db)
        try:
            return conn.execute(
                "SELECT COUNT(*) FROM fhir_resources WHERE resource_type = 'Observation'"
            ).fetchone()[0]
        finally:
            conn.close()


@pytest.fixture
def server(
    bridge_db: Path | str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[CommunityServer]:
    """The community's server on the same back-end as the posting bridge."""
    if isinstance(bridge_db, Path):
        community_db: Path | str = tmp_path / "community.db"
    else:
        community_db = request.getfixturevalue("postgres_server").create_database()
    community = CommunityServer(community_db, free_port())
    yield community
    community.stop()


@pytest.fixture
def sender(bridge_db: Path | str) -> Iterator[Database]:
    """The posting bridge's store, with three readings of an enrolled gateway received."""
    key = Ed25519PrivateKey.generate()
    conn = store.connect(bridge_db, shared_across_threads=True)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    store.enrol_gateway(conn, GATEWAY, pem.decode(), site="county", kind="kiosk", now_ms=0)
    message, _ = encode_batch(
        [reading(1), reading(2), reading(3)], prev_hash=GENESIS_HASH, signing_key=key, number=1
    )
    outcome = receive_batch(conn, up_topic(GATEWAY), message, now_ms=1795564900000, post_to_remote=True)
    assert outcome.stored == 3 and outcome.ack is not None
    yield conn
    conn.close()


def poster(conn: Database, server: CommunityServer, token: str | None = "the server's") -> FhirPoster:
    return FhirPoster(
        conn,
        threading.Lock(),
        server.url,
        timeout_s=2,
        min_backoff_s=0.05,
        max_backoff_s=0.2,
        token=server.token if token == "the server's" else token,
    )


def test_readings_are_queued_not_stored_locally_and_posted_once(
    sender: Database, server: CommunityServer
) -> None:
    assert fhir_post.counts(sender) == {"pending": 3, "posted": 0, "dead": 0}
    assert sender.execute("SELECT COUNT(*) FROM fhir_resources").fetchone() == (0,)
    server.start()
    posting = poster(sender, server)
    assert posting.post_due() == 3
    assert fhir_post.counts(sender) == {"pending": 0, "posted": 3, "dead": 0}
    assert server.observations() == 3
    patients = httpx.get(
        f"{server.url}/Patient",
        params={"identifier": f"urn:kiosk:sid:resident-health-record|{RESIDENT.value}"},
        headers=server.reader,
    ).json()
    assert patients["total"] == 1  # one resident: conditional create by identifier


def test_a_repost_creates_nothing(sender: Database, server: CommunityServer) -> None:
    server.start()
    (bundle,) = sender.execute("SELECT bundle FROM fhir_posts WHERE seq = 1").fetchone()
    headers = {"Content-Type": "application/fhir+json", **server.headers}
    first = httpx.post(server.url, content=bundle, headers=headers).json()
    again = httpx.post(server.url, content=bundle, headers=headers).json()
    assert {e["response"]["status"] for e in first["entry"]} == {"201 Created"}
    assert {e["response"]["status"] for e in again["entry"]} == {"200 OK"}
    assert [e["response"]["location"] for e in again["entry"]] == [
        e["response"]["location"] for e in first["entry"]
    ]
    assert server.observations() == 1


def test_a_server_that_is_away_gets_everything_once_it_is_back(
    sender: Database, server: CommunityServer
) -> None:
    posting = poster(sender, server)
    posting.post_due()  # nobody listening
    assert fhir_post.counts(sender)["pending"] == 3
    assert posting.last_error is not None and "ConnectError" in str(
        sender.execute("SELECT last_answer FROM fhir_posts").fetchone()
    )
    server.start()
    deadline = time.monotonic() + 10
    while fhir_post.counts(sender)["posted"] < 3 and time.monotonic() < deadline:
        posting.post_due()
        time.sleep(0.05)
    assert fhir_post.counts(sender) == {"pending": 0, "posted": 3, "dead": 0}
    assert server.observations() == 3


@pytest.mark.parametrize("token", [None, "kb_not-a-token-of-this-server", "doctor"])
def test_a_refused_token_keeps_every_reading_queued_until_the_token_is_right(
    sender: Database, server: CommunityServer, token: str | None
) -> None:
    """No token, an unknown one, or one whose role may not post (a doctor's): the server's 401/403
    is about the token, not the bundle, so nothing becomes a dead letter; the reason is in
    last_error; with the right token everything is posted once."""
    server.start()
    if token == "doctor":
        token = server.reader["Authorization"].removeprefix("Bearer ")
    refused = poster(sender, server, token=token)
    refused.post_due()
    assert fhir_post.counts(sender) == {"pending": 3, "posted": 0, "dead": 0}
    expected = 403 if token == server.reader["Authorization"].removeprefix("Bearer ") else 401
    statuses = {row[0] for row in sender.execute("SELECT last_status FROM fhir_posts")}
    assert statuses == {expected}
    assert refused.last_error is not None
    assert f"the server refused our token ({expected})" in refused.last_error
    assert server.observations() == 0
    sender.execute("UPDATE fhir_posts SET next_attempt_ms = 0")  # the operator fixed --fhir-token
    fixed = poster(sender, server)
    fixed.post_due()
    assert fhir_post.counts(sender) == {"pending": 0, "posted": 3, "dead": 0}
    assert server.observations() == 3


def test_a_refused_bundle_is_a_dead_letter_with_the_answer_and_can_be_replayed(
    sender: Database, server: CommunityServer, bridge_db: Path | str
) -> None:
    server.start()
    good = sender.execute("SELECT bundle FROM fhir_posts WHERE seq = 2").fetchone()[0]
    # The community server is upgraded and refuses what this bridge sends: a batch, not a transaction.
    sender.execute(
        "UPDATE fhir_posts SET bundle = ? WHERE seq = 2", (good.replace('"transaction"', '"batch"'),)
    )
    posting = poster(sender, server)
    posting.post_due()
    assert fhir_post.counts(sender) == {"pending": 0, "posted": 2, "dead": 1}
    (dead,) = fhir_post.dead_letters(sender)
    assert (dead.gateway_id, dead.seq, dead.status) == (GATEWAY, 2, 400)
    assert "only 'transaction' is accepted" in (dead.answer or "")
    listing = CliRunner().invoke(bridge_cli, ["fhir-posts", "list", "--db", str(bridge_db)])
    assert "dead 1" in listing.output and "seq 2, HTTP 400" in listing.output
    sender.execute("UPDATE fhir_posts SET bundle = ? WHERE seq = 2", (good,))  # the cause is fixed
    replayed = CliRunner().invoke(bridge_cli, ["fhir-posts", "replay", "--db", str(bridge_db)])
    assert "1 dead letter(s) queued again" in replayed.output
    posting.post_due()
    assert fhir_post.counts(sender) == {"pending": 0, "posted": 3, "dead": 0}
    assert server.observations() == 3


def test_the_fleet_api_lists_gateways_with_their_peripherals_and_refusals(
    sender: Database, bridge_db: Path | str
) -> None:
    from fastapi.testclient import TestClient

    public = sender.execute(
        "SELECT public_key_pem FROM gateways WHERE gateway_id = ?", (GATEWAY,)
    ).fetchone()[0]
    store.enrol_gateway(sender, "gw-quiet-02", public, site="village 2", kind="vehicle", now_ms=5)
    forged, _ = encode_batch(
        [reading(4)], prev_hash=GENESIS_HASH, signing_key=Ed25519PrivateKey.generate(), number=1
    )
    refused = receive_batch(sender, up_topic(GATEWAY), forged, now_ms=time.time_ns() // 1_000_000)
    assert refused.refusal is not None
    with TestClient(create_app(str(bridge_db)), headers=bearer(bridge_db, "technician")) as client:
        fleet = client.get("/fleet/gateways").json()
    by_id = {g["gateway_id"]: g for g in fleet}
    busy, quiet = by_id[GATEWAY], by_id["gw-quiet-02"]
    assert (busy["status"], busy["last_seq"], busy["site"], busy["refusals_24h"]) == (
        "active",
        3,
        "county",
        1,
    )
    assert busy["devices"] == [
        {"device_id": "bp-0001", "model": "KX-BP100", "firmware": "0.1.0", "last_measured_ms": 1795564980000,
         "readings": 3}
    ]  # fmt: skip
    assert (quiet["last_seen_ms"], quiet["silent_s"], quiet["devices"], quiet["kind"]) == (
        None,
        None,
        [],
        "vehicle",
    )
