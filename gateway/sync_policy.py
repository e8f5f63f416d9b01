"""What to send first, how much at once, and what may wait: the sync engine's decisions, kept pure.

A vehicle back in coverage after a week has a backlog of thousands of readings, a few of them
alarming, and a 4G plan paid by the megabyte. So:

- flagged readings go first (an alert the region's rules raised, an irregular pulse, a meter's
  HI/LO), then the other vital signs, then ECG strips;
- a daily byte budget holds plain ECG strips back once it is spent (they wait, durably, for the
  next day or an unmetered link); readings are never held back by the budget: a day of a
  kiosk's readings is a few kilobytes, and a clinician may be waiting for them;
- batches shrink when acks time out or the link drops with batches in flight (less to resend
  after each cut) and grow back while acks come in time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

PRIORITY_FLAGGED = 0
PRIORITY_VITALS = 1
PRIORITY_WAVEFORM = 2
PRIORITY_NAMES = {PRIORITY_FLAGGED: "flagged", PRIORITY_VITALS: "vitals", PRIORITY_WAVEFORM: "waveform"}

# Device flags that are findings a clinician acts on, as opposed to how the measurement went
# (cuff loose, body movement, fasting...). Alerts the region's rules raised are `alert:<rule>`.
URGENT_DEVICE_FLAGS = frozenset({"irregular_pulse", "above_range", "below_range"})


def sync_priority(kind: str, flags: Iterable[str], has_waveform: bool) -> int:
    """The class a reading is sent in: flagged, vitals or waveform (lower goes first)."""
    if any(flag.startswith("alert:") or flag in URGENT_DEVICE_FLAGS for flag in flags):
        return PRIORITY_FLAGGED
    if has_waveform or kind == "ecg":
        return PRIORITY_WAVEFORM
    return PRIORITY_VITALS


# What one MQTT publish costs beyond the batch bytes: fixed header, topic length, packet id. The
# budget counts these too (not TLS records and TCP/IP headers, which the budget's margin covers).
MQTT_PUBLISH_OVERHEAD = 7


def publish_cost(topic: str, payload_len: int) -> int:
    return payload_len + len(topic.encode()) + MQTT_PUBLISH_OVERHEAD


@dataclass(frozen=True, slots=True)
class DailyBudget:
    """A metered link's byte budget per local day; None means unmetered (no limit)."""

    limit_bytes: int | None

    def allows_waveform(self, used_today: int, cost: int) -> bool:
        """May a waveform batch of `cost` bytes go today, with `used_today` already spent?"""
        return self.limit_bytes is None or used_today + cost <= self.limit_bytes

    def remaining(self, used_today: int) -> int | None:
        return None if self.limit_bytes is None else max(0, self.limit_bytes - used_today)


@dataclass
class BatchSizer:
    """How many readings (and raw bytes) go in the next batch, adapted to how the link behaves.

    Multiplicative decrease on trouble, doubling back after `grow_after` acks in time: on a link
    that drops every few seconds a batch that cannot be acked between two cuts is resent
    forever, while on a good link large batches cost the fewest signatures and round trips.
    """

    min_readings: int
    max_readings: int
    max_bytes: int
    min_bytes: int = 16 * 1024
    grow_after: int = 2
    readings: int = 0
    _good_acks: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_readings <= self.max_readings:
            raise ValueError(f"batch sizes: need 1 <= min {self.min_readings} <= max {self.max_readings}")
        self.readings = self.readings or self.max_readings

    @property
    def bytes(self) -> int:
        """The raw-byte cap, scaled with the reading count (a batch always holds one reading)."""
        scaled = self.max_bytes * self.readings // self.max_readings
        return max(min(self.min_bytes, self.max_bytes), scaled)

    def on_ack_in_time(self) -> None:
        self._good_acks += 1
        if self._good_acks >= self.grow_after and self.readings < self.max_readings:
            self.readings = min(self.max_readings, self.readings * 2)
            self._good_acks = 0

    def on_trouble(self) -> None:
        """An ack timed out, or the link dropped with batches in flight."""
        self._good_acks = 0
        self.readings = max(self.min_readings, self.readings // 2)
