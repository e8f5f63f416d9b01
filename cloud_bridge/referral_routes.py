"""Who takes a referral: the care teams of the county health community and the routes to them.

The region's routing file (`device_profiles/referral_routes/<region>.toml`, beside the alert rules
in `device_profiles/alert_rules/`) names the teams and says which one gets each alert rule's
referral Task, per site (a gateway's `site`, as enrolled). The alert's severity decides the tier,
as in the county's three-physician model (专科医师 + 全科医师 + 健康管理师):

- an alert whose severity is in `escalate` (by default `urgent`: "refer today") goes to a county
  specialist team: the route for (rule, the gateway's site), else the rule's route for every site,
  else `defaults.specialist`;
- any other alert (`warn`, `info`: recheck, confirm, enrol in follow-up) stays with the site's own
  family-doctor team (village doctor and health manager, with the township health centre's
  general practitioner): the team of the site in `[[sites]]`, else `defaults.site`.

`load_routes` validates the whole file and names the field of the first problem it finds (like the
device profiles do); `route` is the pure choice. Both are used by the bridge alone: the gateway
never sees the routing, so a county can re-route referrals without touching its kiosks.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

__all__ = [
    "DEFAULT_ROUTES",
    "CareTeam",
    "ReferralRoutes",
    "ReferralRoutesError",
    "check_rules",
    "load_routes",
    "parse_routes",
    "route",
    "unknown_sites",
]

# The checkout's routing file for China; `kiosk-bridge run --referral-routes` gives another.
DEFAULT_ROUTES = Path(__file__).resolve().parents[1] / "device_profiles" / "referral_routes" / "cn.toml"
SEVERITIES = ("info", "warn", "urgent")  # as in the alert rules


class ReferralRoutesError(ValueError):
    """A routing file the bridge cannot use; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class CareTeam:
    """A team that takes referrals: a stable id (the Task owner's identifier) and its names."""

    id: str
    name_zh: str
    name_en: str

    @property
    def display(self) -> str:
        return f"{self.name_zh} ({self.name_en})"


@dataclass(frozen=True, slots=True)
class ReferralRoutes:
    """A loaded routing file: teams by id (in the file's order) and the tables `route` reads."""

    region: str
    teams: Mapping[str, CareTeam]
    escalate: frozenset[str]  # severities that go to a specialist team
    specialist_routes: Mapping[tuple[str, str | None], str]  # (rule, site or None) -> team id
    site_teams: Mapping[str, str]  # site -> its own team id
    default_specialist: str
    default_site: str


def route(routes: ReferralRoutes, rule_id: str, severity: str, site: str) -> CareTeam:
    """The team that gets the referral of an alert of `rule_id` with `severity` at `site`.

    `site` is the gateway's site as enrolled, compared exactly; an unknown site or rule gets the
    defaults."""
    if severity in routes.escalate:
        by_rule = routes.specialist_routes
        team = by_rule.get((rule_id, site)) or by_rule.get((rule_id, None)) or routes.default_specialist
    else:
        team = routes.site_teams.get(site, routes.default_site)
    return routes.teams[team]


def check_rules(routes: ReferralRoutes, severities: Mapping[str, str], *, where: str = "") -> None:
    """Refuse routes the alert rules make useless: a rule the rules file does not have (a typo
    would send its referrals to the default team unnoticed), or a rule whose severity does not
    escalate (its alerts stay with the site's team, so a specialist route would never be used).
    `severities` is rule id -> severity, from the alert rules file."""
    for rule_id, site in routes.specialist_routes:
        at = f"{where}: routes (rule {rule_id!r}{'' if site is None else f', site {site!r}'})"
        if rule_id not in severities:
            known = ", ".join(sorted(severities))
            raise ReferralRoutesError(f"{at}: no such alert rule (rules: {known})")
        if severities[rule_id] not in routes.escalate:
            raise ReferralRoutesError(
                f"{at}: the rule's severity is {severities[rule_id]!r}, which does not escalate "
                f"(escalate = {sorted(routes.escalate)}): its alerts stay with the site's team"
            )


def unknown_sites(routes: ReferralRoutes, enrolled: Iterable[str]) -> list[str]:
    """Sites the routing file names that no enrolled gateway has (a misspelt site routes nothing)."""
    named = set(routes.site_teams) | {site for _, site in routes.specialist_routes if site is not None}
    return sorted(named - set(enrolled))


# --- the file ------------------------------------------------------------------------------------


def _plain(text: str) -> str:
    """Names and sites go into FHIR strings and the bridge's plain-text checks: no padding, no
    control characters."""
    if not text.isprintable() or text.strip() != text:
        raise ValueError("must be printable text without leading or trailing spaces")
    return text


