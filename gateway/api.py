"""The gateway's local HTTP API and the kiosk screen it serves (gateway/ui/, plain files).

Public: the screen's files and `/api/status` (link, readings waiting, last synced, storage,
peripherals: nothing of a resident). Everything that shows or records a resident needs a
signed-in operator (gateway/operators.py): a session cookie from `POST /api/session`, or the
same token as `Authorization: Bearer`. Without one the answer is 401 with a JSON reason.

Every error is JSON: `{"error": code, "message": English text, ...facts}`; the screen shows
the code in the doctor's language from its string tables. An unexpected error answers 500 with
a short error id, and is logged with that id and where it happened, never with its message or
the request's data (either could hold a resident's number).

Resident numbers leave the gateway only masked (first and last 4 characters).

Besides check-in and the readings: the chronic-disease follow-up questionnaire
(`/api/questionnaires`, `/api/resident/followup`, `/api/resident/questionnaire`; gateway/followup.py),
stored as a reading like any measurement, and a vehicle's day of outreach (`/api/queue...`;
gateway/outreach.py), all local, so both work with the 4G link down.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import math
import re
import secrets
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract.questionnaire import ANSWER_FLAG, Questionnaire, QuestionnaireError, check_answers
from contract.questionnaire import KIND as QUESTIONNAIRE
from contract.wire import Reading, ResidentRef
from gateway.alerts import evaluate
from gateway.errors import StorageFullError
from gateway.followup import Followups, answers_view, definition_view, new_reading, reading_answers
from gateway.keys import GatewayKeys
from gateway.operators import OPERATORS_DB, Operator, Operators, SessionEnded, SignInRefused
from gateway.outreach import (
    MAX_CSV_BYTES,
    QUEUE_DB,
    OutreachQueue,
    Person,
    QueueEntry,
    QueueError,
    check_day,
    check_person_text,
    parse_queue_csv,
)
from gateway.profiles import display_unit
from gateway.resident_ids import ResidentIdError, mask, parse_qr, parse_resident

if TYPE_CHECKING:
    from gateway.service import GatewayService

__all__ = ["SESSION_COOKIE", "create_app", "mask"]

log = logging.getLogger(__name__)

SESSION_COOKIE = "kiosk_session"
UI_DIR = Path(__file__).with_name("ui")
EVENT_POLL_S = 0.5  # how often the live stream looks for new readings
EVENT_STATUS_S = 2.0  # how often it sends the sync bar's state
EVENT_SESSION_S = 5.0  # how often it checks that the session is still alive
WAVEFORM_MAX_POINTS = 2500  # per lead, for the screen's strip (10 s at 250 Hz)
SUBMISSION_MAX = 2**53 - 1  # the screen's form numbers: integers a browser holds exactly


class KioskError(Exception):
    """An answer the screen explains: HTTP status, a code for its string tables, facts."""

    def __init__(self, status: int, code: str, message: str, **facts: object) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.facts = facts


def _error(status: int, code: str, message: str, **facts: object) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **facts}, status_code=status)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignInRequest(_Strict):
    operator: str = Field(min_length=1, max_length=64)
    pin: str = Field(min_length=1, max_length=64)


class CheckInRequest(_Strict):
    """One of: a typed number (`system` and `value`), a scanned QR code's text (`qr`), or a
    resident found by a search (`previous`: the id of their last check-in here)."""

    system: Literal["health-record", "id-card"] | None = None
    value: str | None = Field(default=None, max_length=64)
    qr: str | None = Field(default=None, max_length=2048)
    previous: int | None = None


class QuestionnaireRequest(_Strict):
    """A completed form for the checked-in resident. `submission` is the screen's random number
    for this form: sent twice (a lost answer, a double tap), it is stored once."""

    questionnaire: str = Field(min_length=1, max_length=64)
    answers: dict[str, Any]
    submission: int | None = Field(default=None, ge=1, le=SUBMISSION_MAX)


class QueueAddRequest(_Strict):
    """One resident for the day's queue: a typed number (`system`, `value`) or a QR code's text."""

    day: str | None = Field(default=None, max_length=10)
    name: str = Field(default="", max_length=200)
    village: str = Field(default="", max_length=200)
    system: Literal["health-record", "id-card"] | None = None
    value: str | None = Field(default=None, max_length=64)
    qr: str | None = Field(default=None, max_length=2048)


class QueueStateRequest(_Strict):
    state: Literal["waiting", "skipped"]


class _ContainErrors:
    """Turns any unexpected exception into a JSON 500 with an error id, and logs it without its
    message. A plain ASGI middleware, not `exception_handler(Exception)`: Starlette re-raises
    after such a handler, and the server would then log the full exception text."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            error_id = secrets.token_hex(4)
            where = " < ".join(
                f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
                for frame in reversed(traceback.extract_tb(exc.__traceback__)[-4:])
            )
            log.error(
                "unexpected error %s: %s on %s %s at %s",
                error_id,
                type(exc).__name__,
                scope.get("method"),
                scope.get("path"),
                where,
            )
            if not started:
                response = _error(
                    500,
                    "unexpected",
                    f"something went wrong on the gateway (error {error_id}); "
                    "try again, and tell the technician the error id if it happens again",
                    error_id=error_id,
                )
                await response(scope, receive, send)


