"""The gateway outbox on a real SQLite file: sequences, dedupe, chained batches, acks, privacy."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from decimal import Decimal
from pathlib import Path

import pytest

from contract.wire import GENESIS_HASH, DeviceRef, Measurement, ResidentRef, Waveform, decode_batch
from gateway import store
from gateway.errors import StorageFullError
from gateway.keys import GatewayKeys, create_keys
from gateway.store import SCHEMA, NewReading, Outbox, PruneResult, stored_link_seqs_sql

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
    first, second = await outbox.pending_batches(10)
    assert (first.id, second.id) == (1, 2)
    assert await outbox.mark_acked(first.hash) == 2
    status = await outbox.status()
    assert (status.batched, status.synced, status.pending_batches, status.last_synced_seq) == (2, 2, 1, 2)
    assert [b.first_seq for b in await outbox.pending_batches(10)] == [3]
    assert await outbox.mark_acked(first.hash) == 0  # a repeated ack changes nothing
    assert await outbox.mark_acked(GENESIS_HASH) is None  # "nothing stored yet": not ours
    assert await outbox.mark_acked(second.hash) == 2


async def test_the_head_of_the_chain_vouches_for_every_batch_before_it(outbox: Outbox) -> None:
    for link_seq in range(1, 7):
        await outbox.add_reading(new_reading(link_seq))
    await outbox.form_batches(max_readings=2)
    batches = await outbox.pending_batches(10)
    assert await outbox.mark_acked(batches[1].hash) == 4  # the ack of batch 1 was lost
    assert [b.id for b in await outbox.pending_batches(10)] == [3]


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
    batches = await outbox.pending_batches(10)
    await outbox.mark_acked(batches[1].hash)  # 1..4 synced; 5..7 are not
    later = time.time_ns() // 1_000_000 + 1
    result = await outbox.prune_synced(before_ms=later)
    # The batch 1-2 goes; 3-4 is the newest acked batch and stays (its hash chains the next one).
    assert (result.readings, result.batches) == (2, 1)
    status = await outbox.status()
    assert (status.synced, status.batched, status.last_synced_seq) == (2, 3, 4)
    assert await outbox.prune_synced(before_ms=0) == PruneResult(0, 0, 0)  # nothing that recent
    await outbox.mark_acked(batches[3].hash)
    await outbox.prune_synced(before_ms=time.time_ns() // 1_000_000 + 1)
    await outbox.add_reading(new_reading(8))
    await outbox.form_batches(max_readings=10)
    [batch] = await outbox.pending_batches(10)
    previous = decode_batch(batch.message, keys.signing.public_key()).prev_hash
    assert previous != GENESIS_HASH and batch.first_seq == 8  # the chain and the numbering go on
    status = await outbox.status()
    assert (status.stored, status.batched, status.synced, status.last_synced_seq) == (0, 1, 1, 7)


def flagged(link_seq: int) -> NewReading:
    return dataclasses.replace(new_reading(link_seq, systolic=182), flags=("alert:hypertensive_crisis",))


def plain(link_seq: int) -> NewReading:
    return dataclasses.replace(new_reading(link_seq), flags=())


def ecg(link_seq: int) -> NewReading:
    strip = Waveform(500, Decimal("0.5"), ("I", "II"), 0, (tuple(range(500)), tuple(range(500))))
    return dataclasses.replace(new_reading(link_seq), kind="ecg", values=(), flags=(), waveform=strip)


async def test_flagged_readings_go_first_then_vitals_then_ecg(outbox: Outbox, keys: GatewayKeys) -> None:
    # Taken in this order: ecg 1, vitals 2-3, ecg 4, vitals 5, a crisis 6, vitals 7.
    for new in (ecg(1), plain(2), plain(3), ecg(4), plain(5), flagged(6), plain(7)):
        await outbox.add_reading(new)
    sent = []
    for classes in ((0, 1), (2, 2)):  # as the sync engine asks: waveforms only once nothing else waits
        while (batch := await outbox.form_batch(3, priorities=classes)) is not None:
            sent.append([r.seq for r in decode_batch(batch.message, keys.signing.public_key()).readings])
    # Each batch is in sequence order; across batches, urgency decides.
    assert sent == [[2, 3, 6], [5, 7], [1, 4]]


async def test_a_batch_says_how_many_readings_still_wait(outbox: Outbox, keys: GatewayKeys) -> None:
    for link_seq in range(1, 6):
        await outbox.add_reading(plain(link_seq))
    batch = await outbox.form_batch(2)
    assert batch is not None and batch.readings == 2
    decoded = decode_batch(batch.message, keys.signing.public_key())
    assert (decoded.number, decoded.waiting) == (1, 3)


async def test_the_byte_cap_limits_a_batch_but_one_reading_always_goes(outbox: Outbox) -> None:
    for link_seq in (1, 2):
        await outbox.add_reading(ecg(link_seq))
    first = await outbox.form_batch(100, max_bytes=100)  # one strip is ~4 KB raw
    assert first is not None and first.readings == 1


async def test_a_refused_batch_leaves_the_readings_and_the_chain_as_they_were(
    outbox: Outbox, keys: GatewayKeys
) -> None:
    await outbox.add_reading(ecg(1))
    seen: list[int] = []
    assert await outbox.form_batch(10, accept=lambda message: seen.append(len(message)) is not None) is None
    assert seen and (await outbox.status()).stored == 1
    assert (await outbox.status()).waveforms_waiting == 1
    batch = await outbox.form_batch(10, accept=lambda message: True)
    assert batch is not None
    decoded = decode_batch(batch.message, keys.signing.public_key())
    assert (decoded.number, decoded.prev_hash) == (1, GENESIS_HASH)  # the refused one left no trace


async def test_only_the_asked_priority_classes_are_batched(outbox: Outbox) -> None:
    await outbox.add_reading(ecg(1))
    assert await outbox.form_batch(10, priorities=(0, 1)) is None
    assert await outbox.form_batch(10, priorities=(2, 2)) is not None


async def test_link_usage_adds_up_per_day_and_survives_reopen(tmp_path: Path, keys: GatewayKeys) -> None:
    path = tmp_path / "gw" / "gateway.db"
    box = await Outbox.open(path, "gw-1", keys)
    assert await box.add_link_usage("2026-11-25", 1000) == 1000
    assert await box.add_link_usage("2026-11-25", 234) == 1234
    assert await box.add_link_usage("2026-11-26", 5) == 5
    await box.close()
    box = await Outbox.open(path, "gw-1", keys)
    assert await box.link_usage("2026-11-25") == 1234 and await box.link_usage("2026-11-27") == 0
    await box.close()


# The outbox of the previous release, as it left its files: the counts kept by per-row triggers,
# an index on (state, seq) and one on batch_id for every reading, no reading count per batch.
PREVIOUS_RELEASE = """
DROP INDEX readings_in_batch;
CREATE INDEX readings_state ON readings (state, seq);
CREATE INDEX readings_batch ON readings (batch_id);
ALTER TABLE batches DROP COLUMN readings;
CREATE TRIGGER reading_counts_insert AFTER INSERT ON readings BEGIN
    INSERT INTO reading_counts (state, priority, n) VALUES (NEW.state, NEW.priority, 1)
        ON CONFLICT (state, priority) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER reading_counts_delete AFTER DELETE ON readings BEGIN
    UPDATE reading_counts SET n = n - 1 WHERE state = OLD.state AND priority = OLD.priority;
