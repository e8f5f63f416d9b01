"""schemathesis against the bridge's OpenAPI: generated requests to every operation, none a 500.

With an admin's token, whose role may call every operation, so the generated requests reach the
routes rather than stopping at 401 (tests/component/test_bridge_auth.py covers the refusals).
The populated bridge has a CA, as one that signs enrolled gateways' TLS requests. Twice: over a
store holding an enrolled gateway and a stored batch (the FHIR reads and searches, the fleet and
the figures run over real rows), and over a fresh store the consumer has never written to (that
one found the fleet answering 500 before the registry table existed).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from cloud_bridge import auth, pki, store
from cloud_bridge.alert_rules import load_rule_texts
from cloud_bridge.api import create_app
from cloud_bridge.receive import receive_batch
from cloud_bridge.referral_routes import DEFAULT_ROUTES, load_routes
from contract.wire import GENESIS_HASH, encode_batch, up_topic
from tests.component.bridge_readings import bp_reading

GATEWAY = "gw-schema-01"
RULES = Path(__file__).resolve().parents[2] / "device_profiles" / "alert_rules" / "cn.toml"
ROUTES = load_routes(DEFAULT_ROUTES)


def _admin_token(path: str) -> dict[str, str]:
    conn = store.connect(path)
    try:
        return {"Authorization": f"Bearer {auth.add_token(conn, 'schemathesis', 'admin', now_ms=0)}"}
    finally:
        conn.close()


def _populated_store() -> str:
    path = str(Path(tempfile.mkdtemp(prefix="bridge-schema-")) / "bridge.db")
    key = Ed25519PrivateKey.generate()
    conn = store.connect(path)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    store.enrol_gateway(conn, GATEWAY, pem.decode(), site="village 1", kind="kiosk", now_ms=0)
    readings = [
        bp_reading(GATEWAY, 1, 128, 82),
        bp_reading(GATEWAY, 2, 185, 118, flags=("alert:hypertensive_crisis",)),
    ]
    message, _ = encode_batch(readings, prev_hash=GENESIS_HASH, signing_key=key, number=1)
    outcome = receive_batch(
        conn,
        up_topic(GATEWAY),
        message,
        now_ms=1795564900000,
        alert_rules=load_rule_texts(RULES),  # a referral Task routed to a team, for /referrals
        referral_routes=ROUTES,
    )
    assert outcome.stored == 2
    conn.close()
    return path


POPULATED = _populated_store()
ADMIN = _admin_token(POPULATED)
CA_DIR = Path(tempfile.mkdtemp(prefix="bridge-schema-ca-"))
pki.create_ca(CA_DIR)
schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    create_app(POPULATED, metrics=lambda: {"readings_stored": 2}, ca_dir=CA_DIR, referral_routes=ROUTES),
)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(case: schemathesis.Case) -> None:
    response = case.call(headers=ADMIN)
    if case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE:
        # The admin may call everything: only schemathesis's negative cases (one drops the
        # Authorization header on purpose) may be refused.
        assert response.status_code not in (401, 403), (case.method, case.formatted_path, response.text[:300])
    assert response.status_code < 500, (
        case.method,
        case.formatted_path,
        response.status_code,
        response.text[:300],
    )


# A bridge API started before its consumer ever ran: no gateway, no table written yet.
FRESH = str(Path(tempfile.mkdtemp(prefix="bridge-fresh-")) / "bridge.db")
fresh = schemathesis.openapi.from_asgi("/openapi.json", create_app(FRESH))
FRESH_ADMIN = _admin_token(FRESH)


@fresh.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_a_fresh_store_answers_without_a_server_error(case: schemathesis.Case) -> None:
    response = case.call(headers=FRESH_ADMIN)
    assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])
