"""Resident identifiers as a village doctor types or scans them: pure parsing, no I/O.

Two systems (contract.wire.RESIDENT_ID_SYSTEMS): the resident health-record number (居民健康档案号)
and the 18-character resident identity-card number (居民身份证号, GB 11643-1999), whose last
character is a checksum. A mistyped ID-card number is refused here, before it reaches a reading
and the health record, with a reason the kiosk can show in the doctor's language (`code` and
`params`, translated by the UI's string tables).

QR codes on health cards and printed slips carry either the bare number or `key=value` text
(``sfzh=...``, ``idcard=...``, ``jkdah=...``), sometimes in a URL's query or a small JSON object.
"""

from __future__ import annotations

import datetime
import json
import re
from urllib.parse import parse_qsl, urlsplit

from contract.wire import ResidentRef

__all__ = ["ResidentIdError", "id_card_check_char", "mask", "parse_qr", "parse_resident"]

# GB 11643-1999: weight of position i is 2^(17-i) mod 11; the check character is
# CHECK_CHARS[sum mod 11] (ISO 7064 MOD 11-2, with X for 10).
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS = "10X98765432"
_HEALTH_RECORD = re.compile(r"^[0-9A-Z][0-9A-Z-]{3,63}$")
_SEPARATORS = re.compile(r"[&;,，；|\n\r\t]+")
_ID_CARD_KEYS = {
    "idcard", "idcardno", "idno", "idnumber", "sfz", "sfzh", "sfzhm", "cardno",
    "身份证", "身份证号", "身份证号码", "公民身份号码",
}  # fmt: skip
_HEALTH_RECORD_KEYS = {
    "hr", "healthrecord", "healthrecordno", "healthrecordnumber", "jkda", "jkdah", "jkdabh", "dah",
    "健康档案", "健康档案号", "健康档案编号", "档案号", "居民健康档案号",
}  # fmt: skip


class ResidentIdError(ValueError):
    """A number the kiosk cannot accept; `code` names the reason for the UI's string tables."""

    def __init__(self, code: str, message: str, **params: object) -> None:
        super().__init__(message)
        self.code = code
        self.params = params


def mask(value: str) -> str:
    """Keep the first 4 and last 4 characters, as on a printed slip."""
    if len(value) <= 8:
        return "*" * len(value)
    return value[:4] + "*" * (len(value) - 8) + value[-4:]


def id_card_check_char(first17: str) -> str:
    """The GB 11643 check character of the first 17 digits."""
    total = sum(int(digit) * weight for digit, weight in zip(first17, _WEIGHTS, strict=True))
    return _CHECK_CHARS[total % 11]


def _normalise(value: str) -> str:
    return re.sub(r"[\s\u3000]+", "", value).upper()


def _check_id_card(value: str) -> str:
    if len(value) == 15 and value.isdigit():
        raise ResidentIdError(
            "id_card_15", "15-digit first-generation card: type the 18-digit number of the current card"
        )
    if len(value) != 18:
        raise ResidentIdError(
            "id_card_length", f"an ID-card number has 18 characters, this has {len(value)}", length=len(value)
        )
    if not value[:17].isdigit() or not (value[17].isdigit() or value[17] == "X"):
        raise ResidentIdError("id_card_chars", "an ID-card number is 17 digits and a digit or X")
    try:
        born = datetime.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        born = None
    if born is None or not datetime.date(1900, 1, 1) <= born <= datetime.date.today():
        raise ResidentIdError("id_card_date", "characters 7 to 14 are not a date of birth")
    if id_card_check_char(value[:17]) != value[17]:
        raise ResidentIdError(
            "id_card_checksum", "the last character does not match the others: check each digit again"
        )
    return value


def parse_resident(system: str, value: str) -> ResidentRef:
    """The resident a doctor typed, checked; ResidentIdError says what is wrong."""
    value = _normalise(value)
    if not value:
        raise ResidentIdError("resident_empty", "type the resident's number")
    if system == "id-card":
        return ResidentRef("id-card", _check_id_card(value))
    if system == "health-record":
        if not _HEALTH_RECORD.match(value):
            raise ResidentIdError(
                "health_record_format", "a health-record number is 4 to 64 letters, digits and dashes"
            )
        return ResidentRef("health-record", value)
    raise ResidentIdError("resident_system", f"unknown kind of number {system!r}", system=system)


def _key(raw: str) -> str:
    return re.sub(r"[\s_\-.]+", "", raw).lower()


def _pairs(text: str) -> list[tuple[str, str]]:
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return [(str(k), str(v)) for k, v in data.items() if isinstance(v, str | int)]
    if "://" in text or text.startswith("?"):
        return parse_qsl(urlsplit(text).query)
    pairs = []
    for part in _SEPARATORS.split(text):
        match = re.match(r"\s*([^=:：]+?)\s*[=:：]\s*(.*)$", part)
        if match:
            pairs.append((match[1], match[2].strip()))
    return pairs


def parse_qr(text: str) -> ResidentRef:
    """The resident a scanned QR code names: a bare number (an 18-character one is read as an
    ID card and must pass its checksum; a 15-digit one is an old ID card; anything else is a
    health-record number), or key=value text, a URL query or a JSON object with a known key."""
    text = text.strip()
    if not text:
        raise ResidentIdError("qr_empty", "the QR text is empty: scan again")
    if not any(sep in text for sep in "=:：{?"):
        plain = _normalise(text)
        if re.fullmatch(r"\d{17}[\dX]|\d{15}", plain):
            return parse_resident("id-card", plain)
        return parse_resident("health-record", plain)
    found: dict[str, str] = {}
    for key, value in _pairs(text):
        key = _key(key)
        if key in _ID_CARD_KEYS:
            found.setdefault("id-card", value)
        elif key in _HEALTH_RECORD_KEYS:
            found.setdefault("health-record", value)
    # The health-record number is the kiosk's usual key; an ID card is the fallback.
    for system in ("health-record", "id-card"):
        if system in found:
            return parse_resident(system, found[system])
    raise ResidentIdError(
        "qr_unknown", "this QR code holds no resident number the kiosk knows (ID card or health record)"
    )