END;
CREATE TRIGGER reading_counts_update AFTER UPDATE OF state, priority ON readings
WHEN OLD.state IS NOT NEW.state OR OLD.priority IS NOT NEW.priority BEGIN
    UPDATE reading_counts SET n = n - 1 WHERE state = OLD.state AND priority = OLD.priority;
    INSERT INTO reading_counts (state, priority, n) VALUES (NEW.state, NEW.priority, 1)
        ON CONFLICT (state, priority) DO UPDATE SET n = n + 1;
END;
"""

# And the release before it: no priorities, no kept counts.
RELEASE_BEFORE_COUNTS = """
DROP TRIGGER reading_counts_insert;
DROP TRIGGER reading_counts_delete;
DROP TRIGGER reading_counts_update;
DROP TABLE reading_counts;
DROP INDEX readings_queue;
ALTER TABLE readings DROP COLUMN priority;
"""


def downgrade(path: Path, *releases: str) -> None:
    with sqlite3.connect(path) as conn:
        for release in releases:
            conn.executescript(release)


def schema_names(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}


async def test_an_outbox_of_the_release_before_the_counts_is_upgraded_in_place(
    tmp_path: Path, keys: GatewayKeys
) -> None:
    path = tmp_path / "gw" / "gateway.db"
    box = await Outbox.open(path, "gw-1", keys)
    await box.add_reading(plain(1))
    await box.add_reading(ecg(2))
    await box.close()
    downgrade(path, PREVIOUS_RELEASE, RELEASE_BEFORE_COUNTS)
    box = await Outbox.open(path, "gw-1", keys)
    try:
        assert (await box.status()).waveforms_waiting == 1
        batch = await box.form_batch(10, priorities=(0, 1))
        assert batch is not None and (batch.first_seq, batch.last_seq) == (1, 1)
    finally:
        await box.close()


async def test_an_outbox_of_the_previous_release_is_upgraded_in_place(
    tmp_path: Path, keys: GatewayKeys
) -> None:
    """Its triggers and unneeded indexes go, its batches get their reading counts, its counts are
    counted afresh (they are then kept without triggers), and nothing else changes."""
    path = tmp_path / "gw" / "gateway.db"
    box = await Outbox.open(path, "gw-1", keys)
    await box.add_readings([plain(n) for n in range(1, 8)])
    await box.form_batch(3)
    await box.close()
    downgrade(path, PREVIOUS_RELEASE)
    with sqlite3.connect(path) as conn:  # the previous release at work: its triggers count
        conn.execute("UPDATE readings SET priority = 0 WHERE seq = 7")
    box = await Outbox.open(path, "gw-1", keys)
    try:
        names = schema_names(path)
        assert not {"readings_state", "readings_batch"} & names and "readings_in_batch" in names
        assert not {name for name in names if name.startswith("reading_counts_")}  # no trigger left
        assert (
            counted_kept(path)
            == counted_directly(path)
            == {("batched", 1): 3, ("stored", 1): 3, ("stored", 0): 1}
        )
        [old] = await box.pending_batches(10)
        assert (old.id, old.readings) == (1, 3)  # counted once, at the upgrade
        await box.form_batches(10)
        assert [b.readings for b in await box.pending_batches(10)] == [3, 4]
        assert counted_kept(path) == counted_directly(path)
    finally:
        await box.close()
    box = await Outbox.open(path, "gw-1", keys)  # a second open changes nothing
    try:
        assert [b.readings for b in await box.pending_batches(10)] == [3, 4]
        assert counted_kept(path) == counted_directly(path)
    finally:
        await box.close()


async def test_the_previous_release_run_again_after_an_upgrade_is_recounted(
    tmp_path: Path, keys: GatewayKeys
) -> None:
    """Rolled back to the previous release (which puts its triggers back and keeps counting),
    then upgraded again: the counts are taken afresh, not trusted."""
    path = tmp_path / "gw" / "gateway.db"
    box = await Outbox.open(path, "gw-1", keys)
    await box.add_readings([plain(n) for n in range(1, 6)])
    await box.close()
    downgrade(path, PREVIOUS_RELEASE)
    with sqlite3.connect(path) as conn:  # its counts drifted (say, a crash mid-way in a tool)
        conn.execute("UPDATE reading_counts SET n = 99")
    box = await Outbox.open(path, "gw-1", keys)
    try:
        assert counted_kept(path) == counted_directly(path) == {("stored", 1): 5}
    finally:
        await box.close()


async def test_many_readings_in_one_call_get_consecutive_sequences_and_duplicates_none(
    outbox: Outbox, keys: GatewayKeys
) -> None:
    assert await outbox.add_reading(new_reading(3)) == 1  # already stored before the bulk call
    news = [new_reading(n) for n in (1, 2, 3, 4, 4, 5)]  # 3 stored; 4 twice in the same call
    assert await outbox.add_readings(news) == [2, 3, None, 4, None, 5]
    assert await outbox.add_readings(news) == [None] * 6  # a resend of the whole download
    await outbox.form_batches(100)
    [batch] = await outbox.pending_batches(10)
    readings = decode_batch(batch.message, keys.signing.public_key()).readings
    assert [(r.seq, r.received_mono_ms) for r in readings] == [
        (1, 1003),
        (2, 1001),
        (3, 1002),
        (4, 1004),
        (5, 1005),
    ]


async def test_a_bulk_call_on_an_empty_outbox_of_only_duplicates_stores_nothing(outbox: Outbox) -> None:
    news = [new_reading(7)] * 5
    assert await outbox.add_readings(news) == [1, None, None, None, None]
    assert (await outbox.status()).stored == 1


def test_the_duplicate_look_up_of_many_readings_searches_the_index(tmp_path: Path) -> None:
    """add_readings looks up which link messages are stored already; on a full table scan each
    call grew slower with the backlog (a million rows after a week offline)."""
    with sqlite3.connect(tmp_path / "plan.db") as conn:
        conn.executescript(SCHEMA)
        plan = conn.execute("EXPLAIN QUERY PLAN " + stored_link_seqs_sql(3), ("bp-1", 7, 1, 2, 3)).fetchall()
    details = " ".join(str(row[-1]) for row in plan)
    assert "SEARCH readings USING COVERING INDEX" in details and "SCAN readings" not in details, details


def counted_directly(path: Path) -> dict[tuple[str, int], int]:
    with sqlite3.connect(path) as conn:
        return {
            (s, p): n
            for s, p, n in conn.execute("SELECT state, priority, COUNT(*) FROM readings GROUP BY 1, 2")
        }


def counted_kept(path: Path) -> dict[tuple[str, int], int]:
    with sqlite3.connect(path) as conn:
        return {(s, p): n for s, p, n in conn.execute("SELECT state, priority, n FROM reading_counts") if n}


async def test_the_kept_counts_follow_every_change_of_the_readings(tmp_path: Path, keys: GatewayKeys) -> None:
    """The counts the sync engine and the screen read (kept per statement, not counted each
    time) equal a fresh COUNT(*) after every path that adds, moves or removes readings; an
    outbox made before them is counted when it is opened."""
    path = tmp_path / "gw" / "gateway.db"
    box = await Outbox.open(path, "gw-1", keys)

    def check() -> None:
        assert counted_kept(path) == counted_directly(path)

    try:
        await box.add_readings([new_reading(seq) for seq in range(1, 41)])  # the bulk path
        check()
        await box.add_readings([new_reading(40), new_reading(41), ecg(42)])  # one by one, a duplicate
        check()
        await box.add_readings([plain(n) for n in (43, 44, 44, 45, 1)] + [ecg(46)])  # bulk, duplicates
        check()
        await box.store_ecg_strip(ecg(47), ())
        check()
        first = await box.form_batch(15)
        await box.form_batch(15, priorities=(1, 1))
        assert await box.form_batch(2, priorities=(2, 2), accept=lambda message: False) is None
        check()
        strips = await box.form_batch(2, priorities=(2, 2))
        check()
        assert first is not None and strips is not None
        await box.mark_acked(first.hash)
        check()
        status = await box.status()
        assert (status.stored, status.batched, status.synced) == (27, 5, 15)
        assert status.waveforms_waiting == 1
        assert await box.correct_unsynced_time(0, 0, after_seq=0) == (0, 47)  # no state changes
        check()
        await box.mark_acked(strips.hash)
        await box.prune_synced(before_ms=2**62)
        check()
        await box.form_batches(100)
        check()
    finally:
        await box.close()
    with sqlite3.connect(path) as conn:  # as an older release left it: no counts
        conn.execute("DROP TABLE reading_counts")
        conn.execute("UPDATE readings SET state = 'stored', batch_id = NULL WHERE state = 'batched'")
    box = await Outbox.open(path, "gw-1", keys)
    try:
        check()
        stored = sum(n for (state, _), n in counted_directly(path).items() if state == "stored")
        assert (await box.status()).stored == stored > 0
    finally:
        await box.close()


async def test_a_batch_marks_exactly_its_readings_when_urgency_skips_sequences(
    outbox: Outbox, tmp_path: Path
) -> None:
    """A batch of readings from all over the backlog (the flagged ones first) is marked by
    runs of consecutive sequences: every one of its readings, and no other."""
    for new in (plain(1), flagged(2), flagged(3), plain(4), ecg(5), flagged(6), plain(7)):
        await outbox.add_reading(new)
    batch = await outbox.form_batch(4)
    assert batch is not None and batch.readings == 4
    with sqlite3.connect(tmp_path / "gw" / "gateway.db") as conn:
        states = dict(conn.execute("SELECT seq, COALESCE(batch_id, 0) FROM readings"))
    assert states == {1: 1, 2: 1, 3: 1, 4: 0, 5: 0, 6: 1, 7: 0}


async def test_a_sequence_is_never_handed_out_twice_even_after_its_reading_is_pruned(
    outbox: Outbox, keys: GatewayKeys
) -> None:
    """The flagged reading 5 goes in batch 1, readings 1-4 in batch 2; once both are acked,
    pruning keeps only the newest batch (2), so the newest reading left is 4. The next readings
    are numbered after 5, by the bulk path as by the single one."""
    for new in (plain(1), plain(2), plain(3), plain(4), flagged(5)):
        await outbox.add_reading(new)
    await outbox.form_batch(1)
    second = await outbox.form_batch(10)
    assert second is not None and (second.first_seq, second.last_seq) == (1, 4)
    await outbox.mark_acked(second.hash)
    assert await outbox.prune_synced(before_ms=2**62) == PruneResult(1, 1, 0)
    assert await outbox.add_readings([plain(n) for n in range(6, 10)]) == [6, 7, 8, 9]
    assert await outbox.add_reading(plain(10)) == 10


async def test_duplicates_take_no_sequence_on_either_path(outbox: Outbox) -> None:
    assert await outbox.add_readings([plain(n) for n in range(1, 6)]) == [1, 2, 3, 4, 5]
    assert await outbox.add_readings([plain(5), plain(6)]) == [None, 6]  # one by one
    assert await outbox.add_readings([plain(n) for n in (2, 7, 3, 8, 8)]) == [None, 7, None, 8, None]
    assert await outbox.add_reading(plain(9)) == 9


def test_every_query_on_readings_searches_an_index(tmp_path: Path) -> None:
    """The queries of ingest, batching, acks, pruning and time correction each find their rows
    through an index (a full scan costs a second at a week's backlog, a million rows)."""
    queries = {
        "queued": (store._QUEUED, (0, 1, 500)),
        "last seq": (store._LAST_SEQ, ()),
        "insert if new": (store._INSERT_READING_IF_NEW, tuple(range(20))),
        "mark batched": (store._MARK_BATCHED, (1, 1, 2)),
        "count acked": (f"SELECT priority, COUNT(*) FROM readings WHERE {store._IN_ACKED_BATCHES}", (3,)),
        "acked": (f"UPDATE readings SET state = 'synced' WHERE {store._IN_ACKED_BATCHES}", (3,)),
        "pruned": (f"DELETE FROM readings WHERE {store._IN_PRUNABLE_BATCHES}", (1, 2)),
        "corrected": (store._CORRECT_TIMES, (1, 2, 3, "boot")),
    }
    with sqlite3.connect(tmp_path / "plan.db") as conn:
        conn.executescript(SCHEMA)
        plans = {
            name: " ".join(str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
            for name, (sql, params) in queries.items()
        }
    for name, plan in plans.items():
        assert "SEARCH readings" in plan and "SCAN readings" not in plan, (name, plan)
    assert "readings_queue" in plans["queued"] and "readings_queue" in plans["corrected"]
    assert "readings_in_batch" in plans["acked"] and "readings_in_batch" in plans["pruned"]


async def test_a_bulk_call_on_a_full_disk_stores_none_of_it_and_leaves_no_gap(
    tmp_path: Path, keys: GatewayKeys
) -> None:
    """A multi-row insert that hits a full disk (SQLITE_FULL) takes the whole call back: none of
    its readings, no sequence, no count; the board resends and they are numbered on from there."""
    path = tmp_path / "gw" / "gateway.db"
    box = await Outbox.open(path, "gw-1", keys)
    try:
        assert await box.add_readings([plain(n) for n in range(1, 11)]) == list(range(1, 11))
        [(pages,)] = await box._db.execute_fetchall("PRAGMA page_count")
        await box._db.execute(f"PRAGMA max_page_count = {pages}")  # a full card: the file cannot grow
        with pytest.raises(StorageFullError, match="outbox cannot store more"):
            await box.add_readings([plain(n) for n in range(11, 2011)])
        assert counted_kept(path) == counted_directly(path) == {("stored", 1): 10}
        await box._db.execute("PRAGMA max_page_count = 1073741823")  # space returns
        assert await box.add_readings([plain(n) for n in range(11, 2011)]) == list(range(11, 2011))
        assert counted_kept(path) == counted_directly(path) == {("stored", 1): 2010}
    finally:
        await box.close()
