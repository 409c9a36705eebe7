"""The depth-7 U-Net of the paper on STFT real/imag channels, producing a bounded complex mask.

Our choices where the paper is silent (documented in docs/architecture.md):
- channels ``DEFAULT_CHANNELS`` per encoder level (x ``width``); the causal model has ~1.1 M parameters;
- input compression: the spectrum enters as ``X * |X|^(compress - 1)`` (frame-local, keeps the phase);
- mask bound: ``M = z * tanh(|z|) / |z|``, so ``|M| < 1`` and the phase is free;
- look-ahead placement: ``lookahead_layers`` picks which temporal layers see one future frame, by default spread
  evenly along the chain (2 frames: +0.33 dB over the causal model at the `mini` scale, where the first two layers
  gave +0.01 dB; docs/reproduction.md);
- ``tstmc=False`` (the paper's ablation): decoder layers are standard transposed convolutions in time too (time
  kernel 2 or 3, stride 1, the extra anti-causal output frames cropped), with the same parameters, the same time
  context and so the same receptive field; STMC streams them by overlap-add
  (:class:`stmc.model.layers.OverlapAddLayer`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from stmc.errors import InputError
from stmc.model.layers import FREQ_STRIDE, FrozenLayer, TemporalLayer, from_frames, to_frames

DEFAULT_CHANNELS = (16, 32, 48, 64, 96, 128, 160)
# config keys left out at their default value (so that older checkpoints' configs stay equal)
IMPLIED_CONFIG = {"tstmc": True}
PLACEMENTS = ("first", "last", "spread")
FEATURE_EPS = 1e-12  # keeps the input compression X * (|X|^2 + eps)^((compress - 1) / 2) finite at X = 0
BOUND_EPS = 1e-12  # floor on |z| in the mask bound z * tanh(|z|) / |z|
WINDOW_FRAMES = 1024  # offline inference of long inputs in windows of this many frames (16 s): see UNet.windowed

Apply = Callable[[int, torch.Tensor], torch.Tensor]
Join = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def lookahead_placement(n_layers: int, lookahead: int, how: str | Sequence[int]) -> list[int]:
    """Indices (along the layer chain) of the layers that get one future frame."""
    if not isinstance(how, str):
        chosen = sorted({int(i) for i in how})
        if len(chosen) != lookahead or any(not 0 <= i < n_layers for i in chosen):
            raise InputError(f"lookahead_layers={list(how)} must name {lookahead} distinct layers in 0..{n_layers - 1}")
        return chosen
    if how == "first":
        return list(range(lookahead))
    if how == "last":
        return list(range(n_layers - lookahead, n_layers))
    if how == "spread":
        return sorted({(2 * i + 1) * n_layers // (2 * lookahead) for i in range(lookahead)})
    raise InputError(f"lookahead_layers={how!r}: choose one of {PLACEMENTS} or a list of layer indices")


def architecture(config: Mapping[str, Any]) -> dict[str, Any]:
    """A model config as the network it names: implied keys filled in and the look-ahead placement as its layer
    indices, so that configs of one network compare equal however they name it (``first`` and ``spread`` are the
    same layers at look-ahead 0 and ``2 * depth``)."""
    full = {**IMPLIED_CONFIG, **config}
    full["lookahead_layers"] = lookahead_placement(2 * full["depth"], full["lookahead"], full["lookahead_layers"])
    return full


class UNet(nn.Module):
    """Encoder of strided convolutions, decoder of tSTMC layers, skip connections at every level.

    ``spec [B, 2, F, T]`` (real, imag) -> complex mask ``[B, 2, F, T]``. Layer ``k`` of the chain (encoder
    ``0..depth-1``, then decoder from deep to shallow) has time context ``(1, 1)`` if it is a look-ahead layer
    and ``(1, 0)`` otherwise, so ``lookahead=0`` is causal and ``lookahead=2*depth`` the paper's non-causal model.
    """

    def __init__(
        self,
        depth: int = 7,
        lookahead: int = 0,
        width: float = 1.0,
        channels: Sequence[int] | None = None,
        lookahead_layers: str | Sequence[int] = "spread",
        n_freq: int = 513,
        compress: float = 0.3,
        tstmc: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise InputError(f"depth must be a positive integer, got {depth!r}")
        if not isinstance(lookahead, int) or not 0 <= lookahead <= 2 * depth:
            raise InputError(f"lookahead must be an integer in 0..{2 * depth} (2*depth), got {lookahead!r}")
        if isinstance(n_freq, bool) or not isinstance(n_freq, int) or n_freq < 2:
            raise InputError(f"n_freq must be an integer of at least 2 frequency bins, got {n_freq!r}")
        if (n_freq - 1) % FREQ_STRIDE**depth:
            raise InputError(f"n_freq - 1 must be divisible by 2**depth={2**depth}, got n_freq={n_freq}")
        if not isinstance(compress, int | float) or not 0 < compress <= 1:
            raise InputError(f"compress must be in (0, 1], got {compress!r}")
        if isinstance(width, bool) or not isinstance(width, int | float) or not 0 < width < float("inf"):
            raise InputError(f"width must be a positive number (channel multiplier), got {width!r}")
        if channels is not None and any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
            raise InputError(f"channels must be positive integers, one per level, got {list(channels)}")
        if not isinstance(tstmc, bool):
            raise InputError(f"tstmc must be true or false, got {tstmc!r}")
        base = tuple(channels) if channels is not None else DEFAULT_CHANNELS[:depth]
        if len(base) != depth:
            raise InputError(f"channels needs {depth} entries (one per level), got {len(base)}")
        widths = [max(1, round(c * width)) for c in base]
        self.config = {
            "depth": depth,
            "lookahead": lookahead,
            "width": width,
            "channels": list(base),
            "lookahead_layers": lookahead_layers if isinstance(lookahead_layers, str) else list(lookahead_layers),
            "n_freq": n_freq,
            "compress": compress,
        }
        if not tstmc:  # only then: older checkpoints' configs (without the key) stay equal to the default
            self.config["tstmc"] = False
        self.depth, self.n_freq, self.compress = depth, n_freq, compress
        ahead = set(lookahead_placement(2 * depth, lookahead, lookahead_layers))
        # common random numbers: one draw from the global generator keys every initial weight, whatever the
        # architecture, so a seed gives look-ahead variants the same shared weights and the same random stream after
        # the model is built (the same data order); see TemporalLayer.initialize
        init_key = int(torch.randint(0, 2**62, (1,)))
        layers = []
        with torch.random.fork_rng(devices=[]):  # the modules' own default initialisation leaves no trace
            for level in range(depth):
                cin = 2 if level == 0 else widths[level - 1]
                layers.append(TemporalLayer(cin, widths[level], 1, int(level in ahead), False))
            for j in range(depth):
                level = depth - 1 - j
                cin = widths[level] * (1 if j == 0 else 2)
                final = level == 0
                cout = 2 if final else widths[level - 1]
                layers.append(TemporalLayer(cin, cout, 1, int(depth + j in ahead), True, final, tstmc))
        for k, layer in enumerate(layers):
            layer.initialize((init_key, k))
        self.layers = nn.ModuleList(layers)
        # decoder layer index -> encoder layer whose output is concatenated to its input
        self.joins = {depth + j: depth - 1 - j for j in range(1, depth)}
        self.lags = torch.tensor([m.past for m in layers]).cumsum(0).tolist()
        self.delays = torch.tensor([m.future for m in layers]).cumsum(0).tolist()

    # -- derived time structure --
    @property
    def receptive_field(self) -> tuple[int, int]:
        """``(past, future)`` frames that one output frame depends on."""
        return self.lags[-1], self.delays[-1]

    def join_delay(self, k: int) -> int:
        """Frames by which the skip into layer ``k`` is ahead of the decoder path (STMC delay line length)."""
        return self.delays[k - 1] - self.delays[self.joins[k]]

    def join_offset(self, k: int) -> int:
        """Frames by which the skip into layer ``k`` starts earlier than the decoder path in a valid pass."""
        return self.lags[k - 1] - self.lags[self.joins[k]]

    def bins(self, level: int) -> int:
        """Frequency bins at encoder level ``level`` (0 = the input)."""
        bins = self.n_freq
        for k in range(level):
            bins = self.layers[k].out_bins(bins)
        return bins

    def input_shape(self, k: int) -> tuple[int, int]:
        """``(channels, bins)`` of layer ``k``'s input (after any skip merge)."""
        layer = self.layers[k]
        level = k if k < self.depth else 2 * self.depth - k
        return layer.in_channels, self.bins(level)

    # -- the graph, shared by every engine --
    def walk(self, h: torch.Tensor, apply: Apply, join: Join) -> torch.Tensor:
        """Run the layer chain; ``apply(k, h)`` evaluates layer ``k``, ``join(k, h, skip)`` merges a skip."""
        skips: dict[int, torch.Tensor] = {}
        sources = set(self.joins.values())
        for k in range(len(self.layers)):
            if k in self.joins:
                h = join(k, h, skips.pop(self.joins[k]))
            h = apply(k, h)
            if k in sources:
                skips[k] = h
        return h

    def features(self, spec: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Power-law compressed spectrum (frame-local), the network's actual input; ``dim`` is (real, imag)."""
        if self.compress == 1:
            return spec
        power = spec.pow(2).sum(dim, keepdim=True)
        return spec * (power + FEATURE_EPS).pow((self.compress - 1) / 2)

    @staticmethod
    def bound(out: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Complex mask with magnitude ``tanh(|z|) < 1`` (frame-local); ``dim`` is (real, imag)."""
        magnitude = torch.linalg.vector_norm(out, dim=dim, keepdim=True).clamp_min(BOUND_EPS)
        return out * (torch.tanh(magnitude) / magnitude)

    def through_frames(
        self, spec: torch.Tensor, walk: Callable[[torch.Tensor], torch.Tensor], flat: bool = False
    ) -> torch.Tensor:
        """``spec [B, 2, F, T]`` -> bounded mask ``[B, 2, F, T']``, with ``walk`` running the frozen layers on the
        features laid out ``[B, T, F, 2]`` (compression and bound work there too: contiguous, fast per frame).

        ``flat`` (for a traced step graph, ``T`` static): compression and bound on ``[B, 2, F * T]`` instead, so
        that no tensor they broadcast ends in an axis of size 1 or 2: onnxruntime broadcasts along such an axis one
        element at a time, ~5 µs a node on 513 bins instead of 0.4 µs (docs/benchmarks.md)."""
        if not flat:
            return from_frames(self.bound(walk(self.features(to_frames(spec), dim=-1)), dim=-1))

        def flatten(x: torch.Tensor) -> torch.Tensor:
            channels, bins, frames = (int(size) for size in x.shape[1:])  # constants of the graph, not Shape nodes
            return x.reshape(-1, channels, bins * frames)

        def unflatten(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            return x.view(-1, *(int(size) for size in like.shape[1:]))

        out = from_frames(walk(to_frames(unflatten(self.features(flatten(spec), dim=1), spec))))
        return unflatten(self.bound(flatten(out), dim=1), out)

    def check_input(self, spec: torch.Tensor, batch: int | None = None) -> None:
        """Raise ``ValueError`` naming the expected shape unless ``spec`` is ``[B, 2, n_freq, T]`` of the weights'
        dtype (and, given ``batch``, ``B == batch``)."""
        check_spectrum(spec, self.n_freq, self.layers[0].conv.weight.dtype, batch)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        self.check_input(spec)
        if spec.shape[-1] == 0:
            return torch.zeros_like(spec)

        return self.bound(self.walk(self.features(spec), lambda k, h: self.layers[k](h), concat_skip))

    def windowed(self, spec: torch.Tensor, frames: int = WINDOW_FRAMES) -> torch.Tensor:
        """``self(spec)`` computed ``frames`` output frames at a time, each window widened by the receptive field on
        both sides: every output frame still sees all of its receptive field (zero padding only where the sequence
        itself ends), so the output is the same, while the activations held at once scale with the window instead
        of the sequence (a 10-minute utterance is 37,500 frames). For inference; training uses ``self(spec)``."""
        total = spec.shape[-1]
        if total <= frames:
            return self(spec)
        past, future = self.receptive_field
        outs = []
        for start in range(0, total, frames):
            stop = min(total, start + frames)
            low, high = max(0, start - past), min(total, stop + future)
            outs.append(self(spec[..., low:high])[..., start - low : stop - low])
        return torch.cat(outs, -1)

    def frozen(self) -> list[FrozenLayer]:
        """Inference form of every layer (BatchNorm folded), in chain order; the first and the last are marked
        ``on_spectrum``."""
        last = len(self.layers) - 1
        return [replace(layer.frozen(), on_spectrum=k in (0, last)) for k, layer in enumerate(self.layers)]


def check_spectrum(spec: torch.Tensor, n_freq: int, dtype: torch.dtype, batch: int | None = None) -> None:
    """Raise ``ValueError`` naming the expected shape unless ``spec`` is a ``[B, 2, n_freq, T]`` tensor of ``dtype``
    (and, given ``batch``, ``B == batch``): the input of a model and of every stream."""
    expected = f"[batch, 2 (real, imag), {n_freq} bins, frames]"
    if not isinstance(spec, torch.Tensor):
        raise InputError(f"expected a tensor {expected}, got {type(spec).__name__}")
    if spec.dim() != 4 or spec.shape[1] != 2 or spec.shape[2] != n_freq:
        raise InputError(f"expected a spectrum {expected}, got shape {list(spec.shape)}")
    if spec.dtype != dtype:
        raise InputError(f"expected dtype {dtype} for {expected}, got {spec.dtype}")
    if batch is not None and spec.shape[0] != batch:
        raise InputError(f"this stream has batch {batch}, got a chunk of batch {spec.shape[0]}; reset() first")


def concat_skip(k: int, h: torch.Tensor, skip: torch.Tensor, channels: int = 1) -> torch.Tensor:
    """The U-Net merge: decoder features, then the encoder skip, stacked along the ``channels`` axis (1 in the
    model's ``[B, C, F, T]``, -1 in the frozen layers' ``[B, T, F, C]``)."""
    return torch.cat([h, skip], channels)
