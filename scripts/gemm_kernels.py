"""The GEMM kernels behind a streamed hop, timed on the hop's own one-frame shapes.

    python -m scripts.gemm_kernels                 # default causal U-Net
    python -m scripts.gemm_kernels --lookahead 14 --rounds 2000
    python -m scripts.gemm_kernels --onnx          # and the same GEMMs as onnxruntime Gemm nodes

Each temporal layer of a one-frame STMC hop is one GEMM: encoder layers ``[bins_out, taps*5*C_in] @
[taps*5*C_in, C_out]``, decoder layers ``[bins_in, taps*C_in] @ [taps*C_in, 5*C_out]`` (shapes read from the
model's frozen layers). This times them with the two kernels libtorch_cpu carries: the BLAS ``sgemm_`` behind
``torch.mm`` (MKL in the x86 wheels) and ``at::native::cpublas::brgemm`` (oneDNN's JIT micro-kernel on AVX2
CPUs), which the native STMC step (``stmc/stream/native.py``) uses. One thread; rounds alternate the kernels over the
whole chain; medians. It says how much of the native step's speed is the kernel, on the CPU at hand.

``--onnx`` also times a graph of only the hop's ``Gemm`` nodes in onnxruntime (one per layer, the same shapes,
inputs and outputs bound once) interleaved with the whole exported ONNX step and the native hop, both behind the
stream driver: what of the exported step's time is its GEMMs and what the nodes around them cost
(docs/benchmarks.md). Its rounds are ``--rounds`` ÷ 100, each of ``CALLS`` calls of every run.
"""

from __future__ import annotations

import argparse
import ctypes
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from stmc.model.layers import FREQ_STRIDE
from stmc.model.unet import UNet
from stmc.stream.native import build

SOURCE = Path(__file__).with_name("gemm_kernels.cpp")
CALLS = 40  # calls per run in each interleaved round of --onnx


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


class GemmGraph:
    """A graph of only ``Gemm`` nodes of ``shapes`` in onnxruntime (random weights and inputs; one thread, as the
    exported steps run); a call is one run. Inputs and outputs are bound once to tensors this object keeps alive."""

    def __init__(self, shapes: list[tuple[int, int, int]]) -> None:
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        from stmc.export.onnx import OPSET, bind, session

        nodes, inputs, outputs, initializers = [], [], [], []
        self.buffers: dict[str, torch.Tensor] = {}
        generator = torch.Generator().manual_seed(0)
        self.weights = [torch.randn(k, n, generator=generator) for _, k, n in shapes]
        for i, ((m, k, n), weight) in enumerate(zip(shapes, self.weights, strict=True)):
            inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [m, k]))
            outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [m, n]))
            initializers += [
                numpy_helper.from_array(weight.numpy(), f"w{i}"),
                numpy_helper.from_array(np.zeros(n, np.float32), f"b{i}"),
            ]
            nodes.append(helper.make_node("Gemm", [f"x{i}", f"w{i}", f"b{i}"], [f"y{i}"]))
            self.buffers[f"x{i}"], self.buffers[f"y{i}"] = torch.randn(m, k, generator=generator), torch.zeros(m, n)
        graph = helper.make_graph(nodes, "hop_gemms", inputs, outputs, initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        onnx.checker.check_model(model)
        self.session = session(model.SerializeToString())
        self.binding = self.session.io_binding()
        for name, tensor in self.buffers.items():
            bind(self.binding.bind_input if name[0] == "x" else self.binding.bind_output, name, tensor)

    def __call__(self) -> None:
        self.session.run_with_iobinding(self.binding)


def time_onnx(model: UNet, rounds: int, calls: int = CALLS) -> dict[str, float]:
    """Median seconds per call of the hop's GEMMs as onnxruntime ``Gemm`` nodes, of the whole exported ONNX step and
    of the native hop (both streamed one frame per call), in interleaved rounds of ``calls`` calls each."""
    from stmc.bench.speed import exported_stream, with_trained_slopes
    from stmc.stream.engines import streaming

    model = with_trained_slopes(model)
    frame = torch.randn(1, 2, model.n_freq, 1)
    exported, native = exported_stream(model), streaming(model, native=True)
    runs: dict[str, Callable[[], object]] = {
        "onnxruntime Gemm nodes only": GemmGraph(hop_shapes(model)),
        "onnxruntime exported step": lambda: exported(frame),
        "native step": lambda: native(frame),
    }
    medians: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            medians[name].append(float(np.median(times)))
    return {name: float(np.median(values)) for name, values in medians.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.gemm_kernels", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lookahead", type=int, default=0)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=1000, help="kernel rounds (--onnx: this ÷ 100 rounds)")
    parser.add_argument(
        "--onnx", action="store_true", help="also the GEMMs as onnxruntime Gemm nodes beside the exported step"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = UNet(lookahead=args.lookahead, width=args.width).eval()
    shapes = hop_shapes(model)
    per_shape, chain = time_kernels(shapes, args.rounds)
    print(
        f"one-frame GEMMs of a hop, lookahead {args.lookahead}, width {args.width}; one thread; medians of "
        f"{args.rounds} rounds"
    )
    print("| layer | M x K x N | sgemm_ (µs) | brgemm (µs) | sgemm_ ÷ brgemm |\n|---:|---|---:|---:|---:|")
    for k, ((m, k_, n), (blas, brg)) in enumerate(zip(shapes, per_shape, strict=True)):
        print(f"| {k} | {m} x {k_} x {n} | {blas * 1e6:.1f} | {brg * 1e6:.1f} | {blas / brg:.2f} |")
    print(f"| all | chain of {len(shapes)} | {chain[0] * 1e6:.0f} | {chain[1] * 1e6:.0f} | {chain[0] / chain[1]:.2f} |")
    if args.onnx:
        rounds = max(1, args.rounds // 100)
        timed = time_onnx(model, rounds)
        native = timed["native step"]
        print(f"\nper call, medians of {rounds} interleaved rounds of {CALLS} calls\n")
        print("| run | ms per call | ÷ native step |\n|---|---:|---:|")
        for name, seconds in timed.items():
            print(f"| {name} | {seconds * 1e3:.3f} | {seconds / native:.2f} |")


if __name__ == "__main__":
    main()
