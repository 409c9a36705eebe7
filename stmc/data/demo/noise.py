"""Noise of each type the demo corpus uses, generated at 16 kHz from a random generator and a source pool.

Types: ``pink`` and ``brown`` (coloured Gaussian noise, spectrum flat below 30 Hz so that the energy is
not in the inaudible infrasound), ``hum`` (mains hum with harmonics and a little hiss), ``clicks``
(impulsive bursts), ``babble`` (several held-out synthetic talkers), ``music`` (music on hold and Sonic Pi
tonal samples), ``sfx`` (Sonic Pi one-shots at random times) and, for training only, ``mixed`` (two of
the others). Every generator returns ``n`` float32 samples at an arbitrary level (mixing sets the SNR).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stmc.data.demo.sources import decode_g722, g722_seconds, read_resampled
from stmc.data.demo.tts import Persona
from stmc.data.mixing import rms
from stmc.model.stft import SAMPLE_RATE

EVAL_TYPES = ("pink", "brown", "hum", "clicks", "babble", "music", "sfx")
TRAIN_TYPES = (*EVAL_TYPES, "mixed")
FLAT_BELOW_HZ = 30.0
_FADE = int(0.01 * SAMPLE_RATE)


@dataclass(frozen=True)
class NoisePool:
    """The real noise sources and babble talkers one split may use (disjoint between splits)."""

    music_on_hold: tuple[str, ...]
    music: tuple[str, ...]
    sfx: tuple[str, ...]
    talkers: tuple[Persona, ...]
    sentences: tuple[str, ...]


def coloured(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f**exponent above 30 Hz, flat below, no DC."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), FLAT_BELOW_HZ)
    spectrum *= freqs ** (-exponent / 2)
    spectrum[0] = 0
    return np.fft.irfft(spectrum, n).astype(np.float32)


def hum(rng: np.random.Generator, n: int) -> np.ndarray:
    """50 or 60 Hz mains hum: drifting fundamental, decaying random harmonics, hiss 30 dB down."""
    t = np.arange(n) / SAMPLE_RATE
    f0 = float(rng.choice([50.0, 60.0])) * (1 + 0.003 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    decay, odd_boost = rng.uniform(0.4, 1.5), rng.uniform(1.0, 4.0)
    out = np.zeros(n)
    for k in range(1, int(rng.integers(8, 60)) + 1):
        if k * f0.mean() >= SAMPLE_RATE / 2 - 200:
            break
        amplitude = k ** (-decay) * (odd_boost if k % 2 else 1.0) * rng.uniform(0.3, 1.0)
        out += amplitude * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    hiss = coloured(rng, n, rng.uniform(0.0, 1.0))
    return (out / rms(out) + 10 ** (-30 / 20) * hiss / rms(hiss)).astype(np.float32)


def clicks(rng: np.random.Generator, n: int) -> np.ndarray:
    """Impulsive noise: bursts at Poisson times, 0.1-3 ms decays, 30 dB range of amplitudes."""
    out = np.zeros(n)
    count = max(1, rng.poisson(rng.uniform(3, 30) * n / SAMPLE_RATE))
    for start in rng.integers(0, n, count):
        size = max(1, int(rng.uniform(0.1, 3.0) * 1e-3 * SAMPLE_RATE))
        burst = rng.standard_normal(size * 4) * np.exp(-np.arange(size * 4) / size)
        burst *= 10 ** (rng.uniform(-30, 0) / 20) * rng.choice([-1, 1])
        stop = min(n, start + burst.size)
        out[start:stop] += burst[: stop - start]
    if rng.random() < 0.5:  # smooth some of them, as a microphone or a cable would
        out = np.convolve(out, np.ones(int(rng.integers(2, 6))), mode="same")
    return _with_floor(rng, out)


def babble(rng: np.random.Generator, n: int, pool: NoisePool) -> np.ndarray:
    """3-7 talkers of the pool, each reading sentences continuously, at levels within 6 dB."""
    out = np.zeros(n)
    for talker in rng.choice(len(pool.talkers), size=min(len(pool.talkers), int(rng.integers(3, 8))), replace=False):
        stream = _talk(rng, pool.talkers[talker], pool.sentences, n)
        stream /= rms(stream) + 1e-9
        out += 10 ** (rng.uniform(-6, 0) / 20) * stream
    return out.astype(np.float32)


def music(rng: np.random.Generator, n: int, pool: NoisePool) -> np.ndarray:
    """Pieces of music on hold and tonal Sonic Pi samples, one after the other, with short fades."""
    pieces, have = [], 0
    while have < n:
        if pool.music_on_hold and (not pool.music or rng.random() < 0.6):
            path = pool.music_on_hold[int(rng.integers(len(pool.music_on_hold)))]
            seconds = min(rng.uniform(3, 12), (n - have) / SAMPLE_RATE + 0.1)
            start = rng.uniform(0, max(0.0, g722_seconds(path) - seconds))
            piece = decode_g722(path, start, seconds)
        else:
            piece = np.tile(read_resampled(pool.music[int(rng.integers(len(pool.music)))]), int(rng.integers(1, 4)))
        piece = _faded(piece * 10 ** (rng.uniform(-4, 4) / 20))
        pieces.append(piece)
        have += piece.size
    return np.concatenate(pieces)[:n].astype(np.float32)


def sfx(rng: np.random.Generator, n: int, pool: NoisePool) -> np.ndarray:
    """Sonic Pi one-shots (drums, percussion, electronic, vinyl...) at Poisson times, 18 dB level range."""
    out = np.zeros(n)
    count = max(1, rng.poisson(rng.uniform(0.8, 3.0) * n / SAMPLE_RATE))
    for start in np.sort(rng.integers(0, n, count)):
        shot = read_resampled(pool.sfx[int(rng.integers(len(pool.sfx)))]) * 10 ** (rng.uniform(-18, 0) / 20)
        stop = min(n, start + shot.size)
        out[start:stop] += shot[: stop - start]
    return _with_floor(rng, out)


def generate(kind: str, rng: np.random.Generator, n: int, pool: NoisePool) -> tuple[np.ndarray, str]:
    """``n`` samples of noise type ``kind``; also returns a short description for the manifest."""
    makers: dict[str, Callable[[], np.ndarray]] = {
        "pink": lambda: coloured(rng, n, rng.uniform(0.8, 1.2)),
        "brown": lambda: coloured(rng, n, rng.uniform(1.7, 2.2)),
        "hum": lambda: hum(rng, n),
        "clicks": lambda: clicks(rng, n),
        "babble": lambda: babble(rng, n, pool),
        "music": lambda: music(rng, n, pool),
        "sfx": lambda: sfx(rng, n, pool),
    }
    if kind != "mixed":
        return makers[kind](), kind
    first, second = rng.choice(EVAL_TYPES, size=2, replace=False)
    a, b = makers[str(first)](), makers[str(second)]()
    b *= rms(a) / (rms(b) + 1e-9) * 10 ** (rng.uniform(-10, 10) / 20)
    return (a + b).astype(np.float32), f"mixed:{first}+{second}"


def _talk(rng: np.random.Generator, talker: Persona, sentences: tuple[str, ...], n: int) -> np.ndarray:
    """A talker reading random sentences until ``n`` samples, starting at a random point."""
    parts, have = [], 0
    while have < n + SAMPLE_RATE:
        text = " ".join(rng.choice(sentences, size=3))
        parts.append(talker.say(text))
        have += parts[-1].size
    stream = np.concatenate(parts)
    start = int(rng.integers(0, stream.size - n + 1))
    return stream[start : start + n].astype(np.float64)


def _with_floor(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Add a faint coloured background (25-35 dB below ``x``): real event noise never sits on digital zero."""
    floor = coloured(rng, x.size, rng.uniform(0.0, 2.0))
    return (x + rms(x) / rms(floor) * 10 ** (-rng.uniform(25, 35) / 20) * floor).astype(np.float32)


def _faded(x: np.ndarray) -> np.ndarray:
    fade = min(_FADE, x.size // 2)
    ramp = np.linspace(0, 1, fade, dtype=np.float32)
    x = x.astype(np.float32).copy()
    x[:fade] *= ramp
    x[x.size - fade :] *= ramp[::-1]
    return x
