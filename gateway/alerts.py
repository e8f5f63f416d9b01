"""Alert rules: clinical thresholds kept in data, one TOML file per region, and a pure evaluator.

A region's rules live in ``device_profiles/alert_rules/<region>.toml`` (``cn.toml`` for "CN"); the
gateway's configuration picks the region (``alert_region``, default "CN"). Each rule names the
kinds it looks at, conditions on their fields (any one that holds triggers the rule), the flags a
reading must carry for the rule to apply (fasting glucose), the rules it supersedes (a crisis is
not also reported as plain hypertension), a severity and a message and referral in Chinese and
English. `evaluate` is pure: the same reading and rules always give the same alerts.

Thresholds carry their unit. A value in another unit is converted exactly (1 mmol/L of glucose is
18.0156 mg/dL), unless the rule states the threshold in that unit too (``also``), which is then
used as written: guidelines round their thresholds per unit (7.0 mmol/L and 126 mg/dL).
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contract.wire import Measurement
from gateway.errors import ProfileError
from gateway.link_names import FLAG_NAMES
from gateway.profiles import FIELD_UNITS, KIND_FIELDS, Kind, convert, display_unit, format_errors, read_toml

__all__ = [
    "ALERT_RULES_DIR",
    "KNOWN_FLAGS",
    "Alert",
    "AlertRule",
    "AlertRules",
    "Condition",
    "Severity",
    "Text",
    "available_regions",
    "evaluate",
    "load_alert_rules",
    "load_rules_file",
]

ALERT_RULES_DIR = "alert_rules"  # under the device profile directory
# The reading flags a rule may require or skip on: the ones devices send (kiosk link names).
KNOWN_FLAGS: frozenset[str] = frozenset(FLAG_NAMES.values())

Severity = Literal["info", "warn", "urgent"]
_SEVERITY_ORDER: dict[str, int] = {"urgent": 0, "warn": 1, "info": 2}
Comparison = Literal["<", "<=", ">=", ">"]
_PLACEHOLDERS = ("value", "unit")  # besides field names: the triggering value and its unit


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Text(_Strict):
    """A text in simplified Chinese and English; {field} placeholders take the reading's values."""

    zh: str = Field(min_length=1)
    en: str = Field(min_length=1)


class Condition(_Strict):
    field: str
    op: Comparison
    threshold: Decimal
    unit: str
    also: dict[str, Decimal] = {}  # the same threshold as the source states it in another unit

    def holds(self, measurement: Measurement) -> bool:
        """Whether the measurement (which has a value) meets this condition, compared exactly."""
        assert measurement.value is not None
        if measurement.unit == self.unit:
            value, limit = Fraction(measurement.value), Fraction(self.threshold)
        elif measurement.unit in self.also:
            value, limit = Fraction(measurement.value), Fraction(self.also[measurement.unit])
        else:
            value, limit = convert(measurement.value, measurement.unit, self.unit), Fraction(self.threshold)
        if self.op == "<":
            return value < limit
        if self.op == "<=":
            return value <= limit
        if self.op == ">=":
            return value >= limit
        return value > limit

    def describe(self) -> str:
        others = "".join(f" (= {limit} {unit})" for unit, limit in self.also.items())
        return f"{self.field} {self.op} {self.threshold} {self.unit}{others}"


