"""Gateway configuration: one TOML file, validated at start-up, defaults in one place."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.errors import ConfigError


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SerialPortConfig(_Frozen):
    path: str
    baudrate: int = 115200


class BleDeviceConfig(_Frozen):
    """A Bluetooth device this gateway reads: its address and the model of its profile."""

    address: str = Field(pattern=r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$|^[0-9A-Fa-f-]{36}$")
    model: str


class BleConfig(_Frozen):
    adapter: str | None = None  # e.g. "hci0"; None: the system's default adapter
    # Device clocks show local time without a zone; this is their offset from UTC (China: +8 h).
    device_utc_offset_min: int = Field(default=480, ge=-720, le=840)
    retry_max_s: float = Field(default=60.0, gt=0)
    devices: tuple[BleDeviceConfig, ...] = ()


class TlsConfig(_Frozen):
    """MQTT over TLS with a client certificate: the broker and the gateway prove who they are."""

    ca_file: Path  # the health community's CA; the broker's certificate must chain to it
    cert_file: Path  # this gateway's certificate (the CA signed its request at enrolment)
    key_file: Path  # its key, 0600, made on this gateway


class MqttConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = 1883
    tls: TlsConfig | None = None  # None: plain MQTT (a broker on the gateway itself, the demo)
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0


class SyncConfig(_Frozen):
    # Batch size adapts between these to the link (gateway/sync_policy.py): smaller after ack
    # time-outs and drops, larger again while acks come in time.
    batch_max_readings: int = Field(default=500, ge=1, le=5000)
    batch_min_readings: int = Field(default=20, ge=1, le=5000)
    batch_max_kb: int = Field(default=512, ge=16)  # raw reading bytes (an ECG strip is ~40 KB)
    ack_timeout_s: float = 15.0
    max_in_flight: int = Field(default=4, ge=1)
    idle_poll_s: float = 1.0
    # After connecting, wait this long for the bridge's clock before sending (see MqttSync).
    time_probe_wait_s: float = Field(default=3.0, ge=0)
    # A metered link's budget per local day: once spent, plain ECG strips wait (durably) for the
    # next day; readings and flagged strips still go. None: unmetered.
    daily_budget_mb: float | None = Field(default=None, gt=0)
    # The public key the bridge signs its acks with (written at provisioning): given, the gateway
    # acts on no other ack (contract/wire.py). None: acks are taken on the broker's word alone.
    bridge_ack_key_file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_min_within_max(cls, raw: object) -> object:
        """Only a maximum given: the minimum follows it down (a 10-reading cap means 10 at most)."""
        if isinstance(raw, dict) and "batch_min_readings" not in raw and "batch_max_readings" in raw:
            maximum = raw["batch_max_readings"]
            if isinstance(maximum, int):
                return {**raw, "batch_min_readings": min(20, maximum)}
        return raw

    @model_validator(mode="after")
    def _min_below_max(self) -> SyncConfig:
        if self.batch_min_readings > self.batch_max_readings:
            raise ValueError(
                f"batch_min_readings {self.batch_min_readings} > batch_max_readings {self.batch_max_readings}"
            )
        return self


class ApiConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = 8700


class KioskUiConfig(_Frozen):
    """Operator sessions at the kiosk screen (gateway/operators.py)."""

    session_max_s: float = Field(default=8 * 3600, gt=0)  # a working day, then sign in again
    session_idle_s: float = Field(default=15 * 60, gt=0)  # screen left alone: signed out
    lockout_after: int = Field(default=5, ge=1)  # wrong PINs in a row before the operator is locked
    lockout_s: float = Field(default=15 * 60, gt=0)


class GatewayConfig(_Frozen):
    gateway_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    data_dir: Path
    profiles_dir: Path = Path("device_profiles")
    # Whose clinical thresholds flag readings: <profiles_dir>/alert_rules/<region>.toml
    alert_region: str = Field(default="CN", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
    clock_quality: Literal["rtc", "ntp", "unsynced"] = "ntp"
    # Readings the bridge acked are deleted this long after the ack; unsynced ones never are.
    retention_days: float = Field(default=30.0, gt=0)
    # Free space on the data directory's file system below which new ECG, then new readings,
    # are refused (boards keep them and resend; the status API says so to the operator).
    min_free_waveforms_mb: float = Field(default=200.0, ge=0)
    min_free_readings_mb: float = Field(default=50.0, ge=0)
    serial: tuple[SerialPortConfig, ...] = ()
    ble: BleConfig = BleConfig()
    mqtt: MqttConfig = MqttConfig()
    sync: SyncConfig = SyncConfig()
    api: ApiConfig = ApiConfig()
    ui: KioskUiConfig = KioskUiConfig()

    @property
    def db_path(self) -> Path:
        return self.data_dir / "gateway.db"


def load_config(path: Path) -> GatewayConfig:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        return GatewayConfig.model_validate(raw)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from exc
