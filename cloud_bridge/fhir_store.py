"""The bridge's embedded FHIR store: resources as JSON rows (SQLite or PostgreSQL, through
`cloud_bridge.db`), written by conditional create.

The caller owns the connection and the transaction (the bridge commits a whole batch at once),
so nothing here commits except `open_store`, which sets up the schema. Resources are keyed
by their identifier as well as their id: applying the same transaction twice creates nothing the
second time, which is the local half of "nothing is posted twice to the health record".

Bodies are JSON with decimals written digit for digit (36.60 stays 36.60; `cloud_bridge.fhir_json`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from cloud_bridge import db as dbapi
from cloud_bridge.db import Database
from cloud_bridge.fhir_json import from_json, to_json
from cloud_bridge.fhir_map import TransactionEntry, parse_token

__all__ = [
    "FhirStoreError",
    "apply_transaction",
    "apply_transactions",
    "ensure_schema",
    "from_json",
    "identifier_key",
    "open_store",
    "read",
    "search",
    "to_json",
    "to_transaction_bundle",
    "transaction_bundle_json",
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
        WHERE subject IS NOT NULL
"""
# The subject index leaves out what has no subject (Patients, Devices, Provenances: half the rows a
# reading writes); a search by subject (`subject = ?`) still uses it. A store made before keeps
# its index over every row.
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


def identifier_key(entry: TransactionEntry) -> str:
    """`system|value` named by the entry's `ifNoneExist`, checked against its first identifier."""
    if entry.key is not None:  # set by the mapper, which built both from the same pair
        return entry.key
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
        first = identifiers if isinstance(identifiers, dict) else identifiers[0]  # 0..1 in some types
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


Result = tuple[str, str, bool]  # resource type, id, created


def apply_transaction(conn: Database, entries: Iterable[TransactionEntry], *, now_iso: str) -> list[Result]:
    """Conditionally create each entry in order -> (resource type, id, created) per entry.

    An entry whose identifier is already stored changes nothing; later entries that referred to
    it are pointed at the stored resource (which, with deterministic ids, is the same id).
    """
    return apply_transactions(conn, [list(entries)], now_iso=now_iso)[0]


def apply_transactions(
    conn: Database,
    transactions: Sequence[Sequence[TransactionEntry]],
    *,
    now_iso: str,
    first_time: bool = False,
) -> list[list[Result]]:
    """`apply_transaction` for many transactions at once (a batch's readings), in a few statements.

    What is stored already is looked up with one query per resource type, and everything new is
    inserted with one `executemany`. The insert is conditional (`ON CONFLICT … DO NOTHING`, on
    any unique key): on PostgreSQL another transaction may create the same resource between the
    look-up and the insert, and then its copy is the one kept. When fewer rows went in than were
    sent, each is checked: one whose id is held under another identifier is refused.

    `first_time` says the caller applies these readings for the first time (it has just stored
    them, new): only their shared entries (residents, devices, gateways) are looked up, not each
    reading's own. Should one of those be stored after all, the insert is undone (to a
    savepoint; the caller holds a transaction) and everything is applied again with look-ups.
    """
    if first_time:
        conn.execute("SAVEPOINT fhir_first_time")
        try:
            results = _apply(conn, transactions, now_iso, look_up_own=False)
        except _NotFirstTime:
            conn.execute("ROLLBACK TO SAVEPOINT fhir_first_time")
            conn.execute("RELEASE SAVEPOINT fhir_first_time")
            return _apply(conn, transactions, now_iso, look_up_own=True)
        conn.execute("RELEASE SAVEPOINT fhir_first_time")
        return results
    return _apply(conn, transactions, now_iso, look_up_own=True)


class _NotFirstTime(Exception):
    """A reading's own resource was stored already, though the caller applies it for the first time."""


