"""LiteRT (TFLite) step graphs: the writer (:func:`to_litert`) and the reader, an engine behind the stream driver.

:func:`open_litert` gives a :class:`stmc.stream.driver.Stream` like every other: ``s(chunk [B, 2, F, t])`` returns
the mask frames delayed by ``D``, ``s.flush()`` the last ``D`` frames, ``s.reset()`` / ``s.reset(mask)`` restart
streams. The file holds the ``step`` signature (the contract of :mod:`stmc.export.graph`), ``settled`` (the step
without time masks, from ``settles_at`` on) for steps that mask time, and ``flush`` for look-ahead models; it is run
by ``ai_edge_litert``'s interpreter (its default CPU kernels, XNNPACK) with one thread unless told otherwise. Shapes
are static: ``B`` must be the batch the graph was exported for.

The metadata lives in the file's own metadata list (entry ``stmc``, a JSON object of the step-graph metadata)
and is checked against the signature's inputs on load, so a file whose metadata belongs to another graph is
refused instead of streaming wrong audio.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from stmc.errors import InputError
from stmc.export.graph import (
    INPUT,
    OUTPUT,
    ExportLayer,
    FlushGraph,
    GraphEngine,
    GraphMetadata,
    Signature,
    StepGraph,
    check_export_args,
    metadata,
    settle_point,
    state_names,
    trace_inputs,
)
from stmc.export.quantize import PRECISIONS, calibration_feeds, calibration_spectra, quantize_litert
from stmc.files import atomic_write
from stmc.model.unet import UNet
from stmc.stream.driver import Stream
from stmc.stream.engines import ENGINES

METADATA_NAME = "stmc"
STEP, SETTLED, FLUSH = "step", "settled", "flush"  # the signatures
IDENTIFIER = b"TFL3"  # the flatbuffer file identifier of LiteRT models, at bytes 4..7


def _model(path: str | Path):
    """The flatbuffer model of a LiteRT file and its bytes; ``ValueError`` if it is no LiteRT file."""
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes()
    if data[4:8] != IDENTIFIER:
        raise InputError(f"{path} is not a LiteRT (.tflite) file")
    return schema.Model.GetRootAs(data, 0), data


def operator_names(path: str | Path) -> list[str]:
    """The operator kinds a LiteRT file uses (``CUSTOM`` would be one the runtime does not have built in)."""
    return sorted(set().union(*(operator_counts(path, name) for name in signature_names(path))))


def _subgraphs(model) -> dict[str, int]:
    """Signature name -> index of its subgraph, of a LiteRT flatbuffer model."""
    defs = [model.SignatureDefs(i) for i in range(model.SignatureDefsLength())]
    return {d.SignatureKey().decode(): d.SubgraphIndex() for d in defs}


def signature_names(path: str | Path) -> list[str]:
    """The signatures of a LiteRT file."""
    return list(_subgraphs(_model(path)[0]))


def _kinds(model) -> list[str]:
    """The operator kind (``FULLY_CONNECTED``, ...) of each operator code of a LiteRT flatbuffer model."""
    from ai_edge_litert import schema_py_generated as schema

    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    return [names.get(max(c.BuiltinCode(), c.DeprecatedBuiltinCode()), "unknown") for c in codes]


def operator_counts(path: str | Path, signature: str = STEP) -> dict[str, int]:
    """How many operators of each kind a LiteRT file's ``signature`` runs."""
    from collections import Counter

    model, _ = _model(path)
    kinds = _kinds(model)
    subgraphs = _subgraphs(model)
    if signature not in subgraphs:
        raise InputError(f"{path} has no signature {signature!r} (it has {', '.join(sorted(subgraphs))})")
    graph = model.Subgraphs(subgraphs[signature])
    return dict(Counter(kinds[graph.Operators(i).OpcodeIndex()] for i in range(graph.OperatorsLength())))


