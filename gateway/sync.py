"""Sync: publish signed batches over MQTT (QoS 1) and mark readings synced on the bridge's ack.

paho-mqtt runs its network loop on its own thread and reconnects by itself with backoff; its
callbacks only hand events to the asyncio loop. A broker PUBACK proves nothing about the
record, so readings stay unsynced until the bridge's application ack names the head of the
chain it holds. Batches are formed only as the link takes them (at most `max_in_flight` ahead),
so a flagged reading taken during a long backlog drain goes in the next batch; what goes first,
what waits for the budget and how big a batch is are decided in gateway/sync_policy.py.
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

from contract.wire import (
    Ack,
    ContractError,
    SignatureError,
    ack_topic,
    decode_ack,
    encode_time_probe,
    up_topic,
)
from gateway.config import MqttConfig, SyncConfig
from gateway.keys import load_bridge_ack_key
from gateway.store import Outbox, PendingBatch
from gateway.sync_policy import (
    PRIORITY_FLAGGED,
    PRIORITY_VITALS,
    PRIORITY_WAVEFORM,
    BatchSizer,
    DailyBudget,
    publish_cost,
)

log = logging.getLogger(__name__)


@dataclass
class SyncState:
    link_up: bool = False
    batches_published: int = 0
    acks_received: int = 0
    last_ack_seq: int = 0  # the highest sequence the bridge holds
    last_ack_batch: int = 0  # the newest batch of the chain the bridge holds
    last_error: str | None = None
    last_connect_ms: int | None = None
    batch_readings: int = 0  # the batch size now, adapted to the link
    bytes_today: int = 0  # sent and received over the uplink today (local date)
    budget_bytes: int | None = None  # the daily budget; None: unmetered
    waveforms_deferred: bool = False  # ECG strips wait for tomorrow's budget
    clock_offset_ms: int | None = None  # the bridge's clock minus ours, as last measured
    clock_rtt_ms: int | None = None  # the round trip of that measurement (its uncertainty x2)
    times_corrected: int = 0  # unsynced readings given the bridge's time
    acks_refused: int = 0  # acks not signed with the bridge's key (sync.bridge_ack_key_file): ignored


@dataclass
class MqttSync:
    gateway_id: str
    outbox: Outbox
    mqtt_config: MqttConfig
    sync_config: SyncConfig
    state: SyncState = field(default_factory=SyncState)

    def __post_init__(self) -> None:
        self._events: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self._in_flight: dict[int, tuple[float, bytes]] = {}  # batch id -> (sent, hash)
        self._loop = asyncio.get_running_loop()
        self._topic = up_topic(self.gateway_id)
        key_file = self.sync_config.bridge_ack_key_file
        self._bridge_key = None if key_file is None else load_bridge_ack_key(key_file)
        if self._bridge_key is None:
            log.warning(
                "sync: no sync.bridge_ack_key_file: acks are believed on the broker's word alone "
                "(whoever may publish on %s could mark readings synced)",
                ack_topic(self.gateway_id),
            )
        self.sizer = BatchSizer(
            self.sync_config.batch_min_readings,
            self.sync_config.batch_max_readings,
            self.sync_config.batch_max_kb * 1024,
        )
        budget_mb = self.sync_config.daily_budget_mb
        self.budget = DailyBudget(None if budget_mb is None else int(budget_mb * 1024 * 1024))
        self.state.budget_bytes = self.budget.limit_bytes
        self.state.batch_readings = self.sizer.readings
        self._usage_day: str | None = None
        self._deferred_day: str | None = None
        self._rewound_to: bytes | None = None
        self._probe_sent: float | None = None  # monotonic s; None: no time probe unanswered
        self._bridge_clock: tuple[int, int] | None = None  # (bridge ms, our monotonic ms)
        self._corrected_through = 0
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

    @staticmethod
    def today() -> str:
        """The local date: a metered plan's day is the one on the vehicle's clock."""
        return time.strftime("%Y-%m-%d", time.localtime())

    async def _roll_day(self) -> str:
        """At the vehicle's midnight: a new day's budget (and whatever it already spent)."""
        day = self.today()
        if day != self._usage_day:
            self._usage_day = day
            self.state.bytes_today = await self.outbox.link_usage(day)
            self.state.waveforms_deferred = self._deferred_day == day
        return day

    async def _count_usage(self, nbytes: int) -> None:
        day = await self._roll_day()
        self.state.bytes_today = await self.outbox.add_link_usage(day, nbytes)

    async def run(self) -> None:
        await self._roll_day()
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
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                    # cancellation that lands as the event arrives, and the gateway would not stop.
                    async with asyncio.timeout(self.sync_config.idle_poll_s):
                        kind, value = await self._events.get()
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
            self._rewound_to = None
            log.info("sync: connected to %s:%d", self.mqtt_config.host, self.mqtt_config.port)
            # Ask the bridge for its clock before batching: readings stamped by an unsynced
            # clock get its time while they can still change (a signed batch cannot).
            self._probe_sent = time.monotonic()
            self._client.publish(self._topic, encode_time_probe(self.gateway_id), qos=1)
        elif kind == "down":
            if self.state.link_up:
                log.warning("sync: link down (%s); readings stay in the outbox", value)
            if self._in_flight:  # batches cut off on their way: a sign of a link to go easy on
                self.sizer.on_trouble()
                self.state.batch_readings = self.sizer.readings
            self.state.link_up = False
        elif kind == "refused":
            self.state.last_error = f"broker refused connection: {value}"
            log.error("sync: %s", self.state.last_error)
        elif kind == "ack":
            assert isinstance(value, bytes)
            await self._on_ack(value)

    async def _on_ack(self, payload: bytes) -> None:
        try:
            ack: Ack = decode_ack(payload, bridge_key=self._bridge_key, gateway_id=self.gateway_id)
        except SignatureError as exc:
            # Not the bridge's word: nothing is marked synced, no clock is learnt from it.
            self.state.acks_refused += 1
            await self._count_usage(publish_cost(ack_topic(self.gateway_id), len(payload)))
            log.warning("sync: ignoring an ack the bridge did not sign: %s", exc)
            return
        except ContractError as exc:
            log.warning("sync: ignoring malformed ack: %s", exc)
            return
        self.state.acks_received += 1
        await self._count_usage(publish_cost(ack_topic(self.gateway_id), len(payload)))
        answered = next((bid for bid, (_, h) in self._in_flight.items() if h == ack.batch_hash), None)
        self._learn_bridge_clock(ack, answered)
        if answered is not None and not ack.error:
            sent, _ = self._in_flight[answered]
            if time.monotonic() - sent < self.sync_config.ack_timeout_s:
                self.sizer.on_ack_in_time()
                self.state.batch_readings = self.sizer.readings
        if ack.error:
            self.state.last_error = f"bridge refused a batch: {ack.error}"
            log.error("sync: %s", self.state.last_error)
            if ack.head_hash is not None and ack.head_hash != self._rewound_to:
                # The bridge holds the chain up to its head: resend what follows it now, in
                # order (once per head; after that the ack time-out paces the resends).
                self._rewound_to = ack.head_hash
                self._in_flight.clear()
        if ack.head_hash is None:
            return
        synced = await self.outbox.mark_acked(ack.head_hash)
        if synced is None:
            return  # the genesis hash, or a batch pruned long ago: nothing to learn
        self.state.last_ack_seq = max(self.state.last_ack_seq, ack.acked)
        self.state.last_ack_batch = max(self.state.last_ack_batch, ack.head_number or 0)
        if not ack.error:
            self.state.last_error = None
        if synced:
            log.info(
                "sync: bridge holds the chain up to batch %s (%d readings marked synced)",
                ack.head_number, synced,
            )  # fmt: skip

    def _learn_bridge_clock(self, ack: Ack, answered: int | None) -> None:
        """Keep the measurement of the bridge's clock with the shortest round trip: the answer to
        our time probe, or the ack of a batch whose send time we know."""
        if ack.server_time_ms is None:
            return
        now = time.monotonic()
        if ack.batch_hash is None and not ack.error and self._probe_sent is not None:
            rtt_s = now - self._probe_sent
            self._probe_sent = None
        elif answered is not None:
            rtt_s = now - self._in_flight[answered][0]
        else:
            return
        rtt_ms = round(rtt_s * 1000)
        if self.state.clock_rtt_ms is not None and rtt_ms >= self.state.clock_rtt_ms:
            return
        bridge_ms = ack.server_time_ms + rtt_ms // 2  # the bridge's time now, give or take rtt/2
        self._bridge_clock = (bridge_ms, time.monotonic_ns() // 1_000_000)
        self.state.clock_rtt_ms = rtt_ms
        self.state.clock_offset_ms = bridge_ms - time.time_ns() // 1_000_000
        if abs(self.state.clock_offset_ms) > 60_000:
            log.warning(
                "sync: this gateway's clock is %+d s off the bridge's", self.state.clock_offset_ms // 1000
            )

    async def _correct_times(self) -> None:
        if self._bridge_clock is None:
            return
        corrected, self._corrected_through = await self.outbox.correct_unsynced_time(
            *self._bridge_clock, after_seq=self._corrected_through
        )
        if corrected:
            self.state.times_corrected += corrected
            log.info("sync: %d reading(s) taken on an unsynced clock now carry the bridge's time", corrected)

    async def _form_next(self, reserved: int) -> PendingBatch | None:
        """The next batch: flagged readings and vitals first; plain ECG strips only when nothing
        else waits and today's budget allows them, counting `reserved` bytes of batches formed
        but not yet sent."""
        batch = await self.outbox.form_batch(
            self.sizer.readings, max_bytes=self.sizer.bytes, priorities=(PRIORITY_FLAGGED, PRIORITY_VITALS)
        )
        today = await self._roll_day()
        if batch is not None or self._deferred_day == today:
            return batch
        over_budget = False

        def within_budget(message: bytes) -> bool:
            nonlocal over_budget
            over_budget = not self.budget.allows_waveform(
                self.state.bytes_today + reserved, publish_cost(self._topic, len(message))
            )
            return not over_budget

        for max_readings in (self.sizer.readings, 1):  # several strips too many: one may still fit
            batch = await self.outbox.form_batch(
                max_readings,
                max_bytes=self.sizer.bytes,
                priorities=(PRIORITY_WAVEFORM, PRIORITY_WAVEFORM),
                accept=within_budget,
            )
            if not over_budget or max_readings == 1:
                break
        if over_budget:
            self._deferred_day = today
            self.state.waveforms_deferred = True
            log.info(
                "sync: today's budget (%d of %d bytes used or on their way) holds ECG strips back "
                "until tomorrow", self.state.bytes_today + reserved, self.budget.limit_bytes,
            )  # fmt: skip
        return batch

    async def _send_due(self) -> None:
        if not self.state.link_up:
            return  # batch when the link is back: urgent readings first, not in the order taken
        if self._probe_sent is not None:
            if time.monotonic() - self._probe_sent < self.sync_config.time_probe_wait_s:
                return  # the bridge's clock first (its answer wakes us)
            self._probe_sent = None  # no answer (bridge down?): send; readings keep their times
        await self._roll_day()
        await self._correct_times()
        pending = await self.outbox.pending_batches(self.sync_config.max_in_flight)
        while len(pending) < self.sync_config.max_in_flight:
            unsent = sum(
                publish_cost(self._topic, len(b.message)) for b in pending if b.id not in self._in_flight
            )
            batch = await self._form_next(unsent)
            if batch is None:
                break
            pending.append(batch)
        now = time.monotonic()
        pending_ids = {batch.id for batch in pending}
        self._in_flight = {bid: entry for bid, entry in self._in_flight.items() if bid in pending_ids}
        for batch in pending:
            entry = self._in_flight.get(batch.id)
            if entry is not None and now - entry[0] < self.sync_config.ack_timeout_s:
                continue
            if entry is not None:  # no ack in time: resend, and make the next batches smaller
                self.sizer.on_trouble()
                self.state.batch_readings = self.sizer.readings
            info = self._client.publish(self._topic, batch.message, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.warning("sync: publish of batch %d failed (rc=%s)", batch.id, info.rc)
                return
            self._in_flight[batch.id] = (now, batch.hash)
            self.state.batches_published += 1
            await self._count_usage(publish_cost(self._topic, len(batch.message)))
            log.info(
                "sync: published batch %d (%d readings, seq %d..%d, %d bytes)",
                batch.id, batch.readings, batch.first_seq, batch.last_seq, len(batch.message),
            )  # fmt: skip
