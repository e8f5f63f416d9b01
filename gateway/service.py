"""Wires the gateway together: one ingest task per link, the sync engine, the local API."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import uvicorn

from gateway.api import create_app, mask
from gateway.config import GatewayConfig
from gateway.ingest import CheckIn, LinkIngest, serve_link
from gateway.keys import GatewayKeys
from gateway.profiles import DeviceProfile, load_profiles
from gateway.store import Outbox
from gateway.sync import MqttSync
from gateway.transports.serial import SerialTransport

log = logging.getLogger(__name__)


class GatewayService:
    def __init__(self, config: GatewayConfig, outbox: Outbox, profiles: dict[str, DeviceProfile]) -> None:
        self.config = config
        self.outbox = outbox
        self.profiles = profiles
        self.checkin = CheckIn()
        self.sync = MqttSync(config.gateway_id, outbox, config.mqtt, config.sync)
        self.links = [
            LinkIngest(
                transport=SerialTransport(port.path, port.baudrate),
                outbox=outbox,
                profiles=profiles,
                checkin=self.checkin,
                clock_quality=config.clock_quality,
                on_stored=self.sync.wake,
            )
            for port in config.serial
        ]

    async def status(self) -> dict[str, object]:
        outbox = await self.outbox.status()
        return {
            "gateway_id": self.config.gateway_id,
            "link_up": self.sync.state.link_up,
            "sync": dataclasses.asdict(self.sync.state),
            "outbox": dataclasses.asdict(outbox),
            "checked_in": mask(self.checkin.resident.value) if self.checkin.resident else None,
            "peripherals": [
                {
                    "port": ingest.transport.name,
                    "device": dataclasses.asdict(ingest.session.device) if ingest.session else None,
                    "counters": dataclasses.asdict(ingest.counters),
                    "last_device_error": ingest.last_device_error,
                }
                for ingest in self.links
            ],
        }


async def run_gateway(config: GatewayConfig) -> None:
    """Run until SIGINT/SIGTERM; every accepted reading is already durable when that comes."""
    profiles = load_profiles(config.profiles_dir)
    keys = GatewayKeys.load(config.data_dir)
    outbox = await Outbox.open(config.db_path, config.gateway_id, keys)
    service = GatewayService(config, outbox, profiles)
    server = uvicorn.Server(
        uvicorn.Config(create_app(service), host=config.api.host, port=config.api.port, log_level="warning")
    )
    tasks = [
        asyncio.create_task(serve_link(ingest), name=f"link {ingest.transport.name}")
        for ingest in service.links
    ]
    tasks.append(asyncio.create_task(service.sync.run(), name="sync"))
    log.info(
        "gateway %s up: %d link(s), %d device profile(s), API on http://%s:%d",
        config.gateway_id,
        len(service.links),
        len(profiles),
        config.api.host,
        config.api.port,
    )
    try:
        await server.serve()  # returns on SIGINT/SIGTERM
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await outbox.close()
        log.info("gateway %s stopped", config.gateway_id)
