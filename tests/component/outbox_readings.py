"""A blood-pressure reading as ingest hands it to the gateway's outbox, for the sync tests."""

from __future__ import annotations

from decimal import Decimal

from contract.wire import DeviceRef, Measurement
from gateway.store import NewReading


def bp_new_reading(
    n: int, *, systolic: int | None = None, diastolic: int = 70, flags: tuple[str, ...] = ()
) -> NewReading:
    """Link message `n` of one BP board: distinct values and times, no resident."""
    return NewReading(
        device=DeviceRef("bp-0001", "KX-BP100", "0.1.0"),
        boot_id=1,
        link_seq=n,
        kind="bp",
        values=(
            Measurement("systolic", Decimal(100 + n % 80 if systolic is None else systolic), "mm[Hg]"),
            Measurement("diastolic", Decimal(diastolic), "mm[Hg]"),
        ),
        measured_at_ms=1795564800000 + n * 1000,
        time_quality="ntp",
        received_mono_ms=n,
        resident=None,
        operator=None,
        flags=flags,
    )
