"""The bridge's gap bookkeeping against a plain set model, and the cases named in the issue."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cloud_bridge import gaps
from contract.wire import expand_ranges, seq_ranges


def test_a_batch_past_the_high_water_mark_opens_a_gap_and_a_late_batch_fills_it() -> None:
    open_gaps, high = gaps.after_batch([], 119, [(131, 140)])
    assert (open_gaps, high) == ([(120, 130)], 140)
    assert gaps.describe(open_gaps) == "120–130" and gaps.missing(open_gaps) == 11
    open_gaps, high = gaps.after_batch(open_gaps, high, [(125, 125)])  # a flagged reading, sent first
    assert (open_gaps, high) == ([(120, 124), (126, 130)], 140)
    open_gaps, high = gaps.after_batch(open_gaps, high, [(120, 124), (126, 130)])
    assert (open_gaps, high) == ([], 140)


def test_describe_shortens_long_lists() -> None:
    many = [(n * 10, n * 10) for n in range(1, 9)]
    assert gaps.describe(many, limit=3) == "10, 20, 30 and 5 more"


@given(st.lists(st.sets(st.integers(min_value=1, max_value=60), min_size=1), max_size=12))
def test_gaps_are_exactly_the_sequences_not_received_below_the_high_water_mark(
    batches: list[set[int]],
) -> None:
    received: set[int] = set()
    open_gaps: list[gaps.Gap] = []
    high = 0
    for batch in batches:
        open_gaps, high = gaps.after_batch(open_gaps, high, seq_ranges(sorted(batch)))
        received |= batch
        assert high == max(received)
        assert set(expand_ranges(tuple(open_gaps))) == set(range(1, high + 1)) - received
        assert open_gaps == sorted(open_gaps)
