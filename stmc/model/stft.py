"""STFT front end shared by offline and streamed enhancement (16 kHz, n_fft 1024, hop 256, periodic Hann).

Framing convention: the signal is preceded by ``n_fft - hop`` zeros, so frame ``m`` covers samples
``[m*hop - (n_fft - hop), m*hop + hop)`` and every real sample lies in exactly ``n_fft / hop`` frames. The
inverse is weighted overlap-add with the synthesis window ``w / sum_k w[. + k*hop]^2``, which reconstructs
every sample exactly. Both directions only ever look at complete frames, so the streamed versions below
produce, sample for sample, what the offline ones do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stmc.errors import InputError

SAMPLE_RATE = 16_000
N_FFT = 1024
HOP = 256


class STFT(nn.Module):
    """Analysis and synthesis with a common framing; ``stft``/``istft`` mirror torch's (complex ``[B, F, T]``)."""

    def __init__(self, n_fft: int = N_FFT, hop: int = HOP) -> None:
        super().__init__()
        if n_fft % hop:
            raise InputError(f"n_fft ({n_fft}) must be a multiple of hop ({hop})")
        self.n_fft, self.hop = n_fft, hop
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
        envelope = window.pow(2).reshape(-1, hop).sum(0).repeat(n_fft // hop)
        if (envelope <= 1e-8).any():
            raise InputError("window violates the overlap-add (NOLA) condition for this hop")
        self.register_buffer("window", window.float(), persistent=False)
        self.register_buffer("synthesis_window", (window / envelope).float(), persistent=False)

    @property
    def n_freq(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def lead(self) -> int:
        """Zeros placed before the signal so that its first sample is in ``n_fft / hop`` frames."""
        return self.n_fft - self.hop

    def n_frames(self, n_samples: int) -> int:
        """Frames needed to cover ``n_samples`` samples completely."""
        return (n_samples - 1) // self.hop + self.n_fft // self.hop

    # -- frame-level transforms (used by both the offline and the streamed paths) --
    def analyse(self, frames: torch.Tensor) -> torch.Tensor:
        """Time frames ``[B, T, n_fft]`` -> complex spectrum ``[B, F, T]``."""
        if frames.shape[1] == 0:  # MKL's FFT rejects empty batches
            return torch.zeros(
                frames.shape[0], self.n_freq, 0, dtype=torch.promote_types(frames.dtype, torch.complex64)
            )
        return torch.fft.rfft(frames * self.window, dim=-1).transpose(1, 2)

    def synthesise(self, spec: torch.Tensor) -> torch.Tensor:
        """Complex spectrum ``[B, F, T]`` -> windowed frames ``[B, T, n_fft]`` ready for overlap-add."""
        if spec.shape[-1] == 0:
            return self.window.new_zeros(spec.shape[0], 0, self.n_fft)
        return torch.fft.irfft(spec.transpose(1, 2), n=self.n_fft, dim=-1) * self.synthesis_window

    def overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, T, n_fft]`` -> ``[B, (T - 1) * hop + n_fft]``."""
        batch, count, _ = frames.shape
        if count == 0:
            return frames.new_zeros(batch, self.n_fft - self.hop)
        out = F.fold(
            frames.transpose(1, 2),
            output_size=(1, (count - 1) * self.hop + self.n_fft),
            kernel_size=(1, self.n_fft),
            stride=(1, self.hop),
        )
        return out.reshape(batch, -1)

    def frame(self, padded: torch.Tensor) -> torch.Tensor:
        """Cut ``[B, L]`` into all complete frames ``[B, T, n_fft]``."""
        if padded.shape[-1] < self.n_fft:
            return padded.new_zeros(padded.shape[0], 0, self.n_fft)
        return padded.unfold(-1, self.n_fft, self.hop)

    # -- offline --
    def stft(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform ``[B, N]`` -> complex ``[B, F, n_frames(N)]``."""
        n = x.shape[-1]
        total = (self.n_frames(n) - 1) * self.hop + self.n_fft
        padded = F.pad(x, (self.lead, total - n - self.lead))
        return self.analyse(self.frame(padded))

    def spectrogram_db(self, wave: torch.Tensor) -> torch.Tensor:
        """Power spectrogram in dB ``[F, T]`` of a 1-D waveform, low bins first (for figures and reports)."""
        power = self.stft(wave.detach().float().reshape(1, -1))[0].abs().square()
        return 10 * torch.log10(power + 1e-10)

    def istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """Complex ``[B, F, T]`` -> waveform ``[B, length]`` (the inverse of ``stft`` for ``length``)."""
        out = self.overlap_add(self.synthesise(spec))
        return out[..., self.lead : self.lead + length]


class StreamingAnalysis:
    """Samples in chunks of any length -> the complete STFT frames they finish, as offline ``stft`` frames them."""

    def __init__(self, stft: STFT) -> None:
        self.stft = stft
        self.buffer: torch.Tensor | None = None
        self.samples = 0

    def __call__(self, chunk: torch.Tensor) -> torch.Tensor:
        if self.buffer is None:
            self.buffer = chunk.new_zeros(chunk.shape[0], self.stft.lead)
        self.samples += chunk.shape[-1]
        buffer = torch.cat([self.buffer, chunk], -1)
        frames = self.stft.frame(buffer)
        self.buffer = buffer[..., frames.shape[1] * self.stft.hop :]
        return self.stft.analyse(frames)

    def flush(self) -> torch.Tensor:
        """Zero-pad to the offline frame count and return the remaining frames."""
        if self.buffer is None:
            raise RuntimeError("flush() before any chunk: the batch size is unknown")
        total = (self.stft.n_frames(self.samples) - 1) * self.stft.hop + self.stft.n_fft
        missing = total - self.stft.lead - self.samples
        padded = F.pad(self.buffer, (0, missing))
        self.buffer = padded[..., padded.shape[-1] :]
        return self.stft.analyse(self.stft.frame(padded))


class StreamingSynthesis:
    """Spectrum frames in order -> the waveform samples they complete, aligned with offline ``istft``."""

    def __init__(self, stft: STFT) -> None:
        self.stft = stft
        self.tail: torch.Tensor | None = None
        self.to_skip = stft.lead
        self.emitted = 0

    def __call__(self, spec: torch.Tensor) -> torch.Tensor:
        frames = self.stft.synthesise(spec)
        if self.tail is None:
            self.tail = frames.new_zeros(frames.shape[0], self.stft.n_fft - self.stft.hop)
        summed = self.stft.overlap_add(frames)
        summed[..., : self.tail.shape[-1]] += self.tail
        done = frames.shape[1] * self.stft.hop
        self.tail = summed[..., done:]
        out = summed[..., :done]
        skip = min(self.to_skip, out.shape[-1])
        self.to_skip -= skip
        out = out[..., skip:]
        self.emitted += out.shape[-1]
        return out

    def finish(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """Last frames; returns exactly the samples still owed up to ``length`` in total."""
        out = self(spec)
        keep = max(0, length - (self.emitted - out.shape[-1]))
        self.emitted = length
        return out[..., :keep]
