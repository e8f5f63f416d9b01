"""Wires the gateway together: one ingest task per link, the sync engine, the local API."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time

import uvicorn

from gateway.alerts import load_alert_rules
from gateway.api import create_app, mask
from gateway.ble_ingest import BleDeviceIngest
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.ingest import LinkIngest, recover_staged_ecg
from gateway.keys import GatewayKeys
from gateway.peripherals import Peripheral
from gateway.profiles import DeviceProfile, load_profiles
from gateway.store import Outbox, StorageGuard
from gateway.sync import MqttSync
from gateway.systemd_notify import Notifier, watchdog_forever
from gateway.transports.ble import BleakCentral, BleCentral
from gateway.transports.serial import SerialTransport

log = logging.getLogger(__name__)


class GatewayService:
    """The gateway's parts for one configuration. `central` is the Bluetooth adapter (bleak on a
    gateway; the simulated one in CI); it is only made when the configuration lists BLE devices."""

    def __init__(
        self,
        config: GatewayConfig,
        outbox: Outbox,
        profiles: dict[str, DeviceProfile],
        central: BleCentral | None = None,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.profiles = profiles
        self.alert_rules = load_alert_rules(config.profiles_dir, config.alert_region)
        self.sync = MqttSync(config.gateway_id, outbox, config.mqtt, config.sync)
        self.links = [
            LinkIngest(
                transport=SerialTransport(port.path, port.baudrate),
                outbox=outbox,
                profiles=profiles,
                clock_quality=config.clock_quality,
                on_stored=self.sync.wake,
                alert_rules=self.alert_rules,
            )
            for port in config.serial
        ]
        self.ble_devices: list[BleDeviceIngest] = []
        if config.ble.devices:
            central = central if central is not None else BleakCentral(config.ble.adapter)
            for device in config.ble.devices:
                profile = profiles.get(device.model)
                if profile is None or profile.transport != "ble":
                    raise GatewayError(
                        f"ble device {device.address}: no Bluetooth profile for model {device.model!r}"
                    )
                self.ble_devices.append(
                    BleDeviceIngest(
                        central,
                        device.address,
                        profile,
                        outbox,
                        rules=self.alert_rules,
                        clock_quality=config.clock_quality,
                        device_utc_offset_min=config.ble.device_utc_offset_min,
                        retry_max_s=config.ble.retry_max_s,
                        on_stored=self.sync.wake,
                    )
                )

    @property
    def peripherals(self) -> list[Peripheral]:
        """Every link and Bluetooth device, through the one interface the service knows."""
        return [*self.links, *self.ble_devices]

    def storage_status(self) -> dict[str, object]:
        guard = self.outbox.guard
        if guard is None:
            return {"state": "unguarded"}
        free_mb = guard.assess()
        return {"state": guard.state, "free_mb": round(free_mb, 1), "message": guard.message(free_mb)}

    async def status(self) -> dict[str, object]:
        outbox = await self.outbox.status()
        checkin = await self.outbox.current_checkin()
        return {
            "gateway_id": self.config.gateway_id,
            "link_up": self.sync.state.link_up,
            "sync": dataclasses.asdict(self.sync.state),
            "outbox": dataclasses.asdict(outbox),
            "checked_in": mask(checkin[0].value) if checkin else None,
            "peripherals": [peripheral.status() for peripheral in self.peripherals],
            "storage": self.storage_status(),
        }


RETENTION_CHECK_S = 3600.0


async def prune_forever(outbox: Outbox, retention_days: float, every_s: float = RETENTION_CHECK_S) -> None:
    """Once an hour, delete what the bridge acked more than `retention_days` ago (never what it
    has not): an SD card that fills with synced history would refuse tomorrow's readings."""
    while True:
        before_ms = time.time_ns() // 1_000_000 - int(retention_days * 86_400_000)
        pruned = await outbox.prune_synced(before_ms)
        if pruned.readings or pruned.batches or pruned.ecg_chunks:
            log.info(
                "retention: removed %d synced reading(s), %d batch(es), %d ECG chunk(s) older than %g days",
                pruned.readings,
                pruned.batches,
                pruned.ecg_chunks,
                retention_days,
            )
        await asyncio.sleep(every_s)


async def run_gateway(config: GatewayConfig) -> None:
    """Run until SIGINT/SIGTERM; every accepted reading is already durable when that comes."""
    profiles = load_profiles(config.profiles_dir)
    keys = GatewayKeys.load(config.data_dir)
    guard = StorageGuard(config.data_dir, config.min_free_waveforms_mb, config.min_free_readings_mb)
    outbox = await Outbox.open(config.db_path, config.gateway_id, keys, guard)
    try:
        recovered = await recover_staged_ecg(outbox, profiles, config.clock_quality)
        if recovered:
            log.info("gateway %s: %d ECG strip(s) rebuilt from staged chunks", config.gateway_id, recovered)
    except Exception:  # the chunks stay staged; a gateway that cannot start would store nothing
        log.exception("gateway %s: could not rebuild staged ECG strips now", config.gateway_id)
    service = GatewayService(config, outbox, profiles)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service),
            host=config.api.host,
            port=config.api.port,
            log_level="warning",
            timeout_graceful_shutdown=2,  # the kiosk screen's event stream never ends by itself
        )
    )
    tasks = [
        asyncio.create_task(peripheral.serve(), name=peripheral.name) for peripheral in service.peripherals
    ]
    tasks.append(asyncio.create_task(service.sync.run(), name="sync"))
    tasks.append(asyncio.create_task(prune_forever(outbox, config.retention_days), name="retention"))
    notifier = Notifier()  # systemd (Type=notify, WatchdogSec=); does nothing outside it

    async def supervise() -> None:
        # READY=1 once the API answers and the tasks run; then ping the watchdog only while every
        # task is alive, so a hung event loop or a stopped task gets the gateway restarted.
        while not server.started:
            await asyncio.sleep(0.05)
        notifier.ready(f"{len(service.peripherals)} peripheral(s), API on port {config.api.port}")
        await watchdog_forever(lambda: all(not task.done() for task in tasks), notifier=notifier)

    tasks.append(asyncio.create_task(supervise(), name="systemd"))

    failed: list[str] = []

    def stop_on_failure(task: asyncio.Task[None]) -> None:
        # A task that dies must not leave a gateway that looks alive but syncs nothing:
        # log why and stop with an error, so the supervisor restarts it from the durable state.
        if not task.cancelled() and task.exception() is not None:
            log.critical("gateway task %s failed; stopping", task.get_name(), exc_info=task.exception())
            failed.append(task.get_name())
            server.should_exit = True

    for task in tasks:
        task.add_done_callback(stop_on_failure)
    log.info(
        "gateway %s up: %d link(s), %d Bluetooth device(s), %d device profile(s), API on http://%s:%d",
        config.gateway_id,
        len(service.links),
        len(service.ble_devices),
        len(profiles),
        config.api.host,
        config.api.port,
    )
    # uvicorn re-raises SIGTERM after its shutdown under the handler it found; the default one would
    # end the process before this finally closes the outbox and tells systemd the gateway is stopping.
    previous_sigterm = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        await server.serve()  # returns on SIGINT/SIGTERM
    finally:
        notifier.stopping()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await outbox.close()
        signal.signal(signal.SIGTERM, previous_sigterm)
        log.info("gateway %s stopped", config.gateway_id)
    if failed:
        raise GatewayError(f"gateway stopped because a task failed: {', '.join(failed)}")
