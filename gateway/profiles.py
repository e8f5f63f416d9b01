"""Device profiles: one TOML file per model in device_profiles/, checked at start-up."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.errors import ProfileError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(_Strict):
    unit: str
    range: tuple[Decimal, Decimal]
    loinc: str | None = None
    mdc: str | None = None

    @model_validator(mode="after")
    def _range_ordered(self) -> FieldSpec:
        if self.range[0] >= self.range[1]:
            raise ValueError(f"range {self.range[0]}..{self.range[1]} is empty")
        return self


class WaveformSpec(_Strict):
    """A sampled signal (ECG): what the samples in ECG_CHUNK messages mean."""

    sample_rate_hz: int = Field(gt=0)
    resolution_uv: Decimal = Field(gt=0)  # microvolts per least significant bit
    leads: tuple[str, ...]  # one MDC code per channel, e.g. MDC_ECG_LEAD_I
    loinc: str | None = None


class KindSpec(_Strict):
    required: tuple[str, ...] = ()
    fields: dict[str, FieldSpec] = {}
    waveform: WaveformSpec | None = None

    @model_validator(mode="after")
    def _required_known(self) -> KindSpec:
        missing = [name for name in self.required if name not in self.fields]
        if missing:
            raise ValueError(f"required fields not described: {', '.join(missing)}")
        return self


class FirmwareSpec(_Strict):
    image: str
    version: str


class DeviceProfile(_Strict):
    model: str
    vendor: str
    name: str
    transport: Literal["uart", "ble"]
    protocol: str
    firmware: FirmwareSpec | None = None
    kinds: dict[Literal["bp", "glucose", "ecg", "spo2", "temperature", "weight"], KindSpec]


def load_profile(path: Path) -> DeviceProfile:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(str(path), f"cannot read: {exc}") from exc
    try:
        return DeviceProfile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ProfileError(str(path), problems) from exc


def load_profiles(directory: Path) -> dict[str, DeviceProfile]:
    """All profiles by model; a duplicate model or a bad file stops start-up with its name."""
    profiles: dict[str, DeviceProfile] = {}
    for path in sorted(directory.glob("*.toml")):
        profile = load_profile(path)
        if profile.model in profiles:
            raise ProfileError(str(path), f"model {profile.model!r} is already defined")
        profiles[profile.model] = profile
    if not profiles:
        raise ProfileError(str(directory), "no device profiles found")
    return profiles
