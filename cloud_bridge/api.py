"""The bridge's HTTP API: FHIR reads over its embedded store, referrals, figures, the fleet and
gateway enrolment, plus health and Prometheus metrics for operators.

Each request opens its own connection to the store (SQLite file or PostgreSQL; no connection
shared across threads), read-only except where a referral is worked, a gateway is enrolled or
another bridge posts a transaction: the read side can never write the store the bridge's consumer
is writing. Unsupported search parameters are refused (400) rather than ignored, so a result
never looks filtered when it is not.

Every route but `/healthz`, `/metrics`, `/fhir/metadata` and the OpenAPI pages needs a bearer
token (`cloud_bridge/auth.py`) whose role has the route's permission: 401 without a usable token,
403 naming the roles that may.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from fastapi import Depends, FastAPI, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud_bridge import auth, pki
from cloud_bridge import db as dbapi
from cloud_bridge import store as bridge_store
from cloud_bridge.auth import Principal
from cloud_bridge.db import Database
from cloud_bridge.fhir_map import ALERT_FLAG_SYSTEM, CARE_TEAM_SYSTEM, parse_token, resource_id
from cloud_bridge.fhir_store import (
    FhirStoreError,
    all_of_type,
    apply_transaction,
    from_json,
    from_transaction_bundle,
    open_store,
    read,
    search,
    to_json,
)
from cloud_bridge.fhir_store import update as fhir_update
from cloud_bridge.figures import chronic_figures, quarter_bounds
from cloud_bridge.metrics import BridgeMetrics
from cloud_bridge.referral_routes import ReferralRoutes

__all__ = [
    "FHIR_JSON",
    "ROUTED_TEAM_EXTENSION",
    "SEARCH_PARAMS",
    "EnrolledGateway",
    "GatewayEnrolment",
    "create_app",
    "referral_team",
]

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.3.0"  # the R4B models every resource is validated against
CAPABILITY_DATE = "2026-11-25"  # change with the capabilities below
RESOURCE_TYPES = (
    "Patient", "Device", "Observation", "Provenance", "Flag", "Task",
    "Questionnaire", "QuestionnaireResponse",
)  # fmt: skip
_PRIORITY_ORDER = {"stat": 0, "asap": 1, "urgent": 2, "routine": 3}
# A claimed referral's owner is whoever claimed it; the care team it was routed to moves here.
ROUTED_TEAM_EXTENSION = "urn:kiosk:fhir:routed-team"
# Search parameters per resource type -> FHIR parameter type. A reference parameter also takes
# the `:identifier` modifier (`subject:identifier=system|value`).
SEARCH_PARAMS: dict[str, dict[str, str]] = {
    "Observation": {"identifier": "token", "subject": "reference"},
    "Patient": {"identifier": "token"},
    "QuestionnaireResponse": {"subject": "reference"},
}
_STORE_ARGUMENT = {
    "identifier": "identifier",
    "subject": "subject",
    "subject:identifier": "subject_identifier",
}


# What each permission lets a token do, in the words of a 403.
_DOING = {
    "referrals:read": "listing referrals",
    "referrals:work": "claiming and closing referrals",
    "figures:read": "reading the chronic-disease figures",
    "fleet:read": "reading the fleet",
    "fleet:enrol": "enrolling gateways",
    "fhir:read": "reading FHIR resources",
    "fhir:write": "posting FHIR transactions",
}
_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="BridgeToken",
    description="A bridge token (`kiosk-bridge token add NAME --role ROLE` prints it once).",
)
_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "No token, or an unknown, revoked or expired one"},
    403: {"description": "The token's role may not do this (the answer names the roles that may)"},
}


_REFUSED_TOKEN = {
    "unknown": "unknown token",
    "revoked": "this token was revoked",
    "expired": "this token has expired: ask the bridge operator for a new one (kiosk-bridge token add)",
}


class _Refused(Exception):
    """A request refused before it reached its route: 401 (who are you?) or 403 (not you)."""

    def __init__(self, status_code: int, reason: str, detail: str, needs: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.reason = reason  # missing / unknown / revoked / expired / forbidden
        self.detail = detail
        self.needs = needs


class GatewayEnrolment(BaseModel):
    """A new gateway, as `kiosk-gateway provision` sends it."""

    model_config = ConfigDict(extra="forbid")

    gateway_id: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="As in the gateway's configuration"
    )
    site: str = Field(default="", max_length=200, description="Village clinic or vehicle it serves")
    kind: Literal["kiosk", "vehicle"] = "kiosk"
    public_key_pem: str = Field(max_length=4000, description="The gateway's Ed25519 signing key (PEM)")
    tls_request_pem: str | None = Field(
        default=None,
        max_length=16000,
        description="Its MQTT TLS certificate request (PEM, common name = gateway_id); signed when the "
        "bridge runs with --ca-dir",
    )


class EnrolledGateway(BaseModel):
    gateway_id: str
    site: str
    kind: str
    status: str
    enrolled_at_ms: int
    enrolled_by: str
    tls_certificate_pem: str | None = Field(
        description="Signed by the community's CA; null without a request or when the bridge has no CA"
    )
    ca_certificate_pem: str | None
    bridge_ack_key_pem: str | None = Field(
        default=None,
        description="The public key the bridge signs its acks with: the gateway acts on no other ack",
    )


def _fhir(body: dict[str, Any], status_code: int = 200) -> Response:
    return Response(to_json(body), status_code=status_code, media_type=FHIR_JSON)


def _outcome(status_code: int, code: str, diagnostics: str) -> Response:
    return _fhir(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
        },
        status_code,
    )


def _refusal(status_code: int, detail: str) -> JSONResponse:
    return JSONResponse(
        {"error": "conflict" if status_code == 409 else "invalid", "detail": detail}, status_code
    )


def _accepted_names(resource_type: str) -> set[str]:
    names = set()
    for name, kind in SEARCH_PARAMS.get(resource_type, {}).items():
        names.add(name)
        if kind == "reference":
            names.add(f"{name}:identifier")
    return names


def referral_team(task: Mapping[str, Any]) -> dict[str, Any] | None:
    """The care team a referral Task was routed to (its logical reference), or None: the Task's
    owner while nobody has claimed it, then the `ROUTED_TEAM_EXTENSION` the claim moved it to."""
    owner = task.get("owner")
    if isinstance(owner, dict) and owner.get("identifier", {}).get("system") == CARE_TEAM_SYSTEM:
        return owner
    for extension in task.get("extension", ()):
        if extension.get("url") == ROUTED_TEAM_EXTENSION:
            return extension.get("valueReference")
    return None


def _team_id(task: Mapping[str, Any]) -> str | None:
    team = referral_team(task)
    return None if team is None else team.get("identifier", {}).get("value")


def capability_statement() -> dict[str, Any]:
    """What this server does: read every stored type, search the few parameters in SEARCH_PARAMS."""
    resources = []
    for resource_type in RESOURCE_TYPES:
        resource: dict[str, Any] = {"type": resource_type, "interaction": [{"code": "read"}]}
        params = SEARCH_PARAMS.get(resource_type)
        if params:
            resource["interaction"].append({"code": "search-type"})
            resource["searchParam"] = [{"name": name, "type": kind} for name, kind in params.items()]
        resources.append(resource)
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": CAPABILITY_DATE,
        "kind": "instance",
        "software": {"name": "kiosk-edge cloud bridge"},
        "implementation": {"description": "Read-only FHIR view of the kiosk cloud bridge's store"},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [{"mode": "server", "resource": resources}],
    }
    CapabilityStatement.model_validate(statement)
    return statement


def create_app(
    db_path: str,
    *,
    metrics: Callable[[], Mapping[str, Any]] | None = None,
    ca_dir: Path | None = None,
    referral_routes: ReferralRoutes | None = None,
    ack_public_pem: str | None = None,
) -> FastAPI:
    """The API over the store at `db_path`: a SQLite file (created, in WAL mode, if missing) or a
    `postgresql://` URL (schema created if missing). `metrics` gives the consumer's counters for
    `/metrics`; with `ca_dir` (the community's CA, `kiosk-bridge ca init`) an enrolment's TLS
    request is signed; `referral_routes` (the consumer's) gives the care teams `/referrals/teams`
    lists; `ack_public_pem` (the consumer's ack key, cloud_bridge/ack_key.py) goes to each gateway
    enrolled here. Raises `pki.PkiError` when `ca_dir` holds no usable CA."""
    # WAL is a property of the file: set once here, so readers never block the bridge's writer.
    # The whole bridge schema, not only the FHIR store's: the fleet and figures read the registry
    # and the tokens even before the consumer has run once.
    bridge_store.connect(db_path).close()
    ca_certificate = pki.ca_certificate_pem(ca_dir).decode() if ca_dir is not None else None
    metadata = capability_statement()
    stats = BridgeMetrics(metrics)
    app = FastAPI(
        title="Kiosk cloud bridge",
        description="Bearer tokens with roles: see README, Tokens and roles. /healthz, /metrics and "
        "/fhir/metadata are open.",
    )

    def connect() -> Database:
        return dbapi.connect(db_path, read_only=True)

    @app.exception_handler(_Refused)
    async def refused(request: Request, exc: _Refused) -> Response:
        stats.refusals[exc.reason] += 1
        log.warning("api: refused %s %s (%s): %s", request.method, request.url.path, exc.reason, exc.detail)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        if request.url.path.startswith("/fhir"):
            answer = _outcome(exc.status_code, "login" if exc.status_code == 401 else "forbidden", exc.detail)
            answer.headers.update(headers or {})
            return answer
        body: dict[str, Any] = {
            "error": "unauthorized" if exc.status_code == 401 else "forbidden",
            "detail": exc.detail,
        }
        if exc.needs:
            body["roles_allowed"] = list(exc.needs)
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    def require(permission: str | None) -> Callable[..., Principal]:
        """A dependency: the token's holder, if its role has `permission` (None: any valid token)."""
        allowed = tuple(r for r in auth.ROLES if permission is None or r in auth.roles_for(permission))

        def holder(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
        ) -> Principal:
            if credentials is None or not credentials.credentials:
                raise _Refused(
                    401,
                    "missing",
                    "no bearer token: send 'Authorization: Bearer <token>' "
                    "(the bridge operator makes one with kiosk-bridge token add NAME --role ROLE)",
                )
            with closing(connect()) as conn:
                found = auth.authenticate(conn, credentials.credentials, now_ms=time.time_ns() // 1_000_000)
            if isinstance(found, auth.Refusal):
                raise _Refused(401, found.reason, _REFUSED_TOKEN[found.reason])
            if permission is not None and found.role not in allowed:
                raise _Refused(
                    403,
                    "forbidden",
                    f"{found.name} has role {found.role}; {_DOING[permission]} needs role "
                    + " or ".join(allowed),
                    allowed,
                )
            return found

        return holder

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            with closing(connect()) as conn:
                conn.execute("SELECT 1 FROM fhir_resources LIMIT 1").fetchall()
        except dbapi.driver_errors(db_path) as exc:
            return JSONResponse({"status": "error", "detail": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ok"})

    def _now_iso() -> str:
        return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    # Dependencies as values, not annotations: this module's annotations are strings, which
    # FastAPI resolves in the module's globals, where these closures are not.
    anyone = Depends(require(None))
    work = Depends(require("referrals:work"))
    enrol = Depends(require("fleet:enrol"))

    @app.get("/auth/whoami", responses=_AUTH_RESPONSES)
    def whoami(principal: Principal = anyone) -> JSONResponse:
        """The token's holder, role and what that role may do (to check a token)."""
        may = sorted(p for p, roles in auth.PERMISSIONS.items() if principal.role in roles)
        return JSONResponse({"name": principal.name, "role": principal.role, "permissions": may})

    read_referrals = [Depends(require("referrals:read"))]

    @app.get("/referrals", dependencies=read_referrals, responses=_AUTH_RESPONSES)
    def list_referrals(status: str | None = None, team: str | None = None) -> Response:
        """Referral Tasks raised by alerts: open ones (requested, accepted) by default, most urgent
        first, then oldest first; with `team` (a care team's id, see /referrals/teams) only those
        routed to that team. Each Task names its team: `owner` (identifier system
        urn:kiosk:care-team, value the team's id; display its names) until someone claims it,
        then the extension urn:kiosk:fhir:routed-team, as `owner` becomes the claimant."""
        wanted = {status} if status else {"requested", "accepted"}
        with closing(connect()) as conn:
            tasks = [
                t
                for t in all_of_type(conn, "Task")
                if t["status"] in wanted and (team is None or _team_id(t) == team)
            ]
        tasks.sort(
            key=lambda t: (_PRIORITY_ORDER.get(t.get("priority", "routine"), 9), t.get("authoredOn", ""))
        )
        return Response(to_json({"total": len(tasks), "referrals": tasks}), media_type="application/json")

    @app.get("/referrals/teams", dependencies=read_referrals, responses=_AUTH_RESPONSES)
    def list_teams() -> JSONResponse:
        """The care teams referrals are routed to (the bridge's routing file, in its order): id,
        names in Chinese and English, and how many open referrals (requested or accepted) each
        has now."""
        teams = list(referral_routes.teams.values()) if referral_routes is not None else []
        with closing(connect()) as conn:
            open_by_team = Counter(
                _team_id(t) for t in all_of_type(conn, "Task") if t["status"] in ("requested", "accepted")
            )
        listed = [
            {"id": t.id, "name_zh": t.name_zh, "name_en": t.name_en, "open": open_by_team[t.id]}
            for t in teams
        ]
        return JSONResponse({"total": len(listed), "teams": listed})

    async def _change_task(
        id: str,
        request: Request,
        principal: Principal,
        *,
        allowed: tuple[str, ...],
        change: Callable[..., None],
    ) -> Response:
        """The Task is worked in the name of the token's holder: a `by` in the body, if any, must
        be that name (nobody claims or closes a referral in someone else's name)."""
        try:
            raw = await request.body()
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError(f"expected a JSON object, got {type(body).__name__}")
        except (ValueError, RecursionError) as exc:
            return _outcome(400, "invalid", f"body must be empty or a JSON object: {exc}")
        given = body.get("by")
        if given is not None and str(given).strip() != principal.name:
            return _outcome(
                403,
                "forbidden",
                f"this token is {principal.name!r}'s: a referral is worked in the token holder's own "
                "name (leave 'by' out)",
            )
        by = principal.name
        now = _now_iso()
        with closing(open_store(db_path)) as conn, conn.transaction():
            task = read(conn, "Task", id, lock=True)  # two claims at once: the second sees the first
            if task is None:
                return _outcome(404, "not-found", f"Task/{id} is not known")
            if task["status"] not in allowed:
                return _outcome(
                    409, "conflict", f"Task/{id} is {task['status']}; expected {' or '.join(allowed)}"
                )
            change(conn, task, by, body, now)
            updated = fhir_update(conn, task, now_iso=now)
        log.info("api: %s %s Task/%s", by, task["status"], id)
        return _fhir(updated)

    @app.post("/referrals/{id}/claim", responses=_AUTH_RESPONSES)
    async def claim_referral(id: str, request: Request, principal: Principal = work) -> Response:
        """A member of the specialist team takes the referral on."""

        def claim(conn: Database, task: dict[str, Any], by: str, body: Any, now: str) -> None:
            task["status"] = "accepted"
            team = referral_team(task)
            if team is not None and team is task.get("owner"):  # the team stays on record
                task["extension"] = [
                    *task.get("extension", []),
                    {"url": ROUTED_TEAM_EXTENSION, "valueReference": team},
                ]
            task["owner"] = {"display": by}
            task["lastModified"] = now

        return await _change_task(id, request, principal, allowed=("requested",), change=claim)

    @app.post("/referrals/{id}/close", responses=_AUTH_RESPONSES)
    async def close_referral(id: str, request: Request, principal: Principal = work) -> Response:
        """Done (seen, advised, or referred on): the Task is completed with a note and the alert's
        Flag on the resident ends."""

        def close(conn: Database, task: dict[str, Any], by: str, body: Any, now: str) -> None:
            task["status"] = "completed"
            task["lastModified"] = now
            note = str(body.get("note", "")).strip() if isinstance(body, dict) else ""
            if note:
                task["note"] = [*task.get("note", []), {"authorString": by, "time": now, "text": note}]
            key = task["identifier"][0]["value"]
            flag = read(conn, "Flag", resource_id(ALERT_FLAG_SYSTEM, key))
            if flag is not None and flag["status"] == "active":
                flag["status"] = "inactive"
                flag["period"] = {**flag.get("period", {}), "end": now}
                fhir_update(conn, flag, now_iso=now)

        return await _change_task(id, request, principal, allowed=("requested", "accepted"), change=close)

    @app.get("/figures/chronic", dependencies=[Depends(require("figures:read"))], responses=_AUTH_RESPONSES)
    def get_chronic_figures(quarter: str) -> Response:
        """Per site: residents under hypertension / diabetes management as the kiosks saw them,
        followed this quarter, and the share in control (see cloud_bridge/figures.py)."""
        try:
            quarter_bounds(quarter)
        except ValueError as exc:
            return _outcome(400, "invalid", str(exc))
        with closing(connect()) as conn:
            return JSONResponse(chronic_figures(conn, quarter))

    @app.get("/fleet/gateways", dependencies=[Depends(require("fleet:read"))], responses=_AUTH_RESPONSES)
    def get_fleet() -> JSONResponse:
        """The county's gateways: registry, last heard, synced up to, refusals, peripherals."""
        with closing(connect()) as conn:
            return JSONResponse(bridge_store.fleet(conn, now_ms=time.time_ns() // 1_000_000))

    @app.post(
        "/fleet/gateways",
        status_code=201,
        response_model=EnrolledGateway,
        responses={
            **_AUTH_RESPONSES,
            400: {"description": "A key or request the bridge will not use (the answer says why)"},
            409: {"description": "The gateway id is already enrolled"},
        },
    )
    def enrol_gateway(enrolment: GatewayEnrolment, principal: Principal = enrol) -> Any:
        """Enrol a new gateway: its signing key is registered (its batches are accepted from now
        on) and, when the bridge has the community's CA, its TLS request is signed."""
        try:
            bridge_store.load_public_key(enrolment.public_key_pem)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            return _refusal(400, f"public_key_pem: {exc}")
        certificate = None
        if enrolment.tls_request_pem is not None and ca_dir is not None:
            try:
                certificate = pki.sign_request_pem(
                    ca_dir, enrolment.tls_request_pem.encode(), expected_identity=enrolment.gateway_id
                ).decode()
            except (pki.PkiError, ValueError, UnsupportedAlgorithm) as exc:
                return _refusal(400, f"tls_request_pem: {exc}")
        now_ms = time.time_ns() // 1_000_000
        with closing(dbapi.connect(db_path)) as conn:
            try:
                with conn.transaction():
                    bridge_store.enrol_gateway(
                        conn,
                        enrolment.gateway_id,
                        enrolment.public_key_pem,
                        site=enrolment.site,
                        kind=enrolment.kind,
                        now_ms=now_ms,
                    )
            except conn.IntegrityError:
                return _refusal(409, f"gateway {enrolment.gateway_id} is already enrolled")
        log.info("api: %s enrolled gateway %s (%s)", principal.name, enrolment.gateway_id, enrolment.site)
        return EnrolledGateway(
            gateway_id=enrolment.gateway_id,
            site=enrolment.site,
            kind=enrolment.kind,
            status="active",
            enrolled_at_ms=now_ms,
            enrolled_by=principal.name,
            tls_certificate_pem=certificate,
            ca_certificate_pem=ca_certificate if certificate is not None else None,
            bridge_ack_key_pem=ack_public_pem,
        )

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    )
    def get_metrics(request: Request) -> Response:
        """The bridge's counters in the Prometheus text format (OpenMetrics if asked for)."""
        body, content_type = stats.exposition(request.headers.get("accept", ""))
        return Response(body, media_type=content_type)

    @app.post("/fhir", dependencies=[Depends(require("fhir:write"))], responses=_AUTH_RESPONSES)
    async def transaction(request: Request) -> Response:
        """A transaction Bundle of conditional creates (what another bridge posts when this one
        serves as the health community's FHIR server); all or nothing."""
        try:
            entries = from_transaction_bundle(from_json((await request.body()).decode("utf-8")))
        except (ValueError, KeyError, TypeError, FhirStoreError) as exc:
            return _outcome(400, "invalid", str(exc))
        now_iso = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        try:
            with closing(open_store(db_path)) as conn, conn.transaction():
                results = apply_transaction(conn, entries, now_iso=now_iso)
        except FhirStoreError as exc:  # rolled back: all or nothing
            return _outcome(409, "conflict", str(exc))
        response: dict[str, Any] = {"resourceType": "Bundle", "type": "transaction-response"}
        if results:
            response["entry"] = [
                {
                    "response": {
                        "status": "201 Created" if created else "200 OK",
                        "location": f"{resource_type}/{id}",
                    }
                }
                for resource_type, id, created in results
            ]
        return _fhir(response)

    @app.get("/fhir/metadata")
    def get_metadata() -> Response:
        return _fhir(metadata)

    fhir_read = [Depends(require("fhir:read"))]

    @app.get("/fhir/{resource_type}/{id}", dependencies=fhir_read, responses=_AUTH_RESPONSES)
    def read_resource(resource_type: str, id: str) -> Response:
        if resource_type not in RESOURCE_TYPES:
            return _outcome(404, "not-supported", f"resource type {resource_type} is not served here")
        with closing(connect()) as conn:
            resource = read(conn, resource_type, id)
        if resource is None:
            return _outcome(404, "not-found", f"{resource_type}/{id} is not known")
        return _fhir(resource)

    @app.get("/fhir/{resource_type}", dependencies=fhir_read, responses=_AUTH_RESPONSES)
    def search_type(resource_type: str, request: Request) -> Response:
        if resource_type not in RESOURCE_TYPES:
            return _outcome(404, "not-supported", f"resource type {resource_type} is not served here")
        accepted = _accepted_names(resource_type)
        items = request.query_params.multi_items()
        names = [name for name, _ in items]
        unsupported = sorted(set(names) - accepted)
        if unsupported or not items:
            supported = ", ".join(sorted(accepted)) or "none"
            got = ", ".join(unsupported) or "no parameter"
            return _outcome(400, "not-supported", f"{resource_type} search supports: {supported}; got: {got}")
        if len(names) != len(set(names)):
            return _outcome(400, "not-supported", "each search parameter may appear only once")
        arguments: dict[str, str] = {}
        for name, value in items:
            if name == "subject":
                arguments["subject"] = value if "/" in value else f"Patient/{value}"
                continue
            try:
                system, code = parse_token(value)
            except ValueError as exc:
                return _outcome(400, "invalid", f"{name}: {exc}")
            arguments[_STORE_ARGUMENT[name]] = f"{system}|{code}"
        with closing(connect()) as conn:
            found = search(conn, resource_type, **arguments)
        base = str(request.base_url).rstrip("/") + "/fhir"
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "link": [{"relation": "self", "url": str(request.url)}],
        }
        if found:  # FHIR JSON has no empty arrays
            bundle["entry"] = [
                {
                    "fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}",
                    "resource": resource,
                    "search": {"mode": "match"},
                }
                for resource in found
            ]
        try:
            Bundle.model_validate(bundle)
        except ValidationError as exc:
            where = "; ".join(".".join(map(str, e["loc"])) for e in exc.errors())
            return _outcome(500, "exception", f"stored resources do not validate: {where}")
        return _fhir(bundle)

    return app
