"""LiteRT (TFLite) step graphs (:func:`stmc.export.to_litert`) as an engine behind the stream driver.

``LiteRTStream(path)`` is a :class:`stmc.stream.Stream` like every other: ``s(chunk [B, 2, F, t])`` returns the
mask frames delayed by ``D``, ``s.flush()`` the last ``D`` frames, ``s.reset()`` / ``s.reset(mask)`` restart
streams. The file holds the ``step`` signature (the contract of :mod:`stmc.step_graph`) and, for look-ahead
models, ``flush``; it is run by ``ai_edge_litert``'s interpreter (its default CPU kernels, XNNPACK) with one
thread unless told otherwise. Shapes are static: ``B`` must be the batch the graph was exported for.

The metadata lives in the file's own metadata list (entry ``stmc``, a JSON object of the step-graph metadata)
and is checked against the signature's inputs on load, so a file whose metadata belongs to another graph is
refused instead of streaming wrong audio.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stmc.step_graph import OUTPUT, GraphEngine, GraphMetadata
from stmc.stream import Stream

METADATA_NAME = "stmc"
STEP, FLUSH = "step", "flush"  # the signatures
IDENTIFIER = b"TFL3"  # the flatbuffer file identifier of LiteRT models, at bytes 4..7


def _model(path: str | Path):
    """The flatbuffer model of a LiteRT file and its bytes; ``ValueError`` if it is no LiteRT file."""
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes()
    if data[4:8] != IDENTIFIER:
        raise ValueError(f"{path} is not a LiteRT (.tflite) file")
    return schema.Model.GetRootAs(data, 0), data


def operator_names(path: str | Path) -> list[str]:
    """The operator kinds a LiteRT file uses (``CUSTOM`` would be one the runtime does not have built in)."""
    from ai_edge_litert import schema_py_generated as schema

    model, _ = _model(path)
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    codes = (model.OperatorCodes(i) for i in range(model.OperatorCodesLength()))
    return sorted({names.get(max(c.BuiltinCode(), c.DeprecatedBuiltinCode()), "unknown") for c in codes})


def read_litert_metadata(path: str | Path) -> dict[str, str]:
    """The step-graph metadata of a LiteRT file (empty if it has none); ``ValueError`` if it is no LiteRT file."""
    model, data = _model(path)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == METADATA_NAME.encode():
            buffer = model.Buffers(entry.Buffer())
            raw = (buffer.DataAsNumpy().tobytes() if buffer.DataLength()
                   else data[buffer.Offset() : buffer.Offset() + buffer.Size()])
            return json.loads(raw)
    return {}


class LiteRTEngine(GraphEngine):
    """The ``step`` signature (``frames_per_call`` frames per call) and, with look-ahead, ``flush``."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        super().__init__(GraphMetadata(read_litert_metadata(self.path), str(self.path)))
        flush = self.meta.flush
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
        signatures = self.interpreter.get_signature_list()
        if STEP not in signatures or (flush and flush not in signatures):
            needs = STEP + (f" and {flush}" if flush else "")
            raise ValueError(f"{self.path}: signatures {sorted(signatures)}, its metadata needs {needs}; export it "
                             "with python -m stmc.export")
        self.step_runner = self.interpreter.get_signature_runner(STEP)
        details = self.step_runner.get_input_details()
        self.meta.check_inputs({name: (list(d["shape"]), np.dtype(d["dtype"]).name) for name, d in details.items()})
        self.flush_runner = self.interpreter.get_signature_runner(flush) if flush else None

    def run_step(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.step_runner(**inputs)

    def run_flush(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.flush_runner(**inputs)[OUTPUT]


class LiteRTStream(Stream):
    """The LiteRT file at ``path`` behind the stream driver, run with ``threads`` interpreter threads."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        super().__init__(LiteRTEngine(path, threads))
