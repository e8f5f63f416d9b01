"""The sync engine's pure decisions: priority classes, the daily budget, the adaptive batch size."""

from __future__ import annotations

import pytest

from contract.wire import decode_time_probe, encode_time_probe
from gateway.sync_policy import (
    PRIORITY_FLAGGED,
    PRIORITY_VITALS,
    PRIORITY_WAVEFORM,
    BatchSizer,
    DailyBudget,
    publish_cost,
    sync_priority,
)


@pytest.mark.parametrize(
    ("kind", "flags", "waveform", "expected"),
    [
        ("bp", ("alert:hypertensive_crisis",), False, PRIORITY_FLAGGED),
        ("bp", ("irregular_pulse",), False, PRIORITY_FLAGGED),
        ("glucose", ("above_range",), False, PRIORITY_FLAGGED),  # the meter's HI
        ("glucose", ("below_range",), False, PRIORITY_FLAGGED),
        ("ecg", ("alert:arrhythmia",), True, PRIORITY_FLAGGED),  # a flagged strip is not held back
        ("bp", ("cuff_loose", "body_movement"), False, PRIORITY_VITALS),  # how it went, not a finding
        ("glucose", ("fasting", "implausible:glucose"), False, PRIORITY_VITALS),
        ("spo2", (), False, PRIORITY_VITALS),
        ("ecg", ("lead_off",), True, PRIORITY_WAVEFORM),
        ("ecg", (), False, PRIORITY_WAVEFORM),
    ],
)
def test_priority_classes(kind: str, flags: tuple[str, ...], waveform: bool, expected: int) -> None:
    assert sync_priority(kind, flags, waveform) == expected


def test_the_budget_counts_what_was_spent_and_what_would_be() -> None:
    budget = DailyBudget(100_000)
    assert budget.allows_waveform(60_000, 40_000)
    assert not budget.allows_waveform(60_000, 40_001)
    assert budget.remaining(120_000) == 0 and budget.remaining(1) == 99_999
    unmetered = DailyBudget(None)
    assert unmetered.allows_waveform(10**12, 10**9) and unmetered.remaining(5) is None


def test_publish_cost_includes_the_mqtt_header_and_topic() -> None:
    assert publish_cost("kiosk/gw-1/up", 100) == 100 + 13 + 7


def test_batches_halve_on_trouble_and_double_back_after_acks_in_time() -> None:
    sizer = BatchSizer(min_readings=20, max_readings=500, max_bytes=512 * 1024)
    assert sizer.readings == 500 and sizer.bytes == 512 * 1024
    for expected in (250, 125, 62, 31, 20, 20):
        sizer.on_trouble()
        assert sizer.readings == expected
    assert sizer.bytes == 512 * 1024 * 20 // 500  # scaled with the count
    sizer.on_ack_in_time()
    assert sizer.readings == 20  # one good ack is not yet a good link
    sizer.on_ack_in_time()
    assert sizer.readings == 40
    sizer.on_ack_in_time()
    sizer.on_trouble()  # trouble resets the count of good acks
    sizer.on_ack_in_time()
    assert sizer.readings == 20
    for _ in range(20):
        sizer.on_ack_in_time()
    assert sizer.readings == 500


def test_sizer_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="batch sizes"):
        BatchSizer(min_readings=50, max_readings=10, max_bytes=1024)


def test_time_probe_round_trip_and_batches_are_not_probes() -> None:
    assert decode_time_probe(encode_time_probe("gw-7")) == "gw-7"
    assert decode_time_probe(b"\xff\x00garbage") is None
    assert decode_time_probe(b"\xa2ap\x41\x00as\x41\x00") is None  # {"p": .., "s": ..}: a batch


def test_the_byte_cap_has_a_floor() -> None:
    sizer = BatchSizer(min_readings=1, max_readings=500, max_bytes=512 * 1024)
    for _ in range(10):
        sizer.on_trouble()
    assert sizer.readings == 1 and sizer.bytes == 16 * 1024
