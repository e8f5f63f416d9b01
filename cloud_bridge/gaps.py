"""Which of a gateway's sequence numbers the bridge has not stored yet.

A gateway sends flagged readings before a backlog and may hold ECG strips back on a metered
link, so its sequence numbers arrive out of order and a gap is usually "not sent yet", not
"lost". The bridge keeps the gaps below the highest sequence it has stored, reports them until
they fill, and weighs them against the count of readings the gateway says it still holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Gap = tuple[int, int]  # first, last (inclusive)


def _subtract(gaps: Iterable[Gap], first: int, last: int) -> list[Gap]:
    out: list[Gap] = []
    for gap_first, gap_last in gaps:
        if gap_last < first or gap_first > last:
            out.append((gap_first, gap_last))
            continue
        if gap_first < first:
            out.append((gap_first, first - 1))
        if gap_last > last:
            out.append((last + 1, gap_last))
    return out


def after_batch(gaps: Sequence[Gap], high: int, ranges: Iterable[Gap]) -> tuple[list[Gap], int]:
    """The gaps and the highest stored sequence once a batch holding `ranges` is stored.

    `ranges` are sorted and disjoint (as the contract checks). A range above `high` opens the gap
    between them; a range inside an old gap fills that part of it.
    """
    out = list(gaps)
    for first, last in ranges:
        if first > high + 1:
            out.append((high + 1, first - 1))
        out = _subtract(out, first, last)
        high = max(high, last)
    return sorted(out), high


def missing(gaps: Iterable[Gap]) -> int:
    return sum(last - first + 1 for first, last in gaps)


def describe(gaps: Iterable[Gap], limit: int = 5) -> str:
    """`120–130, 152` (the first `limit` runs, then how many more) for logs and the fleet API."""
    runs = [str(first) if first == last else f"{first}–{last}" for first, last in gaps]
    if len(runs) > limit:
        return ", ".join(runs[:limit]) + f" and {len(runs) - limit} more"
    return ", ".join(runs)
