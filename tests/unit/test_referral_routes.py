"""Referral routing: the routing file's loader, the pure choice of a care team, and the team as
the referral Task's owner (a logical Reference that validates as FHIR R4)."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.task import Task

from cloud_bridge import fhir_map
from cloud_bridge.alert_rules import AlertText, alert_texts, load_rule_texts
from cloud_bridge.fhir_map import CARE_TEAM_SYSTEM, map_reading
from cloud_bridge.referral_routes import (
    DEFAULT_ROUTES,
    CareTeam,
    ReferralRoutesError,
    check_rules,
    load_routes,
    parse_routes,
    route,
    unknown_sites,
)
from tests.component.bridge_readings import bp_reading

REPO = Path(__file__).resolve().parents[2]
CN_RULES = REPO / "device_profiles" / "alert_rules" / "cn.toml"
BATCH_HASH = bytes(32)

# A small county of our own, so the tests do not depend on the shipped example's sites.
SMALL = """
region = "CN"
escalate = ["urgent"]

[defaults]
specialist = "county-general"
site = "township"

[[teams]]
id = "county-cardiology"
name = { zh = "县医院心内科专科团队", en = "County hospital cardiology team" }

[[teams]]
id = "county-general"
name = { zh = "县医院全科专科团队", en = "County hospital general medicine team" }

[[teams]]
id = "tcm-cardiology"
name = { zh = "县中医院心血管科专科团队", en = "County TCM hospital cardiology team" }

[[teams]]
id = "township"
name = { zh = "乡镇卫生院家庭医生团队", en = "Township health centre family-doctor team" }

[[teams]]
id = "east-family-doctors"
name = { zh = "东镇家庭医生团队", en = "East township family-doctor team" }

[[sites]]
site = "East village clinic"
team = "east-family-doctors"

[[routes]]
rule = "hypertensive_crisis"
team = "county-cardiology"

