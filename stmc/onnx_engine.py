"""The exported STMC graphs (:mod:`stmc.export`) in onnxruntime, as an engine behind the stream driver.

:func:`onnx_stream` gives a :class:`stmc.stream.Stream` with the same per-call contract as the PyTorch engines:
``s(chunk [B, 2, F, t])`` returns the mask frames delayed by ``D`` (nothing before the streams' start),
``s.flush()`` the last ``D`` frames, ``s.reset()`` / ``s.reset(mask)`` restart all / chosen streams. ``t`` must
be a multiple of the graph's ``frames_per_call`` (any ``t`` for the default 1). The graph contract (input and
output names, the metadata) is :mod:`stmc.step_graph`'s; ONNX keeps the metadata as ``stmc.*`` metadata_props.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from stmc.step_graph import GraphEngine, GraphMetadata
from stmc.stream import Stream

META = "stmc."  # the prefix of the step-graph metadata keys (stmc.step_graph) among the ONNX metadata_props


def read_metadata(path: str | Path) -> dict[str, str]:
    """The step-graph metadata of an exported ONNX graph, without the prefix."""
    props = onnx.load(str(path), load_external_data=False).metadata_props
    return {p.key[len(META) :]: p.value for p in props if p.key.startswith(META)}


def session(path: str | Path, threads: int = 1):
    """An onnxruntime CPU session with ``threads`` intra-op threads, sequential execution (timing-friendly)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxEngine(GraphEngine):
    """The step graph (``frames_per_call`` frames per call) and, for look-ahead models, the flush graph."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        self.path = Path(path)
        super().__init__(GraphMetadata(read_metadata(self.path), str(self.path)))
        self.step_session = session(self.path, threads)
        types = {"tensor(float)": "float32", "tensor(int64)": "int64"}
        self.meta.check_inputs({i.name: (i.shape, types.get(i.type, i.type))
                                for i in self.step_session.get_inputs()})
        self.outputs = [o.name for o in self.step_session.get_outputs()]
        flush = self.meta.flush
        self.flush_session = session(self.path.parent / flush, threads) if flush else None

    def run_step(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.step_session.run(self.outputs, inputs), strict=True))

    def run_flush(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.flush_session.run(None, inputs)[0]


def onnx_stream(path: str | Path, threads: int = 1) -> Stream:
    """The exported graphs at ``path`` behind the stream driver, run by onnxruntime with ``threads`` threads."""
    return Stream(OnnxEngine(path, threads))
