"""The kiosk screen's API on real parts: a real outbox and operators database on SQLite files,
the app served by uvicorn on a loopback port, httpx as the browser.

Sign-in, lock-out and session expiry (on an injected clock), no resident data without a session,
check-in by typed number, QR text and search, the audit log, the live event stream, and errors
that are JSON with an error id instead of a stack trace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.routing import APIRoute

from contract.wire import DeviceRef, Measurement, ResidentRef, Waveform, decode_batch
from gateway.api import SESSION_COOKIE, create_app
from gateway.config import GatewayConfig, KioskUiConfig
from gateway.keys import GatewayKeys, create_keys
from gateway.operators import OPERATORS_DB, Operators
from gateway.outreach import QUEUE_DB
from gateway.profiles import load_profiles
from gateway.service import GatewayService
from gateway.store import NewReading, Outbox
from simulators.chain import REPO_ROOT, free_port

ID_CARD = "11010519491231002X"  # the GB 11643 example number: valid checksum
ID_CARD_TYPO = "110105194912310021"  # one character off: the checksum catches it
HEALTH_RECORD = "330781-2026-000123"
FOLLOWUP = "hypertension-diabetes-followup"
PIN = "135790"
POLICY = KioskUiConfig(session_max_s=8 * 3600, session_idle_s=15 * 60, lockout_after=3, lockout_s=600)

# Every API route that may answer without a session; all others show or record residents.
PUBLIC_ROUTES = {
    ("GET", "/api/status"), ("POST", "/api/session"), ("DELETE", "/api/session"),
    # A technician's firmware update over a kiosk link: no resident data, only a bundle signed by
    # the release key is sent (gateway/link_update.py).
    ("POST", "/api/firmware/updates"), ("GET", "/api/firmware/updates"),
}  # fmt: skip


class Clock:
    """The operators' clock in ms, moved by the test (session expiry, lock-out)."""

    def __init__(self) -> None:
        self.ms = time.time_ns() // 1_000_000

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


@dataclass
class Kiosk:
    client: httpx.AsyncClient
    service: GatewayService
    outbox: Outbox
    operators: Operators
    clock: Clock
    app: object
    data_dir: Path

    async def sign_in(self, operator: str = "doctor-wang", pin: str = PIN) -> httpx.Response:
        return await self.client.post("/api/session", json={"operator": operator, "pin": pin})


@pytest.fixture
async def kiosk(tmp_path: Path) -> AsyncIterator[Kiosk]:
    data_dir = tmp_path / "gw"
    create_keys(data_dir)
    keys = GatewayKeys.load(data_dir)
    config = GatewayConfig(
        gateway_id="gw-kiosk", data_dir=data_dir, profiles_dir=REPO_ROOT / "device_profiles", ui=POLICY
    )
    outbox = await Outbox.open(config.db_path, config.gateway_id, keys)
    service = GatewayService(config, outbox, load_profiles(config.profiles_dir))
    clock = Clock()
    operators = await Operators.open(
        data_dir / OPERATORS_DB,
        POLICY,
        seal=lambda r: keys.seal(f"{r.system}|{r.value}".encode(), b"audit-resident"),
        clock_ms=clock,
    )
    await operators.add("doctor-wang", "王医生", "doctor", PIN)
    await operators.add("crew-zhao", "赵师傅", "crew", "246802")
    app = create_app(service, operators)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1)
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield Kiosk(client, service, outbox, operators, clock, app, data_dir)
    finally:
        server.should_exit = True
        await serving
        await operators.close()
        await outbox.close()


def bp_reading(
    link_seq: int, resident: ResidentRef | None, systolic: int = 182, diastolic: int = 115
) -> NewReading:
    return NewReading(
        device=DeviceRef("bp-0001", "KX-BP100", "0.1.0"),
        boot_id=1,
        link_seq=link_seq,
        kind="bp",
        values=(
            Measurement("systolic", Decimal(systolic), "mm[Hg]"),
            Measurement("diastolic", Decimal(diastolic), "mm[Hg]"),
            Measurement("pulse_rate", Decimal(88), "/min"),
        ),
        measured_at_ms=time.time_ns() // 1_000_000,
        time_quality="ntp",
        received_mono_ms=link_seq,
        resident=resident,
        operator="doctor-wang",
        flags=("irregular_pulse", "alert:hypertensive_crisis"),
    )


