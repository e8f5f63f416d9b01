"""Questionnaires: their definitions (data, `device_profiles/questionnaires/*.toml`) and how the
answers travel as a reading of kind `questionnaire`. Pure: bytes and mappings in, values out.

Shared by the gateway (which shows the form, checks the answers and stores them as a reading)
and the bridge (which turns them into a FHIR QuestionnaireResponse), for the reason the wire
contract is shared: both must read the same link ids, codes and units the same way.

On the wire (docs/wire-format.md, 3.2.2) a questionnaire reading is an ordinary reading:

- `dev` names the questionnaire: `["questionnaire:<id>", "<id>", "<version>"]`;
- `val` holds the number answers, one `[link id, value, unit]` each (UCUM unit of the item, "1"
  when it has none), in the order of the items;
- `fl` holds the other answers, one flag each, in the order of the items and their options:
  `answer:<link id>=<option code>` (several for a multiple choice), `answer:<link id>=true|false`.

So the reading envelope, the batch, the outbox and the bridge's store need nothing new, and an
answer is as exact as a measurement (a Decimal). No free text is ever asked: nothing typed on the
kiosk can carry a name into the record in clear.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from contract.wire import ContractError, DeviceRef, Measurement

__all__ = [
    "ANSWER_FLAG",
    "DEVICE_PREFIX",
    "ITEM_TYPES",
    "KIND",
    "AnswerValue",
    "Answers",
    "EnableWhen",
    "Item",
    "Option",
    "Questionnaire",
    "QuestionnaireError",
    "Text",
    "answers_from_wire",
    "answers_to_wire",
    "check_answers",
    "is_enabled",
    "load_questionnaire",
    "load_questionnaires",
    "managed_conditions",
    "parse_questionnaire",
]

KIND = "questionnaire"
ANSWER_FLAG = "answer:"
DEVICE_PREFIX = "questionnaire:"
ITEM_TYPES = ("boolean", "choice", "integer", "decimal")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # link ids and option codes: safe in a flag
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.-]{0,31}$")
_INTEGER = re.compile(r"^-?[0-9]{1,12}$")
_NUMBER_UNIT = "1"  # UCUM "no unit", for a number item without one

AnswerValue = bool | str | tuple[str, ...] | int | Decimal
Answers = tuple[tuple[str, AnswerValue], ...]  # (link id, value), in the order of the items


class QuestionnaireError(ContractError):
    """A definition or an answer the contract refuses. `code` names the reason for the kiosk's
    string tables; `link_id` the item, when there is one; `params` the facts (never an answer
    the resident gave in free text: there is none)."""

    def __init__(self, code: str, message: str, *, link_id: str | None = None, **params: object) -> None:
        super().__init__(message)
        self.code = code
        self.link_id = link_id
        self.params = params


@dataclass(frozen=True, slots=True)
class Text:
    zh: str
    en: str


@dataclass(frozen=True, slots=True)
class Option:
    code: str
    text: Text
    exclusive: bool = False


@dataclass(frozen=True, slots=True)
class EnableWhen:
    """The item is shown (and may be answered) only when `item` has `answer` (one of its answers,
    for a multiple choice)."""

    item: str
    answer: bool | str


@dataclass(frozen=True, slots=True)
class Item:
    link_id: str
    type: str
    text: Text
    section: str | None = None
    required: bool = False
    repeats: bool = False
    options: tuple[Option, ...] = ()
    unit: str | None = None
    unit_text: Text | None = None
    minimum: Decimal | None = None
    maximum: Decimal | None = None
    decimals: int | None = None
    enable_when: EnableWhen | None = None

    def option(self, code: str) -> Option | None:
        return next((option for option in self.options if option.code == code), None)


@dataclass(frozen=True, slots=True)
class Questionnaire:
    id: str
    version: str
    url: str
    title: Text
    items: tuple[Item, ...]
    source: str = ""
    sections: Mapping[str, Text] = field(default_factory=dict)
    management_item: str | None = None
    management: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # condition -> alert rules

    def item(self, link_id: str) -> Item | None:
        return next((item for item in self.items if item.link_id == link_id), None)

    @property
    def canonical(self) -> str:
        """The FHIR canonical reference of this version: `url|version`."""
        return f"{self.url}|{self.version}"

    @property
    def device(self) -> DeviceRef:
        """What a questionnaire reading names as its device (`dev` on the wire)."""
        return DeviceRef(f"{DEVICE_PREFIX}{self.id}", self.id, self.version)

    def version_key(self) -> tuple[tuple[int, int | str], ...]:
        """For picking the newest version: numeric parts compare as numbers."""
        return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.-]", self.version))


# --- definitions ---------------------------------------------------------------------------------


def _text(raw: Any, where: str) -> Text:
    if not isinstance(raw, Mapping) or set(raw) != {"zh", "en"}:
        raise QuestionnaireError("definition", f"{where}: needs exactly zh and en texts")
    zh, en = raw["zh"], raw["en"]
    if not (isinstance(zh, str) and isinstance(en, str) and zh.strip() and en.strip()):
        raise QuestionnaireError("definition", f"{where}: zh and en must be non-empty text")
    return Text(zh.strip(), en.strip())


def _number(raw: Any, where: str) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise QuestionnaireError("definition", f"{where}: must be a number")
    return Decimal(str(raw))


_ITEM_KEYS = {
    "link_id", "type", "text", "section", "required", "repeats", "options", "unit", "unit_text",
    "min", "max", "decimals", "enable_when",
}  # fmt: skip


def _item(raw: Any, where: str, sections: Mapping[str, Text]) -> Item:
    if not isinstance(raw, Mapping):
        raise QuestionnaireError("definition", f"{where}: must be a table")
    unknown = sorted(set(raw) - _ITEM_KEYS)
    if unknown:
        raise QuestionnaireError("definition", f"{where}: unknown keys {unknown}")
    link_id, kind = raw.get("link_id"), raw.get("type")
    if not isinstance(link_id, str) or not _NAME.match(link_id):
        raise QuestionnaireError("definition", f"{where}: link_id must be lower case letters, digits, _")
    where = f"{where} ({link_id})"
    if kind not in ITEM_TYPES:
        raise QuestionnaireError("definition", f"{where}: type must be one of {', '.join(ITEM_TYPES)}")
    section = raw.get("section")
    if section is not None and section not in sections:
        raise QuestionnaireError("definition", f"{where}: section {section!r} is not in [sections]")
    flags = {key: raw.get(key, False) for key in ("required", "repeats")}
    if not all(isinstance(value, bool) for value in flags.values()):
        raise QuestionnaireError("definition", f"{where}: required and repeats are true or false")
    options: list[Option] = []
    for index, option in enumerate(raw.get("options", [])):
        spot = f"{where}: options[{index}]"
        if not isinstance(option, Mapping) or not set(option) <= {"code", "zh", "en", "exclusive"}:
            raise QuestionnaireError("definition", f"{spot}: needs code, zh, en (and exclusive)")
        code = option.get("code")
        if not isinstance(code, str) or not _NAME.match(code):
            raise QuestionnaireError("definition", f"{spot}: code must be lower case letters, digits, _")
        text = _text({"zh": option.get("zh"), "en": option.get("en")}, spot)
        options.append(Option(code, text, bool(option.get("exclusive", False))))
    if len({option.code for option in options}) != len(options):
        raise QuestionnaireError("definition", f"{where}: option codes repeat")
    if (kind == "choice") != bool(options):
        raise QuestionnaireError("definition", f"{where}: a choice item, and only a choice, has options")
    if flags["repeats"] and kind != "choice":
        raise QuestionnaireError("definition", f"{where}: only a choice may repeat")
    numeric = kind in ("integer", "decimal")
    number_keys = [key for key in ("unit", "unit_text", "min", "max", "decimals") if key in raw]
    if number_keys and not numeric:
        raise QuestionnaireError("definition", f"{where}: {number_keys} only for integer or decimal items")
    unit = raw.get("unit")
    if unit is not None and (not isinstance(unit, str) or not unit or " " in unit):
        raise QuestionnaireError("definition", f"{where}: unit must be a UCUM code")
    minimum = _number(raw["min"], f"{where}: min") if "min" in raw else None
    maximum = _number(raw["max"], f"{where}: max") if "max" in raw else None
    if minimum is not None and maximum is not None and minimum > maximum:
        raise QuestionnaireError("definition", f"{where}: min is above max")
    decimals = raw.get("decimals")
    if decimals is not None and (
        kind != "decimal" or not isinstance(decimals, int) or not 0 <= decimals <= 6
    ):
        raise QuestionnaireError("definition", f"{where}: decimals (0-6) only for a decimal item")
    enable = raw.get("enable_when")
    enable_when = None
    if enable is not None:
        if not isinstance(enable, Mapping) or set(enable) != {"item", "answer"}:
            raise QuestionnaireError("definition", f"{where}: enable_when needs item and answer")
        if not isinstance(enable["answer"], bool | str):
            raise QuestionnaireError("definition", f"{where}: enable_when answer is true, false or a code")
        enable_when = EnableWhen(str(enable["item"]), enable["answer"])
    return Item(
        link_id=link_id,
        type=kind,
        text=_text(raw.get("text"), f"{where}: text"),
        section=section,
        required=flags["required"],
        repeats=flags["repeats"],
        options=tuple(options),
        unit=unit,
        unit_text=_text(raw["unit_text"], f"{where}: unit_text") if "unit_text" in raw else None,
        minimum=minimum,
        maximum=maximum,
        decimals=decimals,
        enable_when=enable_when,
    )


def parse_questionnaire(raw: Mapping[str, Any], where: str = "questionnaire") -> Questionnaire:
    """A definition from its TOML table; QuestionnaireError names `where` and the field."""
    unknown = sorted(
        set(raw) - {"id", "version", "url", "title", "source", "sections", "management", "items"}
    )
    if unknown:
        raise QuestionnaireError("definition", f"{where}: unknown keys {unknown}")
    qid, version, url = raw.get("id"), raw.get("version"), raw.get("url")
    if not isinstance(qid, str) or not _ID.match(qid):
        raise QuestionnaireError("definition", f"{where}: id must be lower case letters, digits and -")
    if not isinstance(version, str) or not _VERSION.match(version):
        raise QuestionnaireError("definition", f'{where}: version must be text such as "1" or "1.2"')
    if not isinstance(url, str) or ":" not in url or any(c.isspace() or c == "|" for c in url):
        raise QuestionnaireError("definition", f"{where}: url must be a URI without spaces or '|'")
    sections = {
        str(key): _text(value, f"{where}: sections.{key}") for key, value in raw.get("sections", {}).items()
    }
    items = tuple(
        _item(item, f"{where}: items[{i}]", sections) for i, item in enumerate(raw.get("items", []))
    )
    if not items:
        raise QuestionnaireError("definition", f"{where}: no items")
    by_id = {item.link_id: item for item in items}
    if len(by_id) != len(items):
        raise QuestionnaireError("definition", f"{where}: link ids repeat")
    for position, item in enumerate(items):
        if item.enable_when is None:
            continue
        target = by_id.get(item.enable_when.item)
        spot = f"{where}: items ({item.link_id}) enable_when"
        if target is None or items.index(target) >= position:
            raise QuestionnaireError("definition", f"{spot}: names no item before this one")
        answer = item.enable_when.answer
        fits = (
            isinstance(answer, bool)
            if target.type == "boolean"
            else isinstance(answer, str) and target.option(answer) is not None
        )
        if target.type not in ("boolean", "choice") or not fits:
            raise QuestionnaireError("definition", f"{spot}: {answer!r} is not an answer of {target.link_id}")
    management = dict(raw.get("management", {}))
    management_item = management.pop("item", None)
    if management_item is not None:
        target = by_id.get(str(management_item))
        if target is None or target.type != "choice":
            raise QuestionnaireError("definition", f"{where}: management.item must name a choice item")
        for code, rules in management.items():
            if target.option(code) is None:
                raise QuestionnaireError("definition", f"{where}: management.{code} is no option of {target}")
            if not isinstance(rules, list) or not all(isinstance(rule, str) for rule in rules):
                raise QuestionnaireError("definition", f"{where}: management.{code} must list alert rule ids")
    elif management:
        raise QuestionnaireError("definition", f"{where}: management needs item")
    return Questionnaire(
        id=qid,
        version=version,
        url=url,
        title=_text(raw.get("title"), f"{where}: title"),
        items=items,
        source=str(raw.get("source", "")),
        sections=sections,
        management_item=management_item,
        management={code: tuple(rules) for code, rules in management.items()},
    )


def load_questionnaire(path: Path) -> Questionnaire:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise QuestionnaireError("definition", f"{path}: cannot read: {exc}") from None
    return parse_questionnaire(raw, str(path))


def load_questionnaires(directory: Path) -> dict[tuple[str, str], Questionnaire]:
    """Every definition in `directory` by (id, version); none if the directory does not exist."""
    found: dict[tuple[str, str], Questionnaire] = {}
    for path in sorted(directory.glob("*.toml")) if directory.is_dir() else ():
        questionnaire = load_questionnaire(path)
        key = (questionnaire.id, questionnaire.version)
        if key in found:
            raise QuestionnaireError("definition", f"{path}: {key[0]} version {key[1]} is defined twice")
        found[key] = questionnaire
    return found


# --- answers ---------------------------------------------------------------------------------------


def _given(value: object) -> bool:
    return value is not None and value != "" and value != [] and value != ()


def is_enabled(item: Item, answers: Mapping[str, AnswerValue]) -> bool:
    """Whether the item is shown, given the answers so far."""
    if item.enable_when is None:
        return True
    given = answers.get(item.enable_when.item)
    wanted = item.enable_when.answer
    if isinstance(given, tuple):
        return isinstance(wanted, str) and wanted in given
    return given is not None and type(given) is type(wanted) and given == wanted


def _fail(item: Item, code: str, message: str, **params: object) -> QuestionnaireError:
    return QuestionnaireError(code, f"{item.link_id}: {message}", link_id=item.link_id, **params)


def _choice(item: Item, raw: object) -> str | tuple[str, ...]:
    codes = list(raw) if isinstance(raw, list | tuple) else [raw]
    if not all(isinstance(code, str) for code in codes):
        raise _fail(item, "answer_type", "expected option codes")
    if len(codes) > 1 and not item.repeats:
        raise _fail(item, "one_option", "choose one option")
    unknown = [code for code in codes if item.option(code) is None]
    if unknown:
        raise _fail(item, "unknown_option", f"not an option: {', '.join(map(str, unknown))}")
    if len(set(codes)) != len(codes):
        raise _fail(item, "repeated_option", "an option is chosen twice")
    exclusive = [option.code for option in item.options if option.exclusive and option.code in codes]
    if exclusive and len(codes) > 1:
        raise _fail(item, "exclusive_option", f"{exclusive[0]} cannot be combined", option=exclusive[0])
    ordered = tuple(option.code for option in item.options if option.code in codes)
    return ordered if item.repeats else ordered[0]


def _number_answer(item: Item, raw: object) -> int | Decimal:
    if isinstance(raw, bool):
        raise _fail(item, "answer_type", "expected a number")
    try:
        if item.type == "integer":
            if isinstance(raw, Decimal) and raw == raw.to_integral_value():
                raw = int(raw)
            if isinstance(raw, str) and _INTEGER.match(raw.strip()):
                raw = int(raw.strip())
            if not isinstance(raw, int):
                raise _fail(item, "not_integer", "expected a whole number")
            value: int | Decimal = raw
        else:
            if isinstance(raw, float):
                raw = str(raw)  # shortest repr: 1.5 stays 1.5
            if not isinstance(raw, int | str | Decimal):
                raise _fail(item, "answer_type", "expected a number")
            value = Decimal(raw.strip() if isinstance(raw, str) else raw)
            if not value.is_finite() or len(value.as_tuple().digits) > 15:
                raise _fail(item, "answer_type", "expected a number")
            exponent = value.as_tuple().exponent
            places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
            if item.decimals is not None and places > item.decimals:
                raise _fail(item, "too_precise", f"at most {item.decimals} decimals", decimals=item.decimals)
    except InvalidOperation:
        raise _fail(item, "answer_type", "expected a number") from None
    low = "" if item.minimum is None else str(item.minimum)
    high = "" if item.maximum is None else str(item.maximum)
    if (item.minimum is not None and value < item.minimum) or (
        item.maximum is not None and value > item.maximum
    ):
        raise _fail(item, "out_of_range", f"must be between {low} and {high}", min=low, max=high)
    return value


def check_answers(questionnaire: Questionnaire, raw: Mapping[str, object]) -> Answers:
    """The answers, checked against the definition: known items only, each of its type and
    range, options that exist (an exclusive one alone), every required item that is shown
    answered, and no answer to an item that is not shown. Accepts what a JSON body holds (true,
    "code", ["code", ...], 12, "1.5") and the typed values this returns. Returns the answers in
    the order of the items; QuestionnaireError names the first problem and its item."""
    for link_id in raw:
        if questionnaire.item(link_id) is None:
            raise QuestionnaireError("unknown_item", f"{link_id!r} is not an item of {questionnaire.id}")
    answers: dict[str, AnswerValue] = {}
    for item in questionnaire.items:
        value = raw.get(item.link_id)
        if not is_enabled(item, answers):
            if _given(value):
                raise _fail(item, "not_enabled", "answered, but not asked with these answers")
            continue
        if not _given(value):
            if item.required:
                raise _fail(item, "required", "needs an answer")
            continue
        if item.type == "boolean":
            if not isinstance(value, bool):
                raise _fail(item, "answer_type", "expected yes or no")
            answers[item.link_id] = value
        elif item.type == "choice":
            answers[item.link_id] = _choice(item, value)
        else:
            answers[item.link_id] = _number_answer(item, value)
    return tuple(answers.items())


def answers_to_wire(
    questionnaire: Questionnaire, answers: Answers
) -> tuple[tuple[Measurement, ...], tuple[str, ...]]:
    """The reading's values (number answers) and flags (the others) for checked answers."""
    values: list[Measurement] = []
    flags: list[str] = []
    for link_id, value in answers:
        item = questionnaire.item(link_id)
        assert item is not None, "answers_to_wire takes the result of check_answers"
        if item.type in ("integer", "decimal"):
            assert isinstance(value, int | Decimal) and not isinstance(value, bool)
            values.append(Measurement(link_id, Decimal(value), item.unit or _NUMBER_UNIT))
        elif isinstance(value, bool):
            flags.append(f"{ANSWER_FLAG}{link_id}={'true' if value else 'false'}")
        else:
            codes = value if isinstance(value, tuple) else (value,)
            flags.extend(f"{ANSWER_FLAG}{link_id}={code}" for code in codes)
    return tuple(values), tuple(flags)


