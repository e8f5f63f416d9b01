"""What the bridge needs of the region's alert rules: each rule's severity and words.

The gateway evaluates the rules (`device_profiles/alert_rules/<region>.toml`) on every reading,
offline, where the village doctor sees the result at once, and sends each crossing as a reading
flag `alert:<rule id>`. The bridge reads the same file only for what it turns those flags into:
a FHIR Flag and a referral Task, with the rule's severity and its message and referral in Chinese
and English, filled in with the reading's values, and the care team the Task goes to (chosen by
the rule, its severity and the gateway's site: `cloud_bridge/referral_routes.py`). It does not
evaluate conditions again, so the two can never disagree about whether a reading crossed.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_bridge.referral_routes import CareTeam, ReferralRoutes, route
from contract.wire import Reading

ALERT_FLAG_PREFIX = "alert:"
SEVERITIES = ("info", "warn", "urgent")


class AlertRulesError(ValueError):
    """A rules file the bridge cannot use; the message names the file and the rule."""


@dataclass(frozen=True, slots=True)
class RuleText:
    id: str
    severity: str
    fields: tuple[
        str, ...
    ]  # the fields its conditions look at, in order: {value}/{unit} come from the first present
    message: Mapping[str, str]  # language -> template
    referral: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class AlertText:
    """One alert of one reading, in words."""

    rule_id: str
    severity: str
    message_zh: str
    message_en: str
    referral_zh: str
    referral_en: str
    team: CareTeam | None = None  # who takes the referral; None: not routed (no routing file)


def load_rule_texts(path: Path) -> dict[str, RuleText]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AlertRulesError(f"{path}: cannot read: {exc}") from exc
    rules: dict[str, RuleText] = {}
    for index, rule in enumerate(raw.get("rules", [])):
        where = f"{path}: rules[{index}]"
        try:
            rule_id, severity = str(rule["id"]), str(rule["severity"])
            message, referral = dict(rule["message"]), dict(rule["referral"])
            fields = tuple(str(condition["field"]) for condition in rule.get("when", []))
        except (KeyError, TypeError, ValueError) as exc:
            raise AlertRulesError(f"{where}: {exc!r} missing or malformed") from exc
        if severity not in SEVERITIES:
            raise AlertRulesError(f"{where} ({rule_id}): severity {severity!r} not one of {SEVERITIES}")
        for name, texts in (("message", message), ("referral", referral)):
            if not {"zh", "en"} <= set(texts):
                raise AlertRulesError(f"{where} ({rule_id}): {name} needs zh and en")
        rules[rule_id] = RuleText(rule_id, severity, fields, message, referral)
    if not rules:
        raise AlertRulesError(f"{path}: no rules")
    return rules


class _Keep(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def alert_texts(
    rules: Mapping[str, RuleText],
    reading: Reading,
    *,
    routes: ReferralRoutes | None = None,
    site: str = "",
) -> list[AlertText]:
    """The alerts the gateway raised on `reading`, in words; an unknown rule id keeps its id.
    With `routes`, each names the team its referral goes to from `site` (the gateway's)."""
    values: dict[str, Any] = {m.name: m.value for m in reading.values if m.value is not None}
    units = {m.name: m.unit for m in reading.values}
    out = []
    for flag in reading.flags:
        if not flag.startswith(ALERT_FLAG_PREFIX):
            continue
        rule_id = flag.removeprefix(ALERT_FLAG_PREFIX)
        rule = rules.get(rule_id)
        if rule is None:
            text = f"alert {rule_id} (rule not known to the bridge)"
            team = route(routes, rule_id, "warn", site) if routes is not None else None
            out.append(AlertText(rule_id, "warn", text, text, "", "", team))
            continue
        hit = next((name for name in rule.fields if name in values), None)
        fill = _Keep({name: str(value) for name, value in values.items()})
        if hit is not None:
            fill.update(value=str(values[hit]), unit=units[hit])
        out.append(
            AlertText(
                rule_id,
                rule.severity,
                rule.message["zh"].format_map(fill),
                rule.message["en"].format_map(fill),
                rule.referral["zh"].format_map(fill),
                rule.referral["en"].format_map(fill),
                route(routes, rule_id, rule.severity, site) if routes is not None else None,
            )
        )
    return out