def _reading_view(
    reading: Reading,
    state: str,
    has_waveform: bool,
    service: GatewayService,
    current: ResidentRef | None,
    followups: Followups | None = None,
) -> dict[str, object]:
    """A reading as the screen shows it: values with units, the device's flags, and the alert
    rules it crossed with their messages and referral in both languages. A questionnaire's
    answers come as `questionnaire` (each question and answer in both languages) instead."""
    device_flags = tuple(
        flag for flag in reading.flags if not flag.startswith("alert:") and not flag.startswith(ANSWER_FLAG)
    )
    raised = {flag.removeprefix("alert:") for flag in reading.flags if flag.startswith("alert:")}
    alerts: list[dict[str, object]] = []
    for alert in evaluate(service.alert_rules, reading.kind, reading.values, device_flags):
        if alert.rule in raised:
            raised.discard(alert.rule)
            alerts.append(
                {
                    "rule": alert.rule,
                    "severity": alert.severity,
                    "message": {"zh-CN": alert.message_zh, "en": alert.message_en},
                    "referral": {"zh-CN": alert.referral_zh, "en": alert.referral_en},
                }
            )
    for rule_id in sorted(raised):  # raised under rules since changed: name it at least
        rule = service.alert_rules.rule(rule_id)
        alerts.append({"rule": rule_id, "severity": rule.severity if rule else "warn"})
    view = {
        "seq": reading.seq,
        "kind": reading.kind,
        "device": {"id": reading.device.id, "model": reading.device.model},
        "values": [
            {
                "name": m.name,
                "value": None if m.value is None else str(m.value),
                "unit": m.unit,
                "display_unit": display_unit(m.unit),
                "absent_reason": m.absent_reason,
            }
            for m in reading.values
        ],
        "flags": list(device_flags),
        "alerts": alerts,
        "measured_at_ms": reading.measured_at_ms,
        "time_quality": reading.time_quality,
        "operator": reading.operator,
        "resident": mask(reading.resident.value) if reading.resident else None,
        "current": current is not None and reading.resident == current,
        "state": state,
        "waveform": has_waveform,
    }
    if reading.kind == QUESTIONNAIRE:
        read = reading_answers(followups, reading) if followups is not None else None
        view["values"] = []
        view["questionnaire"] = (
            {
                "id": read[0].id,
                "version": read[0].version,
                "title": {"zh-CN": read[0].title.zh, "en": read[0].title.en},
                "answers": answers_view(*read),
            }
            if read is not None
            else {"id": reading.device.model, "version": reading.device.firmware, "answers": None}
        )
    return view


def _entry_view(entry: QueueEntry, current: ResidentRef | None) -> dict[str, object]:
    """A queue entry for the screen: the name (the crew calls residents by it), the number masked."""
    return {
        "id": entry.id,
        "position": entry.position,
        "name": entry.person.name,
        "village": entry.person.village,
        "system": entry.person.resident.system,
        "resident": mask(entry.person.resident.value),
        "state": entry.state,
        "changed_ms": entry.changed_ms,
        "changed_by": entry.changed_by,
        "current": entry.person.resident == current,
    }


def _progress(entries: list[QueueEntry]) -> dict[str, int]:
    counts = {state: 0 for state in ("waiting", "checked", "skipped")}
    for entry in entries:
        counts[entry.state] += 1
    return {"total": len(entries), **counts}