TeamId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(?:[-_][a-z0-9]+)*$", max_length=64)]
RuleId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(?:[-_][a-z0-9]+)*$", max_length=64)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Names(_Model):
    zh: Text
    en: Text

    @model_validator(mode="after")
    def _plain_names(self) -> _Names:
        for lang in ("zh", "en"):
            try:
                _plain(getattr(self, lang))
            except ValueError as exc:
                raise ValueError(f"{lang}: {exc}") from None
        return self


class _Team(_Model):
    id: TeamId
    name: _Names


class _Defaults(_Model):
    specialist: TeamId = Field(description="an escalated alert whose rule has no route")
    site: TeamId = Field(description="an alert that stays at a site without its own team")


class _Site(_Model):
    site: Text
    team: TeamId

    @model_validator(mode="after")
    def _plain_site(self) -> _Site:
        try:
            _plain(self.site)
        except ValueError as exc:
            raise ValueError(f"site: {exc}") from None
        return self


class _Route(_Model):
    rule: RuleId
    team: TeamId
    site: Text | None = None

    @model_validator(mode="after")
    def _plain_site(self) -> _Route:
        if self.site is not None:
            try:
                _plain(self.site)
            except ValueError as exc:
                raise ValueError(f"site: {exc}") from None
        return self


class _RoutesFile(_Model):
    region: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
    name: Text | None = None
    escalate: list[str] = Field(default_factory=lambda: ["urgent"])
    defaults: _Defaults
    teams: list[_Team] = Field(min_length=1)
    sites: list[_Site] = Field(default_factory=list)
    routes: list[_Route] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> _RoutesFile:
        for index, severity in enumerate(self.escalate):
            if severity not in SEVERITIES:
                raise ValueError(f"escalate.{index}: {severity!r} is not one of {', '.join(SEVERITIES)}")
        if len(set(self.escalate)) != len(self.escalate):
            raise ValueError("escalate: a severity is listed twice")
        ids: set[str] = set()
        for index, team in enumerate(self.teams):
            if team.id in ids:
                raise ValueError(f"teams.{index}.id: team {team.id!r} is defined twice")
            ids.add(team.id)
        known = ", ".join(team.id for team in self.teams)

        def check(field: str, team: str) -> None:
            if team not in ids:
                raise ValueError(f"{field}: no team {team!r} (teams: {known})")

        check("defaults.specialist", self.defaults.specialist)
        check("defaults.site", self.defaults.site)
        sites: set[str] = set()
        for index, entry in enumerate(self.sites):
            check(f"sites.{index}.team", entry.team)
            if entry.site in sites:
                raise ValueError(f"sites.{index}.site: site {entry.site!r} is listed twice")
            sites.add(entry.site)
        routes: set[tuple[str, str | None]] = set()
        for index, entry in enumerate(self.routes):
            check(f"routes.{index}.team", entry.team)
            if (entry.rule, entry.site) in routes:
                at = "every site" if entry.site is None else f"site {entry.site!r}"
                raise ValueError(f"routes.{index}: rule {entry.rule!r} is routed twice for {at}")
            routes.add((entry.rule, entry.site))
        return self


def _format_errors(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if where and (inner := _INNER_PATH.match(message)):  # a nested check naming its own field
            where, message = f"{where}.{inner.group(1)}", inner.group(2)
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


_INNER_PATH = re.compile(r"^([a-z_]\w*(?:\.\w+)*): (.*)$", re.DOTALL)


def parse_routes(raw: Mapping[str, Any], *, where: str = "referral routes") -> ReferralRoutes:
    """A routing file's parsed TOML -> `ReferralRoutes`; ReferralRoutesError naming `where` and
    the field otherwise."""
    try:
        model = _RoutesFile.model_validate(raw)
    except ValidationError as exc:
        raise ReferralRoutesError(f"{where}: {_format_errors(exc)}") from None
    return ReferralRoutes(
        region=model.region,
        teams={team.id: CareTeam(team.id, team.name.zh, team.name.en) for team in model.teams},
        escalate=frozenset(model.escalate),
        specialist_routes={(entry.rule, entry.site): entry.team for entry in model.routes},
        site_teams={entry.site: entry.team for entry in model.sites},
        default_specialist=model.defaults.specialist,
        default_site=model.defaults.site,
    )


def load_routes(path: Path) -> ReferralRoutes:
    """Read and check a routing file; ReferralRoutesError names the file and the field."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ReferralRoutesError(f"{path}: cannot read: {exc}") from exc
    return parse_routes(raw, where=str(path))
