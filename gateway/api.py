"""The gateway's local HTTP API (the seed of the kiosk UI): check-in, status, recent readings.

It listens on loopback by default and shows resident identifiers only masked.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field

from contract.wire import ResidentRef

if TYPE_CHECKING:
    from gateway.service import GatewayService


class CheckInRequest(BaseModel):
    system: Literal["health-record", "id-card"]
    value: str = Field(min_length=1, max_length=64)
    operator: str = Field(min_length=1, max_length=64)


def mask(value: str) -> str:
    """Keep the first 4 and last 4 characters, as on a printed slip."""
    if len(value) <= 8:
        return "*" * len(value)
    return value[:4] + "*" * (len(value) - 8) + value[-4:]


def create_app(service: GatewayService) -> FastAPI:
    app = FastAPI(title="Kiosk gateway", version="0.1.0")

    @app.post("/api/checkin")
    async def check_in(request: CheckInRequest) -> dict[str, object]:
        await service.outbox.start_checkin(
            ResidentRef(request.system, request.value), request.operator, time.time_ns() // 1_000_000
        )
        return {"checked_in": mask(request.value), "operator": request.operator}

    @app.post("/api/checkout")
    async def check_out() -> dict[str, object]:
        await service.outbox.end_checkin(time.time_ns() // 1_000_000)
        return {"checked_in": None}

    @app.get("/api/status")
    async def status() -> dict[str, object]:
        return await service.status()

    @app.get("/api/readings")
    async def readings(limit: int = 20) -> list[dict[str, object]]:
        rows = await service.outbox.recent_readings(min(max(limit, 1), 200))
        return [
            {
                "seq": reading.seq,
                "device": reading.device.id,
                "kind": reading.kind,
                "values": {m.name: f"{m.value} {m.unit}" for m in reading.values},
                "flags": list(reading.flags),
                "measured_at_ms": reading.measured_at_ms,
                "resident": mask(reading.resident.value) if reading.resident else None,
                "state": state,
            }
            for reading, state in rows
        ]

    return app
