"""The GEMM kernels behind a streamed hop, timed on the hop's own one-frame shapes.

    python -m scripts.gemm_kernels                 # default causal U-Net
    python -m scripts.gemm_kernels --lookahead 14 --rounds 2000

Each temporal layer of a one-frame STMC hop is one GEMM: encoder layers ``[bins_out, taps*5*C_in] @
[taps*5*C_in, C_out]``, decoder layers ``[bins_in, taps*C_in] @ [taps*C_in, 5*C_out]`` (shapes read from the
model's frozen layers). This times them with the two kernels libtorch_cpu carries: the BLAS ``sgemm_`` behind
``torch.mm`` (MKL in the x86 wheels) and ``at::native::cpublas::brgemm`` (oneDNN's JIT micro-kernel on AVX2
CPUs), which the native STMC step (``stmc/stream/native.py``) uses. One thread; rounds alternate the kernels over the
whole chain; medians. It says how much of the native step's speed is the kernel, on the CPU at hand.
"""

from __future__ import annotations

import argparse
import ctypes
from pathlib import Path

import torch

from stmc.model.layers import FREQ_STRIDE
from stmc.model.unet import UNet
from stmc.stream.native import build

SOURCE = Path(__file__).with_name("gemm_kernels.cpp")


def hop_shapes(model: UNet) -> list[tuple[int, int, int]]:
    """``(M, K, N)`` of each layer's GEMM in a one-frame hop, in chain order."""
    shapes = []
    for k, layer in enumerate(model.frozen()):
        bins = model.input_shape(k)[1]
        rows = bins if layer.transposed else (bins - 1) // FREQ_STRIDE + 1
        shapes.append((rows, *layer.matrix.shape))
    return shapes


Timing = tuple[float, float]  # seconds: sgemm_, brgemm


def time_kernels(shapes: list[tuple[int, int, int]], rounds: int) -> tuple[list[Timing], Timing]:
    """Median seconds per shape and for the whole chain."""
    library = ctypes.CDLL(str(build(SOURCE)))
    flat = (ctypes.c_int64 * (3 * len(shapes)))(*[v for shape in shapes for v in shape])
    per_shape, chain = (ctypes.c_double * (2 * len(shapes)))(), (ctypes.c_double * 2)()
    library.time_gemms(ctypes.c_int64(len(shapes)), flat, ctypes.c_int64(rounds), per_shape, chain)
    return [(per_shape[2 * i], per_shape[2 * i + 1]) for i in range(len(shapes))], (chain[0], chain[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.gemm_kernels", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lookahead", type=int, default=0)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=1000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    shapes = hop_shapes(UNet(lookahead=args.lookahead, width=args.width).eval())
    per_shape, chain = time_kernels(shapes, args.rounds)
    print(
        f"one-frame GEMMs of a hop, lookahead {args.lookahead}, width {args.width}; one thread; medians of "
        f"{args.rounds} rounds"
    )
    print("| layer | M x K x N | sgemm_ (µs) | brgemm (µs) | sgemm_ ÷ brgemm |\n|---:|---|---:|---:|---:|")
    for k, ((m, k_, n), (blas, brg)) in enumerate(zip(shapes, per_shape, strict=True)):
        print(f"| {k} | {m} x {k_} x {n} | {blas * 1e6:.1f} | {brg * 1e6:.1f} | {blas / brg:.2f} |")
    print(f"| all | chain of {len(shapes)} | {chain[0] * 1e6:.0f} | {chain[1] * 1e6:.0f} | {chain[0] / chain[1]:.2f} |")


if __name__ == "__main__":
    main()
