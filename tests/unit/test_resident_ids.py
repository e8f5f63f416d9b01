"""Resident numbers as typed or scanned: the GB 11643 ID-card checksum and the QR formats."""

from __future__ import annotations

import pytest

from contract.wire import ResidentRef
from gateway.resident_ids import ResidentIdError, id_card_check_char, mask, parse_qr, parse_resident

# GB 11643-1999's example ends in X; the others are made up, their check digit computed by hand.
VALID = ["11010519491231002X", "440524198001010013", "330781199001011232"]

HEALTH_RECORD = ResidentRef("health-record", "330781-2026-000123")


@pytest.mark.parametrize("number", VALID)
def test_valid_id_card_numbers_pass(number: str) -> None:
    assert id_card_check_char(number[:17]) == number[17]
    assert parse_resident("id-card", number.lower()) == ResidentRef("id-card", number)


@pytest.mark.parametrize(
    ("typed", "code"),
    [
        ("110105194912310021", "id_card_checksum"),  # last character wrong
        ("110105194912301002X", "id_card_length"),
        ("11010519491231002", "id_card_length"),
        ("11010519491A31002X", "id_card_chars"),
        ("110105194913310028", "id_card_date"),  # month 13
        ("110105491231002", "id_card_15"),  # a first-generation card
        ("   ", "resident_empty"),
    ],
)
def test_wrong_id_card_numbers_say_why(typed: str, code: str) -> None:
    with pytest.raises(ResidentIdError) as caught:
        parse_resident("id-card", typed)
    assert caught.value.code == code


def test_health_record_numbers_keep_their_dashes() -> None:
    assert parse_resident("health-record", " 330781-2026-000123 ") == ResidentRef(
        "health-record", "330781-2026-000123"
    )
    with pytest.raises(ResidentIdError) as caught:
        parse_resident("health-record", "12/34")
    assert caught.value.code == "health_record_format"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("11010519491231002X", ResidentRef("id-card", "11010519491231002X")),
        ("330781-2026-000123", ResidentRef("health-record", "330781-2026-000123")),
        ("sfzh=11010519491231002x", ResidentRef("id-card", "11010519491231002X")),
        ("name=张三&idcard=11010519491231002X", ResidentRef("id-card", "11010519491231002X")),
        ("姓名：张三\n身份证号：11010519491231002X", ResidentRef("id-card", "11010519491231002X")),
        (
            "jkdah=330781-2026-000123;sfzh=11010519491231002X",
            ResidentRef("health-record", "330781-2026-000123"),
        ),
        (
            "https://jkda.example.cn/r?jkdah=330781-2026-000123",
            ResidentRef("health-record", "330781-2026-000123"),
        ),
        ('{"id_card": "11010519491231002X"}', ResidentRef("id-card", "11010519491231002X")),
    ],
)
def test_qr_formats(text: str, expected: ResidentRef) -> None:
    assert parse_qr(text) == expected


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", "qr_empty"),
        ("WIFI:S:clinic;T:WPA;;", "qr_unknown"),
        ("sfzh=110105194912310021", "id_card_checksum"),
    ],
)
def test_qr_text_that_names_no_valid_resident(text: str, code: str) -> None:
    with pytest.raises(ResidentIdError) as caught:
        parse_qr(text)
    assert caught.value.code == code


def test_mask_keeps_first_and_last_four() -> None:
    assert mask("11010519491231002X") == "1101**********002X"
    assert mask("12345678") == "********"
