"""DNSMOS: the DNS Challenge's non-intrusive quality predictor (P.835 SIG, BAK, OVRL and P.808 MOS, 1–5), which
needs no clean reference, so it scores real recordings too.

The ONNX models are those the ``speechmos`` wheel ships (nothing is downloaded), run with onnxruntime on one
thread; the mel front end of the P.808 model is librosa's, rebuilt here on torch so that librosa is not needed.
Scoring follows the reference implementation (``speechmos.dnsmos``, the DNS Challenge's ``dnsmos_local.py``):
9.01 s windows every second, a recording shorter than one window repeated until it fills it, the window scores
mapped by the published polynomials and averaged.
"""

from __future__ import annotations

import functools
import math
from importlib import resources
from typing import Any

import numpy as np
import torch

from stmc.model.stft import SAMPLE_RATE

SECONDS = 9.01  # scored window
WINDOW = int(SECONDS * SAMPLE_RATE)  # its samples
HOP = SAMPLE_RATE  # one window per second
KEYS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808")
# P.835 raw outputs -> MOS (the reference's non-personalized polynomials, highest power first)
POLYNOMIALS = {
    "dnsmos_sig": (-0.08397278, 1.22083953, 0.0052439),
    "dnsmos_bak": (-0.13166888, 1.60915514, -0.39604546),
    "dnsmos_ovrl": (-0.06766283, 1.11546468, 0.04602535),
}
MEL_FFT, MEL_HOP, MELS = 321, 160, 120  # the P.808 model's front end (librosa.feature.melspectrogram)


@functools.cache
def _sessions() -> tuple[Any, Any]:
    """The P.835 and P.808 onnxruntime sessions (one per process)."""
    import onnxruntime as ort

    models = resources.files("speechmos") / "dnsmos_models"  # its presence is checked with the settings
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return tuple(
        ort.InferenceSession(str(models / name), options, providers=["CPUExecutionProvider"])
        for name in ("sig_bak_ovr.onnx", "model_v8.onnx")
    )


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear to 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / (200.0 / 3)
    log_part = hz >= 1000.0
    return np.where(log_part, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (math.log(6.4) / 27.0), mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((math.log(6.4) / 27.0) * (mel - 15.0)), (200.0 / 3) * mel)


@functools.cache
def mel_filters() -> torch.Tensor:
    """``[MELS, MEL_FFT // 2 + 1]`` Slaney-normalised triangular filters on the bins of a ``MEL_FFT``-point FFT
    (librosa.filters.mel; torchaudio's puts the bins at other frequencies for an odd FFT size)."""
    bins = np.fft.rfftfreq(MEL_FFT, 1.0 / SAMPLE_RATE)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), MELS + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return torch.from_numpy(weights.astype(np.float32))


def mel_features(window: torch.Tensor) -> np.ndarray:
    """``[1, frames, MELS]``: the P.808 model's input for one window (the reference drops its last hop)."""
    x = window[:-MEL_HOP].double()
    spec = torch.stft(
        x,
        MEL_FFT,
        MEL_HOP,
        window=torch.hann_window(MEL_FFT, periodic=True, dtype=torch.float64),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    power = mel_filters().double() @ spec.abs().pow(2)
    db = 10.0 * torch.log10(power.clamp_min(1e-10))
    db = db - 10.0 * torch.log10(power.max().clamp_min(1e-10))  # ref=np.max
    db = db.clamp_min(db.max() - 80.0)  # top_db=80
    return ((db + 40.0) / 40.0).T.unsqueeze(0).float().numpy()


def scores(audio: torch.Tensor) -> dict[str, float]:
    """DNSMOS of a 16 kHz recording ``[N]``: ``dnsmos_sig``, ``dnsmos_bak``, ``dnsmos_ovrl``, ``dnsmos_p808``
    (NaN for an empty or all-zero one, which has no quality to predict)."""
    x = audio.detach().reshape(-1).float().cpu()
    if x.numel() == 0 or not bool(x.abs().max() > 0):
        return dict.fromkeys(KEYS, math.nan)
    while x.numel() < WINDOW:
        x = torch.cat([x, x])
    p835, p808 = _sessions()
    found: dict[str, list[float]] = {key: [] for key in KEYS}
    for index in range(int(x.numel() // SAMPLE_RATE - SECONDS) + 1):
        # the reference's own cut, float rounding included: some windows come out a sample short, and are skipped
        window = x[index * HOP : int((index + SECONDS) * HOP)]
        if window.numel() < WINDOW:
            continue
        raw = p835.run(None, {"input_1": window.numpy()[None, :]})[0][0]
        for key, value in zip(("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"), raw, strict=True):
            found[key].append(float(np.polyval(POLYNOMIALS[key], value)))
        found["dnsmos_p808"].append(float(p808.run(None, {"input_1": mel_features(window)})[0][0][0]))
    return {key: float(np.mean(values)) for key, values in found.items()}
