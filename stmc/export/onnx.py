"""ONNX step graphs: the writer (:func:`to_onnx`) and the reader, an engine behind the stream driver.

:func:`open_onnx` gives a :class:`stmc.stream.driver.Stream` with the same per-call contract as the PyTorch
engines: ``s(chunk [B, 2, F, t])`` returns the mask frames delayed by ``D`` (nothing before the streams' start),
``s.flush()`` the last ``D`` frames, ``s.reset()`` / ``s.reset(mask)`` restart all / chosen streams. ``t`` must
be a multiple of the graph's ``frames_per_call`` (any ``t`` for the default 1). The graph contract (input and
output names, the metadata) is :mod:`stmc.export.graph`'s; ONNX keeps the metadata as ``stmc.*`` metadata_props.
A look-ahead model's graphs are three files: ``model.onnx`` (the step), ``model.settled.onnx`` (the step without
time masks, from ``settles_at`` on) and ``model.flush.onnx``.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from stmc.errors import InputError
from stmc.export.graph import (
    INPUT,
    OUTPUT,
    ConvExportLayer,
    ExportLayer,
    FlushGraph,
    GraphEngine,
    GraphLayer,
    GraphMetadata,
    StepGraph,
    check_export_args,
    metadata,
    settle_point,
    state_names,
    trace_inputs,
)
from stmc.export.quantize import PRECISIONS, calibration_feeds, calibration_spectra, feeds_from, quantize_onnx
from stmc.files import atomic_write
from stmc.model.layers import FrozenLayer
from stmc.model.unet import UNet
from stmc.stream.driver import Stream
from stmc.stream.engines import STMCEngine

META = "stmc."  # the prefix of the step-graph metadata keys (stmc.export.graph) among the ONNX metadata_props


def read_metadata(path: str | Path) -> dict[str, str]:
    """The step-graph metadata of an exported ONNX graph, without the prefix."""
    props = onnx.load(str(path), load_external_data=False).metadata_props
    return {p.key[len(META) :]: p.value for p in props if p.key.startswith(META)}


def session(graph: str | Path | bytes, threads: int = 1):
    """An onnxruntime CPU session of the graph file at ``graph`` (or the serialized graph itself) with ``threads``
    intra-op threads, sequential execution (timing-friendly)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    source = graph if isinstance(graph, bytes) else str(graph)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxEngine(GraphEngine):
    """The step graph (``frames_per_call`` frames per call) and, for look-ahead models, the settled and the flush
    graphs."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        self.path = Path(path)
        super().__init__(GraphMetadata(read_metadata(self.path), str(self.path)))
        self.step_session = session(self.path, threads)
        types = {"tensor(float)": "float32", "tensor(int64)": "int64"}
        self.meta.check_inputs({i.name: (i.shape, types.get(i.type, i.type)) for i in self.step_session.get_inputs()})
        self.outputs = [o.name for o in self.step_session.get_outputs()]
        flush, settled = self.meta.flush, self.meta.settled
        self.flush_session = self.companion("flush", flush, threads) if flush else None
        self.sessions = {False: self.step_session}
        if settled:
            self.sessions[True] = self.companion("settled", settled, threads)
        self.turns: dict[bool, Turns] = {}

    def companion(self, role: str, name: str, threads: int):
        """The session of the ``role`` graph the step graph's metadata names, checked to belong to it."""
        path = self.path.parent / name
        if not path.is_file():
            raise InputError(
                f"{self.path} needs its {role} graph {path}, which is missing: keep the files of one export "
                "together (python -m stmc.export writes them)"
            )
        self.meta.check_companion(read_metadata(path), role, str(path))
        return session(path, threads)

    def call(
        self, frames: torch.Tensor, state: list[torch.Tensor], time: torch.Tensor, use_settled: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The step through :class:`Turns`: bound buffers instead of new arrays per run (a third of a small model's
        time per hop went into feeding and fetching 2 x N arrays)."""
        turns, batch = self.turns.get(use_settled), frames.shape[0]
        if turns is None or turns.shapes[0] != tuple(frames.shape):  # the driver checked the state against the batch
            shapes = [tuple(frames.shape), *((batch, *shape) for shape in self.meta.state_shapes), (batch,)]
            turns = Turns(self.sessions[use_settled], shapes, [INPUT, *self.meta.names], self.outputs)
            self.turns[use_settled] = turns
        return turns(frames, state, time)

    def run_flush(self, state: list[torch.Tensor], time: torch.Tensor) -> torch.Tensor:
        inputs = dict(zip(self.meta.names, [tensor.numpy() for tensor in [*state, time]], strict=True))
        return torch.from_numpy(self.flush_session.run(None, inputs)[0])


class Turns:
    """Two sets of state buffers bound to the step graph in turn: a run reads one set and writes the other, so the
    outputs land in memory allocated once and become the next run's inputs without a copy.

    A state that is not one of the sets (the driver's zeros, a ``set_state``) is copied into a set first; the
    driver's time (a new tensor every step) is copied into the input set on every run; ``out`` is cloned, since
    the caller may keep it.
    """

    def __init__(self, step, shapes: list[tuple[int, ...]], inputs: list[str], outputs: list[str]) -> None:
        frames, *state_shapes, time = shapes
        self.shapes = shapes
        self.frames = torch.zeros(frames)
        self.sets = [
            [torch.zeros(frames), *(torch.zeros(shape) for shape in state_shapes), torch.zeros(time, dtype=torch.long)]
            for _ in range(2)
        ]  # each: out, state_0 .. state_{N-1}, time
        self.step, self.bindings = step, []
        for read, written in ((0, 1), (1, 0)):
            binding = step.io_binding()
            for name, tensor in zip(inputs, [self.frames, *self.sets[read][1:]], strict=True):
                bind(binding.bind_input, name, tensor)
            for name, tensor in zip(outputs, self.sets[written], strict=True):
                bind(binding.bind_output, name, tensor)
            self.bindings.append(binding)

    def __call__(
        self, frames: torch.Tensor, state: list[torch.Tensor], time: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        read = next((k for k, buffers in enumerate(self.sets) if state and buffers[1] is state[0]), None)
        if read is None:  # a state from elsewhere: into set 0
            read = 0
            for buffer, tensor in zip(self.sets[0][1:-1], state, strict=True):
                buffer.copy_(tensor)
        self.sets[read][-1].copy_(time)
        self.frames.copy_(frames)
        self.step.run_with_iobinding(self.bindings[read])
        out, *next_state, next_time = self.sets[1 - read]
        return out.clone(), next_state, next_time


def bind(method, name: str, tensor: torch.Tensor) -> None:
    """``binding.bind_input`` / ``bind_output`` of ``name`` to a contiguous CPU tensor's memory."""
    method(name, "cpu", 0, tensor.numpy().dtype, list(tensor.shape), tensor.data_ptr())


def open_onnx(path: str | Path, threads: int = 1) -> Stream:
    """The exported graphs at ``path`` behind the stream driver, run by onnxruntime with ``threads`` threads."""
    return Stream(OnnxEngine(path, threads))


# -- the writer --

OPSET = 17


def int8_layer_form(frozen: FrozenLayer) -> GraphLayer:
    """The form of a layer in the int8 step graph: one ``Conv``, which the quantizer and onnxruntime turn into a
    ``QLinearConv`` with the im2col inside (in float32 the ``Conv`` is the slower form); the chain's first and last
    layers (``on_spectrum``) stay float32 ``Gather`` + ``Gemm``: their products are too thin for int8 to pay for
    quantizing their large activations, and they carry the widest ranges (docs/deployment.md, "int8 graphs")."""
    return ExportLayer(frozen) if frozen.on_spectrum else ConvExportLayer(frozen)


# float32: each layer as Gather + Gemm nodes; int8: see int8_layer_form
LAYER_FORMS = {None: ExportLayer, "int8": int8_layer_form}
QUANTIZED_OPS = ["Conv"]  # the int8 form's products, what the quantizer quantizes


def companion_path(path: str | Path, role: str) -> Path:
    """Where the ``role`` graph (``flush``, ``settled``) of the step graph at ``path`` lives: ``model.onnx`` ->
    ``model.flush.onnx``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{role}{path.suffix or '.onnx'}")


def _trace(
    module: nn.Module, args: tuple[torch.Tensor, ...], folder: Path, inputs: list[str], outputs: list[str], opset: int
) -> onnx.ModelProto:
    """``module`` traced at the batch of ``args``, with the inputs' and outputs' axis 0 declared symbolic.

    The intermediate shapes the exporter records (``value_info``) carry the traced batch, so they are dropped;
    onnxruntime infers them again from the inputs.
    """
    module.eval()  # the exporter restores this mode afterwards, on the wrapped model too
    with torch.no_grad(), warnings.catch_warnings():
        # deliberate: the dynamo exporter needs onnxscript (see the module docstring)
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # the step's sizes are static by design
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1")  # F.pad's reversed pads: onnxruntime
        # folds them when it loads the graph
        traced = folder / "traced.onnx"
        torch.onnx.export(
            module, args, str(traced), input_names=inputs, output_names=outputs, opset_version=opset, dynamo=False
        )
        graph = onnx.load(str(traced))
    del graph.graph.value_info[:]
    constants_to_initializers(graph.graph)
    for value in [*graph.graph.input, *graph.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    return graph


def _write(graph: onnx.ModelProto, path: Path, meta: dict[str, str]) -> None:
    """``graph`` with ``meta`` as its ``metadata_props`` (prefixed), checked, written atomically to ``path``."""
    del graph.metadata_props[:]
    for key, value in meta.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = META + key, value
    onnx.checker.check_model(graph)
    atomic_write(path, writer=lambda tmp: onnx.save(graph, tmp))


def constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Turn the tracer's ``Constant`` nodes (weights, index tables) into initializers: what onnxruntime's quantizer
    recognises as weights and biases."""
    nodes = list(graph.node)
    del graph.node[:]
    for node in nodes:
        value = next((a for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is None:
            graph.node.append(node)
        else:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)


def to_onnx(
    model: UNet,
    path: str | Path,
    frames_per_call: int = 1,
    opset: int = OPSET,
    quantize: str | None = None,
    calibration: object = None,
) -> Path:
    """Export ``model``'s STMC step (and, for look-ahead models, its flush graph); returns the step graph's path.

    ``frames_per_call`` is fixed in the graph (the tracer needs static time sizes); 1 is one hop per call, the
    lowest latency. Both files are written next to each other; see the module docstring for the contract.
    ``quantize="int8"`` writes the step with int8 weights and activations (:mod:`stmc.export.quantize`),
    calibrated on ``calibration``: None (the demo corpus's validation recordings), a folder of 16 kHz audio, or
    an iterable of spectrum chunks ``[B, 2, F, t]``.
    """
    check_export_args(model, frames_per_call)
    if quantize not in PRECISIONS:
        raise InputError(f"quantize={quantize!r}: give None (float32) or 'int8'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    training = model.training
    try:
        return _export_stmc(model, path, frames_per_call, opset, quantize, calibration)
    finally:  # the tracer leaves the model in eval mode, also when it fails
        model.train(training)


def _export_stmc(
    model: UNet, path: Path, frames_per_call: int, opset: int, quantize: str | None, calibration: object
) -> Path:
    """:func:`to_onnx`'s work: with look-ahead the settled and the flush graphs, then the step graph that names them,
    each written atomically (a step graph is never there before the graphs it names)."""
    # traced: the PyTorch operators, every time mask that can fire as tensor ops (Clock without `settled`), the
    # layers in the precision's form
    engine = STMCEngine(model, layer_form=LAYER_FORMS[quantize], exported=True)
    frames, *state = trace_inputs(model, engine, 2, frames_per_call)  # 2: no size-1 broadcast is baked in
    n = len(state)
    settles_at = settle_point(model, engine, frames_per_call)
    flush = companion_path(path, "flush") if engine.delay else None
    settled = companion_path(path, "settled") if settles_at else None
    meta = metadata(
        model,
        "stmc",
        engine.state_shapes(),
        engine.delay,
        frames_per_call,
        flush.name if flush else "",
        settled=settled.name if settled else "",
        settles_at=settles_at,
    )
    names = [INPUT, *state_names(n)], [OUTPUT, *state_names(n, "next_")]
    with tempfile.TemporaryDirectory(dir=path.parent) as folder:  # never a half-written file at `path`
        feeds = None
        if quantize is not None:
            feeds = calibration_feeds(model, calibration_spectra(calibration, model.n_freq), frames_per_call)
        if flush:  # float32 always: it runs once per utterance
            graph = _trace(FlushGraph(engine), tuple(state), Path(folder), state_names(n), [OUTPUT], opset)
            _write(graph, flush, {**meta, "role": "flush"})
        steps = [(settled, "settled", settles_at)] if settled else []
        for target, role, settled_from in [*steps, (path, "step", 0)]:
            step = _trace(StepGraph(engine, settled=settled_from), (frames, *state), Path(folder), *names, opset)
            if feeds is not None:  # the settled graph calibrated on the steps it runs
                fp32, quantized = Path(folder) / "fp32.onnx", Path(folder) / "quantized.onnx"
                _write(step, fp32, meta)
                quantize_onnx(fp32, quantized, feeds_from(feeds, settled_from), QUANTIZED_OPS)
                step = onnx.load(str(quantized))
            _write(step, target, {**meta, "precision": PRECISIONS[quantize], "role": role})
    return path
