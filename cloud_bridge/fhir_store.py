"""The bridge's embedded FHIR store: resources as JSON rows (SQLite or PostgreSQL, through
`cloud_bridge.db`), written by conditional create.

The caller owns the connection and the transaction (the bridge commits a whole batch at once),
so nothing here commits except `open_store`, which sets up the schema. Resources are keyed
by their identifier as well as their id: applying the same transaction twice creates nothing the
second time, which is the local half of "nothing is posted twice to the health record".

Bodies are JSON with decimals written digit for digit (36.60 stays 36.60): `json.dumps` would
refuse a Decimal and a float would round it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from cloud_bridge import db as dbapi
from cloud_bridge.db import Database
from cloud_bridge.fhir_map import TransactionEntry, parse_token

__all__ = [
    "FhirStoreError",
    "apply_transaction",
    "ensure_schema",
    "from_json",
    "identifier_key",
    "open_store",
    "read",
    "search",
    "to_json",
    "to_transaction_bundle",
]

_SCHEMA = """
    CREATE TABLE IF NOT EXISTS fhir_resources (
        resource_type TEXT NOT NULL,
        id TEXT NOT NULL,
        identifier_key TEXT NOT NULL,
        subject TEXT,
        body TEXT NOT NULL,
        last_updated TEXT NOT NULL,{row_no}
        PRIMARY KEY (resource_type, id)
    );
    CREATE UNIQUE INDEX IF NOT EXISTS fhir_resources_identifier
        ON fhir_resources (resource_type, identifier_key);
    CREATE INDEX IF NOT EXISTS fhir_resources_subject ON fhir_resources (resource_type, subject)
"""
# Search results come oldest first: SQLite orders by its implicit rowid, PostgreSQL by this.
_ROW_NO = {"sqlite": "", "postgresql": "\n        row_no BIGINT GENERATED ALWAYS AS IDENTITY,"}


class FhirStoreError(ValueError):
    """An entry the store cannot apply, or a search it cannot run."""


def ensure_schema(conn: Database) -> None:
    """Create the table and indexes if missing."""
    conn.ddl(_SCHEMA.format(row_no=_ROW_NO[conn.dialect]))


def open_store(target: str) -> Database:
    """Open a store for writing (a SQLite file in WAL mode with durable commits, or a PostgreSQL
    URL) with the schema in place; statements autocommit outside `transaction()`."""
    conn = dbapi.connect(target, shared_across_threads=False)
    ensure_schema(conn)
    return conn


def to_json(value: Any) -> str:
    """Compact JSON in which a Decimal is written as its exact digits.

    The C encoder does the work; a Decimal goes through it as a marked string (NUL-delimited:
    FHIR strings cannot hold control characters, so no real value looks like one) and the mark
    is then replaced by the bare digits.
    """
    text = json.dumps(
        value, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_mark_decimal
    )
    return _DECIMAL_MARK.sub(r"\1", text) if "\\u0000" in text else text


_DECIMAL_MARK = re.compile(r'"\\u0000([-+0-9.Ee]+)\\u0000"')


def _mark_decimal(value: Any) -> str:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"not a JSON number: {value}")
        return f"\x00{value}\x00"
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def from_json(text: str) -> Any:
    """Parse JSON keeping fractional numbers as Decimal, so a round trip changes no digit."""
    return json.loads(text, parse_float=Decimal)


def identifier_key(entry: TransactionEntry) -> str:
    """`system|value` named by the entry's `ifNoneExist`, checked against its first identifier."""
    try:
        pairs = parse_qsl(entry.if_none_exist, keep_blank_values=True, strict_parsing=True)
        if len(pairs) != 1:
            raise ValueError("expected exactly one search parameter")
        system, value = parse_token(pairs[0][1])
    except ValueError as exc:
        raise FhirStoreError(f"{entry.resource_type}: unsupported ifNoneExist: {exc}") from None
    key = f"{system}|{value}"
    identifiers = entry.resource.get("identifier")
    if identifiers:
        first = identifiers[0]
        if f"{first.get('system')}|{first.get('value')}" != key:
            raise FhirStoreError(f"{entry.resource_type}: ifNoneExist does not name its first identifier")
    return key


def _rewrite_references(node: Any, moved: dict[str, str]) -> Any:
    """Point references at their new target, as a FHIR server does within one transaction."""
    if isinstance(node, dict):
        return {
            key: moved.get(item, item)
            if key == "reference" and isinstance(item, str)
            else _rewrite_references(item, moved)
            for key, item in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_references(item, moved) for item in node]
    return node


