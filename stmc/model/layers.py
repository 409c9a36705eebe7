"""The temporal layer: the one place that defines a layer's time context ``(past, future)``.

Every layer is *valid* in time: given ``past + T + future`` input frames it returns ``T`` output frames, output
frame ``τ`` depending on input frames ``τ - past .. τ + future``. State and delays are the business of the engine
that runs the layer (STMC, INC, window); the trainable module's own ``forward`` is the offline pass, with the
zero padding done inside its convolution.

In frequency an encoder layer is a strided convolution and a decoder layer a transposed one (stride 2). In
time a decoder layer is a plain convolution (tSTMC): the inference form stacks the time taps into channels and
the transposed convolution sees a time kernel of 1, so no anti-causal extra frames exist and no multiply is
wasted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stmc.errors import InputError

FREQ_KERNEL = 5
FREQ_STRIDE = 2


class TimeContext:
    """A layer's time context ``past`` / ``future`` (frames) and the one definition of its time kernel size, shared
    by every form of a layer (trainable, frozen, overlap-add, exported)."""

    past: int
    future: int

    @property
    def taps(self) -> int:
        """Time kernel size: ``past + 1 + future`` frames."""
        return self.past + 1 + self.future


class TemporalLayer(TimeContext, nn.Module):
    """Conv (encoder) or tSTMC transposed conv (decoder), then BatchNorm and PReLU unless ``final``.

    BatchNorm is frame-local at inference (a per-channel affine map), so it never mixes time frames and can be
    folded into the convolution (:meth:`frozen`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        past: int,
        future: int,
        transposed: bool,
        final: bool = False,
        tstmc: bool = True,
    ) -> None:
        super().__init__()
        if past < 0 or future < 0:
            raise InputError(f"time context must be non-negative, got past={past}, future={future}")
        self.past, self.future, self.transposed = past, future, transposed
        self.tstmc = tstmc or not transposed  # False: a decoder layer transposed in time too (the ablation)
        self.in_channels, self.out_channels = in_channels, out_channels
        pad = FREQ_KERNEL // 2
        if transposed and not self.tstmc:  # the same parameters as tSTMC's, laid out [C, C', 5, taps]
            self.conv = nn.ConvTranspose2d(
                in_channels, out_channels, (FREQ_KERNEL, self.taps), (FREQ_STRIDE, 1), (pad, 0)
            )
        elif transposed:
            self.conv: nn.Module = nn.ConvTranspose2d(
                self.taps * in_channels, out_channels, (FREQ_KERNEL, 1), (FREQ_STRIDE, 1), (pad, 0)
            )
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, (FREQ_KERNEL, self.taps), (FREQ_STRIDE, 1), (pad, 0))
        self.norm = None if final else nn.BatchNorm2d(out_channels)
        self.act = None if final else nn.PReLU(out_channels)

    def time_tap(self, offset: int) -> torch.Tensor:
        """A view of the convolution weight's taps at time ``offset`` (``-past .. future``; 0 = the output's own
        frame), laid out ``[C, C', 5]`` for decoder layers in either form and ``[C', C, 5]`` for encoder layers."""
        if not -self.past <= offset <= self.future:
            raise InputError(f"time offset {offset} is outside this layer's context -{self.past}..{self.future}")
        weight = self.conv.weight
        if not self.transposed:
            return weight[..., self.past + offset]
        if not self.tstmc:  # a transposed convolution in time: its last axis runs from the newest tap
            return weight[..., self.future - offset]
        j = self.past + offset  # tSTMC: taps stacked as input channels, oldest first
        return weight[j * self.in_channels : (j + 1) * self.in_channels, ..., 0]

    @torch.no_grad()
    def initialize(self, key: Sequence[int]) -> None:
        """Draw the convolution's weights and bias with common random numbers: each time tap (and the bias) from
        its own generator keyed by ``key`` and the tap's time offset, uniform within ``1/sqrt(fan_in)``, PyTorch's
        default bound for the layer's *causal* tSTMC form. Two layers that differ only in look-ahead then share
        their past and present taps exactly (the future tap is the only new draw), and a ``tstmc=False`` decoder
        layer starts as the same linear map as its tSTMC twin. BatchNorm and PReLU keep their constant values."""
        # PyTorch's fan-in: a transposed convolution's output channels x its kernel (time kernel 1 in tSTMC form)
        inputs = self.out_channels if self.transposed else self.in_channels * (self.past + 1)
        bound = (inputs * FREQ_KERNEL) ** -0.5

        def draw(tensor: torch.Tensor, *part: int) -> None:
            seed = int(np.random.SeedSequence([*key, *part]).generate_state(1, np.uint64)[0] >> 1)
            values = torch.rand(tensor.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            tensor.copy_((2 * values - 1) * bound)

        for offset in range(-self.past, self.future + 1):
            draw(self.time_tap(offset), 0, offset + self.past)
        draw(self.conv.bias, 1)

    def out_bins(self, bins: int) -> int:
        """Frequency bins of the output for ``bins`` input bins (halved by the encoder, doubled by the decoder)."""
        return out_bins(bins, self.transposed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Offline: ``[B, C, F, T]`` -> ``[B, C', F', T]``, as if ``past`` zero frames preceded ``x`` and ``future``
        followed it (the padding is done inside the convolution: no padded copy of ``x``, and the decoder's
        tSTMC time taps run as the convolution's own time kernel rather than as stacked channels)."""
        frames, weight = x.shape[-1], self.conv.weight
        if not self.tstmc:
            # a standard transposed convolution in time: T + taps - 1 frames, of which the `future` first and
            # `past` last are cropped, so that output frame t depends on inputs t - past .. t + future
            y = F.conv_transpose2d(x, weight, self.conv.bias, (FREQ_STRIDE, 1), (FREQ_KERNEL // 2, 0))
            start = self.future
        elif self.transposed:
            # tSTMC: a transposed convolution whose time taps are reversed is a plain (valid) convolution in time
            weight = weight.view(self.taps, self.in_channels, *weight.shape[1:3]).flip(0).permute(1, 2, 3, 0)
            pad = min(self.past, self.future)
            y = F.conv_transpose2d(x, weight, self.conv.bias, (FREQ_STRIDE, 1), (FREQ_KERNEL // 2, pad))
            start = self.future - pad
        else:
            pad = max(self.past, self.future)
            y = F.conv2d(x, weight, self.conv.bias, (FREQ_STRIDE, 1), (FREQ_KERNEL // 2, pad))
            start = pad - self.past
        if y.shape[-1] != frames:  # asymmetric context: keep the T frames the padded input defines
            layout = torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) else None
            y = y[..., start : start + frames].contiguous(memory_format=layout or torch.contiguous_format)
        if self.norm is not None:
            y = self.act(self.norm(y))
        return y

    def tstmc_weight(self) -> torch.Tensor:
        """The convolution weight in the tSTMC layout ``[taps * C, C', 5, 1]`` (time taps stacked as channels,
        oldest frame first). For ``tstmc=False`` the same linear map: its time taps reversed and stacked."""
        weight = self.conv.weight.detach()
        if self.tstmc:
            return weight
        return weight.flip(-1).permute(3, 0, 1, 2).reshape(-1, weight.shape[1], FREQ_KERNEL, 1)

    @torch.no_grad()
    def frozen(self) -> FrozenLayer:
        """Inference form: BatchNorm (running statistics) folded in, weights laid out as one GEMM matrix (for
        ``tstmc=False`` the valid-in-time form of the same map, which INC, window and the export run)."""
        weight, bias = self.tstmc_weight() if self.transposed else self.conv.weight.detach(), self.conv.bias.detach()
        prelu = None
        if self.norm is not None:
            scale = self.norm.weight / torch.sqrt(self.norm.running_var + self.norm.eps)
            shift = self.norm.bias - self.norm.running_mean * scale
            shape = [1, -1, 1, 1] if self.transposed else [-1, 1, 1, 1]
            weight, bias = weight * scale.reshape(shape), bias * scale + shift
            prelu = self.act.weight.detach().clone()
        if self.transposed:  # [taps*C, Cout, 5, 1] -> rows (tap, c), columns (cout, freq tap)
            matrix = weight[..., 0].reshape(weight.shape[0], -1)
        else:  # [Cout, C, 5, taps] -> rows (tap, freq tap, c), columns cout
            matrix = weight.permute(3, 2, 1, 0).reshape(-1, weight.shape[0])
        return FrozenLayer(self.past, self.future, self.transposed, matrix.contiguous(), bias.contiguous(), prelu)


@dataclass(frozen=True)
class FrozenLayer(TimeContext):
    """A :class:`TemporalLayer` at inference, on frames laid out ``[batch, time, freq, channels]``.

    One im2col and one GEMM per call whatever the number of frames (rows are frequency positions, which is
    the fast orientation for the few-bin deep layers), so a single streamed frame costs the same multiplies
    as one frame of a long sequence. Same time context as the layer, valid in time.

    ``on_spectrum``: the layer is the chain's first (it reads the compressed spectrum) or last (it writes the mask),
    set by :meth:`stmc.model.unet.UNet.frozen`; an exported form may treat those two apart (the int8 ONNX step keeps
    them float32).
    """

    past: int
    future: int
    transposed: bool
    matrix: torch.Tensor
    bias: torch.Tensor
    prelu: torch.Tensor | None
    on_spectrum: bool = False

    @property
    def out_channels(self) -> int:
        return self.bias.shape[0]

    def out_bins(self, bins: int) -> int:
        return out_bins(bins, self.transposed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, F, C]`` -> ``[B, T - past - future, F', C']``."""
        batch, frames, pad = x.shape[0], x.shape[1] - self.taps + 1, FREQ_KERNEL // 2
        if self.transposed:
            bins = x.shape[2]
            windows = x.unfold(1, self.taps, 1)  # [B, T', F, C, taps]
            cols = windows.permute(0, 1, 2, 4, 3).reshape(batch * frames * bins, -1)
            spread = torch.mm(cols, self.matrix).view(batch * frames, bins, -1).transpose(1, 2)
            y = F.fold(spread, (1, self.out_bins(bins)), (1, FREQ_KERNEL), padding=(0, pad), stride=(1, FREQ_STRIDE))
            y += self.bias.view(-1, 1, 1)  # y: [B*T', C', 1, F']
            if self.prelu is not None:
                y = F.prelu(y, self.prelu)
            return y.view(batch, frames, -1, self.out_bins(bins)).transpose(2, 3)
        xp = F.pad(x, (0, 0, pad, pad))
        bins = self.out_bins(x.shape[2])
        s_b, s_t, s_f, s_c = xp.stride()
        windows = xp.as_strided(  # [B, T', F', taps, 5, C], a view: the reshape below is the one im2col copy
            (batch, frames, bins, self.taps, FREQ_KERNEL, x.shape[3]), (s_b, s_t, FREQ_STRIDE * s_f, s_t, s_f, s_c)
        )
        y = torch.addmm(self.bias, windows.reshape(batch * frames * bins, -1), self.matrix)
        if self.prelu is not None:
            y = F.prelu(y, self.prelu)
        return y.view(batch, frames, bins, -1)


@dataclass(frozen=True)
class OverlapAddLayer(TimeContext):
    """A ``tstmc=False`` decoder layer at inference, streamed as a standard transposed convolution in time is:
    each input frame's ``taps`` contributions are added to the output frames it overlaps, the not yet complete
    sums are the layer's state, and bias and PReLU apply to each output frame once it is complete.

    ``spread`` is a one-tap transposed layer whose output channels are ``(tap, C')``: one GEMM per call gives
    every contribution, the same multiplies as the tSTMC layer's.
    """

    past: int
    future: int
    spread: FrozenLayer
    bias: torch.Tensor
    prelu: torch.Tensor | None

    @classmethod
    def of(cls, layer: FrozenLayer, form: Callable[[FrozenLayer], Any] | None = None) -> OverlapAddLayer:
        """The overlap-add form of a transposed frozen layer (its matrix: rows ``(window tap, C)``); ``form`` turns
        the one-tap layer into what the engine runs (an exported graph's nodes)."""
        taps, cout = layer.taps, layer.out_channels
        matrix = layer.matrix.view(taps, -1, cout * FREQ_KERNEL).permute(1, 0, 2).reshape(-1, taps * cout * FREQ_KERNEL)
        zeros = torch.zeros(taps * cout, dtype=layer.bias.dtype, device=layer.bias.device)
        spread = FrozenLayer(0, 0, True, matrix.contiguous(), zeros, None, layer.on_spectrum)
        return cls(layer.past, layer.future, spread if form is None else form(spread), layer.bias, layer.prelu)

    def __call__(self, x: torch.Tensor, pending: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """New input frames ``[B, T, F, C]`` and the pending sums ``[B, taps - 1, F', C']`` -> the ``T`` completed
        output frames (the first ``future`` frames behind the first input's) and the new pending sums."""
        frames, taps, lag = x.shape[1], self.taps, self.taps - 1
        # no size is the batch's: an exported step graph takes any batch (the exporter folds traced sizes it can infer)
        spread = self.spread(x)
        parts = spread.reshape(-1, frames, spread.shape[2], taps, self.bias.shape[0])  # [B, T, F', tap, C']
        full = F.pad(pending, (0, 0, 0, 0, 0, frames))  # the pending sums and `frames` zero frames
        for tap in range(taps):  # window tap j of input frame i completes output frame i + taps - 1 - j
            full[:, lag - tap : lag - tap + frames] += parts[:, :, :, tap]
        y = full[:, :frames] + self.bias
        if self.prelu is not None:
            y = F.prelu(y.permute(0, 3, 1, 2), self.prelu).permute(0, 2, 3, 1)
        return y, full[:, frames:]


def out_bins(bins: int, transposed: bool) -> int:
    """Output bins of a layer with ``bins`` input bins: a strided convolution (padding ``FREQ_KERNEL // 2``) keeps
    ``(bins - 1) // FREQ_STRIDE + 1``, the transposed one (the decoder) restores ``(bins - 1) * FREQ_STRIDE + 1``."""
    return (bins - 1) * FREQ_STRIDE + 1 if transposed else (bins - 1) // FREQ_STRIDE + 1


def to_frames(spec: torch.Tensor) -> torch.Tensor:
    """``[B, C, F, T]`` (the model's layout) -> ``[B, T, F, C]`` (the frozen layers' layout)."""
    return spec.permute(0, 3, 2, 1)


def from_frames(frames: torch.Tensor) -> torch.Tensor:
    """``[B, T, F, C]`` -> ``[B, C, F, T]``."""
    return frames.permute(0, 3, 2, 1)
