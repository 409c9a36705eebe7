"""Datasets: clean + noise mixed on the fly, and paired noisy/clean files; plus batching.

Two modes each:
- training (``segment`` given): item ``k`` is a random ``segment``-sample crop drawn from a generator
  seeded by ``(seed, k)``. ``EpochSampler`` hands out keys ``epoch * len + i``, so every epoch is new,
  every run with the same seed is identical, and the result does not depend on the number of workers.
  Files shorter than the segment are followed by further random files until it is full, so training
  items always have exactly ``segment`` samples.
- evaluation (``segment=None``): item ``i`` is one whole utterance, ordered by length (less padding),
  with its ``name``, ``split``, ``noise_type`` and input ``snr``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from stmc.data.audio import read
from stmc.data.index import Entry
from stmc.data.mixing import mix, rms, snr_db
from stmc.errors import InputError

# Crops quieter than these are redrawn: a silent clean crop has no SNR, a silent noise crop no noise.
_MIN_SPEECH_RMS = 10 ** (-60 / 20)
_MIN_NOISE_RMS = 10 ** (-80 / 20)
_TRIES = 10
UNKNOWN = "unknown"

Item = dict[str, object]


class EpochSampler(Sampler[int]):
    """Yields ``epoch * size + i`` for ``i < size``; the epoch advances on each pass.

    ``position``, when given, is asked at the start of each pass for ``(epoch, items already trained on in that
    epoch)``, or None: the trainer's own progress, so that a run resumed mid-epoch continues with the very items
    an uninterrupted run would have drawn. Lightning's ``set_epoch`` sets the epoch otherwise; without either the
    epoch simply counts passes.
    """

    def __init__(self, size: int, position: Callable[[], tuple[int, int] | None] | None = None) -> None:
        self.size = size
        self.epoch = 0
        self.position = position

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        where = self.position() if self.position is not None else None
        if where is not None:
            self.epoch, done = where
        else:
            done = 0
        base = self.epoch * self.size
        self.epoch += 1
        return iter(range(base + min(done, self.size), base + self.size))


class _Picker:
    """Draws items at random with probability proportional to their length (uniform over audio)."""

    def __init__(self, items: Sequence, length: Callable[[object], int]) -> None:
        if not items:
            raise InputError("nothing to draw from")
        self.items = list(items)
        self.cdf = np.cumsum([length(item) for item in self.items], dtype=np.float64)
        self.cdf /= self.cdf[-1]

    def __call__(self, rng: np.random.Generator):
        return self.items[min(int(np.searchsorted(self.cdf, rng.random(), side="right")), len(self.items) - 1)]


def _fill(
    rng: np.random.Generator,
    pick: _Picker,
    n: int,
    load: Callable[[object, int, int], list],
    length: Callable[[object], int],
    min_rms: float,
) -> tuple[list[np.ndarray], object]:
    """Random crop(s) totalling ``n`` samples; returns the per-channel arrays and the first item used.

    ``load(item, start, count)`` returns a list of arrays (one per channel: e.g. clean and noisy).
    The first channel's RMS must reach ``min_rms``, else the draw is repeated (up to ``_TRIES`` times).
    """
    for _ in range(_TRIES):
        parts: list[list[np.ndarray]] = []
        have, first = 0, None
        while have < n:
            item = pick(rng)
            first = item if first is None else first
            need = n - have
            start = int(rng.integers(0, length(item) - need + 1)) if length(item) > need else 0
            arrays = load(item, start, need)
            parts.append(arrays)
            have += len(arrays[0])
        channels = [np.concatenate(chan)[:n] for chan in zip(*parts, strict=True)]
        if rms(channels[0]) >= min_rms:
            break
    return channels, first


def _read_entry(entry: Entry, start: int, count: int) -> list[np.ndarray]:
    return [read(entry.path, entry.info, start, count)]


def _read_pair(pair: tuple[Entry, Entry], start: int, count: int) -> list[np.ndarray]:
    clean, noisy = pair
    return [read(clean.path, clean.info, start, count), read(noisy.path, noisy.info, start, count)]


def epoch_size(lengths: Sequence[int], segment: int | None, items: int | None) -> int:
    """Items per epoch: every file once in evaluation (``segment`` None); in training ``items`` crops, or by
    default as many crops of ``segment`` samples as the files hold."""
    if segment is None:
        return len(lengths)
    return items if items is not None else max(1, -(-sum(lengths) // segment))


def _item(noisy: np.ndarray, clean: np.ndarray, **meta: object) -> Item:
    return {"noisy": torch.from_numpy(noisy), "clean": torch.from_numpy(clean), "length": int(noisy.shape[0]), **meta}


class MixingDataset(Dataset):
    """Clean speech + noise files, mixed on the fly at an SNR and level drawn per item (DNS recipe)."""

    def __init__(
        self,
        clean: Sequence[Entry],
        noise: Sequence[Entry],
        *,
        split: str,
        seed: int,
        snr_range: Sequence[float],
        level_range_db: Sequence[float],
        segment: int | None = None,
        items: int | None = None,
        noise_types: Mapping[str, str] | None = None,
    ) -> None:
        if not clean or not noise:
            raise InputError(
                f"{split}: mixing needs clean and noise files ({len(clean)} clean, {len(noise)} noise usable)"
            )
        self.split, self.seed, self.segment = split, seed, segment
        self.snr_range, self.level_range = tuple(snr_range), tuple(level_range_db)
        self.noise_types = dict(noise_types or {})
        self.clean = sorted(clean, key=lambda e: (e.length, e.rel))
        self.pick_clean = _Picker(self.clean, lambda e: e.length)
        self.pick_noise = _Picker(noise, lambda e: e.length)
        self.size = epoch_size([e.length for e in self.clean], segment, items)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: int) -> Item:
        if self.segment is not None:
            rng = np.random.default_rng([self.seed, 0, key])
            (clean,), _ = _fill(rng, self.pick_clean, self.segment, _read_entry, lambda e: e.length, _MIN_SPEECH_RMS)
            noisy, clean = self._mix(rng, clean)[:2]
            return _item(noisy, clean)
        rng = np.random.default_rng([self.seed, 1, key])
        entry = self.clean[key]
        clean = read(entry.path, entry.info)
        noisy, clean, snr, noise_entry = self._mix(rng, clean)  # type of the first noise file used
        return _item(
            noisy,
            clean,
            name=entry.stem,
            split=self.split,
            noise_type=self.noise_types.get(noise_entry.rel, UNKNOWN),
            snr=snr,
        )

    def _mix(self, rng: np.random.Generator, clean: np.ndarray):
        (noise,), noise_entry = _fill(rng, self.pick_noise, len(clean), _read_entry, lambda e: e.length, _MIN_NOISE_RMS)
        snr = float(rng.uniform(*self.snr_range))
        noisy, clean = mix(clean, noise, snr, float(rng.uniform(*self.level_range)))
        return noisy, clean, snr, noise_entry


class PairedDataset(Dataset):
    """Noisy/clean file pairs (already mixed), cropped together in training, whole in evaluation."""

    def __init__(
        self,
        pairs: Sequence[tuple[Entry, Entry]],
        *,
        split: str,
        seed: int,
        segment: int | None = None,
        items: int | None = None,
        noise_types: Mapping[str, str] | None = None,
    ) -> None:
        if not pairs:
            raise InputError(f"{split}: no usable noisy/clean pairs")
        self.split, self.seed, self.segment = split, seed, segment
        self.noise_types = dict(noise_types or {})
        self.pairs = sorted(pairs, key=lambda p: (p[0].length, p[1].rel))
        self.pick = _Picker(self.pairs, lambda p: p[0].length)
        self.size = epoch_size([p[0].length for p in self.pairs], segment, items)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: int) -> Item:
        if self.segment is not None:
            rng = np.random.default_rng([self.seed, 0, key])
            (clean, noisy), _ = _fill(rng, self.pick, self.segment, _read_pair, lambda p: p[0].length, _MIN_SPEECH_RMS)
            return _item(noisy, clean)
        clean_entry, noisy_entry = self.pairs[key]
        clean = read(clean_entry.path, clean_entry.info)
        noisy = read(noisy_entry.path, noisy_entry.info)
        return _item(
            noisy,
            clean,
            name=noisy_entry.stem,
            split=self.split,
            noise_type=self.noise_types.get(noisy_entry.rel, UNKNOWN),
            snr=snr_db(clean, noisy - clean),
        )


class RecordingsDataset(Dataset):
    """Noisy recordings without a clean reference, for evaluation only: whole files, ordered by length; items
    carry no ``clean`` (metrics that need one are skipped for them)."""

    def __init__(self, entries: Sequence[Entry], *, split: str, noise_types: Mapping[str, str] | None = None) -> None:
        if not entries:
            raise InputError(f"{split}: no usable recordings")
        self.split = split
        self.noise_types = dict(noise_types or {})
        self.entries = sorted(entries, key=lambda e: (e.length, e.rel))

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: int) -> Item:
        entry = self.entries[key]
        noisy = read(entry.path, entry.info)
        return {
            "noisy": torch.from_numpy(noisy),
            "length": int(noisy.shape[0]),
            "name": entry.stem,
            "split": self.split,
            "noise_type": self.noise_types.get(entry.rel, UNKNOWN),
        }


def collate(items: Sequence[Item]) -> dict[str, object]:
    """Stack items into a batch, zero-padding to the longest; ``length`` holds the valid samples."""
    lengths = torch.tensor([item["length"] for item in items], dtype=torch.int64)
    width = int(lengths.max())
    batch: dict[str, object] = {"length": lengths}
    for key in ("noisy", "clean"):
        out = torch.zeros(len(items), width, dtype=torch.float32)
        for row, item in enumerate(items):
            out[row, : item["length"]] = item[key]
        batch[key] = out
    for key in ("name", "split", "noise_type", "snr"):
        if key in items[0]:
            batch[key] = [item[key] for item in items]
    return batch
