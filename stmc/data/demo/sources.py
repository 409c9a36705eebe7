"""Raw material from the Debian packages, as mono float32 at 16 kHz.

Real speech: the Asterisk core prompts (16 kHz G.722, decoded with PyPI ``G722``), one speaker per
language, except that en and es are both Allison. Real noise: Asterisk music on hold (G.722) and the
Sonic Pi samples (CC0 FLAC, 44.1 kHz), split into tonal "music" sources and one-shot "sfx" sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import G722
import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from stmc.data.demo.packages import MOH, SONIC_PI, SOUNDS
from stmc.model.stft import SAMPLE_RATE

G722_BYTES_PER_SECOND = 8000  # 64 kbit/s; each byte decodes to two 16 kHz samples
# Decoding from the middle of a stream: the ADPCM state needs about 0.25 s to lock on; we discard 0.5 s.
_PREROLL_BYTES = G722_BYTES_PER_SECOND // 2
MIN_PROMPT_SECONDS = 0.5
# Sonic Pi sample families that are music (sustained, tonal); all other families are sound effects.
MUSIC_FAMILIES = ("ambi", "bass", "guit", "loop")


@dataclass(frozen=True)
class RealSpeaker:
    """One language of the Asterisk prompts: who speaks it, where the files are, which package."""

    language: str
    speaker: str
    folder: str
    package: str


REAL_SPEAKERS: dict[str, RealSpeaker] = {
    lang: RealSpeaker(lang, folder.split("_")[-1], str(SOUNDS / folder), f"asterisk-core-sounds-{lang}-g722")
    for lang, folder in (
        ("en", "en_US_f_Allison"),
        ("es", "es_MX_f_Allison"),
        ("fr", "fr_CA_f_June"),
        ("it", "it_IT_m_Carlo"),
        ("ru", "ru_RU_f_IvrvoiceRU"),
    )
}
# June (fr) is heard only in the real-speech test split; the others train (and validate, other prompts).
TEST_LANGUAGE = "fr"


def prompts(language: str) -> list[str]:
    """The language's prompt files of at least ``MIN_PROMPT_SECONDS`` (the silence/ folder excluded)."""
    folder = Path(REAL_SPEAKERS[language].folder)
    return [
        str(p)
        for p in sorted(folder.rglob("*.g722"))
        if p.parent.name != "silence" and p.stat().st_size >= MIN_PROMPT_SECONDS * G722_BYTES_PER_SECOND
    ]


def g722_seconds(path: str) -> float:
    return Path(path).stat().st_size / G722_BYTES_PER_SECOND


def decode_g722(path: str, start: float = 0.0, seconds: float | None = None) -> np.ndarray:
    """Decode ``seconds`` of a G.722 file from ``start`` seconds (whole file by default)."""
    data = Path(path).read_bytes()
    first = int(start * G722_BYTES_PER_SECOND)
    last = len(data) if seconds is None else min(len(data), first + int(seconds * G722_BYTES_PER_SECOND))
    preroll = min(first, _PREROLL_BYTES)
    pcm = G722.G722(SAMPLE_RATE, 64000).decode(data[first - preroll : last])
    return np.frombuffer(pcm, dtype=np.int16)[2 * preroll :].astype(np.float32) / 32768


def music_on_hold() -> list[str]:
    return [str(p) for p in sorted(MOH.glob("*.g722"))]


def sonic_pi(music: bool) -> list[str]:
    """Sonic Pi samples of the music families (``music=True``) or of the sound-effect families."""
    files = sorted(SONIC_PI.glob("*.flac"))
    return [str(p) for p in files if (p.name.split("_")[0] in MUSIC_FAMILIES) == music]


def read_resampled(path: str) -> np.ndarray:
    """Any soundfile-readable file as mono float32 at 16 kHz (polyphase resampling)."""
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = np.gcd(rate, SAMPLE_RATE)
        mono = resample_poly(mono, SAMPLE_RATE // g, rate // g)
    return mono.astype(np.float32)
