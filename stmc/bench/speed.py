"""Benchmark of streamed inference: time per hop, MACs per hop, state and peak memory, per method.

``python -m stmc.bench.speed`` pins one thread and, for the default causal and non-causal models, times

- ``full``: offline inference over a long sequence divided by its frames (the floor a stream should approach),
  with the frozen layers the streams use, ``full (nn.Module)``, the training module in eval mode, and
  ``full (native)``, the native step's kernels with each layer one GEMM over the whole sequence (the floor
  for the native STMC stream: the same kernels, every weight reused across frames);
- ``stmc``, ``inc``, ``window``: one hop (one frame) per call, as a real-time stream would, eager and
  through ``torch.compile``; ``stmc`` runs its native step (:mod:`stmc.stream.native`) where it can, and
  ``stmc (PyTorch ops)`` is the same engine on PyTorch operators, like every other row, and ``stmc (bf16)`` the
  native step with bfloat16 GEMM operands where the CPU has bf16 instructions (AVX512-BF16); the exported STMC
  step in onnxruntime (one thread) in float32 and int8 (:mod:`stmc.export.quantize`); and, with ``--litert``
  (the converter: ``make litert``), the stmc, inc and window steps in LiteRT and the stmc step in int8, each in a
  process of its own (:mod:`stmc.bench.litert`);
- ``stmc per-call overhead``: the native step on a depth-1 U-Net with one channel (a few thousand MACs), i.e.
  what a call costs around the network: the driver's checks and time bookkeeping, the binding, the output;

interleaved in rounds so that background load hits every method alike (PReLU slopes drawn as trained ones are:
:func:`with_trained_slopes`), and reports medians and ratios from
that one run. MACs are counted (``torch.utils.flop_counter``) on the calls themselves, not derived. Peak
memory is the most bytes held at once by tensors that the call allocates plus the stream's state (plus, for
the native step, its preallocated buffers; the native step counts its own GEMMs' MACs); for LiteRT rows it is
the worker process's peak resident-memory growth, as TFLite's benchmark tool reports it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from stmc.bench.litert import LiteRTProcess
from stmc.model.unet import UNet
from stmc.stream.driver import Stream
from stmc.stream.engines import METHODS, CompiledEngine, padded_walk, streaming
from stmc.stream.native import NativeGraph, NativeOffline, bf16_kernels
from stmc.stream.native import unavailable as native_unavailable

MODELS = {"causal": 0, "noncausal": 14}
OPS = "stmc (PyTorch ops)"  # the row of the STMC engine without its native step
OVERHEAD = "stmc per-call overhead"  # the native step around an all but empty network
ABLATION = "stmc (without tSTMC)"  # the same architecture with a decoder transposed in time, STMC by overlap-add
INT8_ONNX, INT8_LITERT = "stmc (onnxruntime int8)", "stmc (LiteRT int8)"  # compared with the native hop
BF16 = "stmc (bf16)"  # the native step with bfloat16 GEMM operands, where the CPU has bf16 instructions


def _storage_key(tensor: torch.Tensor) -> int:
    return StorageWeakRef(tensor.untyped_storage()).cdata


class PeakBytes(TorchDispatchMode):
    """Most bytes held at once by the tracked tensors and by every tensor allocated under this mode.

    A view of a tensor from outside (the caller's input chunk, a slice of a long signal) allocates nothing and
    is not counted; a view of a counted tensor counts once.
    """

    def __init__(self, held: list[torch.Tensor]) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        for tensor in held:
            self._track(tensor)
        self.peak = self._total()

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        ref = StorageWeakRef(storage)
        self.live.setdefault(ref.cdata, (ref, storage.nbytes()))

    def _total(self) -> int:
        self.live = {key: entry for key, entry in self.live.items() if not entry[0].expired()}
        return sum(size for _, size in self.live.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._total()  # forget storages freed since the last call before their addresses can be reused
        inputs = {_storage_key(leaf) for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and _storage_key(leaf) not in inputs:
                self._track(leaf)
        self.peak = max(self.peak, self._total())
        return out


@dataclass
class Row:
    """Measurements of one method on one model."""

    method: str
    seconds: list[float] = field(default_factory=list)  # per hop (or per frame for offline rows)
    macs: float | None = None  # None where the calls cannot be seen (onnxruntime)
    state_bytes: int = 0
    peak_bytes: int | None = None
    # peak_bytes is a process's resident-memory growth (weights and runtime included), not tensor bytes: LiteRT
    resident: bool = False

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1e3


def stream_state_bytes(stream: Stream) -> int:
    """Bytes of the engine's state (every tensor of get_state but the time)."""
    return sum(t.numel() * t.element_size() for t in stream.get_state()[:-1])


def offline_frozen(model: UNet) -> Callable[[torch.Tensor], torch.Tensor]:
    """Offline inference with the frozen (BatchNorm-folded, GEMM) layers that the streams run."""
    layers = model.frozen()

    def run(spec: torch.Tensor) -> torch.Tensor:
        return model.through_frames(spec, lambda h: padded_walk(model, layers, h))

    return run


def count_macs(fn: Callable[[], object], native: NativeGraph | None = None) -> float:
    """MACs of one call of ``fn``: torch's count of its operators, or, where it runs ``native`` code (invisible
    to dispatch modes), that code's own count of its GEMMs."""
    if native is not None:
        before = native.macs
        fn()
        return native.macs - before
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 2


def peak_bytes(
    fn: Callable[[], object], held: Callable[[], list[torch.Tensor]], native: NativeGraph | None = None
) -> int:
    """:class:`PeakBytes` of one call of ``fn`` starting with ``held()`` live, plus the buffers ``native`` code
    preallocated. ``held`` is a function so that nothing here keeps those tensors alive: a stream that replaces
    its state during the call frees the old one, and it must not be counted twice."""
    with PeakBytes(held()) as tracker:
        fn()
    return tracker.peak + (native.scratch_bytes if native is not None else 0)


def with_trained_slopes(model: UNet, seed: int = 0) -> UNet:
    """``model`` with its PReLU slopes drawn per channel within the range most trained slopes fall in (-0.9 to 0.8),
    in place. A fresh model's are all 0.25, which a graph converter folds into one scalar (LiteRT: a LEAKY_RELU),
    so a timed graph would not be the one a trained model exports. Speed depends on no other weight's value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            if layer.act is not None:
                layer.act.weight.copy_(torch.rand(layer.act.weight.shape, generator=generator) * 1.7 - 0.9)
    return model


def timing_calibration(model: UNet) -> list[torch.Tensor]:
    """Random spectra to calibrate an int8 graph that is only timed (its speed does not depend on the ranges;
    its quality is measured with evaluate.py on a graph calibrated on real audio)."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, model.n_freq, 64, generator=generator) for _ in range(2)]


@torch.inference_mode()
def exported_stream(model: UNet, quantize: str | None = None) -> Stream:
    """The exported STMC step in onnxruntime (one thread), behind the stream driver; ``quantize="int8"``: its int8
    form (calibrated by :func:`timing_calibration`).

    The graphs are written to a temporary folder and loaded into memory; the folder is gone on return.
    """
    from stmc.export import to_onnx
    from stmc.export.onnx import open_onnx

    calibration = timing_calibration(model) if quantize else None
    with tempfile.TemporaryDirectory() as folder:
        path = to_onnx(model, Path(folder) / "step.onnx", quantize=quantize, calibration=calibration)
        return open_onnx(path, threads=1)


def exported_litert_stream(model: UNet, batch: int, quantize: str | None = None) -> Stream:
    """The exported STMC step in LiteRT (one interpreter thread, in this process) for ``batch`` streams, its static
    batch; ``quantize="int8"`` as :func:`exported_stream`. Needs the converter (``make litert``)."""
    from stmc.export import to_litert
    from stmc.export.litert import open_litert

    calibration = timing_calibration(model) if quantize else None
    with tempfile.TemporaryDirectory() as folder:
        path = to_litert(model, Path(folder) / "step.tflite", batch=batch, quantize=quantize, calibration=calibration)
        return open_litert(path, threads=1)


def litert_processes(models: dict[str, tuple[UNet, str, str | None]], frames: int) -> dict[str, LiteRTProcess]:
    """Rows ``name -> (model, method, quantize)`` exported to LiteRT (needs the converter: ``make litert``), each
    streamed in a worker process of its own (:mod:`stmc.bench.litert`); the files are gone once the workers have
    loaded them."""
    from stmc.export import to_litert

    with tempfile.TemporaryDirectory() as folder:
        files = {
            name: to_litert(
                model,
                Path(folder) / f"{index}.tflite",
                method,
                quantize=quantize,
                calibration=timing_calibration(model) if quantize else None,
            )
            for index, (name, (model, method, quantize)) in enumerate(models.items())
        }
        return {name: LiteRTProcess(path, frames) for name, path in files.items()}


def measure(
    model: UNet,
    frames: int,
    rounds: int,
    hops: int,
    compile: bool,
    onnx: bool = False,
    ablation: bool = False,
    litert: bool = False,
) -> list[Row]:
    """Interleaved timing of offline and streamed inference on one model; see the module docstring.

    With ``onnx``, the exported STMC step is also timed in onnxruntime; with ``ablation``, the STMC stream of the
    same architecture without tSTMC (``tstmc=False``, PyTorch operators: the native step has no overlap-add
    decoder), to compare with ``stmc (PyTorch ops)``; with ``litert``, the stmc, inc and window steps exported to
    LiteRT (and the ablation's stmc step), each in a process of its own whose resident-memory growth is its peak
    memory (:mod:`stmc.bench.litert`).
    """
    model = model.eval()
    warmup = 30
    spec = torch.randn(1, 2, model.n_freq, warmup + rounds * hops + 1)
    long = torch.randn(1, 2, model.n_freq, frames)
    streams = {method: streaming(model, method) for method in METHODS}
    offline = {"full": offline_frozen(model), "full (nn.Module)": model}
    if streams["stmc"].engine.native:
        # its floor: the same kernels over the sequence; and the same engine on PyTorch operators
        offline["full (native)"] = NativeOffline(model, frames)
        streams = {
            **streams,
            **({BF16: streaming(model, "stmc", dtype=torch.bfloat16)} if bf16_kernels() else {}),
            OPS: streaming(model, "stmc", native=False),
            OVERHEAD: streaming(UNet(depth=1, channels=[1], n_freq=model.n_freq).eval(), "stmc"),
        }
    if ablation:
        torch.manual_seed(0)
        without_tstmc = UNet(**{**model.config, "tstmc": False}).eval()
        with torch.no_grad():  # the same PReLU slopes (their form decides how exporters write them)
            for ours, theirs in zip(model.layers, without_tstmc.layers, strict=True):
                if ours.act is not None:
                    theirs.act.weight.copy_(ours.act.weight)
        streams[ABLATION] = streaming(without_tstmc, "stmc", native=False)
    if compile:
        streams.update({f"{method} (compiled)": streaming(model, method, compile=True) for method in METHODS})
    extra = {}
    if onnx:
        extra = {"stmc (onnxruntime)": exported_stream(model), INT8_ONNX: exported_stream(model, "int8")}
    workers = {}
    if litert:
        exports = {f"{method} (LiteRT)": (model, method, None) for method in METHODS}
        exports[INT8_LITERT] = (model, "stmc", "int8")
        if ablation:
            exports[f"{ABLATION} (LiteRT)"] = (without_tstmc, "stmc", None)
        workers = litert_processes(exports, rounds * hops)
    rows = {name: Row(name) for name in [*offline, *streams, *extra, *workers]}
    for name, run in offline.items():
        run(long)
        native = run if isinstance(run, NativeOffline) else None
        rows[name].macs = count_macs(lambda run=run: run(long), native) / frames
        rows[name].peak_bytes = peak_bytes(lambda run=run: run(long), list, native)
    for stream in [*streams.values(), *extra.values()]:
        for t in range(warmup):
            stream(spec[..., t : t + 1])
    position = warmup
    for _ in range(rounds):
        for name, run in offline.items():
            start = time.perf_counter()
            run(long)
            rows[name].seconds.append((time.perf_counter() - start) / frames)
        for name, stream in [*streams.items(), *extra.items()]:
            for t in range(position, position + hops):
                chunk = spec[..., t : t + 1]
                start = time.perf_counter()
                stream(chunk)
                rows[name].seconds.append(time.perf_counter() - start)
        for name, worker in workers.items():
            rows[name].seconds += worker.time(hops)
        position += hops
    for name, stream in streams.items():
        chunk = spec[..., position : position + 1]
        row = rows[name]
        row.state_bytes = stream_state_bytes(stream)
        if isinstance(stream.engine, CompiledEngine):  # opaque to dispatch modes: count on an eager twin
            twin = streaming(model, name.split()[0], native=False)
            twin(chunk)
            twin.set_state([s.clone() for s in stream.get_state()])
            stream = twin
        native = getattr(stream.engine, "native_step", None)
        row.macs = count_macs(lambda stream=stream, chunk=chunk: stream(chunk), native)
        row.peak_bytes = peak_bytes(lambda stream=stream, chunk=chunk: stream(chunk), stream.get_state, native)
    for name, stream in extra.items():
        rows[name].state_bytes = stream_state_bytes(stream)
    for name, worker in workers.items():
        memory = worker.close()
        rows[name].state_bytes, rows[name].resident = memory["state_bytes"], True
        rows[name].peak_bytes = memory["overall_bytes"] if memory["peak_reset"] else None
    return list(rows.values())


def floor_row(rows: list[Row]) -> Row:
    """The fastest offline row: the time per frame a stream is compared with."""
    return min((row for row in rows if row.method.startswith("full")), key=lambda row: row.median_ms)


def table(results: dict[str, list[Row]]) -> str:
    """Markdown: one block of rows per model; ratios against the faster offline row, against ``stmc`` (compiled
    and LiteRT streams against ``stmc`` of their kind) and against ``stmc (PyTorch ops)`` where the native step
    ran."""
    lines = [
        "| model | method | time per hop (ms, median) | × full | ÷ stmc | ÷ stmc (PyTorch ops) | MACs per hop (M) "
        "| state (KiB) | peak memory (KiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model_name, rows in results.items():
        by = {row.method: row for row in rows}
        floor = floor_row(rows).median_ms
        for row in rows:
            streamed = not row.method.startswith("full")
            kind = next((k for k in ("(compiled)", "(LiteRT)") if row.method.endswith(k)), None)
            reference = by[f"stmc {kind}" if kind else "stmc"].median_ms
            ops = f"{row.median_ms / by[OPS].median_ms:.2f}" if OPS in by else "—"
            per = "hop" if streamed else "frame"
            macs = "—" if row.macs is None else f"{row.macs / 1e6:.2f}"
            peak = "—" if row.peak_bytes is None else f"{row.peak_bytes / 1024:.0f}"
            lines.append(
                f"| {model_name} | {row.method} | {row.median_ms:.3f} (per {per}) | {row.median_ms / floor:.2f} "
                f"| {row.median_ms / reference:.2f} | {ops} | {macs} | {row.state_bytes / 1024:.1f} | {peak} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier of the benchmarked U-Nets")
    parser.add_argument("--frames", type=int, default=256, help="sequence length of the offline rows")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (medians are over all of them)")
    parser.add_argument("--hops", type=int, default=20, help="streamed hops per method per round")
    parser.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="skip the torch.compile'd streams (each takes ~1 min to compile)",
    )
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the onnxruntime row")
    parser.add_argument(
        "--litert",
        action="store_true",
        help="also the three steps in LiteRT (needs the converter: run with .venv-litert/bin/python)",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {}
    for name in args.models:
        model = with_trained_slopes(UNet(lookahead=MODELS[name], width=args.width))
        results[name] = measure(model, args.frames, args.rounds, args.hops, args.compile, args.onnx, litert=args.litert)
    params = {
        name: sum(p.numel() for p in UNet(lookahead=MODELS[name], width=args.width).parameters())
        for name in args.models
    }
    print(
        f"threads={args.threads} width={args.width} chunk=1 hop (256 samples, 16 ms); "
        f"x full = time / fastest offline time per frame; ÷ stmc against stmc of the same kind (eager/compiled)"
    )
    why = native_unavailable()
    print(
        "stmc: " + ("native step (stmc.stream.native)" if why is None else f"PyTorch operators (no native step: {why})")
    )
    print("parameters: " + ", ".join(f"{name} {count / 1e6:.2f} M" for name, count in params.items()))
    print(table(results))


if __name__ == "__main__":
    main()
