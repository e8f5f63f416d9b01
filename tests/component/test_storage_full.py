"""A gateway whose disk runs full: clear refusal, waveforms first, no corruption, and it resumes.

Two kinds of "full" on real SQLite files: the file system running low (the guard's free-space
probe, set by the test) and SQLite itself refusing to grow (`PRAGMA max_page_count`, as a full
SD card would). And the gateway's answer on the link: NAK busy, so the board keeps the reading.
"""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from contract.wire import DeviceRef, Measurement
from firmware import kiosk_link as link
from gateway.ecg import EcgChunk
from gateway.errors import StorageFullError
from gateway.ingest import LinkIngest
from gateway.keys import GatewayKeys, create_keys
from gateway.profiles import load_profiles
from gateway.store import MB, NewReading, Outbox, StorageGuard
from gateway.transports.base import Transport

DEVICE = DeviceRef("bp-0001", "KX-BP100", "0.1.0")
PROFILES = Path(__file__).resolve().parents[2] / "device_profiles"


def reading(link_seq: int) -> NewReading:
    return NewReading(
        device=DEVICE,
        boot_id=1,
        link_seq=link_seq,
        kind="bp",
        values=(
            Measurement("systolic", Decimal(120 + link_seq % 50), "mm[Hg]"),
            Measurement("diastolic", Decimal(80), "mm[Hg]"),
        ),
        measured_at_ms=1795564800000 + link_seq,
        time_quality="ntp",
        received_mono_ms=link_seq,
        resident=None,
        operator=None,
        flags=(),
    )


def chunk(first: int) -> EcgChunk:
    return EcgChunk(first_sample=first, channels=2, lead_off=0, samples=tuple(range(80)))


class Disk:
    """The free space the guard sees, set by the test."""

    def __init__(self, free_mb: float) -> None:
        self.free_mb = free_mb

    def __call__(self) -> int:
        return int(self.free_mb * MB)


@pytest.fixture
def keys(tmp_path: Path) -> GatewayKeys:
    create_keys(tmp_path / "gw")
    return GatewayKeys.load(tmp_path / "gw")


async def test_waveforms_are_refused_first_then_readings_and_both_resume(
    tmp_path: Path, keys: GatewayKeys
) -> None:
    disk = Disk(500)
    guard = StorageGuard(tmp_path, min_free_waveforms_mb=200, min_free_readings_mb=50, free_bytes=disk)
    outbox = await Outbox.open(tmp_path / "gw" / "gateway.db", "gw-1", keys, guard)
    try:
        assert await outbox.add_reading(reading(1)) == 1
        assert await outbox.stage_ecg_chunk(DEVICE, 1, 1, 0, chunk(0)) is not None
        disk.free_mb = 120  # nearly full: ECG is refused, readings are still taken
        with pytest.raises(
            StorageFullError, match=r"storage nearly full \(120 MB free\): ECG recording refused"
        ):
            await outbox.stage_ecg_chunk(DEVICE, 1, 2, 0, chunk(40))
        assert await outbox.add_reading(reading(2)) == 2
        assert guard.state == "waveforms_refused"
        disk.free_mb = 20  # full: readings wait on the devices
        with pytest.raises(
            StorageFullError, match=r"storage full \(20 MB free\): new readings wait on the devices"
        ):
            await outbox.add_reading(reading(3))
        assert guard.state == "readings_refused"
        disk.free_mb = 500  # retention or a technician freed space
        assert await outbox.add_reading(reading(3)) == 3  # the board's resend is stored, in order
        assert await outbox.stage_ecg_chunk(DEVICE, 1, 2, 0, chunk(40)) is not None
        assert guard.state == "ok"
        assert (await outbox.status()).stored == 3
    finally:
        await outbox.close()


async def test_sqlite_that_cannot_grow_refuses_cleanly_and_loses_nothing(
    tmp_path: Path, keys: GatewayKeys
) -> None:
    path = tmp_path / "gw" / "gateway.db"
    outbox = await Outbox.open(path, "gw-1", keys)
    stored = 0
    try:
        await outbox._db.execute("PRAGMA max_page_count = 40")  # a full card: the file cannot grow
        with pytest.raises(StorageFullError, match="outbox cannot store more"):
            for link_seq in range(1, 5000):
                await outbox.add_reading(reading(link_seq))
                stored = link_seq
        assert stored > 10
        await outbox._db.execute("PRAGMA max_page_count = 1073741823")  # space returns
        assert await outbox.add_reading(reading(stored + 1)) == stored + 1  # no gap in the numbering
    finally:
        await outbox.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT COUNT(*), MIN(seq), MAX(seq) FROM readings").fetchone() == (
            stored + 1,
            1,
            stored + 1,
        )


def frames(answer: bytes | None) -> list[tuple[int, int, bytes]]:
    assert answer is not None
    return [link.decode_frame(encoded) for encoded in link.FrameSplitter().feed(answer)]


class _Silent(Transport):
    name = "test"

    async def open(self) -> None: ...
    async def read(self) -> bytes:
        raise AssertionError("not used")

    async def write(self, data: bytes) -> None: ...
    async def close(self) -> None: ...


async def test_a_full_gateway_answers_busy_so_the_board_keeps_its_reading(
    tmp_path: Path, keys: GatewayKeys
) -> None:
    disk = Disk(10)
    guard = StorageGuard(tmp_path, free_bytes=disk)
    outbox = await Outbox.open(tmp_path / "gw" / "gateway.db", "gw-1", keys, guard)
    try:
        ingest = LinkIngest(
            transport=_Silent(), outbox=outbox, profiles=load_profiles(PROFILES), clock_quality="ntp"
        )
        hello = link.encode_hello(7, "bp-0001", "KX-BP100", "0.1.0", link.capability_of_kind(link.KIND_BP))
        await ingest.handle_frame(link.encode_frame(link.MSG_HELLO, 1, hello)[:-1])
        payload = link.encode_reading(
            link.KIND_BP, 0, 0, ((link.FIELD_SYSTOLIC, 128, 0), (link.FIELD_DIASTOLIC, 82, 0))
        )
        frame = link.encode_frame(link.MSG_READING, 2, payload)[:-1]
        (nak,) = frames(await ingest.handle_frame(frame))
        assert (nak[0], link.decode_nak(nak[2])) == (link.MSG_NAK, link.NAK_BUSY)
        disk.free_mb = 500
        answer = frames(await ingest.handle_frame(frame))  # the board's resend
        assert answer[0][:2] == (link.MSG_ACK, 2)
        assert (await outbox.status()).stored == 1
    finally:
        await outbox.close()
