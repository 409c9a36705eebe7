"""Export of the streaming steps with all state explicit: ONNX (:func:`to_onnx`, run by :mod:`stmc.onnx_engine`)
and LiteRT / TFLite (:func:`to_litert`, run by :mod:`stmc.litert_engine`), each behind the stream driver.

Both hold the step-graph contract of :mod:`stmc.step_graph`: one call of an engine's pure step
(:meth:`stmc.streaming.ModelEngine.pure_step`) on a fixed number of spectrum frames (``frames_per_call``, default
1 = one hop)::

    inputs   frames [B, 2, n_freq, frames_per_call] float32, state_0 .. state_N
    outputs  out    [B, 2, n_freq, frames_per_call] float32, next_state_0 .. next_state_N

``state_0 .. state_{N-1}`` are the engine's buffers (for STMC the per-layer shift registers and skip delay lines)
and ``state_N`` is each stream's time in frames (int64 ``[B]``). A new stream starts from zeros of the shapes in
the metadata (``state_shapes``/``state_dtypes``, without the batch axis); zeroing one row of every state restarts
that stream alone. ``out`` is the bounded complex mask of the frames ``D = delay`` hops earlier; the first ``D``
outputs of a fresh stream precede its start (zeros, drop them).

Look-ahead models also get a **flush graph** (ONNX: ``<name>.flush.onnx``; LiteRT: the ``flush`` signature; named in
the metadata's ``flush``): inputs ``state_0 .. state_N``, output ``out [B, 2, n_freq, D]``, the last ``D`` mask
frames of every stream in the batch, computed as offline inference's zero padding would give them (each layer's
outputs past the end are masked). It is pure: to end only some streams of a batch, take their rows and zero their
state rows.

ONNX (STMC step): the engine's own code (registers, delay lines, time masks: every mask as tensor ops) is traced by
the TorchScript exporter (``onnxscript``, which the dynamo exporter needs, is not a dependency). Its layers
(:class:`stmc.layers.FrozenLayer`, im2col + GEMM via ``unfold``) do not export (``unfold`` needs sizes the tracer
loses), so the graph runs the same folded weights as plain ``Conv``/``ConvTranspose`` nodes (:class:`ExportLayer`).
The trace uses a fixed batch of 2 so that every size folds to a constant (a graph with symbolic sizes carries
hundreds of ``Shape``/``Gather`` nodes and ran several times slower per call); no node depends on the batch size,
so the batch axis of the inputs and outputs is then declared symbolic (tests run batches 1 to 4).

LiteRT (STMC, INC and window steps, the three methods of the paper's Table 1): the same modules converted by
``litert-torch`` (an optional install: ``make litert``), static shapes, built-in operators only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from stmc.io import atomic_write
from stmc.layers import FREQ_KERNEL, FREQ_STRIDE, FrozenLayer
from stmc.litert_engine import FLUSH, METADATA_NAME, STEP, LiteRTStream, operator_names, read_litert_metadata
from stmc.onnx_engine import META, onnx_stream, read_metadata
from stmc.step_graph import INPUT, OUTPUT, metadata, offline_error, state_names
from stmc.stream import Clock
from stmc.streaming import ENGINES, ModelEngine, STMCEngine
from stmc.unet import UNet

OPSET = 17


def flush_path(path: str | Path) -> Path:
    """Where the flush graph of the step graph at ``path`` lives: ``model.onnx`` -> ``model.flush.onnx``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.flush{path.suffix or '.onnx'}")


