"""Waveform in, waveform out: STFT -> U-Net complex mask -> iSTFT, offline or as a stream of sample chunks."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from stmc.errors import InputError
from stmc.model import checkpoint
from stmc.model.stft import STFT, StreamingAnalysis, StreamingSynthesis
from stmc.model.unet import UNet
from stmc.stream.driver import Stream
from stmc.stream.engines import streaming


def to_channels(spec: torch.Tensor) -> torch.Tensor:
    """Complex ``[B, F, T]`` -> real/imag channels ``[B, 2, F, T]``."""
    return torch.stack([spec.real, spec.imag], 1)


def apply_mask(mask: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
    """Complex product of a ``[B, 2, F, T]`` mask and a complex ``[B, F, T]`` spectrum (in the spectrum's precision,
    also when the mask comes out of a bf16 autocast region)."""
    mask = mask.to(spec.real.dtype)
    return torch.complex(mask[:, 0], mask[:, 1]) * spec


def check_waveform(x: torch.Tensor, dtype: torch.dtype) -> None:
    """Raise ``ValueError`` unless ``x`` is a ``[batch, samples]`` waveform of ``dtype``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"expected a waveform [batch, samples] at 16 kHz, got {shape}")
    if x.dtype != dtype:
        raise InputError(f"expected a {dtype} waveform [batch, samples], got {x.dtype}")


class Enhancer(nn.Module):
    """A U-Net as a speech enhancer at 16 kHz (n_fft 1024, hop 256)."""

    def __init__(self, model: UNet, stft: STFT | None = None) -> None:
        super().__init__()
        self.model = model
        self.stft = stft if stft is not None else STFT()
        if self.stft.n_freq != model.n_freq:
            raise InputError(f"model has {model.n_freq} bins, the STFT gives {self.stft.n_freq}")

    @property
    def latency_samples(self) -> int:
        """Algorithmic latency of a stream: the window plus the look-ahead frames times the hop."""
        return self.stft.n_fft + self.model.receptive_field[1] * self.stft.hop

    @property
    def dtype(self) -> torch.dtype:
        return self.model.layers[0].conv.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` noisy waveform -> ``[B, N]`` enhanced waveform (without gradients, the network runs in windows
        of ``stmc.model.unet.WINDOW_FRAMES`` frames: memory bounded on long inputs, the same output)."""
        check_waveform(x, self.dtype)
        spec = self.stft.stft(x)
        features = to_channels(spec)
        # inference: in windows, so that memory stays bounded on long inputs (the same output)
        mask = self.model(features) if torch.is_grad_enabled() else self.model.windowed(features)
        return self.stft.istft(apply_mask(mask, spec), x.shape[-1])

    def stream(self, method: str = "stmc", compile: bool = False) -> EnhancerStream:
        """A stream over audio chunks of any length whose output equals :meth:`forward`."""
        return EnhancerStream(self, streaming(self.model, method, compile))

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str = "cpu") -> Enhancer:
        """Load a checkpoint written by ``train.py`` (no pickled code runs: ``weights_only=True``)."""
        ckpt = checkpoint.read(path, map_location)
        meta = ckpt[checkpoint.KEY]
        model = UNet(**meta["model_config"])
        try:
            model.load_state_dict(checkpoint.model_state(ckpt))
        except RuntimeError as err:
            raise InputError(f"{path}: weights do not match the architecture {meta['model_config']}: {err}") from err
        return cls(model.eval())


class EnhancerStream:
    """Chunks of samples in, enhanced samples out; ``flush()`` returns the rest, up to the input length.

    ``frames`` is the mask stream over the enhancer's model (:func:`stmc.stream.engines`, or an exported graph's
    :func:`stmc.export.onnx.open_onnx`); this class adds the streaming STFT around it.
    """

    def __init__(self, enhancer: Enhancer, frames: Stream) -> None:
        if frames.engine.n_freq != enhancer.stft.n_freq:
            raise InputError(f"the frame stream has {frames.engine.n_freq} bins, the STFT gives {enhancer.stft.n_freq}")
        self.enhancer = enhancer
        self.frames = frames
        self.reset()

    @property
    def latency_samples(self) -> int:
        """Algorithmic latency: the window plus the look-ahead frames times the hop."""
        return self.enhancer.latency_samples

    def reset(self) -> None:
        """Start a new stream (zero state, weights re-read)."""
        self.frames.reset()
        self.analysis = StreamingAnalysis(self.enhancer.stft)
        self.synthesis = StreamingSynthesis(self.enhancer.stft)
        self.pending: torch.Tensor | None = None  # spectrum frames waiting for their mask

    def _masked(self, spec: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pending = spec if self.pending is None else torch.cat([self.pending, spec], -1)
        ready = mask.shape[-1]
        self.pending = pending[..., ready:]
        return apply_mask(mask, pending[..., :ready])

    @torch.inference_mode()
    def __call__(self, chunk: torch.Tensor) -> torch.Tensor:
        self.frames.check_open()  # the frame stream keeps whether this stream was flushed
        check_waveform(chunk, self.enhancer.dtype)
        spec = self.analysis(chunk)
        return self.synthesis(self._masked(spec, self.frames(to_channels(spec))))

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:
        """The remaining samples: zero padding and look-ahead run out exactly as offline."""
        self.frames.check_open()
        if self.analysis.buffer is None:
            self.frames.flush()  # nothing was streamed: only the stream's end is marked
            return torch.zeros(0, 0, dtype=self.enhancer.dtype)
        spec = self.analysis.flush()
        mask = torch.cat([self.frames(to_channels(spec)), self.frames.flush()], -1)
        return self.synthesis.finish(self._masked(spec, mask), self.analysis.samples)
