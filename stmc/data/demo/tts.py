"""Synthetic speakers: espeak-ng variants and flite voices, each with its own pitch and speaking rate.

A *speaker* is the unit the splits are disjoint on: an espeak-ng variant (its formant set: voice quality
and sex) or a flite voice. A *persona* is a speaker with an accent, a pitch and a rate; one speaker can
have several personas, always within one split.
"""

from __future__ import annotations

import io
import subprocess
from dataclasses import dataclass

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from stmc.model.stft import SAMPLE_RATE

# English accents of espeak-ng (the gmw voices; the mbrola ones need extra packages).
ENGLISH_ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
# Non-English voices for babble: they read the English sentences with their own phonology.
BABBLE_LANGUAGES = ("de", "fr", "es", "it", "nl", "pl", "pt", "sv", "cs", "ro", "hu", "fi", "da", "tr")
# espeak-ng variants that sound like a person (robots, whispers and effects left out).
ESPEAK_VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "m8",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "adam",
    "Alex",
    "Alicia",
    "Andrea",
    "Andy",
    "Annie",
    "antonio",
    "aunty",
    "belinda",
    "benjamin",
    "boris",
    "caleb",
    "david",
    "Denis",
    "Diogo",
    "ed",
    "edward",
    "Gene",
    "grandma",
    "grandpa",
    "gustave",
    "Henrique",
    "Hugo",
    "iven",
    "Jacky",
    "john",
    "Lee",
    "linda",
    "marcelo",
    "Marco",
    "Mario",
    "max",
    "Michael",
    "michel",
    "miguel",
    "Mike",
    "norbert",
    "pablo",
    "paul",
    "pedro",
    "quincy",
    "rob",
    "robert",
    "sandro",
    "shelby",
    "steph",
    "travis",
    "victor",
    "zac",
)
# flite speakers and their voices (kal and kal16 are one man at 8 and 16 kHz); female voices listed.
FLITE_SPEAKERS = {"awb": ("awb",), "kal": ("kal", "kal16"), "rms": ("rms",), "slt": ("slt",)}
FLITE_FEMALE = ("slt",)


@dataclass(frozen=True)
class Persona:
    """How one synthetic talker speaks: engine, speaker, voice, pitch and rate."""

    engine: str  # "espeak" or "flite"
    speaker: str  # the split unit: espeak variant or flite speaker
    voice: str  # espeak language/accent, or flite voice
    pitch: float  # espeak pitch 0..99, or flite mean F0 in Hz
    rate: float  # espeak words per minute, or flite duration stretch

    @property
    def name(self) -> str:
        return f"{self.engine}-{self.speaker}-{self.voice}-p{self.pitch:.0f}-r{self.rate:.2f}"

    def command(self, text: str) -> list[str]:
        if self.engine == "espeak":
            return [
                "espeak-ng",
                "-v",
                f"{self.voice}+{self.speaker}",
                "-p",
                f"{self.pitch:.0f}",
                "-s",
                f"{self.rate:.0f}",
                "--stdout",
                text,
            ]
        return [
            "flite",
            "-voice",
            self.voice,
            "--setf",
            f"int_f0_target_mean={self.pitch:.0f}",
            "--setf",
            f"duration_stretch={self.rate:.3f}",
            "-t",
            text,
            "-o",
            "/dev/stdout",
        ]

    def say(self, text: str) -> np.ndarray:
        """Synthesize ``text``: mono float32 at 16 kHz."""
        wav = subprocess.run(self.command(text), capture_output=True, check=True, timeout=120).stdout
        data, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
        mono = data.mean(axis=1)
        if rate != SAMPLE_RATE:
            g = np.gcd(rate, SAMPLE_RATE)
            mono = resample_poly(mono, SAMPLE_RATE // g, rate // g)
        return mono.astype(np.float32)


def espeak_persona(rng: np.random.Generator, variant: str, languages: tuple[str, ...]) -> Persona:
    """A random accent, pitch (25..75) and rate (135..190 wpm) for an espeak-ng variant."""
    return Persona(
        "espeak", variant, str(rng.choice(languages)), float(rng.uniform(25, 75)), float(rng.uniform(135, 190))
    )


def flite_persona(rng: np.random.Generator, speaker: str) -> Persona:
    """A random voice of the speaker, mean F0 around its natural range, and duration stretch."""
    f0 = rng.uniform(150, 210) if speaker in FLITE_FEMALE else rng.uniform(85, 130)
    return Persona("flite", speaker, str(rng.choice(FLITE_SPEAKERS[speaker])), float(f0), float(rng.uniform(0.85, 1.2)))
