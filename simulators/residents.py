"""Simulated residents with physiologically plausible vital signs."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BloodPressure:
    systolic: int
    diastolic: int
    pulse: int
    irregular: bool = False

    @property
    def mean_arterial(self) -> int:
        return round(self.diastolic + (self.systolic - self.diastolic) / 3)


@dataclass(frozen=True, slots=True)
class ResidentProfile:
    """Typical values and spread for one kind of resident."""

    name: str
    systolic: tuple[int, int]  # mean, standard deviation
    diastolic: tuple[int, int]
    pulse: tuple[int, int]
    irregular_probability: float = 0.0

    def blood_pressure(self, rng: random.Random) -> BloodPressure:
        systolic = round(rng.gauss(*self.systolic))
        diastolic = min(round(rng.gauss(*self.diastolic)), systolic - 20)
        return BloodPressure(
            systolic=systolic,
            diastolic=diastolic,
            pulse=round(rng.gauss(*self.pulse)),
            irregular=rng.random() < self.irregular_probability,
        )


PROFILES = {
    "normotensive": ResidentProfile("normotensive", (118, 8), (76, 6), (70, 8)),
    "hypertensive": ResidentProfile("hypertensive", (152, 8), (95, 5), (76, 8)),
    "hypertensive-crisis": ResidentProfile("hypertensive-crisis", (188, 6), (116, 4), (88, 8)),
    "arrhythmia": ResidentProfile("arrhythmia", (132, 10), (84, 6), (96, 20), irregular_probability=0.9),
}