[[routes]]
rule = "hypertensive_crisis"
site = "North village clinic"
team = "tcm-cardiology"
"""


def small(**changes: Any) -> dict[str, Any]:
    raw = tomllib.loads(SMALL)
    raw.update(changes)
    return raw


ROUTES = parse_routes(small())


# --- the choice --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "severity", "site", "team"),
    [
        # urgent escalates to the rule's specialist team; a site with its own route gets that one
        ("hypertensive_crisis", "urgent", "East village clinic", "county-cardiology"),
        ("hypertensive_crisis", "urgent", "North village clinic", "tcm-cardiology"),
        ("hypertensive_crisis", "urgent", "", "county-cardiology"),  # a gateway enrolled without site
        ("spo2_severe", "urgent", "North village clinic", "county-general"),  # no route: the default
        ("rule_nobody_knows", "urgent", "East village clinic", "county-general"),
        # warn and info stay with the site's own team; an unlisted site gets the default one
        ("hypertension", "warn", "East village clinic", "east-family-doctors"),
        ("hypertension", "warn", "North village clinic", "township"),
        ("fever", "info", "East village clinic", "east-family-doctors"),
        # a specialist route is only for escalated alerts, even at the site it names
        ("hypertensive_crisis", "warn", "North village clinic", "township"),
        # sites are compared exactly, as enrolled
        ("hypertensive_crisis", "urgent", "north village clinic", "county-cardiology"),
    ],
)
def test_route_chooses_by_severity_rule_and_site(rule: str, severity: str, site: str, team: str) -> None:
    assert route(ROUTES, rule, severity, site).id == team


def test_which_severities_escalate_is_data() -> None:
    both = parse_routes(small(escalate=["urgent", "warn"]))
    assert route(both, "hypertensive_crisis", "warn", "East village clinic").id == "county-cardiology"
    assert route(both, "fever", "info", "East village clinic").id == "east-family-doctors"
    assert route(both, "fever", "warn", "East village clinic").id == "county-general"


def test_defaults_when_the_file_leaves_escalate_sites_and_routes_out() -> None:
    raw = small()
    for key in ("escalate", "sites", "routes"):
        del raw[key]
    routes = parse_routes(raw)
    assert routes.escalate == frozenset({"urgent"})
    assert route(routes, "hypertensive_crisis", "urgent", "East village clinic").id == "county-general"
    assert route(routes, "hypertension", "warn", "East village clinic").id == "township"


def test_a_team_is_its_id_and_names() -> None:
    team = ROUTES.teams["county-cardiology"]
    assert team == CareTeam("county-cardiology", "县医院心内科专科团队", "County hospital cardiology team")
    assert team.display == "县医院心内科专科团队 (County hospital cardiology team)"
    assert list(ROUTES.teams) == [
        "county-cardiology", "county-general", "tcm-cardiology", "township", "east-family-doctors"
    ]  # fmt: skip


def test_unknown_sites_are_the_routing_files_sites_no_gateway_has() -> None:
    assert unknown_sites(ROUTES, ["East village clinic", "West"]) == ["North village clinic"]
    assert unknown_sites(ROUTES, ["East village clinic", "North village clinic"]) == []


# --- the shipped file --------------------------------------------------------------------------


def test_the_shipped_routing_file_loads_and_fits_the_cn_rules() -> None:
    routes = load_routes(DEFAULT_ROUTES)
    rules = load_rule_texts(CN_RULES)
    check_rules(routes, {rule.id: rule.severity for rule in rules.values()}, where=str(DEFAULT_ROUTES))
    assert routes.region == "CN"
    # Every rule that escalates has its own specialist team, not the catch-all default.
    for rule in rules.values():
        if rule.severity in routes.escalate:
            assert (rule.id, None) in routes.specialist_routes, rule.id
    assert route(routes, "hypertensive_crisis", "urgent", "Lishui village clinic").id == "county-cardiology"
    assert route(routes, "hypertensive_crisis", "urgent", "Beiling village clinic").id == (
        "county-tcm-cardiology"
    )
    assert route(routes, "severe_hyperglycaemia", "urgent", "").id == "county-endocrinology"
    assert route(routes, "spo2_severe", "urgent", "").id == "county-respiratory"
    assert route(routes, "hypertension", "warn", "Lishui village clinic").id == "lishui-family-doctors"
    assert route(routes, "fever", "warn", "a clinic not listed").id == "township-health-centre"


# --- bad files ---------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "xx.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            '\n[[routes]]\nrule = "spo2_severe"\nteam = "cardio"\n',
            "routes.2.team: no team 'cardio' (teams: county-cardiology, county-general, tcm-cardiology, "
            "township, east-family-doctors)",
        ),
        (
            '\n[[teams]]\nid = "township"\nname = { zh = "另一个", en = "Another" }\n',
            "teams.5.id: team 'township' is defined twice",
        ),
        (
            '\n[[teams]]\nid = "County Cardiology"\nname = { zh = "甲", en = "A" }\n',
            "teams.5.id: String should match pattern",
        ),
        ('\n[[teams]]\nid = "x"\nname = { zh = "甲" }\n', "teams.5.name.en: Field required"),
        (
            '\n[[teams]]\nid = "x"\nname = { zh = "甲 ", en = "A" }\n',
            "teams.5.name.zh: must be printable text without leading or trailing spaces",
        ),
        ('\n[[teams]]\nid = "x"\nname = { zh = "甲", en = "A\\nB" }\n', "teams.5.name.en: must be printable"),
        (
            '\n[[teams]]\nid = "x"\ncolour = "red"\nname = { zh = "甲", en = "A" }\n',
            "teams.5.colour: Extra inputs are not permitted",
        ),
        (
            '\n[[routes]]\nrule = "hypertensive_crisis"\nteam = "county-general"\n',
            "routes.2: rule 'hypertensive_crisis' is routed twice for every site",
        ),
        (
            '\n[[routes]]\nrule = "hypertensive_crisis"\nsite = "North village clinic"\nteam = "township"\n',
            "routes.2: rule 'hypertensive_crisis' is routed twice for site 'North village clinic'",
        ),
        ('\n[[routes]]\nrule = "Crisis!"\nteam = "township"\n', "routes.2.rule: String should match pattern"),
        (
            '\n[[sites]]\nsite = "East village clinic"\nteam = "township"\n',
            "sites.1.site: site 'East village clinic' is listed twice",
        ),
        ('\n[[sites]]\nsite = " East"\nteam = "township"\n', "sites.1.site: must be printable"),
        ('\n[[sites]]\nsite = "West"\nteam = "west"\n', "sites.1.team: no team 'west'"),
    ],
)
def test_a_bad_routing_file_is_refused_naming_the_file_and_field(
    tmp_path: Path, change: str, message: str
) -> None:
    path = write(tmp_path, SMALL + change)
    with pytest.raises(ReferralRoutesError, match="^" + re.escape(f"{path}: {message}")):
        load_routes(path)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('escalate = ["urgent"]', 'escalate = ["urgent", "loud"]', "escalate.1: 'loud' is not one of"),
        ('escalate = ["urgent"]', 'escalate = ["urgent", "urgent"]', "escalate: a severity is listed twice"),
        ('specialist = "county-general"', 'specialist = "nobody"', "defaults.specialist: no team 'nobody'"),
        ('site = "township"\n', "", "defaults.site: Field required"),
        ('region = "CN"', 'region = "China"', "region: String should match pattern"),
    ],
)
def test_bad_top_level_fields_are_named(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in SMALL
    path = write(tmp_path, SMALL.replace(old, new, 1))
    with pytest.raises(ReferralRoutesError, match="^" + re.escape(f"{path}: {message}")):
        load_routes(path)


def test_a_file_without_teams_or_defaults_or_not_toml_is_named(tmp_path: Path) -> None:
    both = "defaults: Field required; teams: Field required"
    with pytest.raises(ReferralRoutesError, match=re.escape(both)):
        load_routes(write(tmp_path, 'region = "CN"\n'))
    with pytest.raises(ReferralRoutesError, match=re.escape("xx.toml: cannot read")):
        load_routes(write(tmp_path, "[[teams]\n"))
    with pytest.raises(ReferralRoutesError, match=re.escape("missing.toml: cannot read")):
        load_routes(tmp_path / "missing.toml")


def test_routes_that_the_alert_rules_make_useless_are_refused() -> None:
    severities = {"hypertensive_crisis": "urgent", "hypertension": "warn"}
    check_rules(ROUTES, severities, where="xx.toml")  # fits
    with pytest.raises(ReferralRoutesError, match=re.escape("no such alert rule (rules: hypertension)")):
        check_rules(ROUTES, {"hypertension": "warn"}, where="xx.toml")
    with pytest.raises(
        ReferralRoutesError,
        match=re.escape("xx.toml: routes (rule 'hypertensive_crisis'): the rule's severity is 'warn'"),
    ):
        check_rules(ROUTES, {"hypertensive_crisis": "warn"}, where="xx.toml")


# --- alerts in words carry their team ----------------------------------------------------------


def test_alert_texts_name_the_team_from_the_gateways_site() -> None:
    rules = load_rule_texts(CN_RULES)
    crisis = bp_reading("gw-1", 1, 186, 112, flags=("alert:hypertensive_crisis", "alert:not_a_rule"))
    east = alert_texts(rules, crisis, routes=ROUTES, site="East village clinic")
    north = alert_texts(rules, crisis, routes=ROUTES, site="North village clinic")
    assert [(a.rule_id, a.team and a.team.id) for a in east] == [
        ("hypertensive_crisis", "county-cardiology"),
        ("not_a_rule", "east-family-doctors"),  # unknown to the bridge: warn, the site's team
    ]
    assert [a.team and a.team.id for a in north] == ["tcm-cardiology", "township"]
    assert [a.team for a in alert_texts(rules, crisis)] == [None, None]  # no routing: not routed


# --- the team as the Task's owner --------------------------------------------------------------


def crisis_alert(team: CareTeam | None) -> AlertText:
    return AlertText(
        "hypertensive_crisis", "urgent", "高血压危象", "Hypertensive crisis", "今日转诊", "Refer today", team
    )


def tasks(entries: list[fhir_map.TransactionEntry]) -> list[dict[str, Any]]:
    return [e.resource for e in entries if e.resource_type == "Task"]


def test_the_task_owner_is_a_logical_reference_to_the_team_and_every_resource_validates() -> None:
    team = ROUTES.teams["tcm-cardiology"]
    reading = bp_reading("gw-1", 7, 190, 120, flags=("alert:hypertensive_crisis",))
    entries = map_reading(reading, batch_hash=BATCH_HASH, alerts=[crisis_alert(team)])
    (task,) = tasks(entries)
    assert task["owner"] == {
        "identifier": {"system": CARE_TEAM_SYSTEM, "value": "tcm-cardiology"},
        "display": "县中医院心血管科专科团队 (County TCM hospital cardiology team)",
    }
    assert CARE_TEAM_SYSTEM == "urn:kiosk:care-team"
    Reference.model_validate(task["owner"])
    assert Task.model_validate(task).owner.identifier.value == "tcm-cardiology"
    for entry in entries:  # every resource, not only the Task
        fhir_map._MODELS[entry.resource_type].model_validate(entry.resource)
    assert [e.resource_type for e in entries].count("Flag") == 1


def test_an_alert_without_a_team_gives_an_unowned_task() -> None:
    reading = bp_reading("gw-1", 7, 190, 120, flags=("alert:hypertensive_crisis",))
    (task,) = tasks(map_reading(reading, batch_hash=BATCH_HASH, alerts=[crisis_alert(None)]))
    assert "owner" not in task
    Task.model_validate(task)


def test_the_team_is_part_of_the_validation_cache_key_and_its_strings_are_checked() -> None:
    reading = bp_reading("gw-1", 7, 190, 120, flags=("alert:hypertensive_crisis",))
    east, north = ROUTES.teams["east-family-doctors"], ROUTES.teams["tcm-cardiology"]
    with_east = fhir_map._reading_shape(reading, (crisis_alert(east),), True)
    assert with_east is not None
    assert fhir_map._reading_shape(reading, (crisis_alert(north),), True) == with_east  # leaves only
    assert fhir_map._reading_shape(reading, (crisis_alert(None),), True) != with_east  # no owner
    for odd in (
        dataclasses.replace(east, id=""),
        dataclasses.replace(east, id="east\n"),
        dataclasses.replace(east, name_zh=" 东镇"),  # the display would start with a space
        dataclasses.replace(east, name_en="East\ntownship"),
        dataclasses.replace(east, name_zh="\x00"),
    ):
        assert fhir_map._reading_shape(reading, (crisis_alert(odd),), True) is None, odd


def test_readings_alike_but_for_their_team_map_to_one_json_shape() -> None:
    """What the cache relies on: the two owners differ only in leaf strings."""
    from tests.unit.test_fhir_validation_cache import json_shape

    reading = bp_reading("gw-1", 7, 190, 120, flags=("alert:hypertensive_crisis",))
    shapes = []
    for team in ROUTES.teams.values():
        (task,) = tasks(map_reading(reading, batch_hash=BATCH_HASH, alerts=[crisis_alert(team)]))
        shapes.append(json_shape(task))
    assert all(shape == shapes[0] for shape in shapes)
