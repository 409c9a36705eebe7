"""Audio files as mono float32 at 16 kHz: probing (for the index) and reading (for the datasets).

Everything downstream works at ``stmc.model.stft.SAMPLE_RATE``. Files are read with ``soundfile``; other rates
are resampled with ``torchaudio.functional.resample`` and multichannel files are averaged to mono. Lengths
and offsets are always counted in samples at 16 kHz, whatever the file's own rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from stmc.model.stft import SAMPLE_RATE

# A file whose peak is below this is "silent": nothing to learn from, and it breaks SNR-based mixing.
SILENCE_PEAK_DB = -60.0
# Samples read beyond a crop on each side so that resampling has filter context.
_RESAMPLE_MARGIN = 64
_PROBE_BLOCK = 1 << 20


@dataclass(frozen=True)
class AudioInfo:
    """What the index keeps about one file: native frame count, rate and channel count."""

    frames: int
    samplerate: int
    channels: int

    @property
    def length(self) -> int:
        """Number of samples at 16 kHz (what ``torchaudio`` resampling of the whole file returns)."""
        return math.ceil(self.frames * SAMPLE_RATE / self.samplerate)


def probe(path: str) -> tuple[AudioInfo | None, str | None]:
    """Return ``(info, None)`` for a usable file, or ``(info_or_None, reason)`` for a bad one.

    Bad means unreadable, empty, containing non-finite samples, or silent (peak below
    ``SILENCE_PEAK_DB``). The whole file is read, in blocks, so that no problem surfaces mid-training.
    """
    try:
        meta = sf.info(path)
        info = AudioInfo(frames=int(meta.frames), samplerate=int(meta.samplerate), channels=int(meta.channels))
        if info.frames <= 0:
            return info, "empty"
        peak = 0.0
        for block in sf.blocks(path, blocksize=_PROBE_BLOCK, dtype="float32", always_2d=True):
            if not np.isfinite(block).all():
                return info, "non-finite samples"
            peak = max(peak, float(np.abs(block).max(initial=0.0)))
    except (RuntimeError, sf.LibsndfileError, OSError, ValueError) as err:
        return None, f"unreadable ({type(err).__name__}: {err})"
    if peak < 10 ** (SILENCE_PEAK_DB / 20):
        return info, f"silent (peak {20 * math.log10(max(peak, 1e-12)):.0f} dBFS)"
    return info, None


def read(path: str, info: AudioInfo, start: int = 0, length: int | None = None) -> np.ndarray:
    """Samples ``[start, start + length)`` (16 kHz indices) of a file as mono float32 at 16 kHz.

    ``length=None`` reads to the end. Reads past the end are not padded: the result may be shorter.
    """
    total = info.length
    stop = total if length is None else min(total, start + length)
    if stop <= start:
        return np.zeros(0, dtype=np.float32)
    if info.samplerate == SAMPLE_RATE:
        data, _ = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)
        return _mono(data)
    # Start on a sample where both rates' grids meet, so the crop is not shifted by a fraction.
    common = math.gcd(info.samplerate, SAMPLE_RATE)
    step_native, step_out = info.samplerate // common, SAMPLE_RATE // common
    block = max(0, start - _RESAMPLE_MARGIN) // step_out
    native_start, offset = block * step_native, block * step_out
    native_stop = min(info.frames, math.ceil(stop * info.samplerate / SAMPLE_RATE) + _RESAMPLE_MARGIN)
    data, _ = sf.read(path, start=native_start, stop=native_stop, dtype="float32", always_2d=True)
    resampled = AF.resample(torch.from_numpy(_mono(data)), info.samplerate, SAMPLE_RATE).numpy()
    return np.ascontiguousarray(resampled[start - offset : stop - offset], dtype=np.float32)


def _mono(data: np.ndarray) -> np.ndarray:
    """``[frames, channels]`` -> ``[frames]`` by averaging channels."""
    if data.shape[1] == 1:
        return np.ascontiguousarray(data[:, 0])
    return data.mean(axis=1, dtype=np.float32)