def answers_from_wire(
    questionnaire: Questionnaire, values: Sequence[Measurement], flags: Iterable[str]
) -> Answers:
    """The inverse of `answers_to_wire`, checked again with `check_answers` (a reading made under
    another definition, or altered, is refused with the reason)."""
    raw: dict[str, object] = {}
    for measurement in values:
        item = questionnaire.item(measurement.name)
        if item is None or item.type not in ("integer", "decimal"):
            raise QuestionnaireError("unknown_item", f"{measurement.name!r} is no number item")
        if measurement.value is None or measurement.unit != (item.unit or _NUMBER_UNIT):
            raise _fail(item, "answer_type", f"unit {measurement.unit!r} or no value")
        if measurement.name in raw:
            raise _fail(item, "repeated_option", "answered twice")
        raw[measurement.name] = measurement.value
    for flag in flags:
        if not flag.startswith(ANSWER_FLAG):
            continue
        link_id, _, code = flag.removeprefix(ANSWER_FLAG).partition("=")
        item = questionnaire.item(link_id)
        if item is None or item.type not in ("boolean", "choice"):
            raise QuestionnaireError("unknown_item", f"{link_id!r} is no boolean or choice item")
        if item.type == "boolean":
            if code not in ("true", "false") or link_id in raw:
                raise _fail(item, "answer_type", "expected one true or false")
            raw[link_id] = code == "true"
        else:
            chosen = raw.setdefault(link_id, [])
            assert isinstance(chosen, list)
            chosen.append(code)
    return check_answers(questionnaire, raw)


def managed_conditions(questionnaire: Questionnaire, flags: Iterable[str]) -> tuple[str, ...]:
    """The conditions (codes of the management item) that readings with these flags put a
    resident under management for: an `alert:<rule>` of the condition's rules, or an earlier
    questionnaire that followed the condition up (`answer:<management item>=<code>`)."""
    if questionnaire.management_item is None:
        return ()
    present = set(flags)
    found = []
    for code, rules in questionnaire.management.items():
        followed = f"{ANSWER_FLAG}{questionnaire.management_item}={code}"
        if followed in present or any(f"alert:{rule}" in present for rule in rules):
            found.append(code)
    return tuple(found)
