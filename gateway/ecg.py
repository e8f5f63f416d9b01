"""Join ECG chunks from the link into strips: one Reading of kind "ecg" per strip.

Pure: chunks in, strips out. A strip ends when it is full (10 s by default), when the sample
index jumps (samples lost on the board: the gap stays visible as a new strip's first_sample,
never papered over), or when the lead-off state changes (a strip is either clean or flagged).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class EcgChunk:
    first_sample: int
    channels: int
    lead_off: int
    samples: tuple[int, ...]  # interleaved by sample, as on the link

    @property
    def count(self) -> int:
        return len(self.samples) // self.channels


@dataclass(frozen=True, slots=True)
class Strip:
    first_sample: int
    lead_off: bool
    leads: tuple[tuple[int, ...], ...]  # one series per channel
    chunk_keys: tuple[int, ...]  # staging keys of the chunks it was built from

    @property
    def sample_count(self) -> int:
        return len(self.leads[0])


@dataclass
class StripAssembler:
    channels: int
    strip_samples: int
    _first: int | None = None
    _lead_off: bool = False
    _series: list[list[int]] = field(default_factory=list)
    _keys: list[int] = field(default_factory=list)

    @property
    def next_sample(self) -> int | None:
        return None if self._first is None else self._first + len(self._series[0])

    def add(self, chunk: EcgChunk, key: int) -> list[Strip]:
        """Take one chunk; return the strips it completed (usually none)."""
        if chunk.channels != self.channels:
            raise ValueError(f"chunk has {chunk.channels} channels, the device has {self.channels}")
        done: list[Strip] = []
        lead_off = bool(chunk.lead_off)
        if self._first is not None and (chunk.first_sample != self.next_sample or lead_off != self._lead_off):
            done.extend(self.flush())
        if self._first is None:
            self._first = chunk.first_sample
            self._lead_off = lead_off
            self._series = [[] for _ in range(self.channels)]
        for channel in range(self.channels):
            self._series[channel].extend(chunk.samples[channel :: self.channels])
        self._keys.append(key)
        if len(self._series[0]) >= self.strip_samples:
            done.extend(self.flush())
        return done

    def flush(self) -> list[Strip]:
        """End the current strip now (stream stopped, service stopping)."""
        if self._first is None or not self._series[0]:
            self._first = None
            return []
        strip = Strip(self._first, self._lead_off, tuple(tuple(s) for s in self._series), tuple(self._keys))
        self._first = None
        self._series = []
        self._keys = []
        return [strip]
