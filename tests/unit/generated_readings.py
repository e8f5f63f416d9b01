"""Generated readings of every kind, with flags and alerts, for property tests of the FHIR mapping."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import strategies as st

from cloud_bridge import fhir_map
from cloud_bridge.alert_rules import AlertText
from contract.wire import DeviceRef, Measurement, Reading, ResidentRef, Waveform

ALERTS = (
    AlertText("bp_crisis", "urgent", "高血压危象", "Hypertensive crisis", "今日转诊", "Refer today"),
    AlertText("hypoglycaemia", "urgent", "低血糖", "Hypoglycaemia", "", ""),
)
KIND_VALUES = {
    "bp": [
        ("systolic", "mm[Hg]"),
        ("diastolic", "mm[Hg]"),
        ("mean_arterial", "mm[Hg]"),
        ("pulse_rate", "/min"),
    ],
    "spo2": [("spo2", "%"), ("pulse_rate", "/min")],
    "temperature": [("body_temperature", "Cel")],
    "weight": [("body_weight", "kg")],
    "glucose": [("glucose", "mmol/L")],
    "heart_rate": [("pulse_rate", "/min")],
}


@st.composite
def readings(draw: st.DrawFn) -> tuple[Reading, tuple[AlertText, ...], bool]:
    kind = draw(st.sampled_from([*sorted(KIND_VALUES), "ecg"]))
    waveform = None
    if kind == "ecg":
        leads = tuple(
            draw(st.lists(st.sampled_from(sorted(fhir_map.ECG_LEADS)), min_size=1, max_size=2, unique=True))
        )
        length = draw(st.integers(1, 20))
        samples = tuple(
            tuple(draw(st.lists(st.integers(-(2**23), 2**23), min_size=length, max_size=length)))
            for _ in leads
        )
        resolution = draw(st.sampled_from((Decimal("2.4"), Decimal("1"))))
        waveform = Waveform(draw(st.sampled_from((250, 500))), resolution, leads, 0, samples)
    values = []
    for index, (name, unit) in enumerate(KIND_VALUES.get(kind, ())):
        if index > 0 and draw(st.booleans()):
            continue  # optional parts left out (the first value of each kind is required)
        if draw(st.integers(0, 5)) == 0:
            values.append(Measurement(name, None, unit, draw(st.sampled_from(("nan", "nres", "+inf")))))
        else:
            number = draw(
                st.decimals(min_value=-50, max_value=400, allow_nan=False, places=draw(st.integers(0, 2)))
            )
            values.append(Measurement(name, number, unit))
    flags = tuple(draw(st.lists(st.sampled_from(
        ("irregular_pulse", "body_movement", "pulse_above_range", "fasting", "above_range", "below_range",
         "alert:bp_crisis", "implausible:systolic", "device-own-flag")
    ), max_size=2, unique=True)))  # fmt: skip
    gateway = draw(st.sampled_from(("gw-1", "村卫生室-02")))
    reading = Reading(
        gateway_id=gateway,
        seq=draw(st.integers(1, 10**9)),
        device=DeviceRef("dev-1", "KX-1", "1.0"),
        kind=kind,
        values=tuple(values),
        measured_at_ms=draw(st.integers(1_600_000_000_000, 1_900_000_000_000)),
        time_quality=draw(st.sampled_from(("ntp", "unsynced", "bridge"))),
        received_mono_ms=1,
        resident=draw(st.sampled_from((None, ResidentRef("health-record", "330781-2026-000001")))),
        operator=None,
        flags=flags,
        waveform=waveform,
    )
    alerts = tuple(draw(st.lists(st.sampled_from(ALERTS), max_size=2, unique=True)))
    return reading, alerts, draw(st.booleans())
