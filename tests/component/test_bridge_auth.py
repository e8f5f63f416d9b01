"""Tokens and roles on the bridge's HTTP API, over a real store (SQLite file; PostgreSQL where the
storage differs): who may call what, what a refusal says, and that a token is never stored in clear.

The expected table below is written out here on purpose, not read from `cloud_bridge.auth`: a
change to the code's permissions that is not a change to this table fails.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from cloud_bridge import auth, store
from cloud_bridge.api import create_app
from cloud_bridge.cli import app as bridge_cli

ROLES = ("technician", "doctor", "health_manager", "admin", "bridge")
EMPTY_TRANSACTION = '{"resourceType": "Bundle", "type": "transaction"}'

# (method, path, the route's OpenAPI path, who may, the status they get) for every route that
# needs a token.
PERMISSION_TABLE = [
    ("GET", "/referrals", "/referrals", {"doctor", "health_manager", "admin"}, 200),
    ("GET", "/referrals/teams", "/referrals/teams", {"doctor", "health_manager", "admin"}, 200),
    ("POST", "/referrals/no-such-task/claim", "/referrals/{id}/claim", {"doctor", "admin"}, 404),
    ("POST", "/referrals/no-such-task/close", "/referrals/{id}/close", {"doctor", "admin"}, 404),
    ("GET", "/figures/chronic?quarter=2026Q4", "/figures/chronic", {"health_manager", "admin"}, 200),
    ("GET", "/fleet/gateways", "/fleet/gateways", {"technician", "admin"}, 200),
    ("POST", "/fleet/gateways", "/fleet/gateways", {"technician", "admin"}, 201),
    ("GET", "/fhir/Patient?identifier=urn:kiosk:sid:resident-health-record|1", "/fhir/{resource_type}",
     {"doctor", "health_manager", "admin"}, 200),
    ("GET", "/fhir/Observation?subject=Patient/x", "/fhir/{resource_type}",
     {"doctor", "health_manager", "admin"}, 200),
    ("GET", "/fhir/Observation/no-such-id", "/fhir/{resource_type}/{id}",
     {"doctor", "health_manager", "admin"}, 404),
    ("POST", "/fhir", "/fhir", {"bridge", "admin"}, 200),
    ("GET", "/auth/whoami", "/auth/whoami", set(ROLES), 200),
]  # fmt: skip
OPEN_ROUTES = ["/healthz", "/metrics", "/fhir/metadata", "/openapi.json", "/docs"]


def public_key_pem() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


class Bridge:
    """The API over a real store, and the tokens made in it (by name)."""

    def __init__(self, db: Path | str) -> None:
        self.db = db
        self.client = TestClient(create_app(str(db)))
        self.tokens: dict[str, str] = {}

    def add(self, name: str, role: str) -> dict[str, str]:
        conn = store.connect(self.db)
        try:
            self.tokens[name] = auth.add_token(conn, name, role, now_ms=time.time_ns() // 1_000_000)
        finally:
            conn.close()
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: object):
        return self.client.request(method, path, headers=headers or {}, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[Bridge]:
    with_api = Bridge(tmp_path / "bridge.db")
    with with_api.client:
        yield with_api


def _body_for(method: str, path: str, role: str) -> dict[str, object]:
    if path == "/fleet/gateways" and method == "POST":
        return {"json": {"gateway_id": f"gw-{role}", "site": "village", "public_key_pem": public_key_pem()}}
    if path == "/fhir":
        return {"content": EMPTY_TRANSACTION, "headers": {"Content-Type": "application/fhir+json"}}
    return {}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("method", "path", "route", "allowed", "ok"),
    PERMISSION_TABLE,
    ids=[f"{r[0]} {r[1]}" for r in PERMISSION_TABLE],
)
def test_each_role_is_let_in_or_refused_per_route(
    bridge: Bridge, role: str, method: str, path: str, route: str, allowed: set[str], ok: int
) -> None:
    headers = bridge.add(f"someone ({role})", role)
    extra = _body_for(method, path, role)
    headers = {**headers, **extra.pop("headers", {})}  # type: ignore[dict-item]
    response = bridge.request(method, path, headers, **extra)
    if role in allowed:
        assert response.status_code == ok, response.text
    else:
        assert response.status_code == 403, response.text
        needs = " or ".join(r for r in ROLES if r in allowed)
        if path.startswith("/fhir"):  # FHIR routes answer in FHIR: an OperationOutcome
            issue = response.json()["issue"][0]
            assert issue["code"] == "forbidden"
            detail = issue["diagnostics"]
        else:
            body = response.json()
            assert (body["error"], body["roles_allowed"]) == ("forbidden", [r for r in ROLES if r in allowed])
            detail = body["detail"]
        assert detail.startswith(f"someone ({role}) has role {role}; ")
        assert detail.endswith(f" needs role {needs}")


def test_the_permission_table_covers_every_route_that_needs_a_token(bridge: Bridge) -> None:
    """A route added later without a row here (or left open by mistake) fails this test."""
    spec = bridge.client.get("/openapi.json").json()
    guarded = {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if operation.get("security")
    }
    open_ = {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if not operation.get("security")
    }
    assert guarded == {(method, route) for method, _, route, _, _ in PERMISSION_TABLE}
    assert open_ == {("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/fhir/metadata")}
    assert spec["components"]["securitySchemes"]["BridgeToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A bridge token (`kiosk-bridge token add NAME --role ROLE` prints it once).",
    }


@pytest.mark.parametrize("path", OPEN_ROUTES)
def test_health_metrics_and_the_capability_statement_need_no_token(bridge: Bridge, path: str) -> None:
    assert bridge.request("GET", path).status_code == 200


@pytest.mark.parametrize(
    ("headers", "reason", "detail"),
    [
        ({}, "missing", "no bearer token: send 'Authorization: Bearer <token>'"),
        ({"Authorization": "Basic ZG9jdG9yOnB3"}, "missing", "no bearer token"),
        ({"Authorization": "Bearer "}, "missing", "no bearer token"),
        ({"Authorization": "Bearer kb_made-up"}, "unknown", "unknown token"),
    ],
)
def test_no_usable_token_is_401_with_a_clear_error(
    bridge: Bridge, headers: dict[str, str], reason: str, detail: str
) -> None:
    response = bridge.request("GET", "/fleet/gateways", headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"] == "unauthorized"
    assert response.json()["detail"].startswith(detail)
    fhir = bridge.request("GET", "/fhir/Observation/x", headers)  # FHIR routes: an OperationOutcome
    assert fhir.status_code == 401
    assert fhir.json()["issue"][0]["code"] == "login"
    refusals = {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(bridge.request("GET", "/metrics").text)
        for sample in family.samples
        if sample.name == "kiosk_bridge_api_refusals_total"
    }
    assert refusals == {"missing": 0, "unknown": 0, "revoked": 0, "expired": 0, "forbidden": 0} | {reason: 2}


def test_a_revoked_token_is_refused_and_the_name_can_get_a_new_one(bridge: Bridge) -> None:
    runner = CliRunner()
    made = runner.invoke(
        bridge_cli, ["token", "add", "li.tech", "--role", "technician", "--db", str(bridge.db)]
    )
    assert made.exit_code == 0, made.output
    token = made.stdout.strip()
    assert token.startswith("kb_") and len(token) == 46  # 32 random bytes, URL-safe base64
    old = {"Authorization": f"Bearer {token}"}
    assert bridge.request("GET", "/fleet/gateways", old).status_code == 200

    revoked = runner.invoke(bridge_cli, ["token", "revoke", "li.tech", "--db", str(bridge.db)])
    assert (revoked.exit_code, revoked.stdout) == (0, "revoked the token of li.tech\n")
    refused = bridge.request("GET", "/fleet/gateways", old)
    assert (refused.status_code, refused.json()["detail"]) == (401, "this token was revoked")

    again = runner.invoke(bridge_cli, ["token", "revoke", "li.tech", "--db", str(bridge.db)])
    assert (again.exit_code, again.stderr) == (1, "no live token for li.tech\n")
    renewed = runner.invoke(
        bridge_cli, ["token", "add", "li.tech", "--role", "technician", "--db", str(bridge.db)]
    )
    new = {"Authorization": f"Bearer {renewed.stdout.strip()}"}
    assert bridge.request("GET", "/fleet/gateways", new).status_code == 200
    assert bridge.request("GET", "/fleet/gateways", old).status_code == 401  # the old one stays revoked
    listing = runner.invoke(bridge_cli, ["token", "list", "--db", str(bridge.db)])
    lines = listing.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("li.tech  role=technician  made ") and " revoked " in lines[0]
    assert lines[1].startswith("li.tech  role=technician  made ") and "  live until " in lines[1]
    assert token not in listing.stdout and renewed.stdout.strip() not in listing.stdout


def test_token_commands_refuse_what_makes_no_sense(tmp_path: Path) -> None:
    runner = CliRunner()
    db = str(tmp_path / "bridge.db")
    assert (
        runner.invoke(bridge_cli, ["token", "add", "dr.chen", "--role", "doctor", "--db", db]).exit_code == 0
    )
    twice = runner.invoke(bridge_cli, ["token", "add", "dr.chen", "--role", "admin", "--db", db])
    assert twice.exit_code == 1
    assert twice.stderr == "error: dr.chen already has a token: revoke it first (kiosk-bridge token revoke)\n"
    bad_role = runner.invoke(bridge_cli, ["token", "add", "x", "--role", "nurse", "--db", db])
    assert bad_role.exit_code == 2  # a usage error, listing the roles
    assert runner.invoke(bridge_cli, ["token", "add", " ", "--role", "doctor", "--db", db]).exit_code == 1


def test_a_token_is_never_stored_in_clear(bridge_db: Path | str) -> None:
    """On each back-end: the table holds the name, the role and the SHA-256 of the token; no column
    holds the token, and (SQLite) neither does any byte of the database file or its WAL."""
    conn = store.connect(bridge_db)
    try:
        token = auth.add_token(conn, "dr.chen", "doctor", now_ms=1)
        columns = [row for row in conn.execute("SELECT * FROM api_tokens")]
        (row,) = conn.execute("SELECT name, role, token_sha256, revoked_at_ms FROM api_tokens").fetchall()
        assert (row[0], row[1], bytes(row[2]), row[3]) == (
            "dr.chen",
            "doctor",
            hashlib.sha256(token.encode()).digest(),
            None,
        )
        assert all(token not in str(value) and token.encode() not in bytes(str(value), "utf-8")
                   for value in columns[0])  # fmt: skip
        assert auth.authenticate(conn, token, now_ms=2) == auth.Principal("dr.chen", "doctor")
        forged = token[:-1] + ("A" if token[-1] != "A" else "B")
        assert auth.authenticate(conn, forged, now_ms=2) == auth.Refusal("unknown")
        assert auth.revoke_token(conn, "dr.chen", now_ms=2)
        assert auth.authenticate(conn, token, now_ms=3) == auth.Refusal("revoked")
    finally:
        conn.close()
    if isinstance(bridge_db, Path):
        for path in bridge_db.parent.glob(bridge_db.name + "*"):  # bridge.db, -wal, -shm
            assert token.encode() not in path.read_bytes(), path


def test_a_refused_request_is_logged_without_the_token(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    headers = bridge.add("nurse.wang", "technician")
    with caplog.at_level("WARNING", logger="cloud_bridge.api"):
        bridge.request(
            "GET", "/fhir/Patient?identifier=urn:kiosk:sid:resident-id-card|330781199001011234", headers
        )
    (record,) = [r for r in caplog.records if r.name == "cloud_bridge.api"]
    message = record.getMessage()
    assert message.startswith("api: refused GET /fhir/Patient (forbidden): nurse.wang has role technician")
    assert bridge.tokens["nurse.wang"] not in message and "330781199001011234" not in message


def test_an_expired_token_is_refused_and_its_name_gets_a_new_one_without_a_revoke(bridge: Bridge) -> None:
    now_ms = time.time_ns() // 1_000_000
    conn = store.connect(bridge.db)
    try:
        token = auth.add_token(
            conn, "zhao.tech", "technician", now_ms=now_ms - 10_000, expires_at_ms=now_ms - 1
        )
    finally:
        conn.close()
    refused = bridge.request("GET", "/fleet/gateways", {"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401
    assert refused.json()["detail"].startswith("this token has expired: ask the bridge operator")
    refusals = {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(bridge.request("GET", "/metrics").text)
        for sample in family.samples
        if sample.name == "kiosk_bridge_api_refusals_total"
    }
    assert refusals["expired"] == 1

    runner = CliRunner()
    renewed = runner.invoke(
        bridge_cli,
        [
            "token",
            "add",
            "zhao.tech",
            "--role",
            "technician",
            "--expires-in-days",
            "30",
            "--db",
            str(bridge.db),
        ],
    )
    assert renewed.exit_code == 0, renewed.output
    assert "until " in renewed.stderr
    fresh = {"Authorization": f"Bearer {renewed.stdout.strip()}"}
    assert bridge.request("GET", "/fleet/gateways", fresh).status_code == 200
    lines = runner.invoke(bridge_cli, ["token", "list", "--db", str(bridge.db)]).stdout.splitlines()
    assert len(lines) == 2
    assert " expired " in lines[0] and " live until " in lines[1]
    conn = store.connect(bridge.db)
    try:
        (expires,) = conn.execute(
            "SELECT expires_at_ms FROM api_tokens WHERE revoked_at_ms IS NULL"
        ).fetchone()
    finally:
        conn.close()
    assert 29 * 86_400_000 < expires - now_ms <= 30 * 86_400_000 + 60_000


def test_a_token_without_expiry_lives_until_revoked(bridge_db: Path | str) -> None:
    conn = store.connect(bridge_db)
    try:
        token = auth.add_token(conn, "bridge-b", "bridge", now_ms=1)
        assert auth.authenticate(conn, token, now_ms=10**13) == auth.Principal("bridge-b", "bridge")
        with pytest.raises(auth.TokenError, match="expiry: must be after now"):
            auth.add_token(conn, "late", "doctor", now_ms=5, expires_at_ms=5)
        soon = auth.add_token(conn, "dr.sun", "doctor", now_ms=1, expires_at_ms=100)
        assert auth.authenticate(conn, soon, now_ms=99) == auth.Principal("dr.sun", "doctor")
        assert auth.authenticate(conn, soon, now_ms=100) == auth.Refusal("expired")
        with pytest.raises(auth.TokenError, match="already has a token"):  # still live at 50
            auth.add_token(conn, "dr.sun", "doctor", now_ms=50)
    finally:
        conn.close()
    runner = CliRunner()
    made = runner.invoke(
        bridge_cli, ["token", "add", "bridge-c", "--role", "bridge", "--no-expiry", "--db", str(bridge_db)]
    )
    assert made.exit_code == 0 and "until revoked" in made.stderr


def test_a_store_made_before_expiry_gets_the_column_and_its_tokens_never_expire(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.execute(
            """CREATE TABLE api_tokens (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
               role TEXT NOT NULL, token_sha256 BLOB NOT NULL UNIQUE, created_at_ms INTEGER NOT NULL,
               revoked_at_ms INTEGER)"""
        )
        token = "kb_" + "x" * 43
        old.execute(
            """INSERT INTO api_tokens (name, role, token_sha256, created_at_ms)
               VALUES ('dr.li', 'doctor', ?, 1)""",
            (hashlib.sha256(token.encode()).digest(),),
        )
    conn = store.connect(path)
    try:
        assert auth.authenticate(conn, token, now_ms=10**13) == auth.Principal("dr.li", "doctor")
        assert [info.state(10**13) for info in auth.list_tokens(conn)] == ["live"]
    finally:
        conn.close()