def ecg_reading(link_seq: int, resident: ResidentRef) -> NewReading:
    samples = tuple(tuple((i % 250) * 1000 * (lead + 1) for i in range(5000)) for lead in range(2))
    return NewReading(
        device=DeviceRef("ecg-0001", "KX-ECG200", "0.1.0"),
        boot_id=1,
        link_seq=link_seq,
        kind="ecg",
        values=(),
        measured_at_ms=time.time_ns() // 1_000_000,
        time_quality="ntp",
        received_mono_ms=link_seq,
        resident=resident,
        operator="doctor-wang",
        flags=(),
        waveform=Waveform(500, Decimal("0.04808108"), ("MDC_ECG_LEAD_I", "MDC_ECG_LEAD_II"), 0, samples),
    )


# --- sign-in ------------------------------------------------------------------------------------


async def test_sign_in_sets_an_httponly_cookie_and_names_the_operator(kiosk: Kiosk) -> None:
    response = await kiosk.sign_in()
    assert response.status_code == 200
    assert response.json()["operator"] == {"id": "doctor-wang", "name": "王医生", "role": "doctor"}
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert (await kiosk.client.get("/api/session")).json()["operator"]["id"] == "doctor-wang"
    token = response.cookies[SESSION_COOKIE]
    # The database keeps only the token's hash: a copied file opens no session.
    assert token.encode() not in (kiosk.data_dir / OPERATORS_DB).read_bytes()

    assert (await kiosk.client.delete("/api/session")).status_code == 200
    kiosk.client.cookies.clear()
    ended = await kiosk.client.get("/api/session", headers={"Authorization": f"Bearer {token}"})
    assert ended.status_code == 401
    assert ended.json()["error"] == "signed_out"


async def test_wrong_pin_and_unknown_operator_get_the_same_answer(kiosk: Kiosk) -> None:
    wrong_pin = await kiosk.sign_in(pin="000000")
    unknown = await kiosk.sign_in(operator="nobody")
    assert wrong_pin.status_code == unknown.status_code == 401
    assert wrong_pin.json() == unknown.json() == {"error": "wrong_pin", "message": "wrong operator id or PIN"}
    assert SESSION_COOKIE not in wrong_pin.cookies


async def test_repeated_wrong_pins_lock_the_operator_out_for_a_while(kiosk: Kiosk) -> None:
    assert (await kiosk.sign_in(pin="111111")).status_code == 401
    assert (await kiosk.sign_in(pin="222222")).status_code == 401
    locked = await kiosk.sign_in(pin="333333")  # the third wrong PIN in a row (lockout_after=3)
    assert locked.status_code == 429
    assert locked.json()["error"] == "locked"
    assert locked.json()["retry_after_s"] == 600
    assert locked.headers["retry-after"] == "600"

    still = await kiosk.sign_in()  # even the right PIN is refused while locked
    assert still.status_code == 429
    assert 0 < still.json()["retry_after_s"] <= 600
    assert (await kiosk.sign_in("crew-zhao", "246802")).status_code == 200  # others are not locked

    kiosk.clock.advance(601)
    assert (await kiosk.sign_in()).status_code == 200
    actions = [row.action for row in await kiosk.operators.audit_rows()]
    assert actions.count("sign_in_refused") == 2 and "locked_out" in actions


async def test_a_session_expires_when_idle_and_after_its_maximum_age(kiosk: Kiosk) -> None:
    await kiosk.sign_in()
    kiosk.clock.advance(14 * 60)
    assert (await kiosk.client.get("/api/readings")).status_code == 200  # used: idle time starts again
    kiosk.clock.advance(14 * 60)
    assert (await kiosk.client.get("/api/readings")).status_code == 200
    kiosk.clock.advance(15 * 60 + 1)
    expired = await kiosk.client.get("/api/readings")
    assert expired.status_code == 401
    assert expired.json()["error"] == "expired"

    await kiosk.sign_in()
    minutes = 0
    while (await kiosk.client.get("/api/session")).status_code == 200:  # in use every 14 minutes
        kiosk.clock.advance(14 * 60)
        minutes += 14
        assert minutes <= 8 * 60 + 14, "the session outlived its maximum age"
    assert minutes >= 8 * 60  # ... until its 8 hours are up


