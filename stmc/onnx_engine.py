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
import torch

from stmc.step_graph import INPUT, GraphMetadata
from stmc.stream import Clock, Engine, Stream

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


class OnnxEngine(Engine):
    """The step graph (``frames_per_call`` frames per call) and, for look-ahead models, the flush graph."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        self.path = Path(path)
        self.meta = meta = GraphMetadata(read_metadata(self.path), str(self.path))
        self.frames_per_call, self.delay, self.n_freq = meta.frames_per_call, meta.delay, meta.n_freq
        self.config = meta.config
        self.dtype, self.device = torch.float32, torch.device("cpu")
        self.step_session = session(self.path, threads)
        types = {"tensor(float)": "float32", "tensor(int64)": "int64"}
        meta.check_inputs({i.name: (i.shape, types.get(i.type, i.type)) for i in self.step_session.get_inputs()})
        self.flush_session = session(self.path.parent / meta.flush, threads) if meta.flush else None
        self.names = meta.names

    def state_shapes(self) -> list[tuple[int, ...]]:
        return self.meta.state_shapes

    def feeds(self, state: list[torch.Tensor], time: torch.Tensor) -> dict[str, np.ndarray]:
        """The graphs' state inputs from the driver's state and time."""
        return dict(zip(self.names, [t.numpy() for t in [*state, time]], strict=True))

    def step(self, chunk: torch.Tensor, state: list[torch.Tensor], clock: Clock
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if clock.end is not None:  # a flush: the flush graph knows its D zero frames
            (out,) = self.flush_session.run(None, self.feeds(state, clock.time))
            return torch.from_numpy(out), state
        frames, size, time = chunk.detach().cpu().numpy(), self.frames_per_call, clock.time
        outs = []
        for start in range(0, frames.shape[-1], size):
            inputs = {INPUT: np.ascontiguousarray(frames[..., start : start + size]), **self.feeds(state, time)}
            out, *rest = self.step_session.run(None, inputs)
            outs.append(out)
            state, time = [torch.from_numpy(a) for a in rest[:-1]], torch.from_numpy(rest[-1])
        return torch.from_numpy(np.concatenate(outs, -1)), state


def onnx_stream(path: str | Path, threads: int = 1) -> Stream:
    """The exported graphs at ``path`` behind the stream driver, run by onnxruntime with ``threads`` threads."""
    return Stream(OnnxEngine(path, threads))
