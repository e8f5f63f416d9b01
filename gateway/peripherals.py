"""The one interface the gateway's service runs every peripheral through.

A kiosk board on a serial link (`gateway.ingest.LinkIngest`) and a Bluetooth health device
(`gateway.ble_ingest.BleDeviceIngest`, on bleak or on a simulated device) both are a
`Peripheral`: something that serves for the life of the gateway, reconnecting on its own, and
stores what it reads in the outbox. The service, the local API and the sync engine see only this
interface; none of them knows which kind of link a reading came over.
"""

from __future__ import annotations

from typing import Protocol


class Peripheral(Protocol):
    @property
    def name(self) -> str: ...

    async def serve(self) -> None:
        """Run until cancelled: (re)connect, read, store. A lost link is retried, never fatal."""

    def status(self) -> dict[str, object]:
        """What the status API shows of it: device, link state, counters, last error."""
