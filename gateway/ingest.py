"""Ingest: frames from one peripheral link -> validated readings in the outbox -> ack or nak.

A reading is acked only after the outbox has committed it. Everything refused is answered
with a NAK carrying the reason, logged without resident data, and counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from contract.wire import DeviceRef, Waveform
from firmware import kiosk_link as link
from gateway.alerts import AlertRules
from gateway.ecg import EcgChunk, Strip, StripAssembler
from gateway.errors import RejectedReading, StorageFullError
from gateway.link_names import ERROR_NAMES, KIND_NAMES, MESSAGE_NAMES
from gateway.profiles import DeviceProfile
from gateway.store import NewReading, Outbox, StagedChunk
from gateway.transports.base import Transport, TransportClosed
from gateway.validate import check_link_reading

if TYPE_CHECKING:
    from gateway.link_update import LinkUpdater

log = logging.getLogger(__name__)

ECG_IDLE_FLUSH_S = 2.0
TIME_SYNC_INTERVAL_S = 600.0  # a board's ticks drift and wrap: give it our clock again this often


@dataclass
class LinkCounters:
    frames: int = 0
    corrupt_frames: int = 0
    readings_stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    device_errors: int = 0
    dropped_bytes: int = 0
    internal_errors: int = 0
    ecg_chunks: int = 0


@dataclass
class DeviceSession:
    device: DeviceRef
    boot_id: int
    profile: DeviceProfile
    battery_percent: int | None = None
    error_flags: int = 0
    uptime_s: int = 0
    capabilities: int = 0


_FEATURES = {
    link.CAP_JOURNAL: "journal",
    link.CAP_TIME_SYNC: "time_sync",
    link.CAP_STATUS: "status",
    link.CAP_UPDATE: "link_update",
    link.CAP_TRIAL: "on_trial",
    link.CAP_ROLLED_BACK: "rolled_back",
}


def capability_kinds(capabilities: int) -> tuple[str, ...]:
    return tuple(
        name for code, name in sorted(KIND_NAMES.items()) if capabilities & link.capability_of_kind(code)
    )


def capability_names(capabilities: int) -> list[str]:
    """For the status page: kinds first, then features."""
    features = [name for bit, name in _FEATURES.items() if capabilities & bit]
    return [*capability_kinds(capabilities), *features]


def time_sync_frame() -> bytes:
    """Give the board our wall clock, so it stamps readings when they are taken."""
    now_ns = time.time_ns()
    return link.encode_frame(
        link.MSG_TIME_SYNC, 0, link.encode_time_sync(now_ns // 1_000_000_000, (now_ns // 1_000_000) % 1000)
    )


@dataclass
class LinkIngest:
    """Serves one peripheral link; holds what the board said in its hello. A `Peripheral`."""

    transport: Transport
    outbox: Outbox
    profiles: dict[str, DeviceProfile]
    clock_quality: str
    on_stored: Callable[[], None] = lambda: None
    strip_seconds: float = 10.0
    alert_rules: AlertRules | None = None  # the region's alert rules; None: readings raise no alerts
    counters: LinkCounters = field(default_factory=LinkCounters)
    session: DeviceSession | None = None
    last_device_error: str | None = None
    _ecg: StripAssembler | None = None
    _ecg_started_ms: int = 0
    _last_time_sync: float = float("-inf")
    updater: LinkUpdater | None = None  # firmware update over this link (gateway/link_update.py)

    @property
    def name(self) -> str:
        return f"link {self.transport.name}"

    async def serve(self) -> None:
        await serve_link(self)

    def status(self) -> dict[str, object]:
        session = self.session
        return {
            "transport": "serial",
            "port": self.transport.name,
            "device": dataclasses.asdict(session.device) if session else None,
            "counters": dataclasses.asdict(self.counters),
            "last_device_error": self.last_device_error,
            "battery_percent": session.battery_percent if session else None,
            "capabilities": capability_names(session.capabilities) if session else None,
            "uptime_s": session.uptime_s if session else None,
            "firmware_update": self.updater.status.view() if self.updater and self.updater.status else None,
        }

    async def run(self) -> None:
        splitter = link.FrameSplitter()
        while True:
            try:
                async with asyncio.timeout(ECG_IDLE_FLUSH_S):  # not wait_for: see MqttSync.run
                    data = await self.transport.read()
            except TimeoutError:
                await self.flush_ecg()  # the stream stopped: a short strip is still a strip
                continue
            for encoded in splitter.feed(data):
                reply = await self.handle_frame(encoded)
                due = time.monotonic() - self._last_time_sync >= TIME_SYNC_INTERVAL_S
                if reply and self.session is not None and due:
                    reply += self._time_sync()
                if reply:
                    await self.transport.write(reply)
            self.counters.dropped_bytes = splitter.dropped_bytes

    async def handle_frame(self, encoded: bytes) -> bytes | None:
        """Decode, act, and return the frame to answer with (None: say nothing)."""
        self.counters.frames += 1
        try:
            msg_type, seq, payload = link.decode_frame(encoded)
        except link.LinkError as exc:
            self.counters.corrupt_frames += 1
            log.warning("link %s: corrupt frame (%s), sent NAK", self.transport.name, exc)
            return link.encode_frame(link.MSG_NAK, 0, link.encode_nak(exc.reason))
        if msg_type == link.MSG_UPDATE_REPLY:  # the board answers a firmware update request
            if self.updater is not None:
                self.updater.on_reply(seq, payload)
            return None
        try:
            if msg_type == link.MSG_HELLO:
                return await self._on_hello(seq, payload)
            if self.session is None:
                return link.encode_frame(link.MSG_NAK, seq, link.encode_nak(link.NAK_HELLO_REQUIRED))
            if msg_type == link.MSG_READING:
                return await self._on_reading(seq, payload)
            if msg_type == link.MSG_DEVICE_ERROR:
                return self._on_device_error(seq, payload)
            if msg_type == link.MSG_STATUS:
                return self._on_status(seq, payload)
            if msg_type == link.MSG_ECG_CHUNK:
                return await self._on_ecg_chunk(seq, payload)
            if msg_type in (link.MSG_ACK, link.MSG_NAK):
                return None
        except link.LinkError as exc:
            await self._reject(f"bad {MESSAGE_NAMES.get(msg_type, msg_type)} payload: {exc}")
            return link.encode_frame(link.MSG_NAK, seq, link.encode_nak(link.NAK_REJECTED))
        except RejectedReading as exc:
            await self._reject(exc.reason)
            return link.encode_frame(link.MSG_NAK, seq, link.encode_nak(link.NAK_REJECTED))
        except StorageFullError as exc:
            log.error("link %s: cannot store reading: %s", self.transport.name, exc)
            return link.encode_frame(link.MSG_NAK, seq, link.encode_nak(link.NAK_BUSY))
        except Exception:
            # A bug or a storage fault must not take the port down, and must not cost the
            # reading: the board keeps it and retries (NAK_BUSY), we log the whole traceback.
            self.counters.internal_errors += 1
            log.exception("link %s: failed to process %s frame seq %d", self.transport.name,
                          MESSAGE_NAMES.get(msg_type, msg_type), seq)  # fmt: skip
            return link.encode_frame(link.MSG_NAK, seq, link.encode_nak(link.NAK_BUSY))
        await self._reject(f"unsupported message type {msg_type}")
        return link.encode_frame(link.MSG_NAK, seq, link.encode_nak(link.NAK_REJECTED))

    def _time_sync(self) -> bytes:
        self._last_time_sync = time.monotonic()
        return time_sync_frame()

    async def _reject(self, reason: str) -> None:
        self.counters.rejected += 1
        source = self.session.device.id if self.session else self.transport.name
        log.warning("link %s: rejected from %s: %s", self.transport.name, source, reason)
        try:
            await self.outbox.record_rejection(source, reason)
        except sqlite3.Error as exc:  # a full disk must not turn a refusal into a crash
            log.error("link %s: could not record the rejection: %s", self.transport.name, exc)

    async def _on_hello(self, seq: int, payload: bytes) -> bytes:
        boot_id, device_id, model, firmware_version = link.decode_hello(payload)
        profile = self.profiles.get(model)
        if profile is None:
            self.session = None
            raise RejectedReading(device_id, f"unknown device model {model!r} (no device profile)")
        capabilities = link.decode_hello_capabilities(payload)
        claimed = capability_kinds(capabilities)
        if not set(claimed) <= set(profile.kinds):
            self.session = None
            raise RejectedReading(
                device_id,
                f"firmware {firmware_version} of {model} measures {', '.join(claimed)} but the device "
                f"profile describes {', '.join(sorted(profile.kinds))}: wrong firmware or profile",
            )
        device = DeviceRef(device_id, model, firmware_version)
        await self.flush_ecg()
        self._ecg = None
        self.session = DeviceSession(device, boot_id, profile, capabilities=capabilities)
        await self.outbox.note_device(device, boot_id, self.transport.name)
        log.info(
            "link %s: hello from %s (%s firmware %s)", self.transport.name, device_id, model, firmware_version
        )
        if capabilities & link.CAP_ROLLED_BACK:
            log.warning("link %s: %s rolled a firmware update back: it runs %s again",
                        self.transport.name, device_id, firmware_version)  # fmt: skip
        elif capabilities & link.CAP_TRIAL:
            log.info("link %s: %s runs %s on trial; this ack confirms it",
                     self.transport.name, device_id, firmware_version)  # fmt: skip
        if self.updater is not None:
            self.updater.on_hello(device, capabilities)
        return link.encode_frame(link.MSG_ACK, seq) + self._time_sync()

    async def _on_reading(self, seq: int, payload: bytes) -> bytes:
        assert self.session is not None
        session = self.session
        kind_code, flags, device_time, fields = link.decode_reading(payload)
        checked = check_link_reading(
            session.device.id, session.profile, kind_code, fields, flags, self.alert_rules
        )
        for note in checked.notes:
            log.warning("link %s: reading from %s: %s", self.transport.name, session.device.id, note)
        now_ms = time.time_ns() // 1_000_000
        # A board stamps readings with the clock we gave it (TIME_SYNC), so its time is as
        # good as ours; without one, the reading gets our receive time.
        measured_at_ms = device_time * 1000 if device_time else now_ms
        # The resident is the one checked in when the reading was taken. The board's time has
        # whole seconds (floored), so look at the end of that second: a reading finished in the
        # same second as its resident's check-in still belongs to them.
        checkin = await self.outbox.checkin_at(measured_at_ms + 999 if device_time else measured_at_ms)
        stored = await self.outbox.add_reading(
            NewReading(
                device=session.device,
                boot_id=session.boot_id,
                link_seq=seq,
                kind=checked.kind,
                values=checked.measurements,
                measured_at_ms=measured_at_ms,
                time_quality=self.clock_quality,
                received_mono_ms=time.monotonic_ns() // 1_000_000,
                resident=checkin[0] if checkin else None,
                operator=checkin[1] if checkin else None,
                flags=checked.flags,
            )
        )
        if stored is None:
            self.counters.duplicates += 1
        else:
            self.counters.readings_stored += 1
            log.info("link %s: stored %s reading as seq %d", self.transport.name, checked.kind, stored)
            self.on_stored()
        ack = link.encode_frame(link.MSG_ACK, seq)
        return ack if device_time else ack + self._time_sync()

    async def _on_ecg_chunk(self, seq: int, payload: bytes) -> bytes:
        assert self.session is not None
        session = self.session
        ecg = session.profile.kinds.get("ecg")
        waveform = ecg.waveform if ecg else None
        if waveform is None:
            raise RejectedReading(session.device.id, f"model {session.device.model} does not stream ECG")
        first_sample, channels, lead_off, samples = link.decode_ecg_chunk(payload)
        if channels != len(waveform.leads):
            raise RejectedReading(
                session.device.id,
                f"ecg chunk has {channels} channels, profile has {len(waveform.leads)} leads",
            )
        chunk = EcgChunk(first_sample, channels, lead_off, tuple(samples))
        now_ms = time.time_ns() // 1_000_000
        key = await self.outbox.stage_ecg_chunk(session.device, session.boot_id, seq, now_ms, chunk)
        if key is None:
            self.counters.duplicates += 1
            return link.encode_frame(link.MSG_ACK, seq)
        self.counters.ecg_chunks += 1
        if self._ecg is None:
            strip_samples = max(1, round(self.strip_seconds * waveform.sample_rate_hz))
            self._ecg = StripAssembler(channels=channels, strip_samples=strip_samples)
        if self._ecg.next_sample is None or self._ecg.next_sample != first_sample:
            # Time of the strip's first sample: this chunk's arrival less the samples it holds.
            self._ecg_started_ms = now_ms - chunk.count * 1000 // waveform.sample_rate_hz
        for strip in self._ecg.add(chunk, key):
            await self._store_strip(strip)
            self._ecg_started_ms = now_ms - chunk.count * 1000 // waveform.sample_rate_hz
        return link.encode_frame(link.MSG_ACK, seq)

    async def flush_ecg(self) -> None:
        """End the current strip. Never raises: a strip that cannot be stored now keeps its
        chunks staged on disk, and recover_staged_ecg rebuilds it at the next start."""
        if self._ecg is None:
            return
        strips = self._ecg.flush()
        for strip in strips:
            if self.session is None:
                log.warning("link %s: ECG strip kept staged (no device session)", self.transport.name)
                continue
            try:
                await self._store_strip(strip)
            except Exception:
                self.counters.internal_errors += 1
                log.exception(
                    "link %s: ECG strip kept staged, rebuilt at the next start", self.transport.name
                )

    async def _store_strip(self, strip: Strip) -> None:
        assert self.session is not None
        session = self.session
        spec = session.profile.kinds["ecg"].waveform
        assert spec is not None
        checkin = await self.outbox.checkin_at(self._ecg_started_ms)
        seq = await self.outbox.store_ecg_strip(
            NewReading(
                device=session.device,
                boot_id=session.boot_id,
                link_seq=-strip.chunk_keys[0],  # strips are keyed by their first staged chunk
                kind="ecg",
                values=(),
                measured_at_ms=self._ecg_started_ms,
                time_quality=self.clock_quality,
                received_mono_ms=time.monotonic_ns() // 1_000_000,
                resident=checkin[0] if checkin else None,
                operator=checkin[1] if checkin else None,
                flags=("lead_off",) if strip.lead_off else (),
                waveform=Waveform(
                    sample_rate_hz=spec.sample_rate_hz,
                    resolution_uv=spec.resolution_uv,
                    leads=spec.leads,
                    first_sample=strip.first_sample,
                    samples=strip.leads,
                ),
            ),
            strip.chunk_keys,
        )
        self.counters.readings_stored += 1
        log.info(
            "link %s: stored ECG strip of %d samples (from sample %d) as seq %d",
            self.transport.name, strip.sample_count, strip.first_sample, seq,
        )  # fmt: skip
        self.on_stored()

    def _on_status(self, seq: int, payload: bytes) -> bytes:
        assert self.session is not None
        battery, error_flags, uptime_s = link.decode_status(payload)
        self.session.battery_percent = None if battery == 255 else battery
        self.session.error_flags = error_flags
        self.session.uptime_s = uptime_s
        return link.encode_frame(link.MSG_ACK, seq)

    def _on_device_error(self, seq: int, payload: bytes) -> bytes:
        kind_code, code = link.decode_device_error(payload)
        self.counters.device_errors += 1
        kind = KIND_NAMES.get(kind_code, str(kind_code))
        self.last_device_error = f"{kind}: {ERROR_NAMES.get(code, f'error {code}')}"
        log.warning("link %s: device reports %s", self.transport.name, self.last_device_error)
        return link.encode_frame(link.MSG_ACK, seq)


async def serve_link(ingest: LinkIngest, *, reopen_delay_s: float = 1.0) -> None:
    """Keep a link open for the life of the service; a vanished port is reopened, never fatal."""
    while True:
        try:
            await ingest.transport.open()
            await ingest.run()
        except TransportClosed as exc:
            log.warning("link %s: %s; retrying in %.1fs", ingest.transport.name, exc, reopen_delay_s)
        finally:
            await ingest.transport.close()
        await ingest.flush_ecg()
        ingest.session = None
        await asyncio.sleep(reopen_delay_s)


async def recover_staged_ecg(outbox: Outbox, profiles: dict[str, DeviceProfile], clock_quality: str) -> int:
    """After a crash, staged ECG chunks (acked to the board, not yet in a strip) become strips.

    Returns how many strips were stored. A model whose profile vanished keeps its chunks
    staged (logged), rather than losing them.
    """
    stored = 0
    groups: dict[tuple[str, int], list[StagedChunk]] = {}
    for staged in await outbox.staged_ecg_chunks():
        groups.setdefault((staged.device.id, staged.boot_id), []).append(staged)
    for (device_id, boot_id), chunks in groups.items():
        device = chunks[0].device
        profile = profiles.get(device.model)
        ecg = profile.kinds.get("ecg") if profile else None
        spec = ecg.waveform if ecg else None
        if spec is None:
            log.error(
                "ECG chunks of %s (%s) kept staged: no ECG profile for the model", device_id, device.model
            )
            continue
        assembler = StripAssembler(channels=len(spec.leads), strip_samples=10**9)
        started = {chunks[0].chunk.first_sample: chunks[0].received_at_ms}
        strips: list[Strip] = []
        for staged in chunks:
            if assembler.next_sample != staged.chunk.first_sample:
                started[staged.chunk.first_sample] = staged.received_at_ms - (
                    staged.chunk.count * 1000 // spec.sample_rate_hz
                )
            strips.extend(assembler.add(staged.chunk, staged.key))
        strips.extend(assembler.flush())
        for strip in strips:
            measured_at = started.get(strip.first_sample, chunks[0].received_at_ms)
            checkin = await outbox.checkin_at(measured_at)
            await outbox.store_ecg_strip(
                NewReading(
                    device=device,
                    boot_id=boot_id,
                    link_seq=-strip.chunk_keys[0],
                    kind="ecg",
                    values=(),
                    measured_at_ms=measured_at,
                    time_quality=clock_quality,
                    received_mono_ms=time.monotonic_ns() // 1_000_000,
                    resident=checkin[0] if checkin else None,
                    operator=checkin[1] if checkin else None,
                    flags=("lead_off",) if strip.lead_off else (),
                    waveform=Waveform(
                        spec.sample_rate_hz, spec.resolution_uv, spec.leads, strip.first_sample, strip.leads
                    ),
                ),
                strip.chunk_keys,
            )
            stored += 1
    return stored
