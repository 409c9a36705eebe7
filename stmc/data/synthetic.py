"""A small corpus in the demo layout, generated in seconds from seeded noise: for the tests, and for checks on
machines that have no demo corpus (``scripts/gpu_check.py``). Its "speech" is amplitude-modulated noise, so a
model trained on it learns nothing about speech; it exercises every code path of training and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16_000


def speechlike(seconds: float, seed: int, rate: int = SR) -> np.ndarray:
    """Amplitude-modulated noise: bursts and pauses like speech, never silent."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
    return (0.1 * envelope * rng.standard_normal(t.size)).astype(np.float32)


def write(path: Path, x: np.ndarray, rate: int = SR) -> Path:
    """``x`` as a 16-bit WAV file at ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, rate, subtype="PCM_16")
    return path


def demo_like_tree(root: Path, train_files: int = 6, seconds: float = 1.5) -> None:
    """The demo corpus layout (train clean + noise, val/test noisy + clean pairs) with a manifest of noise types."""
    files = {}
    for i in range(train_files):
        write(root / "train/clean" / f"spk{i % 3}-{i}.wav", speechlike(seconds, i))
        write(root / "train/noise" / f"n{i}.wav", speechlike(1.0, 50 + i))
        files[f"train/noise/n{i}.wav"] = {"noise_type": "pink" if i % 2 else "hum"}
    for split in ("val_real", "val_tts", "test_real", "test_tts"):
        for i in range(3):
            clean = speechlike(0.5 + 0.25 * i, 200 + i)
            noisy = clean + speechlike(0.5 + 0.25 * i, 300 + i)
            write(root / split / "clean" / f"{split}_{i}.wav", clean)
            write(root / split / "noisy" / f"{split}_{i}.wav", noisy)
            files[f"{split}/noisy/{split}_{i}.wav"] = {"noise_type": ["babble", "music", "sfx"][i]}
    (root / "manifest.json").write_text(json.dumps({"files": files}))
