"""The gateway outbox on a real SQLite file: sequences, dedupe, chained batches, acks, privacy."""

from __future__ import annotations

import sqlite3
import time
from decimal import Decimal
from pathlib import Path

import pytest

from contract.wire import GENESIS_HASH, DeviceRef, Measurement, ResidentRef, decode_batch
from gateway.keys import GatewayKeys, create_keys
from gateway.store import NewReading, Outbox, PruneResult

RESIDENT = ResidentRef("id-card", "330781199001011234")


@pytest.fixture
def keys(tmp_path: Path) -> GatewayKeys:
    create_keys(tmp_path / "gw")
    return GatewayKeys.load(tmp_path / "gw")


@pytest.fixture
async def outbox(tmp_path: Path, keys: GatewayKeys):
    box = await Outbox.open(tmp_path / "gw" / "gateway.db", "gw-1", keys)
    yield box
    await box.close()


def new_reading(link_seq: int, *, boot_id: int = 7, systolic: int = 120) -> NewReading:
    return NewReading(
        device=DeviceRef("bp-0001", "KX-BP100", "0.1.0"),
        boot_id=boot_id,
        link_seq=link_seq,
        kind="bp",
        values=(
            Measurement("systolic", Decimal(systolic), "mm[Hg]"),
            Measurement("diastolic", Decimal(80), "mm[Hg]"),
        ),
        measured_at_ms=1795564800000,
        time_quality="ntp",
        received_mono_ms=1000 + link_seq,
        resident=RESIDENT,
        operator="doctor-wang",
        flags=("irregular_pulse",),
    )


async def test_sequences_increase_and_link_duplicates_are_ignored(outbox: Outbox) -> None:
    assert await outbox.add_reading(new_reading(1)) == 1
    assert await outbox.add_reading(new_reading(2)) == 2
    assert await outbox.add_reading(new_reading(2)) is None  # retransmitted frame: stored once
    assert await outbox.add_reading(new_reading(2, boot_id=8)) == 3  # same link seq after a reboot
    status = await outbox.status()
    assert (status.stored, status.batched, status.synced) == (3, 0, 0)


async def test_batches_chain_and_carry_exact_readings(outbox: Outbox, keys: GatewayKeys) -> None:
    for link_seq in range(1, 6):
        await outbox.add_reading(new_reading(link_seq, systolic=110 + link_seq))
    assert await outbox.form_batches(max_readings=2) == 3
    batches = await outbox.pending_batches(limit=10)
    assert [(b.first_seq, b.last_seq) for b in batches] == [(1, 2), (3, 4), (5, 5)]
    public = keys.signing.public_key()
    decoded = [decode_batch(b.message, public) for b in batches]
    assert decoded[0].prev_hash == GENESIS_HASH
    assert [d.prev_hash for d in decoded[1:]] == [d.hash for d in decoded[:-1]]
    first = decoded[0].readings[0]
    assert (first.gateway_id, first.seq, first.resident, first.operator) == (
        "gw-1",
        1,
        RESIDENT,
        "doctor-wang",
    )
    assert first.values == (
        Measurement("systolic", Decimal(111), "mm[Hg]"),
        Measurement("diastolic", Decimal(80), "mm[Hg]"),
    )
    assert first.flags == ("irregular_pulse",)


async def test_chain_continues_across_reopen(tmp_path: Path, keys: GatewayKeys) -> None:
    path = tmp_path / "gw" / "gateway.db"
    box = await Outbox.open(path, "gw-1", keys)
    await box.add_reading(new_reading(1))
    await box.form_batches(100)
    [first] = await box.pending_batches(10)
    await box.close()
    box = await Outbox.open(path, "gw-1", keys)
    await box.add_reading(new_reading(2))
    await box.form_batches(100)
    second = (await box.pending_batches(10))[1]
    await box.close()
    public = keys.signing.public_key()
    assert decode_batch(second.message, public).prev_hash == first.hash
    assert second.first_seq == 2


async def test_ack_marks_only_what_it_names(outbox: Outbox) -> None:
    for link_seq in range(1, 5):
        await outbox.add_reading(new_reading(link_seq))
    await outbox.form_batches(max_readings=2)
    assert await outbox.mark_synced(2) == 2
    status = await outbox.status()
    assert (status.batched, status.synced, status.pending_batches, status.last_synced_seq) == (2, 2, 1, 2)
    assert [b.first_seq for b in await outbox.pending_batches(10)] == [3]
    assert await outbox.mark_synced(2) == 0  # a repeated ack changes nothing


async def test_resident_never_stored_in_clear(outbox: Outbox, tmp_path: Path) -> None:
    await outbox.add_reading(new_reading(1))
    await outbox.form_batches(10)
    raw = b""
    for file in (tmp_path / "gw").glob("gateway.db*"):
        raw += file.read_bytes()
    assert RESIDENT.value.encode() not in raw
    with sqlite3.connect(tmp_path / "gw" / "gateway.db") as conn:
        [(sealed,)] = conn.execute("SELECT resident_sealed FROM readings").fetchall()
    assert len(sealed) > len(RESIDENT.value)


def test_keys_are_private_and_not_overwritten(tmp_path: Path) -> None:
    create_keys(tmp_path / "k")
    for name in ("gateway-signing.pem", "storage.key"):
        assert (tmp_path / "k" / name).stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        create_keys(tmp_path / "k")


async def test_pruning_removes_only_what_the_bridge_acked_long_enough_ago(
    outbox: Outbox, keys: GatewayKeys
) -> None:
    for link_seq in range(1, 8):
        await outbox.add_reading(new_reading(link_seq))
    await outbox.form_batches(max_readings=2)  # batches 1-2, 3-4, 5-6, 7
    await outbox.mark_synced(4)  # 1..4 synced; 5..7 are not
    later = time.time_ns() // 1_000_000 + 1
    result = await outbox.prune_synced(before_ms=later)
    # The batch 1-2 goes; 3-4 is the newest acked batch and stays (its hash chains the next one).
    assert (result.readings, result.batches) == (2, 1)
    status = await outbox.status()
    assert (status.synced, status.batched, status.last_synced_seq) == (2, 3, 4)
    assert await outbox.prune_synced(before_ms=0) == PruneResult(0, 0, 0)  # nothing that recent
    await outbox.mark_synced(7)
    await outbox.prune_synced(before_ms=time.time_ns() // 1_000_000 + 1)
    await outbox.add_reading(new_reading(8))
    await outbox.form_batches(max_readings=10)
    [batch] = await outbox.pending_batches(10)
    previous = decode_batch(batch.message, keys.signing.public_key()).prev_hash
    assert previous != GENESIS_HASH and batch.first_seq == 8  # the chain and the numbering go on
    status = await outbox.status()
    assert (status.stored, status.batched, status.synced, status.last_synced_seq) == (0, 1, 1, 7)
