"""The ``chunk`` setting of ``evaluate.py`` and ``stream_infer.py``, parsed in one place: how many samples a
stream receives per call.

A bare number counts **frames** (hops of 256 samples, 16 ms at 16 kHz), in both entry points; suffixes give
other units: ``4frames`` / ``4hops``, ``1000samples``, ``20ms``, ``0.5s``. Frames and samples are whole numbers;
durations are rounded to the nearest sample. Any length of at least one sample is allowed: the streams take
chunks of any size, not only multiples of the hop.
"""

from __future__ import annotations

import re

from stmc.errors import ConfigError
from stmc.model.stft import HOP, SAMPLE_RATE

FORMS = "frames (4 or 4frames, 16 ms each), samples (1000samples) or a duration (20ms, 0.5s)"
_UNITS = {
    "": "frames",
    "frame": "frames",
    "frames": "frames",
    "hop": "frames",
    "hops": "frames",
    "sample": "samples",
    "samples": "samples",
    "ms": "ms",
    "s": "s",
}


def parse_chunk(value: int | float | str, key: str = "chunk") -> int:
    """``value`` as a number of samples; :class:`ConfigError` (one line naming ``key`` and the unit) otherwise."""
    text = str(value).strip().lower().replace(" ", "")
    match = re.fullmatch(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))([a-z]*)", text)
    if match is None or match.group(2) not in _UNITS:
        raise ConfigError(f"{key}={value!r} is not a chunk size; give {FORMS}")
    number, unit = float(match.group(1)), _UNITS[match.group(2)]
    if number <= 0:
        raise ConfigError(f"{key}={value!r}: a chunk must be longer than zero; give {FORMS}")
    if unit in ("frames", "samples") and not number.is_integer():
        what = f"{number:g} {unit}" + (f" (a bare number counts frames of {HOP} samples)" if not match.group(2) else "")
        raise ConfigError(
            f"{key}={value!r}: {what} is not a whole number of {unit}; give e.g. "
            f"{round(number * (HOP if unit == 'frames' else 1))}samples or a duration in ms"
        )
    samples = {"frames": number * HOP, "samples": number, "ms": number * SAMPLE_RATE / 1000, "s": number * SAMPLE_RATE}[
        unit
    ]
    if round(samples) < 1:
        raise ConfigError(f"{key}={value!r} is shorter than one sample at {SAMPLE_RATE} Hz; give {FORMS}")
    return round(samples)