def _today() -> str:
    """The gateway's local date: the day a queue belongs to when the screen names none."""
    return datetime.date.today().isoformat()


def _checkin_view(detail: tuple[int, ResidentRef, str, int] | None) -> dict[str, object] | None:
    if detail is None:
        return None
    checkin_id, resident, operator, started_ms = detail
    return {
        "id": checkin_id,
        "system": resident.system,
        "resident": mask(resident.value),
        "operator": operator,
        "started_ms": started_ms,
    }


def _public_status(status: dict[str, object]) -> dict[str, object]:
    """The service's status without anything of a resident, plus what the sync bar shows."""
    public = {key: value for key, value in status.items() if key != "checked_in"}
    outbox = status.get("outbox")
    if isinstance(outbox, dict):
        public["waiting"] = int(outbox.get("stored", 0)) + int(outbox.get("batched", 0))
    return public


_IMPLAUSIBLE = re.compile(r"^(\w+)\.(\w+) = (\S+) (\S+)(?: \(= [^)]*\))? outside plausible (\S+)\.\.(\S+)$")


def _refusal_view(at_ms: int, reason: str) -> dict[str, object]:
    """A refused reading for the screen: the gateway's reason, and for the usual one (a value
    outside the plausible range) its parts, so the screen can say it in the doctor's language."""
    view: dict[str, object] = {"at_ms": at_ms, "reason": reason}
    match = _IMPLAUSIBLE.match(reason)
    if match:
        kind, field, value, unit, low, high = match.groups()
        view.update(code="implausible", kind=kind, field=field, value=value, unit=display_unit(unit))
        view.update(low=low, high=high)
    return view


