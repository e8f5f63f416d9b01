"""Alerts become referrals: the gateway's `alert:<rule>` flags turn, at the bridge, into a FHIR
Flag on the resident and a referral Task for a care team, worded from the region's rules file
and routed by its routing file (the rule, its severity and the gateway's site); the team lists,
claims and closes them over the bridge's API, each doctor with a token of their own, in whose
name the referral is worked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from fhir.resources.R4B.task import Task

from cloud_bridge import auth, store
from cloud_bridge.alert_rules import AlertRulesError, load_rule_texts
from cloud_bridge.api import ROUTED_TEAM_EXTENSION, create_app
from cloud_bridge.db import Database
from cloud_bridge.fhir_map import CARE_TEAM_SYSTEM
from cloud_bridge.receive import receive_batch
from cloud_bridge.referral_routes import DEFAULT_ROUTES, load_routes
from contract.wire import GENESIS_HASH, Reading, ResidentRef, encode_batch, up_topic
from tests.component.bridge_auth import bearer
from tests.component.bridge_readings import bp_reading

RULES = Path(__file__).resolve().parents[2] / "device_profiles" / "alert_rules" / "cn.toml"
GATEWAY = "gw-ref-01"


def bp(
    seq: int,
    systolic: int,
    diastolic: int,
    flags: tuple[str, ...],
    resident: str | None = "330781-2026-000321",
) -> Reading:
    who = ResidentRef("health-record", resident) if resident else None
    at = 1795564800000 + seq * 60_000
    return bp_reading(
        GATEWAY, seq, systolic, diastolic, resident=who, flags=flags, measured_at_ms=at, operator="doctor-sun"
    )


@pytest.fixture
def bridge(bridge_db: Path | str) -> Iterator[tuple[TestClient, Database]]:
    """On each back-end: a SQLite file, a PostgreSQL database."""
    key = Ed25519PrivateKey.generate()
    db = bridge_db
    conn = store.connect(db)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    store.enrol_gateway(conn, GATEWAY, pem.decode(), site="township", kind="kiosk", now_ms=0)
    readings = [
        bp(1, 182, 115, ("alert:hypertensive_crisis",)),
        bp(2, 150, 85, ("alert:hypertension",)),
        bp(3, 120, 78, ()),
        bp(4, 185, 112, ("alert:hypertensive_crisis",), resident=None),  # nobody checked in: no Flag
    ]
    message, _ = encode_batch(readings, prev_hash=GENESIS_HASH, signing_key=key, number=1)
    outcome = receive_batch(
        conn,
        up_topic(GATEWAY),
        message,
        now_ms=1795565000000,
        alert_rules=load_rule_texts(RULES),
        referral_routes=load_routes(DEFAULT_ROUTES),
    )
    assert outcome.stored == 4
    with TestClient(
        create_app(str(db)), headers=bearer(db, "doctor", "Dr Chen, county cardiology")
    ) as client:
        yield client, conn
    conn.close()


def test_each_alert_is_a_flag_and_a_referral_worded_from_the_rules(
    bridge: tuple[TestClient, Database],
) -> None:
    client, conn = bridge
    listed = client.get("/referrals").json()
    assert listed["total"] == 2
    crisis, raised = listed["referrals"]  # most urgent first
    assert (crisis["status"], crisis["priority"]) == ("requested", "stat")
    assert raised["priority"] == "urgent"
    assert crisis["reasonCode"]["text"] == (
        "血压 182/115 mm[Hg] — 高血压危象（3级高血压）：请当日转诊 / "
        "BP 182/115 mm[Hg] — hypertensive crisis (grade 3): refer today"
    )
    assert crisis["description"].startswith("安静休息5分钟后复测")
    assert crisis["focus"]["reference"].startswith("Observation/")
    assert conn.execute("SELECT COUNT(*) FROM fhir_resources WHERE resource_type = 'Flag'").fetchone() == (2,)
    flag = client.get(f"/fhir/Flag/{_flag_id(conn, crisis)}").json()
    assert flag["status"] == "active" and flag["subject"] == crisis["for"]


def _flag_id(conn: Database, task: dict) -> str:
    from cloud_bridge.fhir_map import ALERT_FLAG_SYSTEM, resource_id

    return resource_id(ALERT_FLAG_SYSTEM, task["identifier"][0]["value"])


def test_the_specialist_team_claims_and_closes_a_referral(
    bridge: tuple[TestClient, Database],
) -> None:
    client, conn = bridge
    crisis = client.get("/referrals").json()["referrals"][0]
    claimed = client.post(f"/referrals/{crisis['id']}/claim")  # no body: the token says who
    assert claimed.status_code == 200, claimed.text
    assert (claimed.json()["status"], claimed.json()["owner"]) == (
        "accepted",
        {"display": "Dr Chen, county cardiology"},
    )
    # The team it was routed to stays on record (the gateway's site, "township", has no team of
    # its own in the routing file: the crisis went to the rule's specialist team).
    assert claimed.json()["extension"] == [{"url": ROUTED_TEAM_EXTENSION, "valueReference": crisis["owner"]}]
    assert crisis["owner"]["identifier"] == {"system": CARE_TEAM_SYSTEM, "value": "county-cardiology"}
    Task.model_validate(claimed.json())
    dr_wu = {"Authorization": f"Bearer {auth.add_token(conn, 'Dr Wu', 'doctor', now_ms=0)}"}
    again = client.post(f"/referrals/{crisis['id']}/claim", headers=dr_wu)
    assert again.status_code == 409  # already taken
    closed = client.post(
        f"/referrals/{crisis['id']}/close",
        json={"by": "Dr Chen, county cardiology", "note": "Seen; amlodipine started."},  # 'by' may be given
    )
    assert closed.status_code == 200
    assert closed.json()["status"] == "completed"
    assert closed.json()["note"][0] == {
        "authorString": "Dr Chen, county cardiology",
        "time": closed.json()["lastModified"],
        "text": "Seen; amlodipine started.",
    }
    assert closed.json()["meta"]["versionId"] == "3"
    assert client.get(f"/fhir/Flag/{_flag_id(conn, crisis)}").json()["status"] == "inactive"
    assert [r["id"] for r in client.get("/referrals").json()["referrals"]] != [crisis["id"]]
    assert client.get("/referrals", params={"status": "completed"}).json()["total"] == 1
    assert client.post(f"/referrals/{crisis['id']}/close", json={}).status_code == 409
    assert client.post("/referrals/not-a-task/claim").status_code == 404
    assert client.post(f"/referrals/{crisis['id']}/claim", content=b"[1]").status_code == 400
    assert client.post(f"/referrals/{crisis['id']}/claim", content=b"{nope").status_code == 400


def test_a_referral_is_worked_only_in_the_token_holders_name(bridge: tuple[TestClient, Database]) -> None:
    """Dr Chen's token cannot claim or close in Dr Wu's name: 403, and the Task is unchanged."""
    client, _ = bridge
    crisis = client.get("/referrals").json()["referrals"][0]
    posing = client.post(f"/referrals/{crisis['id']}/claim", json={"by": "Dr Wu"})
    assert posing.status_code == 403
    assert posing.json()["issue"][0]["diagnostics"] == (
        "this token is 'Dr Chen, county cardiology''s: a referral is worked in the token holder's own "
        "name (leave 'by' out)"
    )
    closing_as_other = client.post(f"/referrals/{crisis['id']}/close", json={"by": "Dr Wu", "note": "x"})
    assert closing_as_other.status_code == 403
    assert client.get(f"/fhir/Task/{crisis['id']}").json() == crisis  # unchanged


SITE_A, SITE_B = "Lishui village clinic", "Beiling village clinic"  # as in the shipped routing file


def enrolled(conn: Database, gateway_id: str, site: str) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    store.enrol_gateway(conn, gateway_id, pem.decode(), site=site, kind="kiosk", now_ms=0)
    return key


def test_each_referral_goes_to_the_team_routed_for_its_rule_severity_and_site(bridge_db: Path | str) -> None:
    """The same hypertensive crisis at two sites, through the bridge's receive path with the
    shipped rules and routing: at Lishui (no override) it goes to the county hospital's cardiology
    team, at Beiling (an override for this rule) to the county TCM hospital's; the milder raised
    BP stays with each site's own family-doctor team. The API filters by team and lists the
    teams with their open referrals."""
    db = bridge_db
    conn = store.connect(db)
    rules, routes = load_rule_texts(RULES), load_routes(DEFAULT_ROUTES)
    for number, (gateway, site) in enumerate((("gw-lishui", SITE_A), ("gw-beiling", SITE_B))):
        key = enrolled(conn, gateway, site)
        resident = ResidentRef("health-record", f"330781-2026-00050{number}")
        readings = [
            bp_reading(gateway, 1, 186, 114, resident=resident, flags=("alert:hypertensive_crisis",)),
            bp_reading(gateway, 2, 152, 92, resident=resident, flags=("alert:hypertension",)),
        ]
        message, _ = encode_batch(readings, prev_hash=GENESIS_HASH, signing_key=key, number=1)
        outcome = receive_batch(
            conn, up_topic(gateway), message, now_ms=1795565000000, alert_rules=rules, referral_routes=routes
        )
        assert outcome.stored == 2, outcome
    conn.close()

    def owner_of(task: dict) -> tuple[str, str]:
        return task["owner"]["identifier"]["value"], task["owner"]["display"]

    with TestClient(create_app(str(db), referral_routes=routes), headers=bearer(db, "doctor")) as client:
        listed = client.get("/referrals").json()
        by_rule_and_gateway = {
            (t["reasonCode"]["coding"][0]["code"], t["identifier"][0]["value"].split("/")[0]): t
            for t in listed["referrals"]
        }
        assert listed["total"] == 4
        crisis_a = by_rule_and_gateway["hypertensive_crisis", "gw-lishui"]
        crisis_b = by_rule_and_gateway["hypertensive_crisis", "gw-beiling"]
        assert owner_of(crisis_a) == (
            "county-cardiology",
            "县人民医院心血管内科专科团队 (County People's Hospital cardiology specialist team)",
        )
        assert owner_of(crisis_b) == (
            "county-tcm-cardiology",
            "县中医院心血管科专科团队 (County TCM Hospital cardiology specialist team)",
        )
        assert owner_of(by_rule_and_gateway["hypertension", "gw-lishui"])[0] == "lishui-family-doctors"
        assert owner_of(by_rule_and_gateway["hypertension", "gw-beiling"])[0] == "beiling-family-doctors"
        for task in listed["referrals"]:
            assert task["owner"]["identifier"]["system"] == "urn:kiosk:care-team"
            Task.model_validate(task)

        def team_ids(team: str, **params: str) -> list[str]:
            answer = client.get("/referrals", params={"team": team, **params})
            assert answer.status_code == 200, answer.text
            return [t["id"] for t in answer.json()["referrals"]]

        assert team_ids("county-cardiology") == [crisis_a["id"]]
        assert team_ids("county-tcm-cardiology") == [crisis_b["id"]]
        assert team_ids("county-endocrinology") == []
        assert team_ids("no-such-team") == []
        # Claimed, the referral is its claimant's; the team's list still shows it.
        assert client.post(f"/referrals/{crisis_b['id']}/claim").status_code == 200
        assert team_ids("county-tcm-cardiology") == [crisis_b["id"]]
        assert team_ids("county-tcm-cardiology", status="accepted") == [crisis_b["id"]]
        assert team_ids("county-cardiology", status="accepted") == []

        teams = client.get("/referrals/teams")
        assert teams.status_code == 200, teams.text
        open_by_team = {team["id"]: team["open"] for team in teams.json()["teams"]}
        assert teams.json()["total"] == len(routes.teams) == len(open_by_team)
        assert open_by_team == {
            "county-cardiology": 1, "county-endocrinology": 0, "county-respiratory": 0,
            "county-general-medicine": 0, "county-tcm-cardiology": 1, "township-health-centre": 0,
            "lishui-family-doctors": 1, "beiling-family-doctors": 1,
        }  # fmt: skip
        assert teams.json()["teams"][0] == {
            "id": "county-cardiology",
            "name_zh": "县人民医院心血管内科专科团队",
            "name_en": "County People's Hospital cardiology specialist team",
            "open": 1,
        }
        # Who may list referrals may list the teams; a technician may do neither.
        assert client.get("/referrals/teams", headers=bearer(db, "health_manager")).status_code == 200
        refused = client.get("/referrals/teams", headers=bearer(db, "technician"))
        assert refused.status_code == 403 and refused.json()["roles_allowed"] == [
            "doctor", "health_manager", "admin"
        ]  # fmt: skip


def test_a_routing_file_the_bridge_cannot_use_stops_it_at_start(tmp_path: Path) -> None:
    """`kiosk-bridge run` loads the rules and the routing before it starts anything, and names the
    file and the field of what is wrong (exit status 2)."""
    from typer.testing import CliRunner

    from cloud_bridge.cli import app

    broken = tmp_path / "routes.toml"
    broken.write_text(
        DEFAULT_ROUTES.read_text(encoding="utf-8").replace('team = "county-respiratory"', 'team = "lungs"')
    )
    runner = CliRunner()
    args = ["run", "--db", str(tmp_path / "b.db"), "--alert-rules", str(RULES), "--referral-routes"]
    result = runner.invoke(app, [*args, str(broken)])
    assert result.exit_code == 2, result.output
    assert f"error: {broken}: routes.4.team: no team 'lungs'" in result.output
    # A route for a rule that does not escalate would never be used: refused too.
    useless = tmp_path / "useless.toml"
    useless.write_text(
        DEFAULT_ROUTES.read_text(encoding="utf-8")
        + '\n[[routes]]\nrule = "fever"\nteam = "county-general-medicine"\n'
    )
    result = runner.invoke(app, [*args, str(useless)])
    assert result.exit_code == 2, result.output
    assert "routes (rule 'fever'): the rule's severity is 'warn', which does not escalate" in result.output


def test_a_rules_file_the_bridge_cannot_use_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "xx.toml"
    broken.write_text(
        '[[rules]]\nid = "r"\nseverity = "loud"\n'
        'message = {zh = "a", en = "b"}\nreferral = {zh = "", en = ""}\n'
    )
    with pytest.raises(AlertRulesError, match=re.escape("xx.toml: rules[0] (r): severity 'loud'")):
        load_rule_texts(broken)


def test_chronic_disease_figures_per_site_for_a_quarter(tmp_path: Path) -> None:
    """Three residents at one site: one under management and in control at the quarter's last
    reading, one under management and not in control, one never over a threshold."""
    from cloud_bridge.figures import quarter_bounds

    key = Ed25519PrivateKey.generate()
    db = tmp_path / "bridge.db"
    conn = store.connect(db)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    store.enrol_gateway(conn, GATEWAY, pem.decode(), site="Lishui village", kind="kiosk", now_ms=0)
    start, end = quarter_bounds("2026Q4")
    assert (end - start) // 86_400_000 == 92  # Oct + Nov + Dec
    before = start - 30 * 86_400_000
    hypertension = ("alert:hypertension",)

    def at(seq: int, when: int, systolic: int, diastolic: int, flags: tuple[str, ...], who: str) -> Reading:
        resident = ResidentRef("health-record", who)
        return bp_reading(
            GATEWAY, seq, systolic, diastolic, resident=resident, flags=flags, measured_at_ms=when
        )

    readings = [
        at(1, before, 152, 96, hypertension, "A"),  # A: diagnosed last quarter
        at(2, start + 1_000, 150, 92, hypertension, "A"),
        at(3, start + 86_400_000, 132, 84, (), "A"),  # A's latest this quarter: in control
        at(4, start + 2_000, 160, 100, hypertension, "B"),  # B: not in control
        at(5, start + 3_000, 118, 76, (), "C"),  # C: never over
        at(6, end + 1_000, 190, 120, ("alert:hypertensive_crisis",), "C"),  # next quarter: not counted
    ]
    message, _ = encode_batch(readings, prev_hash=GENESIS_HASH, signing_key=key, number=1)
    assert receive_batch(conn, up_topic(GATEWAY), message, now_ms=end + 5_000).stored == 6
    conn.close()
    with TestClient(create_app(str(db)), headers=bearer(db, "health_manager")) as client:
        (site,) = client.get("/figures/chronic", params={"quarter": "2026Q4"}).json()
        bad = client.get("/figures/chronic", params={"quarter": "Q4-2026"})
    assert site["site"] == "Lishui village"
    assert site["hypertension"] == {
        "under_management": 2, "followed_this_quarter": 2, "in_control": 1, "control_rate": 0.5
    }  # fmt: skip
    assert site["diabetes"]["under_management"] == 0 and site["diabetes"]["control_rate"] is None
    assert bad.status_code == 400
