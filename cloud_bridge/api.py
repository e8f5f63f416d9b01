"""Read-only FHIR API over the bridge's embedded store, plus health and metrics for operators.

Each request opens its own connection to the store (SQLite file or PostgreSQL; no connection
shared across threads), read-only except where a referral is worked or another bridge posts a
transaction: the read side can never write the store the bridge's consumer is writing. Unsupported
search parameters are refused (400) rather than ignored, so a result never looks filtered when
it is not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from pydantic import ValidationError

from cloud_bridge import db as dbapi
from cloud_bridge.db import Database
from cloud_bridge.fhir_map import ALERT_FLAG_SYSTEM, parse_token, resource_id
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
from cloud_bridge.store import connect as bridge_store_connect
from cloud_bridge.store import fleet

__all__ = ["FHIR_JSON", "SEARCH_PARAMS", "create_app"]

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.3.0"  # the R4B models every resource is validated against
CAPABILITY_DATE = "2026-11-25"  # change with the capabilities below
RESOURCE_TYPES = ("Patient", "Device", "Observation", "Provenance", "Flag", "Task")
_PRIORITY_ORDER = {"stat": 0, "asap": 1, "urgent": 2, "routine": 3}
# Search parameters per resource type -> FHIR parameter type. A reference parameter also takes
# the `:identifier` modifier (`subject:identifier=system|value`).
SEARCH_PARAMS: dict[str, dict[str, str]] = {
    "Observation": {"subject": "reference"},
    "Patient": {"identifier": "token"},
}
_STORE_ARGUMENT = {
    "identifier": "identifier",
    "subject": "subject",
    "subject:identifier": "subject_identifier",
}


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


def _accepted_names(resource_type: str) -> set[str]:
    names = set()
    for name, kind in SEARCH_PARAMS.get(resource_type, {}).items():
        names.add(name)
        if kind == "reference":
            names.add(f"{name}:identifier")
    return names


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


def create_app(db_path: str, *, metrics: Callable[[], dict[str, Any]] | None = None) -> FastAPI:
    """The API over the store at `db_path`: a SQLite file (created, in WAL mode, if missing) or a
    `postgresql://` URL (schema created if missing)."""
    # WAL is a property of the file: set once here, so readers never block the bridge's writer.
    # The whole bridge schema, not only the FHIR store's: the fleet and figures read the registry
    # even before the consumer has run once.
    bridge_store_connect(db_path).close()
    metadata = capability_statement()
    app = FastAPI(title="Kiosk cloud bridge")

    def connect() -> Database:
        return dbapi.connect(db_path, read_only=True)

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

    @app.get("/referrals")
    def list_referrals(status: str | None = None) -> Response:
        """Referral Tasks raised by alerts: open ones (requested, accepted) by default, most urgent
        first, then oldest first."""
        wanted = {status} if status else {"requested", "accepted"}
        with closing(connect()) as conn:
            tasks = [t for t in all_of_type(conn, "Task") if t["status"] in wanted]
        tasks.sort(
            key=lambda t: (_PRIORITY_ORDER.get(t.get("priority", "routine"), 9), t.get("authoredOn", ""))
        )
        return Response(to_json({"total": len(tasks), "referrals": tasks}), media_type="application/json")

    async def _change_task(
        id: str, request: Request, *, allowed: tuple[str, ...], change: Callable[..., None]
    ) -> Response:
        try:
            body = await request.json()
            by = str(body["by"]).strip()
            if not by:
                raise ValueError("by is empty")
        except (ValueError, KeyError, TypeError) as exc:
            return _outcome(400, "invalid", f"body must be JSON with 'by' (who): {exc}")
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
        return _fhir(updated)

    @app.post("/referrals/{id}/claim")
    async def claim_referral(id: str, request: Request) -> Response:
        """A member of the specialist team takes the referral on."""

        def claim(conn: Database, task: dict[str, Any], by: str, body: Any, now: str) -> None:
            task["status"] = "accepted"
            task["owner"] = {"display": by}
            task["lastModified"] = now

        return await _change_task(id, request, allowed=("requested",), change=claim)

    @app.post("/referrals/{id}/close")
    async def close_referral(id: str, request: Request) -> Response:
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

        return await _change_task(id, request, allowed=("requested", "accepted"), change=close)

    @app.get("/figures/chronic")
    def get_chronic_figures(quarter: str) -> Response:
        """Per site: residents under hypertension / diabetes management as the kiosks saw them,
        followed this quarter, and the share in control (see cloud_bridge/figures.py)."""
        try:
            quarter_bounds(quarter)
        except ValueError as exc:
            return _outcome(400, "invalid", str(exc))
        with closing(connect()) as conn:
            return JSONResponse(chronic_figures(conn, quarter))

    @app.get("/fleet/gateways")
    def get_fleet() -> JSONResponse:
        """The county's gateways: registry, last heard, synced up to, refusals, peripherals."""
        with closing(connect()) as conn:
            return JSONResponse(fleet(conn, now_ms=time.time_ns() // 1_000_000))

    @app.get("/metrics")
    def get_metrics() -> JSONResponse:
        return JSONResponse(metrics() if metrics is not None else {})

    @app.post("/fhir")
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

    @app.get("/fhir/{resource_type}/{id}")
    def read_resource(resource_type: str, id: str) -> Response:
        if resource_type not in RESOURCE_TYPES:
            return _outcome(404, "not-supported", f"resource type {resource_type} is not served here")
        with closing(connect()) as conn:
            resource = read(conn, resource_type, id)
        if resource is None:
            return _outcome(404, "not-found", f"{resource_type}/{id} is not known")
        return _fhir(resource)

    @app.get("/fhir/{resource_type}")
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