# --- no resident without a session ---------------------------------------------------------------


async def test_every_resident_endpoint_answers_401_without_a_session(kiosk: Kiosk) -> None:
    await kiosk.outbox.start_checkin(ResidentRef("id-card", ID_CARD), "doctor-wang", 1)
    await kiosk.outbox.add_reading(bp_reading(1, ResidentRef("id-card", ID_CARD)))
    routes = [
        (method, route.path)
        for route in kiosk.app.routes  # type: ignore[attr-defined]
        if isinstance(route, APIRoute) and route.path.startswith("/api/")
        for method in route.methods
    ]
    guarded = [(m, p) for m, p in routes if (m, p) not in PUBLIC_ROUTES]
    assert {p for _, p in guarded} >= {
        "/api/checkin", "/api/checkout", "/api/residents", "/api/resident/readings", "/api/readings",
        "/api/readings/{seq}/waveform", "/api/events", "/api/questionnaires",
        "/api/questionnaires/{questionnaire_id}", "/api/resident/followup", "/api/resident/questionnaire",
        "/api/queue", "/api/queue/import", "/api/queue/{entry_id}/checkin", "/api/queue/{entry_id}/state",
        "/api/queue/{entry_id}",
    }  # fmt: skip
    for method, path in guarded:
        url = path.replace("{seq}", "1").replace("{entry_id}", "1").replace("{questionnaire_id}", FOLLOWUP)
        body = {"system": "id-card", "value": ID_CARD} if method == "POST" else None
        response = await kiosk.client.request(method, url, params={"last4": "002X"}, json=body)
        assert response.status_code == 401, (method, path)
        assert response.json()["error"] == "no_session", (method, path)
        assert ID_CARD[-4:] not in response.text

    # The public status says how the kiosk is doing, and nothing of who is checked in.
    status = (await kiosk.client.get("/api/status")).json()
    assert "checked_in" not in status
    assert ID_CARD[-4:] not in json.dumps(status)
    assert status["waiting"] == 1 and status["link_up"] is False


# --- check-in -------------------------------------------------------------------------------------


async def test_check_in_with_a_valid_id_card_number_uses_the_signed_in_operator(kiosk: Kiosk) -> None:
    await kiosk.sign_in()
    response = await kiosk.client.post("/api/checkin", json={"system": "id-card", "value": ID_CARD.lower()})
    assert response.status_code == 200
    body = response.json()
    assert body["checked_in"]["resident"] == "1101**********002X"
    assert body["checked_in"]["operator"] == "doctor-wang"
    assert body["seen_before"] is False
    assert await kiosk.outbox.current_checkin() == (ResidentRef("id-card", ID_CARD), "doctor-wang")

    # A reading taken now carries the resident and the operator who signed in.
    await kiosk.outbox.add_reading(bp_reading(1, ResidentRef("id-card", ID_CARD)))
    history = (await kiosk.client.get("/api/resident/readings")).json()
    [reading] = history["readings"]
    assert reading["this_visit"] is True and reading["current"] is True
    assert reading["resident"] == "1101**********002X"


async def test_check_in_with_a_mistyped_id_card_number_is_refused_with_the_reason(kiosk: Kiosk) -> None:
    await kiosk.sign_in()
    response = await kiosk.client.post("/api/checkin", json={"system": "id-card", "value": ID_CARD_TYPO})
    assert response.status_code == 422
    assert response.json()["error"] == "id_card_checksum"
    assert "check each digit" in response.json()["message"]
    short = await kiosk.client.post("/api/checkin", json={"system": "id-card", "value": ID_CARD[:17]})
    assert short.json() == {
        "error": "id_card_length",
        "message": "an ID-card number has 18 characters, this has 17",
        "length": 17,
    }
    assert await kiosk.outbox.current_checkin() is None
    # A field that is wrong is named, its value never echoed.
    bad = await kiosk.client.post("/api/checkin", json={"system": "passport", "value": ID_CARD_TYPO})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"
    assert ID_CARD_TYPO not in bad.text