class ExportLayer(nn.Module):
    """A :class:`FrozenLayer` as ``Conv``/``ConvTranspose`` nodes: same weights, same ``[B, T, F, C]`` contract."""

    def __init__(self, frozen: FrozenLayer) -> None:
        super().__init__()
        self.past, self.future, self.transposed = frozen.past, frozen.future, frozen.transposed
        self.register_buffer("weight", frozen.conv_weight())
        self.register_buffer("bias", frozen.bias)
        self.register_buffer("prelu", frozen.prelu)

    @property
    def taps(self) -> int:
        return self.past + 1 + self.future

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, F, C]`` -> ``[B, T - past - future, F', C']``, valid in time like the frozen layer."""
        h = x.permute(0, 3, 2, 1)  # [B, C, F, T]
        pad = FREQ_KERNEL // 2
        if self.transposed:  # tSTMC: time taps stacked as channels (channel k*C + c = frame t + k of c)
            frames = h.shape[-1] - self.taps + 1
            h = torch.cat([h[..., k : k + frames] for k in range(self.taps)], 1)
            # padding 0, then the crop that padding would make: the LiteRT converter legalizes only this form
            y = F.conv_transpose2d(h, self.weight, self.bias, (FREQ_STRIDE, 1))
            y = y[:, :, pad : y.shape[2] - pad]
        else:
            y = F.conv2d(h, self.weight, self.bias, (FREQ_STRIDE, 1), (pad, 0))
        if self.prelu is not None:
            y = F.prelu(y, self.prelu)
        return y.permute(0, 3, 2, 1)


class StepGraph(nn.Module):
    """``(frames, *state) -> (out, *next_state)``: one engine step, the function the step graph holds."""

    def __init__(self, engine: ModelEngine) -> None:
        super().__init__()
        self.engine = engine

    def forward(self, frames: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.engine.pure_step(frames, *state)


class FlushGraph(nn.Module):
    """``(*state) -> out``: the last ``D`` frames of every stream, as :meth:`stmc.stream.Stream.flush` computes
    them (every layer's outputs at times >= a stream's end are offline padding)."""

    def __init__(self, engine: ModelEngine) -> None:
        super().__init__()
        self.engine = engine

    def forward(self, *state: torch.Tensor) -> torch.Tensor:
        *buffers, time = state
        first = buffers[0]  # the zero frames take the batch size from a state tensor: the axis stays symbolic
        zeros = first[:, :1, :1, :1] * 0 + first.new_zeros(1, 2, self.engine.n_freq, self.engine.delay)
        return self.engine.step(zeros, buffers, Clock(time, end=time))[0]


class Signature(nn.Module):
    """A graph function with named inputs and outputs, the way the LiteRT converter names a signature's tensors:
    keyword inputs (``sample_kwargs``) and a dict of outputs."""

    def __init__(self, function: nn.Module, inputs: list[str], outputs: list[str]) -> None:
        super().__init__()
        self.function, self.inputs, self.outputs = function, inputs, outputs

    def forward(self, **tensors: torch.Tensor) -> dict[str, torch.Tensor]:
        result = self.function(*(tensors[name] for name in self.inputs))
        return dict(zip(self.outputs, result if isinstance(result, tuple) else (result,), strict=True))


def trace_inputs(model: UNet, engine: ModelEngine, batch: int, frames_per_call: int) -> list[torch.Tensor]:
    """Zero ``frames`` and zero state (the time last) of ``batch`` streams: the example inputs of a trace."""
    state = [torch.zeros(batch, *shape) for shape in engine.state_shapes()] + [torch.zeros(batch, dtype=torch.long)]
    return [torch.zeros(batch, 2, model.n_freq, frames_per_call), *state]


def check_export_args(model: object, frames_per_call: object) -> None:
    """``ValueError`` for what no exporter takes: another model class, a non-positive frame count."""
    if not isinstance(model, UNet):
        raise ValueError(f"export needs a stmc.UNet, got {type(model).__name__}")
    if not isinstance(frames_per_call, int) or frames_per_call < 1:
        raise ValueError(f"frames_per_call must be a positive integer, got {frames_per_call!r}")


def _save(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    meta: dict[str, str],
    opset: int,
) -> None:
    """Trace ``module`` to ``path`` at the batch of ``args``; declare the inputs' and outputs' axis 0 symbolic.

    The intermediate shapes the exporter records (``value_info``) carry the traced batch, so they are dropped;
    onnxruntime infers them again from the inputs. ``meta`` goes into the graph's ``metadata_props``.
    """
    module.eval()  # the exporter restores this mode afterwards, on the wrapped model too
    with torch.no_grad(), warnings.catch_warnings():
        # deliberate: the dynamo exporter needs onnxscript (see the module docstring)
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
        torch.onnx.export(
            module, args, str(path), input_names=inputs, output_names=outputs, opset_version=opset, dynamo=False
        )
    graph = onnx.load(str(path))
    del graph.graph.value_info[:]
    for value in [*graph.graph.input, *graph.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    for key, value in meta.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))


def to_onnx(model: UNet, path: str | Path, frames_per_call: int = 1, opset: int = OPSET) -> Path:
    """Export ``model``'s STMC step (and, for look-ahead models, its flush graph); returns the step graph's path.

    ``frames_per_call`` is fixed in the graph (the tracer needs static time sizes); 1 is one hop per call, the
    lowest latency. Both files are written next to each other; see the module docstring for the contract.
    """
    check_export_args(model, frames_per_call)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    training = model.training
    # traced: the PyTorch operators, every time mask as tensor ops (Clock without `settled`), Conv nodes
    engine = STMCEngine(model, layer_form=ExportLayer)
    frames, *state = trace_inputs(model, engine, 2, frames_per_call)  # 2: no size-1 broadcast is baked in
    n = len(state)
    flush_name = flush_path(path).name if engine.delay else ""
    meta = metadata(model, "stmc", engine.state_shapes(), engine.delay, frames_per_call, flush_name)
    meta = {META + key: value for key, value in meta.items()}
    _save(
        StepGraph(engine),
        (frames, *state),
        path,
        [INPUT, *state_names(n)],
        [OUTPUT, *state_names(n, "next_")],
        meta,
        opset,
    )
    if engine.delay:
        _save(FlushGraph(engine), tuple(state), flush_path(path), state_names(n), [OUTPUT], meta, opset)
    model.train(training)
    return path


LITERT_MISSING = ("the LiteRT converter (litert-torch) is not installed in this Python: `make litert` builds "
                  ".venv-litert with it (requirements-litert.txt); run the export with .venv-litert/bin/python")


def to_litert(model: UNet, path: str | Path, method: str = "stmc", frames_per_call: int = 1, batch: int = 1
              ) -> Path:
    """Export ``model``'s ``method`` step (``stmc``, ``inc`` or ``window``) to one LiteRT (``.tflite``) file.

    The file holds the signature ``step`` (the step-graph contract of :mod:`stmc.step_graph`) and, for look-ahead
    models, ``flush`` (state in, the last ``D`` frames out); the metadata goes into the file's own metadata list
    (entry ``stmc``, JSON). Shapes are static: ``batch`` streams and ``frames_per_call`` frames per call, both in
    the metadata. Only built-in LiteRT operators: the time, int64 in the contract, is kept int64 (``enable_x64``),
    and transposed convolutions are padding-free with a crop (:class:`ExportLayer`), which is what the converter
    legalizes. Written atomically; the converter's own output is checked by :class:`LiteRTStream` on load.
    """
    check_export_args(model, frames_per_call)
    if method not in ENGINES:
        raise ValueError(f"unknown streaming method {method!r}; choose one of {', '.join(ENGINES)}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    try:
        import litert_torch
    except ImportError:
        raise ValueError(LITERT_MISSING) from None
    path, training = Path(path), model.training
    engine = ENGINES[method](model.eval(), layer_form=ExportLayer)
    frames, *state = trace_inputs(model, engine, batch, frames_per_call)
    names = state_names(len(state))
    inputs = dict(zip([INPUT, *names], [frames, *state], strict=True))
    step = Signature(StepGraph(engine), [*inputs], [OUTPUT, *state_names(len(state), "next_")])
    converter = litert_torch.signature(STEP, step, sample_kwargs=inputs)
    if engine.delay:
        flush = Signature(FlushGraph(engine), names, [OUTPUT])
        converter = converter.signature(FLUSH, flush, sample_kwargs={name: inputs[name] for name in names})
    with torch.no_grad(), tempfile.TemporaryDirectory() as folder:
        converted = Path(folder) / "model.tflite"
        converter.convert(enable_x64=True).export(str(converted))
        meta = metadata(model, method, engine.state_shapes(), engine.delay, frames_per_call,
                        FLUSH if engine.delay else "", batch)
        data = with_litert_metadata(converted.read_bytes(), meta)
    atomic_write(path, writer=lambda tmp: Path(tmp).write_bytes(data))
    model.train(training)
    return path


def with_litert_metadata(data: bytes, meta: dict[str, str]) -> bytes:
    """The LiteRT file ``data`` with ``meta`` as its step-graph metadata entry (replacing one it had)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    graph = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    graph.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(graph.buffers) - 1
    graph.metadata = [m for m in graph.metadata or [] if m.name not in (METADATA_NAME, METADATA_NAME.encode())]
    graph.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(graph))


