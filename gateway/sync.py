"""Sync: publish signed batches over MQTT (QoS 1) and mark readings synced on the bridge's ack.

paho-mqtt runs its network loop on its own thread and reconnects by itself with backoff; its
callbacks only hand events to the asyncio loop. A broker PUBACK proves nothing about the
record, so readings stay unsynced until the bridge's application ack names their sequence.
Pending batches are resent on every reconnect and after an ack time-out; the bridge ignores
replays, so resending is always safe.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import ssl
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from contract.wire import Ack, ContractError, ack_topic, decode_ack, up_topic
from gateway.config import MqttConfig, SyncConfig
from gateway.store import Outbox

log = logging.getLogger(__name__)


@dataclass
class SyncState:
    link_up: bool = False
    batches_published: int = 0
    acks_received: int = 0
    last_ack_seq: int = 0
    last_error: str | None = None
    last_connect_ms: int | None = None


@dataclass
class MqttSync:
    gateway_id: str
    outbox: Outbox
    mqtt_config: MqttConfig
    sync_config: SyncConfig
    state: SyncState = field(default_factory=SyncState)

    def __post_init__(self) -> None:
        self._events: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self._in_flight: dict[int, float] = {}
        self._loop = asyncio.get_running_loop()
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"gateway-{self.gateway_id}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self._client.reconnect_delay_set(
            min_delay=max(1, round(self.mqtt_config.reconnect_min_s)),
            max_delay=round(self.mqtt_config.reconnect_max_s),
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        tls = self.mqtt_config.tls
        if tls is not None:
            # The broker's certificate must chain to the community's CA and name the host we
            # dial; ours must be one the CA issued to this gateway. No fallback to plain MQTT.
            self._client.tls_set(
                ca_certs=str(tls.ca_file), certfile=str(tls.cert_file), keyfile=str(tls.key_file),
                cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )  # fmt: skip

    def wake(self) -> None:
        """New readings are stored: batch and send them now rather than at the next poll."""
        self._loop.call_soon_threadsafe(self._events.put_nowait, ("wake", None))

    # paho thread -> asyncio loop
    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            self._loop.call_soon_threadsafe(self._events.put_nowait, ("refused", str(reason)))
            return
        client.subscribe(ack_topic(self.gateway_id), qos=1)
        self._loop.call_soon_threadsafe(self._events.put_nowait, ("up", None))

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        self._loop.call_soon_threadsafe(self._events.put_nowait, ("down", str(reason)))

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self._loop.call_soon_threadsafe(self._events.put_nowait, ("ack", bytes(message.payload)))

    async def run(self) -> None:
        self._client.connect_async(self.mqtt_config.host, self.mqtt_config.port, self.mqtt_config.keepalive_s)
        self._client.loop_start()
        try:
            while True:
                try:
                    await self._send_due()
                except sqlite3.Error as exc:
                    # A full or failing disk: nothing is lost (batches are formed and marked in
                    # transactions); say so and try again at the next turn.
                    self.state.last_error = f"outbox error: {exc}"
                    log.error("sync: %s", self.state.last_error)
                try:
                    kind, value = await asyncio.wait_for(self._events.get(), self.sync_config.idle_poll_s)
                except TimeoutError:
                    continue
                await self._handle_event(kind, value)
        finally:
            self._client.disconnect()
            self._client.loop_stop()

    async def _handle_event(self, kind: str, value: object) -> None:
        if kind == "up":
            self.state.link_up = True
            self.state.last_connect_ms = time.time_ns() // 1_000_000
            self._in_flight.clear()  # resend everything pending on a fresh connection
            log.info("sync: connected to %s:%d", self.mqtt_config.host, self.mqtt_config.port)
        elif kind == "down":
            if self.state.link_up:
                log.warning("sync: link down (%s); readings stay in the outbox", value)
            self.state.link_up = False
        elif kind == "refused":
            self.state.last_error = f"broker refused connection: {value}"
            log.error("sync: %s", self.state.last_error)
        elif kind == "ack":
            assert isinstance(value, bytes)
            await self._on_ack(value)

    async def _on_ack(self, payload: bytes) -> None:
        try:
            ack: Ack = decode_ack(payload)
        except ContractError as exc:
            log.warning("sync: ignoring malformed ack: %s", exc)
            return
        self.state.acks_received += 1
        if ack.error:
            self.state.last_error = f"bridge refused a batch: {ack.error}"
            log.error("sync: %s", self.state.last_error)
        if ack.acked > self.state.last_ack_seq:
            synced = await self.outbox.mark_synced(ack.acked)
            self.state.last_ack_seq = ack.acked
            if not ack.error:
                self.state.last_error = None
            log.info("sync: bridge stored up to seq %d (%d readings marked synced)", ack.acked, synced)

    async def _send_due(self) -> None:
        if not self.state.link_up:
            return  # batch when the link is back: one big batch, not one per reading taken offline
        await self.outbox.form_batches(self.sync_config.batch_max_readings)
        now = time.monotonic()
        pending = await self.outbox.pending_batches(self.sync_config.max_in_flight)
        pending_ids = {batch.id for batch in pending}
        self._in_flight = {bid: sent for bid, sent in self._in_flight.items() if bid in pending_ids}
        for batch in pending:
            sent = self._in_flight.get(batch.id)
            if sent is not None and now - sent < self.sync_config.ack_timeout_s:
                continue
            info = self._client.publish(up_topic(self.gateway_id), batch.message, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.warning("sync: publish of batch %d failed (rc=%s)", batch.id, info.rc)
                return
            self._in_flight[batch.id] = now
            self.state.batches_published += 1
            log.info("sync: published batch %d (seq %d..%d)", batch.id, batch.first_seq, batch.last_seq)