class AlertRule(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    kinds: tuple[Kind, ...] = Field(min_length=1)
    severity: Severity
    when: tuple[Condition, ...] = Field(min_length=1)  # any one that holds triggers the rule
    requires_flags: tuple[str, ...] = ()  # the reading must carry all of these
    supersedes: tuple[str, ...] = ()  # rules not reported when this one triggers
    message: Text
    referral: Text
    source: str = Field(min_length=1)  # where the threshold comes from

    @model_validator(mode="after")
    def _consistent(self) -> AlertRule:
        fields = {name for kind in self.kinds for name in KIND_FIELDS[kind]}
        for index, condition in enumerate(self.when):
            where = f"when.{index}"
            if condition.field not in fields:
                raise ValueError(
                    f"{where}.field: {condition.field!r} is not a field of {', '.join(self.kinds)} "
                    f"(known: {', '.join(sorted(fields)) or 'none'})"
                )
            units = FIELD_UNITS[condition.field]
            for unit in (condition.unit, *condition.also):
                if unit not in units:
                    use = " or ".join(units)
                    raise ValueError(f"{where}.unit: {unit!r} does not measure {condition.field} (use {use})")
            if condition.unit in condition.also:
                raise ValueError(f"{where}.also: repeats the threshold's own unit {condition.unit}")
        for kind in self.kinds:
            if not any(condition.field in KIND_FIELDS[kind] for condition in self.when):
                raise ValueError(f"kinds: no condition looks at a field of {kind}")
        unknown = [flag for flag in self.requires_flags if flag not in KNOWN_FLAGS]
        if unknown:
            raise ValueError(f"requires_flags: unknown flag {', '.join(unknown)}")
        if self.id in self.supersedes:
            raise ValueError("supersedes: a rule cannot supersede itself")
        names = {condition.field for condition in self.when}
        for language in ("zh", "en"):
            for what in ("message", "referral"):
                _check_template(f"{what}.{language}", getattr(getattr(self, what), language), names)
        return self


def _check_template(where: str, template: str, fields: set[str]) -> None:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in fields and name not in _PLACEHOLDERS:
            allowed = ", ".join("{" + n + "}" for n in (*sorted(fields), *_PLACEHOLDERS))
            raise ValueError(f"{where}: unknown placeholder {{{name}}} (use {allowed})")
        if spec or conversion:
            raise ValueError(f"{where}: placeholder {{{name}}} takes no format")


class AlertRules(_Strict):
    region: str = Field(pattern=r"^[A-Z][A-Z0-9_-]{0,31}$")
    name: str = Field(min_length=1)
    skip_flags: tuple[str, ...] = ()  # readings with any of these flags are never alerted on
    rules: tuple[AlertRule, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> AlertRules:
        ids = [rule.id for rule in self.rules]
        twice = sorted({rule_id for rule_id in ids if ids.count(rule_id) > 1})
        if twice:
            raise ValueError(f"rules: id {', '.join(twice)} used twice")
        for index, rule in enumerate(self.rules):
            unknown = [other for other in rule.supersedes if other not in ids]
            if unknown:
                raise ValueError(f"rules.{index}.supersedes: no rule {', '.join(unknown)}")
        unknown = [flag for flag in self.skip_flags if flag not in KNOWN_FLAGS]
        if unknown:
            raise ValueError(f"skip_flags: unknown flag {', '.join(unknown)}")
        return self

    def for_kind(self, kind: str) -> tuple[AlertRule, ...]:
        return tuple(rule for rule in self.rules if kind in rule.kinds)

    def rule(self, rule_id: str) -> AlertRule | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)


@dataclass(frozen=True, slots=True)
class Alert:
    """A rule the reading crossed: which, how serious, what to tell the doctor, in both languages."""

    rule: str
    severity: Severity
    field: str  # the field whose value triggered it
    value: Decimal
    unit: str
    message_zh: str
    message_en: str
    referral_zh: str
    referral_en: str

    @property
    def flag(self) -> str:
        """The reading flag that carries this alert with the reading: 'alert:<rule id>'."""
        return f"alert:{self.rule}"


def evaluate(
    rules: AlertRules, kind: str, measurements: Sequence[Measurement], flags: Iterable[str] = ()
) -> tuple[Alert, ...]:
    """The alerts a reading raises, most severe first (rules in file order within a severity)."""
    present = set(flags)
    if present & set(rules.skip_flags):
        return ()
    by_name = {m.name: m for m in measurements if m.value is not None}
    triggered: list[tuple[AlertRule, Measurement]] = []
    for rule in rules.for_kind(kind):
        if not present.issuperset(rule.requires_flags):
            continue
        hit = next(
            (by_name[c.field] for c in rule.when if c.field in by_name and c.holds(by_name[c.field])), None
        )
        if hit is not None:
            triggered.append((rule, hit))
    superseded = {other for rule, _ in triggered for other in rule.supersedes}
    alerts = [_alert(rule, hit, by_name) for rule, hit in triggered if rule.id not in superseded]
    return tuple(sorted(alerts, key=lambda alert: _SEVERITY_ORDER[alert.severity]))


def _alert(rule: AlertRule, hit: Measurement, by_name: Mapping[str, Measurement]) -> Alert:
    assert hit.value is not None
    values = {name: str(m.value) for name, m in by_name.items()}
    values.update(value=str(hit.value), unit=display_unit(hit.unit))

    def fill(template: str) -> str:
        return string.Formatter().vformat(template, (), _Missing(values))

    return Alert(
        rule=rule.id,
        severity=rule.severity,
        field=hit.name,
        value=hit.value,
        unit=hit.unit,
        message_zh=fill(rule.message.zh),
        message_en=fill(rule.message.en),
        referral_zh=fill(rule.referral.zh),
        referral_en=fill(rule.referral.en),
    )


class _Missing(dict[str, str]):
    """Placeholders of fields the reading did not send read '?'."""

    def __missing__(self, key: str) -> str:
        return "?"


# --------------------------------------------------------------------------------------------
# Loading


def load_rules_file(path: Path) -> AlertRules:
    """One region's rules; the file must be named after its region (cn.toml holds region "CN")."""
    raw = read_toml(path)
    try:
        rules = AlertRules.model_validate(raw)
    except ValidationError as exc:
        raise ProfileError(str(path), format_errors(exc)) from exc
    expected = f"{rules.region.lower()}.toml"
    if path.name != expected:
        raise ProfileError(str(path), f"region: file of region {rules.region!r} must be named {expected}")
    return rules


def available_regions(profiles_dir: Path) -> list[str]:
    return sorted(path.stem.upper() for path in (profiles_dir / ALERT_RULES_DIR).glob("*.toml"))


def load_alert_rules(profiles_dir: Path, region: str) -> AlertRules:
    """The rules of `region` from <profiles_dir>/alert_rules/; ProfileError if there are none."""
    path = profiles_dir / ALERT_RULES_DIR / f"{region.lower()}.toml"
    if not path.is_file():
        known = ", ".join(available_regions(profiles_dir)) or "none"
        raise ProfileError(str(path), f"no alert rules for region {region!r} (regions: {known})")
    rules = load_rules_file(path)
    if rules.region != region.upper():
        raise ProfileError(str(path), f"region: holds {rules.region!r}, not {region!r}")
    return rules