def _sse(event: str, data: object, event_id: int | None = None) -> bytes:
    lines = [f"event: {event}", f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    return ("\n".join(lines) + "\n\n").encode()


def token_of(request: Request) -> str | None:
    """The session token: the screen's cookie, or `Authorization: Bearer` from a script."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(SESSION_COOKIE)


async def signed_in(request: Request) -> Operator:
    """The operator of the request's live session (each request counts as use); 401 otherwise."""
    operators: Operators = request.app.state.operators
    try:
        return await operators.session(token_of(request), touch=True)
    except SessionEnded as exc:
        raise KioskError(401, exc.code, str(exc)) from None


Signed = Annotated[Operator, Depends(signed_in)]


def create_app(
    service: GatewayService, operators: Operators | None = None, queue: OutreachQueue | None = None
) -> FastAPI:
    """The API of one gateway. `operators` and the outreach `queue` are opened here (in the data
    directory) unless given."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened: list[Operators | OutreachQueue] = []
        try:
            if operators is None or queue is None:
                keys = GatewayKeys.load(service.config.data_dir)
            if operators is None:
                app.state.operators = await Operators.open(
                    service.config.data_dir / OPERATORS_DB,
                    service.config.ui,
                    seal=lambda r: keys.seal(f"{r.system}|{r.value}".encode(), b"audit-resident"),
                )
                opened.append(app.state.operators)
            if queue is None:
                app.state.queue = await OutreachQueue.open(service.config.data_dir / QUEUE_DB, keys)
                opened.append(app.state.queue)
            yield
        finally:
            for part in opened:
                await part.close()

    app = FastAPI(title="Kiosk gateway", version="0.2.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    if operators is not None:
        app.state.operators = operators
    if queue is not None:
        app.state.queue = queue
    followups = Followups.load(service.config.profiles_dir)
    if followups.problem:
        log.error("follow-up questionnaires unavailable: %s", followups.problem)
    app.state.followups = followups
    app.add_middleware(_ContainErrors)

    @app.exception_handler(KioskError)
    async def kiosk_error(_: Request, exc: KioskError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, **exc.facts)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, f"http_{exc.status_code}", str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Names the fields, never echoes their values (a value may be a resident's number).
        fields = sorted({".".join(str(p) for p in e.get("loc", ()) if p != "body") for e in exc.errors()})
        return _error(422, "invalid_request", f"the request is not valid: {', '.join(fields)}", fields=fields)

    def ops() -> Operators:
        return app.state.operators  # type: ignore[no-any-return]

    def outreach() -> OutreachQueue:
        return app.state.queue  # type: ignore[no-any-return]

    async def current_resident() -> tuple[tuple[int, ResidentRef, str, int] | None, ResidentRef | None]:
        detail = await service.outbox.current_checkin_detail()
        return detail, detail[1] if detail else None

    # sign-in -----------------------------------------------------------------------------------
    @app.post("/api/session")
    async def sign_in(body: SignInRequest) -> JSONResponse:
        try:
            token, operator = await ops().sign_in(body.operator.strip(), body.pin)
        except SignInRefused as exc:
            if exc.code == "locked":
                response = _error(429, "locked", str(exc), retry_after_s=exc.retry_after_s)
                response.headers["Retry-After"] = str(exc.retry_after_s)
                return response
            return _error(401, exc.code, str(exc))
        policy = ops().policy
        response = JSONResponse(
            {
                "operator": {"id": operator.id, "name": operator.name, "role": operator.role},
                "idle_s": policy.session_idle_s,
                "max_s": policy.session_max_s,
            }
        )
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=int(policy.session_max_s),
            httponly=True,
            samesite="strict",
            path="/",
        )
        return response

    @app.get("/api/session")
    async def session(operator: Signed) -> dict[str, object]:
        """Who is signed in; the screen calls it on activity, which keeps the session alive."""
        policy = ops().policy
        return {
            "operator": {"id": operator.id, "name": operator.name, "role": operator.role},
            "idle_s": policy.session_idle_s,
            "max_s": policy.session_max_s,
        }

    @app.delete("/api/session")
    async def sign_out(request: Request) -> JSONResponse:
        token = token_of(request)
        if token:
            await ops().sign_out(token)
        response = JSONResponse({"signed_in": False})
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # status (public: no resident) -------------------------------------------------------------
    @app.get("/api/status")
    async def status() -> dict[str, object]:
        return _public_status(await service.status())

    # firmware update of a board over its kiosk link (gateway/link_update.py) -------------------
    # Open like /api/status (a technician on the gateway, no operator session): only a bundle the
    # release key on this gateway signed is ever sent. The body must be the bundle itself
    # (application/zip or application/octet-stream), which a web page elsewhere cannot send
    # without a CORS preflight that this API never answers.
    from gateway import link_update

    @app.post("/api/firmware/updates", status_code=202)
    async def firmware_update(
        request: Request,
        device: Annotated[str, Query(min_length=1, max_length=256)],
        stall_timeout_s: Annotated[float, Query(gt=0, le=3600)] = link_update.STALL_TIMEOUT_S,
        confirm_timeout_s: Annotated[float, Query(gt=0, le=3600)] = link_update.CONFIRM_TIMEOUT_S,
    ) -> dict[str, object]:
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if kind not in ("application/zip", "application/octet-stream"):
            raise KioskError(415, "not_a_bundle", "send the bundle's bytes as application/zip")
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > link_update.MAX_BUNDLE_BYTES:
            raise KioskError(413, "bundle_too_large", "larger than any firmware bundle")
        try:
            started = link_update.start_update(
                service.links, service.config.data_dir, device, await request.body(),
                stall_timeout_s=stall_timeout_s, confirm_timeout_s=confirm_timeout_s,
            )  # fmt: skip
        except link_update.LinkUpdateError as exc:
            raise KioskError(exc.status, exc.code, str(exc)) from None
        return started.view()

    @app.get("/api/firmware/updates")
    async def firmware_updates() -> list[dict[str, object]]:
        return link_update.update_views(service.links)

    # check-in -----------------------------------------------------------------------------------
    @app.post("/api/checkin")
    async def check_in(body: CheckInRequest, operator: Signed) -> dict[str, object]:
        given = [
            body.value is not None or body.system is not None,
            body.qr is not None,
            body.previous is not None,
        ]
        if sum(given) != 1:
            raise KioskError(422, "checkin_one_way", "give a number, a QR code's text, or a resident found")
        try:
            if body.previous is not None:
                resident = await service.outbox.checkin_resident(body.previous)
                if resident is None:
                    raise KioskError(404, "unknown_resident", "no such resident on this kiosk")
            elif body.qr is not None:
                resident = parse_qr(body.qr)
            else:
                resident = parse_resident(body.system or "", body.value or "")
        except ResidentIdError as exc:
            raise KioskError(422, exc.code, str(exc), **exc.params) from None
        now_ms = time.time_ns() // 1_000_000
        await service.outbox.start_checkin(resident, operator.id, now_ms)
        await ops().audit(operator.id, "check_in", resident=resident)
        # Checked in by card rather than from the day's queue: the queue shows them checked too.
        for entry in await outreach().entries(_today()):
            if entry.person.resident == resident and entry.state != "checked":
                await outreach().set_state(entry.id, "checked", operator.id, now_ms)
        seen = await service.outbox.resident_readings(resident, limit=1)
        detail, _ = await current_resident()
        return {"checked_in": _checkin_view(detail), "seen_before": bool(seen), "operator": operator.id}

    @app.get("/api/checkin")
    async def checked_in(_: Signed) -> dict[str, object]:
        detail, _resident = await current_resident()
        return {"checked_in": _checkin_view(detail)}

    @app.post("/api/checkout")
    async def check_out(operator: Signed) -> dict[str, object]:
        _detail, resident = await current_resident()
        await service.outbox.end_checkin(time.time_ns() // 1_000_000)
        if resident is not None:
            await ops().audit(operator.id, "check_out", resident=resident)
        return {"checked_in": None}

    @app.get("/api/residents")
    async def search_residents(
        operator: Signed, last4: Annotated[str, Query(min_length=4, max_length=4)]
    ) -> dict[str, object]:
        """Residents seen on this gateway whose number ends in `last4`."""
        wanted = last4.strip().upper()
        if not (wanted[:3].isdigit() and (wanted[3].isdigit() or wanted[3] == "X")):
            raise KioskError(422, "last4_format", "type the last 4 characters of the number (digits, or X)")
        found = [
            {
                "checkin_id": checkin_id,
                "system": resident.system,
                "resident": mask(resident.value),
                "visits": visits,
                "last_visit_ms": last_ms,
            }
            for checkin_id, resident, visits, last_ms in await service.outbox.seen_residents()
            if resident.value.upper().endswith(wanted)
        ]
        await ops().audit(operator.id, "search", detail=f"{len(found)} found")
        return {"residents": found}

    # readings -----------------------------------------------------------------------------------
    @app.get("/api/resident/readings")
    async def resident_readings(operator: Signed, limit: int = 50) -> dict[str, object]:
        """The checked-in resident's readings here: this visit's and earlier ones."""
        detail, resident = await current_resident()
        if detail is None or resident is None:
            raise KioskError(404, "no_checkin", "no resident is checked in")
        rows = await service.outbox.resident_readings(resident, limit=min(max(limit, 1), 200))
        await ops().audit(operator.id, "view_readings", resident=resident, detail=f"{len(rows)} readings")
        started_ms = detail[3]
        readings = []
        for reading, state, has_waveform in rows:
            view = _reading_view(reading, state, has_waveform, service, resident, followups)
            # As ingest assigns readings: a board stamps whole seconds, so a reading finished
            # in the second of the check-in belongs to this visit.
            view["this_visit"] = reading.measured_at_ms + 999 >= started_ms
            readings.append(view)
        return {"checked_in": _checkin_view(detail), "readings": readings}

    @app.get("/api/readings")
    async def readings(operator: Signed, limit: int = 20) -> list[dict[str, object]]:
        """The newest readings of any resident (masked)."""
        rows = await service.outbox.recent_readings(min(max(limit, 1), 200))
        _, current = await current_resident()
        seen: set[ResidentRef] = set()
        for reading, _state in rows:
            if reading.resident is not None and reading.resident not in seen:
                seen.add(reading.resident)
                await ops().audit(
                    operator.id, "view_readings", resident=reading.resident, detail="recent list"
                )
        views = []
        for reading, state in rows:
            view = _reading_view(reading, state, reading.waveform is not None, service, current, followups)
            # The list's older shape, which scripts read: "name": "value unit", the device's id.
            view["values"] = {m.name: f"{m.value} {m.unit}" for m in reading.values}
            view["device"] = reading.device.id
            views.append(view)
        return views

    @app.get("/api/readings/{seq}/waveform")
    async def waveform(seq: int, operator: Signed) -> dict[str, object]:
        """An ECG strip for the screen: each lead in mV, thinned to at most WAVEFORM_MAX_POINTS."""
        reading = await service.outbox.reading(seq)
        if reading is None:
            raise KioskError(404, "unknown_reading", f"no reading {seq} on this gateway")
        wave = reading.waveform
        if wave is None:
            raise KioskError(404, "no_waveform", f"reading {seq} has no waveform")
        if reading.resident is not None:
            await ops().audit(
                operator.id, "view_waveform", resident=reading.resident, detail=f"reading {seq}"
            )
        step = max(1, math.ceil(wave.sample_count / WAVEFORM_MAX_POINTS))
        scale = float(wave.resolution_uv) / 1000.0
        return {
            "seq": seq,
            "leads": list(wave.leads),
            "sample_rate_hz": wave.sample_rate_hz / step,
            "duration_s": wave.sample_count / wave.sample_rate_hz,
            "mv": [[round(v * scale, 4) for v in series[::step]] for series in wave.samples],
        }

    # chronic-disease follow-up ------------------------------------------------------------------
    def offered_questionnaire(questionnaire_id: str) -> Questionnaire:
        if followups.problem:
            raise KioskError(
                503, "questionnaires_unavailable", f"the questionnaires cannot be read: {followups.problem}"
            )
        questionnaire = followups.offered.get(questionnaire_id)
        if questionnaire is None:
            raise KioskError(
                404, "unknown_questionnaire", f"no questionnaire {questionnaire_id!r} on this kiosk"
            )
        return questionnaire

    @app.get("/api/questionnaires")
    async def questionnaire_list(_: Signed) -> dict[str, object]:
        """The questionnaires this kiosk offers (the newest version of each)."""
        return {
            "questionnaires": [
                {"id": q.id, "version": q.version, "title": {"zh-CN": q.title.zh, "en": q.title.en}}
                for q in followups.offered.values()
            ],
            "problem": followups.problem,
        }

    @app.get("/api/questionnaires/{questionnaire_id}")
    async def questionnaire_definition(questionnaire_id: str, _: Signed) -> dict[str, object]:
        """One questionnaire's items, options, units and conditions, for the screen to draw."""
        return definition_view(offered_questionnaire(questionnaire_id))

    @app.get("/api/resident/followup")
    async def followup_due(operator: Signed) -> dict[str, object]:
        """For the checked-in resident: the conditions their readings on this kiosk put them under
        management for (the form opens with these ticked) and their last follow-up here."""
        _detail, resident = await current_resident()
        if resident is None:
            raise KioskError(404, "no_checkin", "no resident is checked in")
        rows = await service.outbox.resident_readings(resident, limit=200)
        await ops().audit(operator.id, "view_followup", resident=resident)
        offered = [] if followups.problem else list(followups.offered.values())
        due = []
        for q in offered:
            answered = [r for r, _state, _wave in rows if r.kind == QUESTIONNAIRE and r.device.model == q.id]
            last = answered[0] if answered else None  # rows come newest first
            due.append(
                {
                    "questionnaire": q.id,
                    "conditions": followups.conditions(q, (r.flags for r, _state, _wave in rows)),
                    "last": None if last is None else {"seq": last.seq, "at_ms": last.measured_at_ms},
                }
            )
        return {"followups": due, "problem": followups.problem}

    @app.post("/api/resident/questionnaire")
    async def submit_questionnaire(body: QuestionnaireRequest, operator: Signed) -> dict[str, object]:
        """Check the answers against the definition and store them for the checked-in resident as
        one reading (signed and synced like a measurement)."""
        _detail, resident = await current_resident()
        if resident is None:
            raise KioskError(404, "no_checkin", "no resident is checked in")
        questionnaire = offered_questionnaire(body.questionnaire)
        try:
            answers = check_answers(questionnaire, body.answers)
        except QuestionnaireError as exc:
            raise KioskError(422, f"answer_{exc.code}", str(exc), item=exc.link_id, **exc.params) from None
        submission = body.submission or secrets.randbelow(SUBMISSION_MAX) + 1
        new = new_reading(
            questionnaire,
            answers,
            resident=resident,
            operator=operator.id,
            time_quality=service.config.clock_quality,
            submission=submission,
        )
        try:
            seq = await service.outbox.add_reading(new)
        except StorageFullError as exc:
            raise KioskError(507, "storage_full", str(exc)) from None
        if seq is not None:
            service.sync.wake()
        await ops().audit(
            operator.id,
            "questionnaire",
            resident=resident,
            detail=f"{questionnaire.id} {questionnaire.version}",
        )
        return {"seq": seq, "stored": seq is not None, "duplicate": seq is None, "submission": submission}

    # vehicle outreach: the day's queue ----------------------------------------------------------
    def queue_day(day: str | None) -> str:
        try:
            return check_day(day or _today())
        except QueueError as exc:
            raise KioskError(422, exc.code, str(exc)) from None

    async def queue_view(day: str, operator: Operator) -> dict[str, object]:
        entries = await outreach().entries(day)
        await ops().audit_many(
            operator.id, "view_queue", [entry.person.resident for entry in entries], detail=day
        )
        _, current = await current_resident()
        return {
            "day": day,
            "entries": [_entry_view(entry, current) for entry in entries],
            "progress": _progress(entries),
        }

    async def queue_entry(entry_id: int) -> QueueEntry:
        entry = await outreach().entry(entry_id)
        if entry is None:
            raise KioskError(404, "unknown_entry", f"no queue entry {entry_id}")
        return entry

    @app.get("/api/queue")
    async def queue_list(
        operator: Signed, day: str | None = None, counts_only: bool = False
    ) -> dict[str, object]:
        """The day's outreach queue (today by default) with each resident's state and the
        progress; `counts_only` gives the progress alone (shows no resident, logs nobody)."""
        day = queue_day(day)
        if counts_only:
            return {"day": day, "progress": _progress(await outreach().entries(day))}
        return await queue_view(day, operator)

    @app.post("/api/queue")
    async def queue_add(body: QueueAddRequest, operator: Signed) -> dict[str, object]:
        """Add one resident to the end of the day's queue."""
        day = queue_day(body.day)
        if (body.qr is not None) == (body.value is not None or body.system is not None):
            raise KioskError(422, "checkin_one_way", "give a number or a QR code's text")
        try:
            resident = (
                parse_qr(body.qr)
                if body.qr is not None
                else parse_resident(body.system or "", body.value or "")
            )
            person = Person(
                resident, check_person_text(body.name, "name"), check_person_text(body.village, "village")
            )
        except ResidentIdError as exc:
            raise KioskError(422, exc.code, str(exc), **exc.params) from None
        except QueueError as exc:
            raise KioskError(422, exc.code, str(exc), **exc.params) from None
        added, duplicates = await outreach().add(day, [person], operator.id, time.time_ns() // 1_000_000)
        if duplicates:
            raise KioskError(409, "queue_duplicate", "this resident is already in the day's queue")
        await ops().audit(operator.id, "queue_add", resident=resident, detail=day)
        _, current = await current_resident()
        return {"entry": _entry_view(added[0], current)}

    @app.post("/api/queue/import")
    async def queue_import(request: Request, operator: Signed, day: str | None = None) -> dict[str, object]:
        """The township's list as CSV (the request body: UTF-8 or GBK; name, ID-card or
        health-record number, village): the residents it names are added to the day's queue, in
        its order; the rows that cannot be taken are listed with their line and reason."""
        day = queue_day(day)
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_CSV_BYTES:
                raise KioskError(
                    413, "csv_too_large", f"the file is larger than {MAX_CSV_BYTES // 1024} KB", limit_kb=1024
                )
        try:
            parsed = parse_queue_csv(bytes(data))
        except QueueError as exc:
            raise KioskError(422, exc.code, str(exc), **exc.params) from None
        people = [person for _line, person in parsed.people]
        added, duplicates = await outreach().add(day, people, operator.id, time.time_ns() // 1_000_000)
        refused: list[tuple[int, dict[str, object]]] = [
            (
                row.line,
                {"line": row.line, "name": row.name, "error": row.code, "message": row.message, **row.params},
            )
            for row in parsed.rejected
        ]
        for index in duplicates:
            line, person = parsed.people[index]
            message = "this resident is already in the day's queue"
            refused.append(
                (line, {"line": line, "name": person.name, "error": "queue_duplicate", "message": message})
            )
        rejected = [row for _line, row in sorted(refused, key=lambda pair: pair[0])]
        await ops().audit_many(
            operator.id, "queue_add", [entry.person.resident for entry in added], detail=f"{day} csv"
        )
        return {"day": day, "added": len(added), "rejected": rejected}

    @app.post("/api/queue/{entry_id}/checkin")
    async def queue_check_in(entry_id: int, operator: Signed) -> dict[str, object]:
        """Check the queued resident in (one tap: the number never goes back to the screen)."""
        entry = await queue_entry(entry_id)
        resident = entry.person.resident
        now_ms = time.time_ns() // 1_000_000
        await service.outbox.start_checkin(resident, operator.id, now_ms)
        await outreach().set_state(entry_id, "checked", operator.id, now_ms)
        await ops().audit(operator.id, "check_in", resident=resident, detail=f"outreach queue {entry.day}")
        seen = await service.outbox.resident_readings(resident, limit=1)
        detail, current = await current_resident()
        updated = await queue_entry(entry_id)
        return {
            "checked_in": _checkin_view(detail),
            "seen_before": bool(seen),
            "operator": operator.id,
            "entry": _entry_view(updated, current),
        }

    @app.post("/api/queue/{entry_id}/state")
    async def queue_state(
        entry_id: int, operator: Signed, body: Annotated[QueueStateRequest, Body()]
    ) -> dict[str, object]:
        """Skip a resident (not seen today), or put them back to waiting."""
        entry = await queue_entry(entry_id)
        updated = await outreach().set_state(entry_id, body.state, operator.id, time.time_ns() // 1_000_000)
        if updated is None:
            raise KioskError(404, "unknown_entry", f"no queue entry {entry_id}")
        action = "queue_skip" if body.state == "skipped" else "queue_wait"
        await ops().audit(operator.id, action, resident=entry.person.resident, detail=entry.day)
        _, current = await current_resident()
        return {"entry": _entry_view(updated, current)}

    @app.delete("/api/queue/{entry_id}")
    async def queue_remove(entry_id: int, operator: Signed) -> dict[str, object]:
        """Take a resident off the queue (added by mistake)."""
        entry = await outreach().remove(entry_id)
        if entry is None:
            raise KioskError(404, "unknown_entry", f"no queue entry {entry_id}")
        await ops().audit(operator.id, "queue_remove", resident=entry.person.resident, detail=entry.day)
        return {"removed": entry_id}

    # live events --------------------------------------------------------------------------------
    @app.get("/api/events")
    async def events(request: Request, operator: Signed, after: int | None = None) -> StreamingResponse:
        """Server-sent events for the check screen: `reading` (each new reading, its id the
        sequence), `refused` (a reading the gateway refused), `checkin`, `status` (the sync
        bar and the devices), and `session` when the session ends (the stream then closes)."""
        token = token_of(request)
        resume = request.headers.get("last-event-id")
        start = after if after is not None else int(resume) if resume and resume.isdigit() else None
        last_seq = start if start is not None else await service.outbox.latest_seq()
        last_rejection = await service.outbox.latest_rejection_id()

        async def stream() -> AsyncIterator[bytes]:
            nonlocal last_seq, last_rejection
            last_checkin: object = "unset"
            next_status = next_session = 0.0
            yield b"retry: 2000\n\n"
            while True:
                now = time.monotonic()
                if now >= next_session:
                    next_session = now + EVENT_SESSION_S
                    try:
                        await ops().session(token, touch=False)
                    except SessionEnded as exc:
                        yield _sse("session", {"error": exc.code, "message": str(exc)})
                        return
                detail, resident = await current_resident()
                checkin = _checkin_view(detail)
                if checkin != last_checkin:
                    last_checkin = checkin
                    yield _sse("checkin", {"checked_in": checkin})
                for reading, state, has_waveform in await service.outbox.readings_after(last_seq):
                    last_seq = reading.seq
                    view = _reading_view(reading, state, has_waveform, service, resident, followups)
                    yield _sse("reading", view, event_id=reading.seq)
                for rejection_id, at_ms, _source, reason in await service.outbox.rejections_after(
                    last_rejection
                ):
                    last_rejection = rejection_id
                    yield _sse("refused", _refusal_view(at_ms, reason))
                if now >= next_status:
                    next_status = now + EVENT_STATUS_S
                    yield _sse("status", _public_status(await service.status()))
                await asyncio.sleep(EVENT_POLL_S)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # the screen ---------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(UI_DIR / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/ui", StaticFiles(directory=UI_DIR), name="ui")
    return app
