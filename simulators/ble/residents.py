"""Typical readings of a few kinds of resident, as exact values the simulated BLE devices can send.

Plain data, no randomness: a test or a demo passes them on explicitly, e.g.
``await cuff.measure(**RESIDENTS["hypertensive"].blood_pressure())``. Thresholds they sit around
(Chinese primary care): hypertension ≥ 140/90 mmHg, crisis ≥ 180/110; fasting glucose ≥ 7.0 mmol/L
diabetic, < 3.9 hypoglycaemia.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = ["RESIDENTS", "BleResident"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BleResident:
    name: str
    systolic: int  # mmHg
    diastolic: int
    pulse_rate: int  # /min
    irregular_pulse: bool = False
    spo2: int = 98  # %
    temperature: Decimal = Decimal("36.6")  # °C
    glucose: Decimal = Decimal("5.2")  # mmol/L, fasting
    weight: Decimal = Decimal("62.5")  # kg, a multiple of the scale's 0.005 kg
    height: Decimal = Decimal("1.620")  # m

    @property
    def bmi(self) -> Decimal:
        return (self.weight / (self.height * self.height)).quantize(Decimal("0.1"))

    def blood_pressure(self) -> dict[str, Any]:
        """Keyword arguments for `BloodPressureCuff.measure` (status left to the test)."""
        return {"systolic": self.systolic, "diastolic": self.diastolic, "pulse_rate": self.pulse_rate}

    def weighing(self) -> dict[str, Any]:
        """Keyword arguments for `WeightScale.measure`."""
        return {"weight": self.weight, "bmi": self.bmi, "height": self.height}


RESIDENTS: dict[str, BleResident] = {
    resident.name: resident
    for resident in (
        BleResident(name="normotensive", systolic=118, diastolic=76, pulse_rate=70),
        BleResident(
            name="hypertensive",
            systolic=152,
            diastolic=95,
            pulse_rate=76,
            weight=Decimal("78.4"),
            height=Decimal("1.680"),
        ),
        BleResident(
            name="hypertensive-crisis",
            systolic=188,
            diastolic=116,
            pulse_rate=88,
            glucose=Decimal("7.8"),
            weight=Decimal("84.25"),
            height=Decimal("1.705"),
        ),
        BleResident(name="arrhythmia", systolic=132, diastolic=84, pulse_rate=96, irregular_pulse=True),
        BleResident(
            name="hypoglycaemic",
            systolic=112,
            diastolic=72,
            pulse_rate=92,
            glucose=Decimal("3.1"),
            weight=Decimal("48.0"),
            height=Decimal("1.550"),
        ),
        BleResident(
            name="copd",
            systolic=128,
            diastolic=80,
            pulse_rate=94,
            spo2=89,
            temperature=Decimal("37.4"),
            weight=Decimal("55.5"),
            height=Decimal("1.640"),
        ),
    )
}