def apply_transaction(
    conn: Database, entries: Iterable[TransactionEntry], *, now_iso: str
) -> list[tuple[str, str, bool]]:
    """Conditionally create each entry in order -> (resource type, id, created) per entry.

    An entry whose identifier is already stored changes nothing; later entries that referred to
    it are pointed at the stored resource (which, with deterministic ids, is the same id). The
    insert itself is conditional too (`ON CONFLICT … DO NOTHING`): on PostgreSQL another
    transaction may create the same resource between the look-up and the insert, and then its
    copy is the one kept.
    """
    try:
        if datetime.fromisoformat(now_iso).tzinfo is None:
            raise ValueError("no time zone")
    except ValueError as exc:
        raise FhirStoreError(f"now_iso is not an instant: {exc}") from None
    moved: dict[str, str] = {}
    results: list[tuple[str, str, bool]] = []
    for entry in entries:
        resource_type = entry.resource_type
        if entry.resource.get("resourceType") != resource_type or not entry.resource.get("id"):
            raise FhirStoreError(f"{resource_type}: entry needs a matching resourceType and an id")
        key = identifier_key(entry)
        local_ref = f"{resource_type}/{entry.resource['id']}"
        stored_id = _id_by_identifier(conn, resource_type, key)
        if stored_id is None:
            # A copy (entries stay untouched): deep only when a reference must change.
            resource = _rewrite_references(entry.resource, moved) if moved else dict(entry.resource)
            resource["meta"] = {**resource.get("meta", {}), "versionId": "1", "lastUpdated": now_iso}
            subject = resource.get("subject", {}).get("reference")
            try:
                created = conn.execute(
                    "INSERT INTO fhir_resources"
                    " (resource_type, id, identifier_key, subject, body, last_updated)"
                    # Any unique key: a concurrent writer's copy may collide on the id before the
                    # identifier (PostgreSQL checks one arbiter index only when one is named).
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (resource_type, resource["id"], key, subject, to_json(resource), now_iso),
                ).rowcount
            except conn.IntegrityError as exc:
                raise FhirStoreError(f"{local_ref} exists under another identifier") from exc
            if created == 1:
                results.append((resource_type, resource["id"], True))
                continue
            stored_id = _id_by_identifier(conn, resource_type, key)  # created meanwhile by another
            if stored_id is None:  # the id is taken, by a resource with another identifier
                raise FhirStoreError(f"{local_ref} exists under another identifier")
        if stored_id != entry.resource["id"]:  # deterministic ids: usually the same resource
            moved[local_ref] = f"{resource_type}/{stored_id}"
        results.append((resource_type, stored_id, False))
    return results


def _id_by_identifier(conn: Database, resource_type: str, key: str) -> str | None:
    row = conn.execute(
        "SELECT id FROM fhir_resources WHERE resource_type = ? AND identifier_key = ?", (resource_type, key)
    ).fetchone()
    return None if row is None else row[0]


def read(conn: Database, resource_type: str, id: str, *, lock: bool = False) -> dict[str, Any] | None:
    """The stored resource, or None. With `lock` (inside a transaction, before an `update`), no
    other writer changes it until the commit."""
    row = conn.execute(
        "SELECT body FROM fhir_resources WHERE resource_type = ? AND id = ?"
        + (conn.lock_clause if lock else ""),
        (resource_type, id),
    ).fetchone()
    return None if row is None else from_json(row[0])


def search(
    conn: Database,
    resource_type: str,
    *,
    identifier: str | None = None,
    subject: str | None = None,
    subject_identifier: str | None = None,
) -> list[dict[str, Any]]:
    """Resources matching all given parameters, oldest first.

    `identifier` and `subject_identifier` are raw `system|value` keys (first identifier only);
    `subject` is a reference such as `Patient/<id>`. At least one parameter is required, so a
    mistake cannot dump the whole table.
    """
    clauses, params = ["resource_type = ?"], [resource_type]
    if identifier is not None:
        clauses.append("identifier_key = ?")
        params.append(identifier)
    if subject_identifier is not None:
        row = conn.execute(
            "SELECT id FROM fhir_resources WHERE resource_type = 'Patient' AND identifier_key = ?",
            (subject_identifier,),
        ).fetchone()
        if row is None or (subject is not None and subject != f"Patient/{row[0]}"):
            return []
        subject = f"Patient/{row[0]}"
    if subject is not None:
        clauses.append("subject = ?")
        params.append(subject)
    if len(clauses) == 1:
        raise FhirStoreError("search needs at least one parameter")
    rows = conn.execute(
        f"SELECT body FROM fhir_resources WHERE {' AND '.join(clauses)} ORDER BY {conn.insertion_order}",
        params,
    ).fetchall()
    return [from_json(body) for (body,) in rows]


