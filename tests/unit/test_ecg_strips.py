"""ECG strips: chunks join into strips; gaps and lead-off changes split them; nothing is dropped."""

from __future__ import annotations

from decimal import Decimal

import pytest

from contract.wire import ContractError, Waveform
from gateway.ecg import EcgChunk, StripAssembler


def chunk(first: int, count: int, *, lead_off: int = 0) -> EcgChunk:
    # Two channels interleaved: channel 0 carries the sample index, channel 1 its negative.
    samples = []
    for index in range(first, first + count):
        samples += [index, -index]
    return EcgChunk(first, 2, lead_off, tuple(samples))


def test_contiguous_chunks_fill_a_strip() -> None:
    assembler = StripAssembler(channels=2, strip_samples=100)
    assert assembler.add(chunk(0, 40), 1) == []
    assert assembler.add(chunk(40, 40), 2) == []
    [strip] = assembler.add(chunk(80, 40), 3)
    assert strip.first_sample == 0
    assert strip.leads == (tuple(range(120)), tuple(-i for i in range(120)))
    assert strip.chunk_keys == (1, 2, 3)
    assert assembler.next_sample is None


def test_gap_ends_the_strip_and_stays_visible() -> None:
    assembler = StripAssembler(channels=2, strip_samples=1000)
    assembler.add(chunk(0, 40), 1)
    [before_gap] = assembler.add(chunk(50, 40), 2)  # samples 40..49 never arrived
    assert (before_gap.first_sample, before_gap.sample_count) == (0, 40)
    [after_gap] = assembler.flush()
    assert (after_gap.first_sample, after_gap.sample_count, after_gap.chunk_keys) == (50, 40, (2,))


def test_lead_off_change_splits_and_flags() -> None:
    assembler = StripAssembler(channels=2, strip_samples=1000)
    assembler.add(chunk(0, 40), 1)
    [clean] = assembler.add(chunk(40, 40, lead_off=1), 2)
    [flagged] = assembler.flush()
    assert (clean.lead_off, flagged.lead_off) == (False, True)


def test_wrong_channel_count_is_refused() -> None:
    with pytest.raises(ValueError, match="3 channels"):
        StripAssembler(channels=2, strip_samples=10).add(EcgChunk(0, 3, 0, (1, 2, 3)), 1)


def test_waveform_delta_encoding_vector() -> None:
    # deltas 0, 5, -2, 8388604, -16777215 as little-endian int32
    wave = Waveform(500, Decimal("0.1"), ("MDC_ECG_LEAD_I",), 7, ((0, 5, 3, 8388607, -8388608),))
    raw = wave.to_cbor()
    assert raw[4] == [bytes.fromhex("0000000005000000fefffffffcff7f00010000ff")]
    assert Waveform.from_cbor(raw) == wave


def test_waveform_leads_must_match() -> None:
    with pytest.raises(ContractError, match="2 leads"):
        Waveform(500, Decimal("0.1"), ("I", "II"), 0, ((1, 2),))
