"""Chronic-disease figures per site for a quarter: who is followed, and what share is in control.

The bridge has no chronic-disease register (that lives in the health community's records), so
it works from what the kiosks measured, and says so in every figure it returns:
- a resident counts as **under management** for hypertension once any of their readings up to
  the quarter's end raised the `hypertension` or `hypertensive_crisis` alert; for diabetes, once
  one raised `fasting_hyperglycaemia` or `severe_hyperglycaemia` (the region's rules decide the
  thresholds, at the gateway);
- **followed this quarter**: such a resident has at least one reading of that kind (BP, glucose)
  taken in the quarter;
- **in control**: their latest reading of that kind in the quarter raised none of those alerts
  (BP < 140/90 mmHg; glucose below the hyperglycaemia thresholds).
Counts only, never an identifier. Readings are decoded from the bridge's store on each call;
fine for a county's quarter, not meant as an analytics warehouse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

from cloud_bridge.db import Database
from contract.wire import decode_reading

CONDITIONS = {
    "hypertension": ("bp", frozenset({"alert:hypertension", "alert:hypertensive_crisis"})),
    "diabetes": ("glucose", frozenset({"alert:fasting_hyperglycaemia", "alert:severe_hyperglycaemia"})),
}
BASIS = (
    "from kiosk readings: under management = a reading has crossed the region's alert rule for the "
    "condition; followed = a reading of that kind this quarter; in control = the latest one this "
    "quarter crossed none"
)


def quarter_bounds(quarter: str) -> tuple[int, int]:
    """'2026Q4' -> [start, end) in ms since 1970, UTC+8 (China) calendar quarters."""
    try:
        year, number = int(quarter[:4]), int(quarter[5:])
        if quarter[4] not in "Qq" or not 1 <= number <= 4:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"quarter must look like 2026Q4, not {quarter!r}") from None
    china = timezone(timedelta(hours=8))
    start = datetime(year, 3 * number - 2, 1, tzinfo=china)
    end = datetime(year + (number == 4), 1 if number == 4 else 3 * number + 1, 1, tzinfo=china)
    return int(start.astimezone(UTC).timestamp() * 1000), int(end.astimezone(UTC).timestamp() * 1000)


@dataclass
class _Condition:
    managed: set[tuple[str, str]] = field(default_factory=set)
    latest: dict[tuple[str, str], tuple[int, bool]] = field(
        default_factory=dict
    )  # resident -> (time, crossed)


def chronic_figures(conn: Database, quarter: str) -> list[dict[str, object]]:
    start_ms, end_ms = quarter_bounds(quarter)
    sites: dict[str, dict[str, _Condition]] = {}
    rows = conn.execute(
        """SELECT g.site, r.body FROM readings r JOIN gateways g ON g.gateway_id = r.gateway_id
           WHERE r.kind IN ('bp', 'glucose')"""
    )
    for site, body in rows:
        reading = decode_reading(body)
        if reading.resident is None or reading.measured_at_ms >= end_ms:
            continue
        who = (reading.resident.system, reading.resident.value)
        by_condition = sites.setdefault(site, {name: _Condition() for name in CONDITIONS})
        for name, (kind, alerts) in CONDITIONS.items():
            if reading.kind != kind:
                continue
            crossed = bool(alerts & set(reading.flags))
            state = by_condition[name]
            if crossed:
                state.managed.add(who)
            if reading.measured_at_ms >= start_ms:
                previous = state.latest.get(who)
                if previous is None or reading.measured_at_ms >= previous[0]:
                    state.latest[who] = (reading.measured_at_ms, crossed)
    out = []
    for site in sorted(sites):
        entry: dict[str, object] = {"site": site, "quarter": quarter, "basis": BASIS}
        for name, state in sites[site].items():
            followed = [who for who in state.managed if who in state.latest]
            in_control = sum(1 for who in followed if not state.latest[who][1])
            entry[name] = {
                "under_management": len(state.managed),
                "followed_this_quarter": len(followed),
                "in_control": in_control,
                "control_rate": round(in_control / len(followed), 3) if followed else None,
            }
        out.append(entry)
    return out