def _apply(
    conn: Database, transactions: Sequence[Sequence[TransactionEntry]], now_iso: str, *, look_up_own: bool
) -> list[list[Result]]:
    try:
        if datetime.fromisoformat(now_iso).tzinfo is None:
            raise ValueError("no time zone")
    except ValueError as exc:
        raise FhirStoreError(f"now_iso is not an instant: {exc}") from None
    keyed: list[list[tuple[TransactionEntry, str]]] = []
    for entries in transactions:
        checked = []
        for entry in entries:
            if entry.resource.get("resourceType") != entry.resource_type or not entry.resource.get("id"):
                raise FhirStoreError(f"{entry.resource_type}: entry needs a matching resourceType and an id")
            checked.append((entry, identifier_key(entry)))
        keyed.append(checked)
    known = _ids_by_identifier(
        conn,
        {
            (entry.resource_type, key)
            for entries in keyed
            for entry, key in entries
            if look_up_own or entry.shared
        },
    )

    rows: list[tuple[str, str, str, str | None, str, str]] = []
    shared_rows: list[tuple[str, str, str, str | None, str, str]] = []
    results: list[list[Result]] = []
    for entries in keyed:
        moved: dict[str, str] = {}
        done: list[Result] = []
        for entry, key in entries:
            resource_type, own_id = entry.resource_type, entry.resource["id"]
            stored_id = known.get((resource_type, key))
            if stored_id is not None:
                if stored_id != own_id:  # deterministic ids: usually the same resource
                    moved[f"{resource_type}/{own_id}"] = f"{resource_type}/{stored_id}"
                done.append((resource_type, stored_id, False))
                continue
            # A copy (entries stay untouched): deep only when a reference must change.
            resource = _rewrite_references(entry.resource, moved) if moved else dict(entry.resource)
            resource["meta"] = {**resource.get("meta", {}), "versionId": "1", "lastUpdated": now_iso}
            subject = resource.get("subject", {}).get("reference")
            row = (resource_type, own_id, key, subject, to_json(resource), now_iso)
            (shared_rows if entry.shared else rows).append(row)
            known[(resource_type, key)] = own_id
            done.append((resource_type, own_id, True))
        results.append(done)
    # Residents, devices, gateways and forms first, in one order for every transaction: another
    # worker's batch may be creating some of the same ones right now, and two transactions that
    # insert two such rows in opposite orders each wait for the other (PostgreSQL aborts one: a
    # deadlock, the batch not acked). A reading's own resources follow, in the order they came
    # (a search lists them so); no other transaction creates those.
    shared_rows.sort(key=lambda row: (row[0], row[1]))
    rows = shared_rows + rows
    if rows:
        try:
            created = conn.executemany(
                "INSERT INTO fhir_resources (resource_type, id, identifier_key, subject, body, last_updated)"
                # Any unique key: a concurrent writer's copy may collide on the id before the
                # identifier (PostgreSQL checks one arbiter index only when one is named).
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                rows,
            ).rowcount
        except conn.IntegrityError as exc:
            raise FhirStoreError(f"a resource could not be stored: {exc}") from exc
        if created != len(rows):
            if not look_up_own:
                raise _NotFirstTime
            _explain_missing(conn, rows)
    return results


