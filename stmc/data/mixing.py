"""Mixing speech with noise at a chosen SNR and level (the DNS Challenge recipe).

SNR is the energy ratio of speech to noise over the mixed segment. The mixture is then scaled to a target
RMS level (the random gain), with the clean reference scaled by the same factor, and both are scaled down
together if the mixture would clip. Common scaling leaves the SNR exactly as drawn.
"""

from __future__ import annotations

import numpy as np

from stmc.errors import InputError

# Mixtures (and references) are kept below this peak so that 16-bit storage never clips.
PEAK_LIMIT = 0.99
_EPS = 1e-12


def rms(x: np.ndarray) -> float:
    """Root-mean-square of a 1-D signal (0 for an empty one)."""
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def snr_db(clean: np.ndarray, noise: np.ndarray) -> float:
    """Energy ratio of ``clean`` to ``noise`` in dB."""
    return float(
        10
        * np.log10(
            (np.sum(np.square(clean, dtype=np.float64)) + _EPS) / (np.sum(np.square(noise, dtype=np.float64)) + _EPS)
        )
    )


def mix(clean: np.ndarray, noise: np.ndarray, snr: float, level_db: float) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(noisy, clean)``: ``noise`` added to ``clean`` at ``snr`` dB, mixture at ``level_db`` dBFS RMS.

    ``clean`` and ``noise`` have the same length and non-zero energy. Both outputs are float32, scaled
    by the same factor, with peaks at most ``PEAK_LIMIT``.
    """
    if clean.shape != noise.shape:
        raise InputError(f"mix: clean {clean.shape} and noise {noise.shape} differ in shape")
    clean = clean.astype(np.float64)
    noise = noise.astype(np.float64) * (rms(clean) / (rms(noise) + _EPS) * 10 ** (-snr / 20))
    noisy = clean + noise
    gain = 10 ** (level_db / 20) / (rms(noisy) + _EPS)
    peak = max(np.abs(noisy).max(), np.abs(clean).max()) * gain
    if peak > PEAK_LIMIT:
        gain *= PEAK_LIMIT / peak
    return (noisy * gain).astype(np.float32), (clean * gain).astype(np.float32)
