"""Throughput: how many real-time streams one core carries, per engine and batch size, against the GEMM roof.

``python -m stmc.bench.throughput`` pins one thread and, for the default causal and non-causal models, times one hop
(one 16 ms frame per stream) of a batch of ``B`` streams through the native STMC step (float32, and bfloat16 where
the CPU has bf16 instructions), the exported ONNX step in onnxruntime (float32 and int8) and, with ``--litert`` (run
with ``.venv-litert/bin/python``), the LiteRT step exported for that batch (float32 and int8), interleaved in rounds
(medians). The models' PReLU slopes are drawn as trained ones are (:func:`stmc.bench.speed.with_trained_slopes`).
A stream needs one hop every 16 ms, so a core carries
``B × 16 ms / (time per batched hop)`` streams in real time. The roof is what the machine's GEMM alone would
allow: ``16 ms × GEMM rate / MACs per hop`` streams, the rate measured here with ``torch.mm`` on one thread
(fp32, and bf16 for reference).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch

from stmc.bench.speed import (
    MODELS,
    count_macs,
    exported_litert_stream,
    exported_stream,
    offline_frozen,
    with_trained_slopes,
)
from stmc.model.stft import HOP, SAMPLE_RATE
from stmc.model.unet import UNet
from stmc.stream.engines import streaming
from stmc.stream.native import bf16_kernels

HOP_SECONDS = HOP / SAMPLE_RATE


def gemm_rate(dtype: torch.dtype, size: int = 1024, seconds: float = 0.5) -> float:
    """Multiply-accumulates per second of ``torch.mm`` on ``size``-square matrices, at the current thread count
    (the roof the streams and ``scripts.train_throughput`` are compared with)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        runs += 1
    return runs * size**3 / (time.perf_counter() - started)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(
    model: UNet, batches: Sequence[int], rounds: int, hops: int, onnx: bool, litert: bool = False
) -> list[dict]:
    """Per engine and batch: median seconds per batched hop and the real-time streams per core."""
    model = model.eval()
    engines = {"native fp32": lambda b: streaming(model, "stmc", native=True)}
    if bf16_kernels():  # the bf16 step's speed means something only on the CPU's bf16 instructions
        engines["native bf16"] = lambda b: streaming(model, "stmc", dtype=torch.bfloat16)
    if onnx:
        engines["onnxruntime fp32"] = lambda b: exported_stream(model)
        engines["onnxruntime int8"] = lambda b: exported_stream(model, "int8")
    if litert:  # a LiteRT step has a static batch: one export per batch
        engines["LiteRT fp32"] = lambda b: exported_litert_stream(model, b)
        engines["LiteRT int8"] = lambda b: exported_litert_stream(model, b, "int8")
    streams = {(name, b): make(b) for name, make in engines.items() for b in batches}
    chunks = {b: torch.randn(b, 2, model.n_freq, 1) for b in batches}
    for (_, b), stream in streams.items():
        for _ in range(20):  # past the start-up masking, steady state
            stream(chunks[b])
    seconds: dict[tuple[str, int], list[float]] = {key: [] for key in streams}
    for _ in range(rounds):
        for (name, b), stream in streams.items():
            for _ in range(hops):
                seconds[(name, b)].append(timed(lambda stream=stream, b=b: stream(chunks[b])))
    return [
        {
            "engine": name,
            "batch": b,
            "hop_ms": 1e3 * statistics.median(values),
            "streams": b * HOP_SECONDS / statistics.median(values),
        }
        for (name, b), values in seconds.items()
    ]


def table(results: dict[str, list[dict]], macs: dict[str, float], roof: float) -> str:
    lines = [
        "| model | engine | batch | time per batched hop (ms) | real-time streams per core | "
        "fp32 GEMM roof (streams) | of the roof |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for model, rows in results.items():
        ceiling = HOP_SECONDS * roof / macs[model]
        for row in rows:
            lines.append(
                f"| {model} | {row['engine']} | {row['batch']} | {row['hop_ms']:.3f} | {row['streams']:.1f} "
                f"| {ceiling:.1f} | {row['streams'] / ceiling:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stmc.bench.throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32, 128])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians over all of them)")
    parser.add_argument("--hops", type=int, default=10, help="batched hops per engine and batch per round")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the onnxruntime rows")
    parser.add_argument(
        "--litert", action="store_true", help="also the LiteRT steps (needs the converter: make litert, .venv-litert)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    fp32, bf16 = gemm_rate(torch.float32), gemm_rate(torch.bfloat16, size=256)
    results, macs = {}, {}
    for name in args.models:
        model = with_trained_slopes(UNet(lookahead=MODELS[name]).eval())
        spec = torch.zeros(1, 2, model.n_freq, 8)
        macs[name] = count_macs(lambda model=model, spec=spec: offline_frozen(model)(spec)) / 8  # = an STMC hop's
        results[name] = measure(model, args.batches, args.rounds, args.hops, args.onnx, args.litert)
    print(
        f"one thread; torch.mm 1024³ fp32 {fp32 / 1e9:.1f} GMAC/s, bf16 {bf16 / 1e9:.2f} GMAC/s (256³); MACs per "
        "hop " + ", ".join(f"{name} {m / 1e6:.2f} M" for name, m in macs.items())
    )
    print(
        "native bf16: "
        + ("oneDNN's AVX512-BF16 brgemm" if bf16_kernels() else "no row: this CPU has no bf16 instructions")
    )
    print(table(results, macs, fp32))


if __name__ == "__main__":
    main()
