"""Export of the streaming steps with all state explicit: ONNX (:func:`to_onnx`, run by :mod:`stmc.export.onnx`)
and LiteRT / TFLite (:func:`to_litert`, run by :mod:`stmc.export.litert`), each behind the stream driver.

Both hold the step-graph contract of :mod:`stmc.export.graph`: one call of an engine's pure step
(:meth:`stmc.stream.engines.ModelEngine.pure_step`) on a fixed number of spectrum frames (``frames_per_call``, default
1 = one hop)::

    inputs   frames [B, 2, n_freq, frames_per_call] float32, state_0 .. state_N
    outputs  out    [B, 2, n_freq, frames_per_call] float32, next_state_0 .. next_state_N

``state_0 .. state_{N-1}`` are the engine's buffers (for STMC the per-layer shift registers and skip delay lines)
and ``state_N`` is each stream's time in frames (int64 ``[B]``). A new stream starts from zeros of the shapes in
the metadata (``state_shapes``/``state_dtypes``, without the batch axis); zeroing one row of every state restarts
that stream alone. ``out`` is the bounded complex mask of the frames ``D = delay`` hops earlier; the first ``D``
outputs of a fresh stream precede its start (zeros, drop them).

Steps that mask time (look-ahead models; LiteRT's ``inc`` and ``window`` steps) also get a **settled step graph**
(ONNX: ``<name>.settled.onnx``; LiteRT: the ``settled`` signature; named in the metadata's ``settled``): the step
without its time masks, exact once every stream's time has reached the metadata's ``settles_at``, with fewer operators
per hop. And a **flush graph** (ONNX: ``<name>.flush.onnx``; LiteRT: the ``flush`` signature; named in the metadata's
``flush``): inputs ``state_0 .. state_N``, output ``out [B, 2, n_freq, D]``, the last ``D`` mask frames of every
stream in the batch, computed as offline inference's zero padding would give them (each layer's outputs past the end
are masked). It is pure: to end only some streams of a batch, take their rows and zero their state rows.

ONNX (STMC step): the engine's own code (registers, delay lines, time masks: every mask that can fire as tensor
ops) is traced by the TorchScript exporter (``onnxscript``, which the dynamo exporter needs, is not a dependency).
Its layers (:class:`stmc.model.layers.FrozenLayer`, im2col + GEMM via ``unfold``) do not export (``unfold`` needs
sizes the tracer loses), so the graph runs the same folded weights as the native step computes them: each layer a
``Gather`` of its im2col rows and one ``Gemm`` in the frozen ``[B, T, F, C]`` layout, no transposes
(:class:`ExportLayer`); the int8 step has one ``Conv`` per layer instead (:class:`ConvExportLayer`), which
onnxruntime runs as a ``QLinearConv``, but for its first and last layers, which stay float32 ``Gather`` + ``Gemm``.
The trace uses a fixed batch of 2 and static sizes, so that no shape arithmetic is left in the graph (a graph with
symbolic sizes carries hundreds of ``Shape``/``Gather`` nodes and ran several times slower per call); no node depends
on the batch size, so the batch axis of the inputs and outputs is then declared symbolic (tests run batches 1 to 4).

LiteRT (STMC, INC and window steps, the three methods of the paper's Table 1): the same modules converted by
``litert-torch`` (an optional install: ``make litert``), static shapes, built-in operators only.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stmc.errors import InputError, MissingFileError
from stmc.stream.driver import Stream

__all__ = ["FORMATS", "Format", "open", "read_metadata", "to_litert", "to_onnx"]


@dataclass(frozen=True)
class Format:
    """An export format: its name (``python -m stmc.export``'s and ``stream_infer.py``'s key), the module holding
    its writer and reader, the reader's opener and the runtime that runs it."""

    name: str
    module: str
    opener: str
    runtime: str


FORMATS = {  # by file suffix: the one place that knows which file is which format
    ".onnx": Format("onnx", "stmc.export.onnx", "open_onnx", "onnxruntime"),
    ".tflite": Format("litert", "stmc.export.litert", "open_litert", "LiteRT"),
}
SUFFIXES = {fmt.name: suffix for suffix, fmt in FORMATS.items()}
WRITERS = {"to_onnx": "stmc.export.onnx", "to_litert": "stmc.export.litert"}  # imported on first use


def format_of(path: str | Path) -> Format:
    """The format of the exported file at ``path``, by its suffix; one-line errors for a missing file or another
    kind of file."""
    fmt = FORMATS.get(Path(path).suffix)
    if fmt is None:
        raise InputError(f"{path}: not an exported step graph; give a .onnx or .tflite file from python -m stmc.export")
    if not Path(path).is_file():
        raise MissingFileError(f"{path}: no such file (export one with python -m stmc.export)")
    return fmt


def open(path: str | Path, threads: int = 1) -> Stream:  # noqa: A001 (stmc.export.open, the one opener)
    """Any exported step graph (``.onnx`` or ``.tflite``) behind the stream driver, run by its runtime with
    ``threads`` threads: ``s(frames)``, ``s.flush()``, ``s.reset(mask)`` as every stream."""
    fmt = format_of(path)
    return getattr(importlib.import_module(fmt.module), fmt.opener)(path, threads)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The step-graph metadata (:mod:`stmc.export.graph`) of any exported file, without running it."""
    return importlib.import_module(format_of(path).module).read_metadata(path)


def __getattr__(name: str) -> Any:
    if name in WRITERS:
        return getattr(importlib.import_module(WRITERS[name]), name)
    raise AttributeError(f"module 'stmc.export' has no attribute {name!r}")
