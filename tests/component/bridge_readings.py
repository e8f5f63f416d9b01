"""Blood-pressure readings as a gateway signs them, for the bridge's component tests."""

from __future__ import annotations

from decimal import Decimal

from contract.wire import DeviceRef, Measurement, Reading, ResidentRef

DEFAULT_RESIDENT = ResidentRef("id-card", "330781199001011234")


def bp_reading(
    gateway_id: str,
    seq: int,
    systolic: int = 130,
    diastolic: int = 85,
    *,
    resident: ResidentRef | None = DEFAULT_RESIDENT,
    flags: tuple[str, ...] = (),
    measured_at_ms: int | None = None,
    operator: str = "doctor-li",
) -> Reading:
    return Reading(
        gateway_id=gateway_id,
        seq=seq,
        device=DeviceRef("bp-0001", "KX-BP100", "0.1.0"),
        kind="bp",
        values=(
            Measurement("systolic", Decimal(systolic), "mm[Hg]"),
            Measurement("diastolic", Decimal(diastolic), "mm[Hg]"),
        ),
        measured_at_ms=1795564800000 + seq if measured_at_ms is None else measured_at_ms,
        time_quality="ntp",
        received_mono_ms=seq,
        resident=resident,
        operator=operator,
        flags=flags,
    )