def to_transaction_bundle(entries: Iterable[TransactionEntry]) -> dict[str, Any]:
    """A FHIR transaction Bundle of conditional creates, for the health community's server.

    Entries are named `urn:uuid:<id>` and references between them use those names, so the
    server links them to whatever it creates or finds; the local ids are not sent (a POST
    assigns the server's own).
    """
    entries = list(entries)
    full_urls: dict[str, str] = {}
    for entry in entries:
        try:
            full_urls[f"{entry.resource_type}/{entry.resource['id']}"] = (
                f"urn:uuid:{uuid.UUID(entry.resource['id'])}"
            )
        except (KeyError, ValueError):
            raise FhirStoreError(f"{entry.resource_type}: entry id must be a UUID") from None
    bundle_entries = []
    for entry in entries:
        resource = _rewrite_references(entry.resource, full_urls)
        local_ref = f"{entry.resource_type}/{resource.pop('id')}"
        bundle_entries.append(
            {
                "fullUrl": full_urls[local_ref],
                "resource": resource,
                "request": {"method": "POST", "url": entry.resource_type, "ifNoneExist": entry.if_none_exist},
            }
        )
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "transaction"}
    if bundle_entries:  # FHIR JSON has no empty arrays
        bundle["entry"] = bundle_entries
    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise FhirStoreError(f"invalid transaction Bundle: {detail}") from None
    return bundle


def from_transaction_bundle(bundle: dict[str, Any]) -> list[TransactionEntry]:
    """The inverse of `to_transaction_bundle`, for the bridge serving as a health community's
    FHIR server: each entry must be a conditional create (POST with `ifNoneExist`) named by a
    `urn:uuid:` fullUrl; references between entries become local references."""
    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise FhirStoreError(f"invalid Bundle: {detail}") from None
    if bundle.get("type") != "transaction":
        raise FhirStoreError(f"Bundle.type is {bundle.get('type')!r}; only 'transaction' is accepted")
    raw = bundle.get("entry", [])
    local: dict[str, str] = {}
    for index, entry in enumerate(raw):
        full_url = str(entry.get("fullUrl", ""))
        resource_type = str(entry.get("resource", {}).get("resourceType", ""))
        if not full_url.startswith("urn:uuid:"):
            raise FhirStoreError(f"entry {index}: fullUrl must be urn:uuid:…, not {full_url!r}")
        local[full_url] = f"{resource_type}/{full_url.removeprefix('urn:uuid:')}"
    entries = []
    for index, entry in enumerate(raw):
        request = entry.get("request", {})
        resource = _rewrite_references(dict(entry["resource"]), local)
        resource_type = resource["resourceType"]
        if request.get("method") != "POST" or request.get("url") != resource_type:
            raise FhirStoreError(
                f"entry {index}: only POST {resource_type} (a conditional create) is accepted"
            )
        if not request.get("ifNoneExist"):
            raise FhirStoreError(f"entry {index}: ifNoneExist is required (a repost must create nothing)")
        resource["id"] = local[entry["fullUrl"]].split("/", 1)[1]
        entries.append(TransactionEntry(resource_type, resource, str(request["ifNoneExist"])))
    return entries


def update(conn: Database, resource: dict[str, Any], *, now_iso: str) -> dict[str, Any]:
    """Replace a stored resource with a new version (a Task claimed or closed, a Flag ended):
    same id and identifier, versionId + 1. Raises FhirStoreError when it is not stored."""
    resource_type, id = resource["resourceType"], resource["id"]
    stored = read(conn, resource_type, id)
    if stored is None:
        raise FhirStoreError(f"{resource_type}/{id} is not stored")
    version = int(stored.get("meta", {}).get("versionId", "1")) + 1
    updated = {
        **resource,
        "meta": {**resource.get("meta", {}), "versionId": str(version), "lastUpdated": now_iso},
    }
    conn.execute(
        "UPDATE fhir_resources SET body = ?, last_updated = ? WHERE resource_type = ? AND id = ?",
        (to_json(updated), now_iso, resource_type, id),
    )
    return updated


def all_of_type(conn: Database, resource_type: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT body FROM fhir_resources WHERE resource_type = ?", (resource_type,)
    ).fetchall()
    return [from_json(row[0]) for row in rows]
