"""Random small U-Nets with non-trivial inference statistics, and chunked feeding, for property tests."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

import stmc
from stmc.stream.driver import Stream


def randomise_norms(model: stmc.UNet, seed: int) -> stmc.UNet:
    """Give every BatchNorm and PReLU non-default values so that folding them is actually exercised.

    PReLU slopes are negative to positive, and above 1 in every second PReLU layer: exported graphs compute layers
    whose slopes are all at most 1 in another form than the others (:class:`stmc.export.graph.ExportLayer`).
    """
    gen = torch.Generator().manual_seed(seed)
    prelus = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.weight.copy_(1 + 0.2 * torch.randn(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
            elif isinstance(module, torch.nn.PReLU):
                top = 1.5 if prelus % 2 else 1.0
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) * (top + 0.5) - 0.5)
                prelus += 1
    return model.eval()


def tiny_unet(lookahead: int = 0, seed: int = 0, width: float = 1.0) -> stmc.UNet:
    """A depth-2 U-Net with non-trivial BatchNorm statistics: fast, and it exercises the whole path."""
    torch.manual_seed(seed)
    return randomise_norms(stmc.UNet(depth=2, channels=(4, 8), lookahead=lookahead, width=width), seed)


@st.composite
def unets(draw, max_depth: int = 7, n_freq: int | None = None, tstmc: bool = True) -> stmc.UNet:
    """A random U-Net: depth 2..max_depth, random widths, any set of look-ahead layers, with or without input
    compression; ``tstmc=False``: the ablation's decoder (transposed in time too)."""
    depth = draw(st.integers(2, max_depth))
    channels = draw(st.lists(st.integers(1, 6), min_size=depth, max_size=depth))
    ahead = draw(st.lists(st.integers(0, 2 * depth - 1), unique=True, max_size=2 * depth))
    bins = n_freq if n_freq is not None else 2**depth * draw(st.integers(1, 2)) + 1
    compress = draw(st.sampled_from([0.3, 1.0]))  # 1.0: the spectrum enters uncompressed (its own code path)
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    model = stmc.UNet(
        depth=depth,
        lookahead=len(ahead),
        channels=channels,
        lookahead_layers=ahead,
        n_freq=bins,
        compress=compress,
        tstmc=tstmc,
    )
    return randomise_norms(model, seed)


def split_points(draw, total: int, max_chunk: int) -> list[int]:
    """Random chunk sizes (zeros included) that add up to ``total``; at least one chunk."""
    sizes, left = [], total
    while left > 0 or not sizes:
        if draw(st.booleans()) or left == 0:
            sizes.append(0)
        if left:
            size = draw(st.integers(1, min(left, max_chunk)))
            sizes.append(size)
            left -= size
    return sizes


def stream_all(stream: Stream, spec: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """The stream's output for ``spec`` fed in chunks of ``sizes`` frames, then its flush."""
    outs, start = [], 0
    for size in sizes:
        outs.append(stream(spec[..., start : start + size]))
        start += size
    return torch.cat(outs + [stream.flush()], -1)


def relative_mask_error(model: stmc.UNet, stream, batch: int = 1, frames: int = 64) -> float:
    """``||stream - offline|| / ||offline||`` over a seeded random spectrum and the flush: how far a quantized
    graph's masks are from the float model's, as a share of their energy (not one extreme bin)."""
    spec = torch.randn(batch, 2, model.n_freq, frames, generator=torch.Generator().manual_seed(9))
    out = torch.cat([stream(spec), stream.flush()], -1)
    with torch.no_grad():
        expected = model.eval()(spec)
    return float((out - expected).norm() / expected.norm())