def _ids_by_identifier(conn: Database, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Stored ids of the (resource type, identifier key) pairs, in one query per type and chunk."""
    by_type: dict[str, list[str]] = {}
    for resource_type, key in wanted:
        by_type.setdefault(resource_type, []).append(key)
    found: dict[tuple[str, str], str] = {}
    for resource_type, keys in by_type.items():
        for start in range(0, len(keys), _IN_CHUNK):
            chunk = keys[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for key, id in conn.execute(
                "SELECT identifier_key, id FROM fhir_resources"
                f" WHERE resource_type = ? AND identifier_key IN ({marks})",
                (resource_type, *chunk),
            ):
                found[(resource_type, key)] = id
    return found


_IN_CHUNK = 500  # parameters per IN list, well inside both engines' limits


def _explain_missing(conn: Database, rows: list[tuple[str, str, str, str | None, str, str]]) -> None:
    """Some rows were not inserted: fine if their identifier is stored (a concurrent writer made
    it first), refused if their id is taken by a resource with another identifier."""
    stored = _ids_by_identifier(conn, {(row[0], row[2]) for row in rows})
    for resource_type, id, key, *_ in rows:
        if (resource_type, key) not in stored:
            raise FhirStoreError(f"{resource_type}/{id} exists under another identifier")


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


def to_transaction_bundle(entries: Iterable[TransactionEntry], *, validate: bool = True) -> dict[str, Any]:
    """A FHIR transaction Bundle of conditional creates, for the health community's server.

    Entries are named `urn:uuid:<id>` and references between them use those names, so the
    server links them to whatever it creates or finds; the local ids are not sent (a POST
    assigns the server's own).

    `validate=False` is for entries the mapper has validated already (`cloud_bridge.fhir_map`):
    validating the Bundle validates every resource in it again, which cost about a millisecond a
    reading and made the bridge post-to-remote seven times slower than it stores. What this
    function adds (names, requests, references) is the same code for every Bundle, and is
    validated in the tests.
    """
    entries = list(entries)
    full_urls = _full_urls(entries)
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
    if not validate:
        return bundle
    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise FhirStoreError(f"invalid transaction Bundle: {detail}") from None
    return bundle


def _full_urls(entries: Sequence[TransactionEntry]) -> dict[str, str]:
    """Each entry's local reference (`Type/id`) -> the name it has in the Bundle (`urn:uuid:id`)."""
    return {f"{entry.resource_type}/{entry.resource.get('id')}": _full_url(entry) for entry in entries}


def _full_url(entry: TransactionEntry) -> str:
    """`urn:uuid:` and the entry's id as a UUID's canonical text."""
    id = entry.resource.get("id")
    if isinstance(id, str) and _CANONICAL_UUID.fullmatch(id):  # every id the mapper makes
        return f"urn:uuid:{id}"  # what str(uuid.UUID(id)) gives, without building the UUID
    try:
        return f"urn:uuid:{uuid.UUID(id)}"
    except (TypeError, ValueError, AttributeError):
        raise FhirStoreError(f"{entry.resource_type}: entry id must be a UUID") from None


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# A `reference` member in FHIR JSON as `to_json` writes it. Inside a string a quote is escaped, so
# this only ever matches a member named "reference" whose value is a string, which is what
# `_rewrite_references` rewrites.
_REFERENCE_MEMBER = re.compile(r'"reference":"([^"\\]*)"')


def transaction_bundle_json(entries: Iterable[TransactionEntry], *, validate: bool = True) -> str:
    """`to_json(to_transaction_bundle(entries))`, the same text, without copying every resource
    to rename its references: each resource is written as it is and its references renamed in
    the text. The bridge queues one of these per reading when it posts to the health community's
    server; rewriting the dictionaries took a third of its time per reading. `validate` as for
    `to_transaction_bundle` (here it parses the text back to validate it: for the tests)."""
    entries = list(entries)
    full_urls = _full_urls(entries)

    def renamed(member: re.Match[str]) -> str:
        urn = full_urls.get(member.group(1))
        return member.group(0) if urn is None else f'"reference":"{urn}"'

    parts = []
    for entry in entries:
        resource_type, id = entry.resource_type, entry.resource["id"]
        text = _without_id(entry.resource, resource_type, id)
        if '"reference":' in text:
            text = _REFERENCE_MEMBER.sub(renamed, text)
        parts.append(
            f'{{"fullUrl":"{full_urls[f"{resource_type}/{id}"]}","resource":{text},'
            f'"request":{{"method":"POST","url":{_json_string(resource_type)},'
            f'"ifNoneExist":{_json_string(entry.if_none_exist)}}}}}'
        )
    entry_member = f',"entry":[{",".join(parts)}]' if parts else ""  # FHIR JSON has no empty arrays
    bundle = f'{{"resourceType":"Bundle","type":"transaction"{entry_member}}}'
    if validate:
        try:
            Bundle.model_validate(from_json(bundle))
        except ValidationError as exc:
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise FhirStoreError(f"invalid transaction Bundle: {detail}") from None
    return bundle


def _without_id(resource: dict[str, Any], resource_type: str, id: str) -> str:
    """The resource's JSON without its `id` member. The mapper writes `resourceType` then `id`
    first, so the member is cut from the text; any other order is written again without it."""
    text = to_json(resource)
    head = f'{{"resourceType":{_json_string(resource_type)},"id":{_json_string(id)},'
    if text.startswith(head):
        return f'{{"resourceType":{_json_string(resource_type)},{text[len(head) :]}'
    return to_json({key: item for key, item in resource.items() if key != "id"})


def _json_string(text: str) -> str:
    return orjson.dumps(text).decode()


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