async def test_check_in_from_qr_text_and_find_by_last_four(kiosk: Kiosk) -> None:
    await kiosk.sign_in()
    qr = await kiosk.client.post("/api/checkin", json={"qr": f"姓名:张三;身份证号:{ID_CARD}"})
    assert qr.json()["checked_in"]["system"] == "id-card"
    plain = await kiosk.client.post("/api/checkin", json={"qr": f"jkdah={HEALTH_RECORD}"})
    assert plain.json()["checked_in"]["resident"] == "3307**********0123"
    unknown = await kiosk.client.post("/api/checkin", json={"qr": "WIFI:S:clinic;T:WPA;P:secret;;"})
    assert unknown.status_code == 422 and unknown.json()["error"] == "qr_unknown"

    found = (await kiosk.client.get("/api/residents", params={"last4": "002x"})).json()["residents"]
    assert [(r["resident"], r["visits"]) for r in found] == [("1101**********002X", 1)]
    assert ID_CARD not in json.dumps(found)
    again = await kiosk.client.post("/api/checkin", json={"previous": found[0]["checkin_id"]})
    assert again.json()["checked_in"]["resident"] == "1101**********002X"
    assert (await kiosk.client.get("/api/residents", params={"last4": "9999"})).json() == {"residents": []}
    gone = await kiosk.client.post("/api/checkin", json={"previous": 999})
    assert gone.status_code == 404 and gone.json()["error"] == "unknown_resident"


async def test_audit_log_says_who_took_and_viewed_whose_readings_never_in_clear(kiosk: Kiosk) -> None:
    resident = ResidentRef("id-card", ID_CARD)
    await kiosk.sign_in()
    await kiosk.client.post("/api/checkin", json={"system": "id-card", "value": ID_CARD})
    await kiosk.outbox.add_reading(bp_reading(1, resident))
    seq = await kiosk.outbox.add_reading(ecg_reading(2, resident))
    assert (await kiosk.client.get("/api/resident/readings")).status_code == 200
    assert (await kiosk.client.get(f"/api/readings/{seq}/waveform")).status_code == 200
    assert (await kiosk.client.post("/api/checkout")).status_code == 200

    rows = list(reversed(await kiosk.operators.audit_rows()))
    by_action = {row.action: row for row in rows if row.operator_id == "doctor-wang"}
    for action in ("sign_in", "check_in", "view_readings", "view_waveform", "check_out"):
        assert by_action[action].operator_id == "doctor-wang", action
    for action in ("check_in", "view_readings", "view_waveform", "check_out"):
        assert by_action[action].resident_masked == "id-card:1101**********002X", action
    # Neither the database nor its write-ahead log holds the number in clear.
    for path in kiosk.data_dir.glob(f"{OPERATORS_DB}*"):
        assert ID_CARD.encode() not in path.read_bytes(), path
    with sqlite3.connect(kiosk.data_dir / OPERATORS_DB) as db:
        [(sealed,)] = db.execute("SELECT resident_sealed FROM audit WHERE action = 'check_in'").fetchall()
    keys = GatewayKeys.load(kiosk.data_dir)
    assert keys.unseal(sealed, b"audit-resident") == f"id-card|{ID_CARD}".encode()


# --- the live event stream ------------------------------------------------------------------------


async def read_events(lines: AsyncIterator[str], wanted: str, timeout: float = 10) -> dict:
    """The data of the next `wanted` event from an open stream's lines."""
    event = None
    async with asyncio.timeout(timeout):
        async for line in lines:
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == wanted:
                return json.loads(line[6:])
    raise AssertionError(f"stream ended before a {wanted} event")