def twin_tensors(source: bytes, target: bytes) -> dict[str, str]:
    """The input and output tensors of each fully connected op of the LiteRT file ``source`` -> those of the same op
    in ``target``, a conversion of the same graphs for another batch: the k-th such op of a signature is the same
    layer in both, while the converter numbers tensors per trace."""
    from ai_edge_litert import schema_py_generated as schema

    def product_tensors(data: bytes) -> dict[str, list[str]]:  # signature -> its products' (input, output) names
        model = schema.Model.GetRootAs(data, 0)
        kinds, found = _kinds(model), {}
        for signature, index in _subgraphs(model).items():
            graph = model.Subgraphs(index)
            ops = [graph.Operators(i) for i in range(graph.OperatorsLength())]
            fully_connected = [op for op in ops if kinds[op.OpcodeIndex()] == "FULLY_CONNECTED"]
            found[signature] = [
                graph.Tensors(t).Name().decode() for op in fully_connected for t in (op.Inputs(0), op.Outputs(0))
            ]
        return found

    ours, theirs = product_tensors(source), product_tensors(target)
    return {name: twin for signature in ours for name, twin in zip(ours[signature], theirs[signature], strict=True)}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The step-graph metadata of a LiteRT file (empty if it has none); ``ValueError`` if it is no LiteRT file."""
    model, data = _model(path)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == METADATA_NAME.encode():
            buffer = model.Buffers(entry.Buffer())
            raw = (
                buffer.DataAsNumpy().tobytes()
                if buffer.DataLength()
                else data[buffer.Offset() : buffer.Offset() + buffer.Size()]
            )
            return json.loads(raw)
    return {}


class LiteRTEngine(GraphEngine):
    """The ``step`` signature (``frames_per_call`` frames per call) and, with look-ahead, ``settled`` and
    ``flush``, each run on its tensors' own memory (:class:`BoundSignature`)."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        super().__init__(GraphMetadata(read_metadata(self.path), str(self.path)))
        flush, settled = self.meta.flush, self.meta.settled
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
        signatures = self.interpreter.get_signature_list()
        needed = [name for name in (STEP, settled, flush) if name]
        if any(name not in signatures for name in needed):
            needs = " and ".join(needed)
            raise InputError(
                f"{self.path}: signatures {sorted(signatures)}, its metadata needs {needs}; export it "
                "with python -m stmc.export"
            )
        details = self.interpreter.get_signature_runner(STEP).get_input_details()
        self.meta.check_inputs({name: (list(d["shape"]), np.dtype(d["dtype"]).name) for name, d in details.items()})
        names = self.meta.names
        inputs, outputs = [INPUT, *names], [OUTPUT, *(f"next_{name}" for name in names)]
        self.steps = {False: BoundSignature(self.interpreter, STEP, inputs, outputs)}
        if settled:
            self.steps[True] = BoundSignature(self.interpreter, settled, inputs, outputs)
        self.flush_signature = BoundSignature(self.interpreter, flush, names, [OUTPUT]) if flush else None

    def call(
        self, frames: torch.Tensor, state: list[torch.Tensor], time: torch.Tensor, use_settled: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The step on the signature's tensors; the next state is its output tensors, which the next call copies
        into the inputs (the interpreter cannot swap buffers as onnxruntime's binding does)."""
        signature = self.steps[use_settled]
        outputs = signature([frames, *state, time])
        return outputs[0].clone(), outputs[1:-1], outputs[-1]

    def run_flush(self, state: list[torch.Tensor], time: torch.Tensor) -> torch.Tensor:
        return self.flush_signature([*state, time])[0].clone()


class BoundSignature:
    """One signature of a LiteRT interpreter, run on its input and output tensors' own memory.

    A run copies the given tensors into the input tensors and invokes the signature's subgraph; the outputs are
    torch views of the output tensors, valid until the signature runs again. The interpreter's signature runner
    copies every input and output through a new numpy array instead: 2 x 16 calls and allocations per hop, a
    sixth of a step (docs/benchmarks.md). The views come from the interpreter's own wrapper (``tensor`` with a
    subgraph index, ``Invoke``), which its Python class uses the same way; the shapes are static, so the tensors
    never move after the allocation here.
    """

    def __init__(self, interpreter, name: str, inputs: list[str], outputs: list[str]) -> None:
        runner = interpreter.get_signature_runner(name)
        wrapper = interpreter._interpreter  # noqa: SLF001  (see the class docstring)
        subgraph = wrapper.GetSubgraphIndexFromSignature(name)
        wrapper.AllocateTensors(subgraph)
        input_details, output_details = runner.get_input_details(), runner.get_output_details()
        if set(inputs) != set(input_details) or set(outputs) != set(output_details):
            raise InputError(
                f"signature {name!r} has inputs {sorted(input_details)} and outputs {sorted(output_details)}, not "
                f"those of a step graph's {name}; export the model again with python -m stmc.export"
            )
        self.invoke = functools.partial(wrapper.Invoke, subgraph)

        def view(details: dict) -> torch.Tensor:
            return torch.from_numpy(wrapper.tensor(wrapper, details["index"], subgraph))

        self.input_tensors = [view(input_details[name]) for name in inputs]
        self.output_tensors = [view(output_details[name]) for name in outputs]

    def __call__(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        for target, tensor in zip(self.input_tensors, tensors, strict=True):
            if target is not tensor:
                target.copy_(tensor)
        self.invoke()
        return self.output_tensors


def open_litert(path: str | Path, threads: int = 1) -> Stream:
    """The LiteRT file at ``path`` behind the stream driver, run with ``threads`` interpreter threads."""
    return Stream(LiteRTEngine(path, threads))


# -- the writer --


LITERT_MISSING = (
    "the LiteRT converter (litert-torch) is not installed in this Python: `make litert` builds "
    ".venv-litert with it (requirements-litert.txt); run the export with .venv-litert/bin/python"
)


def to_litert(
    model: UNet,
    path: str | Path,
    method: str = "stmc",
    frames_per_call: int = 1,
    batch: int = 1,
    quantize: str | None = None,
    calibration: object = None,
) -> Path:
    """Export ``model``'s ``method`` step (``stmc``, ``inc`` or ``window``) to one LiteRT (``.tflite``) file.

    The file holds the signature ``step`` (the step-graph contract of :mod:`stmc.export.graph`), ``settled`` (the
    same without time masks) for steps that mask time, and, for look-ahead models, ``flush`` (state in, the last
    ``D`` frames out); the metadata goes into the file's own metadata list (entry ``stmc``, JSON). Shapes are
    static: ``batch`` streams and ``frames_per_call`` frames per call, both in the metadata. Only built-in LiteRT
    operators: the time, int64 in the contract, is kept int64 (``enable_x64``), and every layer is a gather and a
    fully connected product (:class:`ExportLayer`). Written atomically; the converter's own output is checked by
    :class:`open_litert` on load.
    """
    check_export_args(model, frames_per_call)
    if method not in ENGINES:
        raise InputError(f"unknown streaming method {method!r}; choose one of {', '.join(ENGINES)}")
    if not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be a positive integer, got {batch!r}")
    if quantize not in PRECISIONS:
        raise InputError(f"quantize={quantize!r}: give None (float32) or 'int8'")
    try:
        import litert_torch
    except ImportError:
        raise InputError(LITERT_MISSING) from None
    path, training = Path(path), model.training
    model.eval()
    try:
        engine = ENGINES[method](model, ExportLayer, exported=True)
        settles_at = settle_point(model, engine, frames_per_call)
        data = converted_signatures(litert_torch, model, engine, batch, frames_per_call, settles_at)
        meta = metadata(
            model,
            method,
            engine.state_shapes(),
            engine.delay,
            frames_per_call,
            FLUSH if engine.delay else "",
            batch,
            SETTLED if settles_at else "",
            settles_at,
        )
        if quantize is not None:
            feeds = calibration_feeds(model, calibration_spectra(calibration, model.n_freq), frames_per_call)
            # calibrated on a batch-1 conversion: the ranges do not depend on the batch, the calibration's memory does
            # (its interpreter keeps every intermediate tensor of a call: ~0.2 GiB per stream of the non-causal step)
            single = (
                data
                if batch == 1
                else converted_signatures(litert_torch, model, engine, 1, frames_per_call, settles_at)
            )
            data = quantize_litert(
                data,
                single,
                twin_tensors(single, data),
                feeds,
                FLUSH if engine.delay else None,
                SETTLED if settles_at else None,
                settles_at,
            )
        data = with_litert_metadata(data, {**meta, "precision": PRECISIONS[quantize]})
        atomic_write(path, writer=lambda tmp: Path(tmp).write_bytes(data))
    finally:  # the model's mode as it was, also when the converter fails
        model.train(training)
    return path


def converted_signatures(litert_torch, model: UNet, engine, batch: int, frames_per_call: int, settles_at: int) -> bytes:
    """The converter's LiteRT file of ``engine``'s signatures (step; settled from ``settles_at``, if any; flush, for
    look-ahead) for ``batch`` streams."""
    frames, *state = trace_inputs(model, engine, batch, frames_per_call)
    names = state_names(len(state))
    inputs = dict(zip([INPUT, *names], [frames, *state], strict=True))
    outputs = [OUTPUT, *state_names(len(state), "next_")]
    converter = litert_torch.signature(STEP, Signature(StepGraph(engine), [*inputs], outputs), sample_kwargs=inputs)
    if settles_at:
        settled = Signature(StepGraph(engine, settled=settles_at), [*inputs], outputs)
        converter = converter.signature(SETTLED, settled, sample_kwargs=inputs)
    if engine.delay:
        flush = Signature(FlushGraph(engine), names, [OUTPUT])
        converter = converter.signature(FLUSH, flush, sample_kwargs={name: inputs[name] for name in names})
    with torch.no_grad(), tempfile.TemporaryDirectory() as folder:
        converted = Path(folder) / "model.tflite"
        converter.convert(enable_x64=True).export(str(converted))
        return converted.read_bytes()


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