def load_model(ckpt: str | None, depth: int, lookahead: int, width: float, seed: int) -> UNet:
    """A checkpoint's model, or (``ckpt=None``) a fresh untrained one for dry runs."""
    from stmc.enhancer import Enhancer

    if ckpt:
        return Enhancer.from_checkpoint(ckpt).model
    torch.manual_seed(seed)
    return UNet(depth=depth, lookahead=lookahead, width=width).eval()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stmc.export OUT.onnx|OUT.tflite [--ckpt CKPT | --lookahead L --width W]``: export and verify."""
    parser = argparse.ArgumentParser(prog="python -m stmc.export", description=main.__doc__)
    parser.add_argument("out", help="path of the step graph: .onnx (look-ahead models add <name>.flush.onnx) or "
                                    ".tflite (LiteRT, one file; needs the converter: make litert)")
    parser.add_argument("--ckpt", help="checkpoint from train.py; without it a fresh untrained model (dry run)")
    parser.add_argument("--depth", type=int, default=7, help="dry-run model depth")
    parser.add_argument("--lookahead", type=int, default=0, help="dry-run model look-ahead frames")
    parser.add_argument("--width", type=float, default=1.0, help="dry-run model channel multiplier")
    parser.add_argument("--seed", type=int, default=0, help="dry-run model initialisation seed")
    parser.add_argument("--frames-per-call", type=int, default=1, help="spectrum frames per step call (hops)")
    parser.add_argument("--method", default="stmc", choices=list(ENGINES),
                        help="the step exported to .tflite: stmc, inc or window (ONNX: stmc only)")
    parser.add_argument("--batch", type=int, default=1, help="streams per call of a .tflite graph (static shapes)")
    parser.add_argument("--no-check", action="store_true", help="skip the runtime vs PyTorch comparison")
    args = parser.parse_args(argv)
    litert = Path(args.out).suffix == ".tflite"
    if not litert and args.method != "stmc":
        parser.exit(1, f"error: --method {args.method} exports to LiteRT only; give an OUT.tflite\n")
    try:
        model = load_model(args.ckpt, args.depth, args.lookahead, args.width, args.seed)
        if litert:
            path = to_litert(model, args.out, args.method, args.frames_per_call, args.batch)
        else:
            path = to_onnx(model, args.out, args.frames_per_call)
    except ValueError as err:
        parser.exit(1, f"error: {err}\n")
    meta = read_litert_metadata(path) if litert else read_metadata(path)
    flush = "a flush signature" if litert else flush_path(path)
    print(f"wrote {path}" + (f" and {flush}" if meta["flush"] else ""))
    print(
        f"  {meta['method']} step; state: {len(json.loads(meta['state_shapes']))} tensors, look-ahead "
        f"D={meta['delay']} frames, {meta['frames_per_call']} frame(s) per call"
    )
    if litert:
        print(f"  LiteRT operators: {', '.join(operator_names(path))}")
    if not args.no_check:
        frames = args.frames_per_call * max(1, 64 // args.frames_per_call)
        stream = LiteRTStream(path) if litert else onnx_stream(path)
        batch = args.batch if litert else 2
        error = offline_error(model, stream, frames=frames, batch=batch)
        runtime = "LiteRT" if litert else "onnxruntime"
        print(f"  {runtime} vs offline PyTorch over {frames} frames: max |error| = {error:.2e}")
        if error > 1e-4:
            print("  error above 1e-4")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