async def test_event_stream_delivers_a_newly_stored_reading_with_its_alert(kiosk: Kiosk) -> None:
    resident = ResidentRef("health-record", HEALTH_RECORD)
    await kiosk.outbox.add_reading(bp_reading(1, None, systolic=120, diastolic=80))  # before: not sent
    await kiosk.sign_in()
    await kiosk.client.post("/api/checkin", json={"system": "health-record", "value": HEALTH_RECORD})
    async with kiosk.client.stream("GET", "/api/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.aiter_lines()
        checkin = await read_events(lines, "checkin")
        assert checkin["checked_in"]["resident"] == "3307**********0123"
        status = await read_events(lines, "status")
        assert status["waiting"] == 1 and "checked_in" not in status

        seq = await kiosk.outbox.add_reading(bp_reading(2, resident))
        reading = await read_events(lines, "reading")
    assert reading["seq"] == seq
    assert reading["current"] is True
    assert reading["resident"] == "3307**********0123"
    assert {v["name"]: (v["value"], v["display_unit"]) for v in reading["values"]} == {
        "systolic": ("182", "mmHg"),
        "diastolic": ("115", "mmHg"),
        "pulse_rate": ("88", "/min"),
    }
    assert reading["flags"] == ["irregular_pulse"]
    [alert] = reading["alerts"]
    assert alert["rule"] == "hypertensive_crisis" and alert["severity"] == "urgent"
    assert alert["message"]["en"] == "BP 182/115 mmHg — hypertensive crisis (grade 3): refer today"
    assert alert["message"]["zh-CN"].startswith("血压 182/115 mmHg — 高血压危象")
    assert "refer urgently" in alert["referral"]["en"]


async def test_event_stream_says_when_the_session_ends(kiosk: Kiosk, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.api.EVENT_SESSION_S", 0.2)
    await kiosk.sign_in()
    async with kiosk.client.stream("GET", "/api/events") as stream:
        lines = stream.aiter_lines()
        await read_events(lines, "status")
        kiosk.clock.advance(16 * 60)
        ended = await read_events(lines, "session")
    assert ended["error"] == "expired"


async def test_waveform_is_served_in_millivolts_thinned_for_the_screen(kiosk: Kiosk) -> None:
    resident = ResidentRef("id-card", ID_CARD)
    await kiosk.sign_in()
    seq = await kiosk.outbox.add_reading(ecg_reading(1, resident))
    strip = (await kiosk.client.get(f"/api/readings/{seq}/waveform")).json()
    assert strip["leads"] == ["MDC_ECG_LEAD_I", "MDC_ECG_LEAD_II"]
    assert strip["duration_s"] == 10 and strip["sample_rate_hz"] == 250
    assert [len(lead) for lead in strip["mv"]] == [2500, 2500]
    assert strip["mv"][0][1] == pytest.approx(2 * 1000 * 0.04808108 / 1000, abs=1e-4)  # sample 2, lead I
    missing = await kiosk.client.get("/api/readings/999/waveform")
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_reading"


# --- errors ---------------------------------------------------------------------------------------


async def test_an_unexpected_error_is_json_with_an_error_id_and_logged_without_resident_data(
    kiosk: Kiosk, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(limit: int = 20) -> list:
        raise RuntimeError(f"disk said no while reading {ID_CARD}")

    await kiosk.sign_in()
    monkeypatch.setattr(kiosk.outbox, "recent_readings", broken)
    with caplog.at_level(logging.INFO):
        response = await kiosk.client.get("/api/readings")
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "unexpected"
    assert len(body["error_id"]) == 8 and body["error_id"] in body["message"]
    assert "Traceback" not in response.text and ID_CARD not in response.text
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert body["error_id"] in logged and "RuntimeError" in logged
    assert ID_CARD not in logged and "disk said no" not in logged
    assert all(record.exc_info is None for record in caplog.records)


async def test_the_screen_is_served_from_local_files(kiosk: Kiosk) -> None:
    page = await kiosk.client.get("/")
    assert page.status_code == 200 and 'src="/ui/app.js"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from the network
    for path in ("/ui/app.js", "/ui/app.css", "/ui/i18n/zh-CN.json", "/ui/i18n/en.json"):
        assert (await kiosk.client.get(path)).status_code == 200, path
    zh = (await kiosk.client.get("/ui/i18n/zh-CN.json")).json()
    en = (await kiosk.client.get("/ui/i18n/en.json")).json()
    assert zh.keys() == en.keys()


# --- the chronic-disease follow-up questionnaire ---------------------------------------------------

ANSWERS = {
    "conditions": ["hypertension"],
    "visit_mode": "clinic",
    "symptoms": ["headache_dizziness", "lower_limb_oedema"],
    "smoker": True,
    "cigarettes_per_day": "10",
    "drinker": False,
    "exercise_times_per_week": 3,
    "exercise_minutes": "30",
    "salt_intake": "heavy",
    "psychological_adjustment": "good",
    "compliance": "fair",
    "medication_adherence": "intermittent",
    "adverse_drug_reaction": False,
}


async def test_followup_is_offered_after_a_crossed_rule_and_stored_as_a_signed_reading(kiosk: Kiosk) -> None:
    resident = ResidentRef("id-card", ID_CARD)
    await kiosk.sign_in()
    await kiosk.client.post("/api/checkin", json={"system": "id-card", "value": ID_CARD})
    due = (await kiosk.client.get("/api/resident/followup")).json()["followups"]
    assert due == [{"questionnaire": FOLLOWUP, "conditions": [], "last": None}]  # nothing crossed yet

    await kiosk.outbox.add_reading(bp_reading(1, resident))  # 182/115: hypertensive crisis
    [due] = (await kiosk.client.get("/api/resident/followup")).json()["followups"]
    assert due["conditions"] == ["hypertension"]

    form = (await kiosk.client.get(f"/api/questionnaires/{FOLLOWUP}")).json()
    items = {item["link_id"]: item for item in form["items"]}
    assert items["medication_adherence"]["text"] == {
        "zh-CN": "服药依从性",
        "en": "Takes the prescribed medicine",
    }
    assert [o["code"] for o in items["medication_adherence"]["options"]] == [
        "regular",
        "intermittent",
        "none",
    ]
    assert items["cigarettes_per_day"]["enable_when"] == {"item": "smoker", "answer": True}
    assert items["cigarettes_per_day"]["unit_text"]["zh-CN"] == "支/日"

    # Answers that do not fit the definition are refused, naming the item and why.
    missing = await kiosk.client.post(
        "/api/resident/questionnaire",
        json={"questionnaire": FOLLOWUP, "answers": {**ANSWERS, "medication_adherence": None}},
    )
    assert missing.status_code == 422
    assert missing.json()["error"] == "answer_required" and missing.json()["item"] == "medication_adherence"
    too_many = await kiosk.client.post(
        "/api/resident/questionnaire",
        json={"questionnaire": FOLLOWUP, "answers": {**ANSWERS, "cigarettes_per_day": 150}},
    )
    assert too_many.json() == {
        "error": "answer_out_of_range",
        "message": "cigarettes_per_day: must be between 0 and 100",
        "item": "cigarettes_per_day",
        "min": "0",
        "max": "100",
    }
    unknown = await kiosk.client.post(
        "/api/resident/questionnaire", json={"questionnaire": "tcm-constitution", "answers": ANSWERS}
    )
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_questionnaire"
    assert (await kiosk.outbox.status()).stored == 1  # nothing stored by a refusal

    body = {"questionnaire": FOLLOWUP, "answers": ANSWERS, "submission": 4_503_599_627_370_497}
    stored = (await kiosk.client.post("/api/resident/questionnaire", json=body)).json()
    assert stored["stored"] is True
    again = (await kiosk.client.post("/api/resident/questionnaire", json=body)).json()
    assert again["duplicate"] is True  # the same form twice (a double tap): stored once
    assert (await kiosk.outbox.status()).stored == 2

    reading = await kiosk.outbox.reading(stored["seq"])
    assert reading is not None
    assert (reading.kind, reading.device) == (
        "questionnaire",
        DeviceRef(f"questionnaire:{FOLLOWUP}", FOLLOWUP, "1"),
    )
    assert (reading.resident, reading.operator) == (resident, "doctor-wang")
    assert {m.name: (m.value, m.unit) for m in reading.values} == {
        "cigarettes_per_day": (Decimal(10), "/d"),
        "exercise_times_per_week": (Decimal(3), "/wk"),
        "exercise_minutes": (Decimal(30), "min"),
    }
    assert "answer:medication_adherence=intermittent" in reading.flags
    assert "answer:symptoms=headache_dizziness" in reading.flags and "answer:smoker=true" in reading.flags

    # It is signed and sent like a measurement: a batch the bridge's key check accepts.
    batch = await kiosk.outbox.form_batch(10)
    assert batch is not None
    decoded = decode_batch(batch.message, GatewayKeys.load(kiosk.data_dir).signing.public_key())
    assert decoded.readings[-1] == reading

    # The resident's history shows the answers in both languages; the follow-up is remembered.
    history = (await kiosk.client.get("/api/resident/readings")).json()["readings"]
    followup = next(r for r in history if r["kind"] == "questionnaire")
    assert followup["flags"] == [] and followup["values"] == []
    answers = {a["link_id"]: a for a in followup["questionnaire"]["answers"]}
    assert answers["medication_adherence"]["text"] == {"zh-CN": "间断", "en": "Now and then"}
    assert answers["symptoms"]["text"]["zh-CN"] == "头痛头晕、下肢水肿"
    assert answers["cigarettes_per_day"]["text"] == {"zh-CN": "10 支/日", "en": "10 a day"}
    [due] = (await kiosk.client.get("/api/resident/followup")).json()["followups"]
    assert due["last"]["seq"] == stored["seq"]

    actions = {(row.action, row.resident_masked) for row in await kiosk.operators.audit_rows()}
    assert ("questionnaire", "id-card:1101**********002X") in actions
    assert ("view_followup", "id-card:1101**********002X") in actions


async def test_a_questionnaire_needs_a_checked_in_resident(kiosk: Kiosk) -> None:
    await kiosk.sign_in()
    response = await kiosk.client.post(
        "/api/resident/questionnaire", json={"questionnaire": FOLLOWUP, "answers": {}}
    )
    assert response.status_code == 404 and response.json()["error"] == "no_checkin"
    assert (await kiosk.client.get("/api/resident/followup")).json()["error"] == "no_checkin"
    assert (await kiosk.outbox.status()).stored == 0


# --- vehicle outreach: the day's queue -------------------------------------------------------------

DAY = "2026-11-25"
ID_CARD_2 = "440524198001010013"  # GB 11643 check digit right (3)
TOWNSHIP_CSV = (
    "姓名,身份证号,健康档案号,所在村\n"
    f"张三,{ID_CARD},,东村\n"
    f"李四,,{HEALTH_RECORD},西村\n"
    f"王五,{ID_CARD_TYPO},,西村\n"  # a typo: refused with the reason, the others still come in
    "赵六,4.40524E+17,,南村\n"  # a number a spreadsheet turned into 4.4E+17
    f"钱七,{ID_CARD_2},,南村\n"
)


async def test_a_crew_imports_the_townships_list_and_works_through_the_queue(kiosk: Kiosk) -> None:
    await kiosk.sign_in("crew-zhao", "246802")
    imported = await kiosk.client.post(
        "/api/queue/import", params={"day": DAY}, content=TOWNSHIP_CSV.encode("gb18030"),
        headers={"Content-Type": "text/csv"},
    )  # fmt: skip
    assert imported.status_code == 200
    assert imported.json()["added"] == 3
    assert [(r["line"], r["name"], r["error"]) for r in imported.json()["rejected"]] == [
        (4, "王五", "id_card_checksum"),
        (5, "赵六", "number_mangled"),
    ]
    assert ID_CARD_TYPO not in imported.text

    queue = (await kiosk.client.get("/api/queue", params={"day": DAY})).json()
    assert [(e["name"], e["village"], e["resident"], e["state"]) for e in queue["entries"]] == [
        ("张三", "东村", "1101**********002X", "waiting"),
        ("李四", "西村", "3307**********0123", "waiting"),
        ("钱七", "南村", "4405**********0013", "waiting"),
    ]
    assert queue["progress"] == {"total": 3, "waiting": 3, "checked": 0, "skipped": 0}
    assert ID_CARD not in json.dumps(queue) and HEALTH_RECORD not in json.dumps(queue)

    # One tap checks the first resident in; the next is skipped, then put back.
    first, second, third = (entry["id"] for entry in queue["entries"])
    checked = (await kiosk.client.post(f"/api/queue/{first}/checkin")).json()
    assert checked["checked_in"]["resident"] == "1101**********002X"
    assert checked["entry"]["state"] == "checked" and checked["entry"]["current"] is True
    assert await kiosk.outbox.current_checkin() == (ResidentRef("id-card", ID_CARD), "crew-zhao")
    skipped = await kiosk.client.post(f"/api/queue/{second}/state", json={"state": "skipped"})
    assert skipped.json()["entry"]["state"] == "skipped"
    progress = (await kiosk.client.get("/api/queue", params={"day": DAY})).json()["progress"]
    assert progress == {"total": 3, "waiting": 1, "checked": 1, "skipped": 1}
    back = await kiosk.client.post(f"/api/queue/{second}/state", json={"state": "waiting"})
    assert back.json()["entry"]["state"] == "waiting"
    cannot = await kiosk.client.post(f"/api/queue/{second}/state", json={"state": "checked"})
    assert cannot.status_code == 422  # checked only by checking the resident in

    # Added by hand; twice is refused; a mistake is removed.
    added = await kiosk.client.post(
        "/api/queue", json={"day": DAY, "name": "孙八", "village": "北村", "qr": "jkdah=330781-2026-000999"}
    )
    assert added.json()["entry"]["position"] == 4
    twice = await kiosk.client.post(
        "/api/queue",
        json={"day": DAY, "name": "孙八", "system": "health-record", "value": "330781-2026-000999"},
    )
    assert twice.status_code == 409 and twice.json()["error"] == "queue_duplicate"
    assert (await kiosk.client.delete(f"/api/queue/{third}")).json() == {"removed": third}
    assert (await kiosk.client.delete(f"/api/queue/{third}")).json()["error"] == "unknown_entry"
    assert (await kiosk.client.post("/api/queue/999/checkin")).status_code == 404
    bad_day = await kiosk.client.get("/api/queue", params={"day": "25/11/2026"})
    assert bad_day.status_code == 422 and bad_day.json()["error"] == "queue_day"

    # Who saw and changed which resident's entry is in the audit log, masked.
    rows = await kiosk.operators.audit_rows(200)
    seen = {(row.action, row.resident_masked) for row in rows if row.operator_id == "crew-zhao"}
    for action, resident in [
        ("queue_add", "id-card:1101**********002X"),
        ("view_queue", "health-record:3307**********0123"),
        ("check_in", "id-card:1101**********002X"),
        ("queue_skip", "health-record:3307**********0123"),
        ("queue_remove", "id-card:4405**********0013"),
    ]:
        assert (action, resident) in seen, action

    # The queue's own database names nobody: numbers, names and villages are sealed.
    for path in kiosk.data_dir.glob(f"{QUEUE_DB}*"):
        data = path.read_bytes()
        for secret in (ID_CARD, HEALTH_RECORD, "张三", "东村"):
            assert secret.encode() not in data, (path, secret)


async def test_the_queue_summary_counts_without_showing_or_logging_anyone(kiosk: Kiosk) -> None:
    await kiosk.sign_in("crew-zhao", "246802")
    await kiosk.client.post("/api/queue/import", params={"day": DAY}, content=TOWNSHIP_CSV.encode())
    before = len(await kiosk.operators.audit_rows(500))
    summary = (await kiosk.client.get("/api/queue", params={"day": DAY, "counts_only": "true"})).json()
    assert summary == {"day": DAY, "progress": {"total": 3, "waiting": 3, "checked": 0, "skipped": 0}}
    assert len(await kiosk.operators.audit_rows(500)) == before
    other_day = (await kiosk.client.get("/api/queue", params={"day": "2026-11-26"})).json()
    assert other_day["entries"] == [] and other_day["progress"]["total"] == 0


async def test_a_card_check_in_marks_todays_queue_entry_checked(kiosk: Kiosk) -> None:
    await kiosk.sign_in("crew-zhao", "246802")
    await kiosk.client.post(
        "/api/queue", json={"name": "李四", "system": "health-record", "value": HEALTH_RECORD}
    )
    await kiosk.client.post("/api/checkin", json={"qr": HEALTH_RECORD})
    [entry] = (await kiosk.client.get("/api/queue")).json()["entries"]
    assert (entry["state"], entry["current"]) == ("checked", True)


async def test_a_file_that_is_not_the_list_is_refused_whole_with_the_reason(kiosk: Kiosk) -> None:
    await kiosk.sign_in("crew-zhao", "246802")
    no_number = await kiosk.client.post("/api/queue/import", content="姓名,村\n张三,东村\n".encode())
    assert no_number.status_code == 422 and no_number.json()["error"] == "csv_columns"
    binary = await kiosk.client.post("/api/queue/import", content=b"\x89PNG\r\n\x1a\n\xff\xfe\xfd" * 10)
    assert binary.status_code == 422 and binary.json()["error"] == "csv_encoding"
    huge = await kiosk.client.post("/api/queue/import", content=b"a" * (1024 * 1024 + 1))
    assert huge.status_code == 413 and huge.json()["error"] == "csv_too_large"
    assert (await kiosk.client.get("/api/queue")).json()["entries"] == []
