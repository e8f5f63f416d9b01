"""Gateway ECG ingest on a real SQLite outbox: chunks staged before their ack, strips stored,
staged chunks recovered into strips after a crash, strips signed into batches."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.wire import decode_batch
from firmware import kiosk_link as link
from gateway.ingest import LinkIngest, recover_staged_ecg
from gateway.keys import GatewayKeys, create_keys
from gateway.profiles import load_profiles
from gateway.store import Outbox
from gateway.transports.serial import SerialTransport

PROFILE = """
model = "KX-ECG-TEST"
vendor = "test"
name = "two-channel ECG front end"
transport = "uart"
protocol = "kiosk-link/1"
[kinds.ecg.waveform]
sample_rate_hz = 500
resolution_uv = 0.5
leads = ["MDC_ECG_LEAD_I", "MDC_ECG_LEAD_II"]
"""


@pytest.fixture
def profiles(tmp_path: Path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "ecg.toml").write_text(PROFILE)
    return load_profiles(tmp_path / "profiles")


@pytest.fixture
def keys(tmp_path: Path) -> GatewayKeys:
    create_keys(tmp_path / "gw")
    return GatewayKeys.load(tmp_path / "gw")


def chunk_frame(seq: int, first: int, count: int, lead_off: int = 0) -> bytes:
    samples = []
    for index in range(first, first + count):
        samples += [index * 3, -index]
    buf = bytearray(link.MAX_PAYLOAD)
    length = link.pack_ecg_chunk_into(buf, first, 2, count, lead_off, samples)
    return link.encode_frame(link.MSG_ECG_CHUNK, seq, bytes(buf[:length]))[:-1]


def hello_frame(seq: int = 1) -> bytes:
    return link.encode_frame(link.MSG_HELLO, seq, link.encode_hello(77, "ecg-01", "KX-ECG-TEST", "0.1.0"))[
        :-1
    ]


def reply_types(reply: bytes | None) -> list[tuple[int, int]]:
    frames = link.FrameSplitter().feed(reply or b"")
    return [link.decode_frame(f)[:2] for f in frames]


async def make_ingest(tmp_path: Path, keys: GatewayKeys, profiles) -> tuple[LinkIngest, Outbox]:
    outbox = await Outbox.open(tmp_path / "gw" / "gateway.db", "gw-ecg", keys)
    ingest = LinkIngest(
        transport=SerialTransport("/dev/null-test"),
        outbox=outbox,
        profiles=profiles,
        clock_quality="ntp",
        strip_seconds=0.2,  # 100 samples per strip
    )
    return ingest, outbox


async def test_chunks_become_strips_with_exact_samples(tmp_path: Path, keys: GatewayKeys, profiles) -> None:
    ingest, outbox = await make_ingest(tmp_path, keys, profiles)
    assert reply_types(await ingest.handle_frame(hello_frame()))[0] == (link.MSG_ACK, 1)
    for seq, first in ((2, 0), (3, 40), (4, 80)):
        assert reply_types(await ingest.handle_frame(chunk_frame(seq, first, 40))) == [(link.MSG_ACK, seq)]
    assert reply_types(await ingest.handle_frame(chunk_frame(3, 40, 40))) == [(link.MSG_ACK, 3)]  # resent
    [(strip, _)] = await outbox.recent_readings()
    assert strip.kind == "ecg"
    assert strip.waveform is not None
    assert strip.waveform.first_sample == 0
    assert strip.waveform.leads == ("MDC_ECG_LEAD_I", "MDC_ECG_LEAD_II")
    assert strip.waveform.samples == (tuple(i * 3 for i in range(120)), tuple(-i for i in range(120)))
    assert ingest.counters.duplicates == 1
    await outbox.form_batches(10)
    [batch] = await outbox.pending_batches(10)
    [decoded] = decode_batch(batch.message, keys.signing.public_key()).readings
    assert decoded.waveform == strip.waveform
    await outbox.close()


async def test_staged_chunks_survive_a_crash(tmp_path: Path, keys: GatewayKeys, profiles) -> None:
    ingest, outbox = await make_ingest(tmp_path, keys, profiles)
    await ingest.handle_frame(hello_frame())
    await ingest.handle_frame(chunk_frame(2, 0, 40))
    await ingest.handle_frame(chunk_frame(3, 40, 20))
    await outbox.close()  # the gateway dies with a half strip acked to the board

    outbox = await Outbox.open(tmp_path / "gw" / "gateway.db", "gw-ecg", keys)
    assert await recover_staged_ecg(outbox, profiles, "ntp") == 1
    [(strip, _)] = await outbox.recent_readings()
    assert strip.waveform is not None
    assert (strip.waveform.first_sample, strip.waveform.sample_count) == (0, 60)
    assert await outbox.staged_ecg_chunks() == []
    assert await recover_staged_ecg(outbox, profiles, "ntp") == 0
    await outbox.close()


async def test_ecg_from_a_model_without_waveform_is_rejected(tmp_path: Path, keys: GatewayKeys) -> None:
    profiles = load_profiles(Path(__file__).resolve().parents[2] / "device_profiles")
    ingest, outbox = await make_ingest(tmp_path, keys, profiles)
    hello = link.encode_frame(link.MSG_HELLO, 1, link.encode_hello(5, "bp-9", "KX-BP100", "0.1.0"))[:-1]
    await ingest.handle_frame(hello)
    reply = await ingest.handle_frame(chunk_frame(2, 0, 10))
    frames = link.FrameSplitter().feed(reply or b"")
    assert [link.decode_frame(f) for f in frames] == [(link.MSG_NAK, 2, bytes((link.NAK_REJECTED,)))]
    assert (await outbox.status()).rejections == 1
    await outbox.close()


async def test_port_closing_mid_strip_keeps_the_chunks_for_recovery(
    tmp_path: Path, keys: GatewayKeys, profiles
) -> None:
    ingest, outbox = await make_ingest(tmp_path, keys, profiles)
    await ingest.handle_frame(hello_frame())
    await ingest.handle_frame(chunk_frame(2, 0, 40))
    ingest.session = None  # the serial port vanished before the strip was full
    await ingest.flush_ecg()  # must not raise, must not drop the staged chunk
    assert [s.chunk.first_sample for s in await outbox.staged_ecg_chunks()] == [0]
    assert await recover_staged_ecg(outbox, profiles, "ntp") == 1
    await outbox.close()


async def test_hello_capabilities_must_match_the_profile(tmp_path: Path, keys: GatewayKeys, profiles) -> None:
    ingest, outbox = await make_ingest(tmp_path, keys, profiles)
    ecg_caps = link.capability_of_kind(link.KIND_ECG) | link.CAP_STATUS
    hello = link.encode_hello(77, "ecg-01", "KX-ECG-TEST", "0.1.0", ecg_caps)
    assert reply_types(await ingest.handle_frame(link.encode_frame(link.MSG_HELLO, 1, hello)[:-1]))[0] == (
        link.MSG_ACK,
        1,
    )
    assert ingest.session is not None and ingest.session.capabilities == ecg_caps

    wrong = link.encode_hello(77, "ecg-01", "KX-ECG-TEST", "9.9.9", link.capability_of_kind(link.KIND_BP))
    reply = await ingest.handle_frame(link.encode_frame(link.MSG_HELLO, 2, wrong)[:-1])
    frames = link.FrameSplitter().feed(reply or b"")
    assert [link.decode_frame(f) for f in frames] == [(link.MSG_NAK, 2, bytes((link.NAK_REJECTED,)))]
    assert ingest.session is None
    assert (await outbox.status()).rejections == 1
    await outbox.close()
