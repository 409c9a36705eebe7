"""The contract of an exported step graph, whatever runtime holds it (onnxruntime, LiteRT): names and metadata.

A step graph is one call of an engine's pure step (:meth:`stmc.streaming.ModelEngine.pure_step`)::

    inputs   frames [B, 2, n_freq, frames_per_call] float32, state_0 .. state_N
    outputs  out    [B, 2, n_freq, frames_per_call] float32, next_state_0 .. next_state_N

``state_0 .. state_{N-1}`` are the engine's float32 buffers and ``state_N`` each stream's time in frames (int64
``[B]``); a new stream starts from zeros. The metadata (string values, JSON where structured) tells a runtime how
to drive it; :func:`metadata` writes it at export, :class:`GraphMetadata` reads and checks it. The exporters
(:mod:`stmc.export`) store it in their format's own metadata; the engines (:mod:`stmc.onnx_engine`,
:mod:`stmc.litert_engine`) read it there and run the graph through :class:`GraphEngine`, which owns the per-call
part of the contract (the feeds, the frames-per-call loop, the flush) so that a runtime only says how to run a
graph on named inputs.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from stmc.stft import HOP, N_FFT, SAMPLE_RATE
from stmc.stream import Clock, Engine, Stream
from stmc.unet import UNet

INPUT, OUTPUT = "frames", "out"
REQUIRED = ("state_shapes", "state_dtypes", "frames_per_call", "delay", "n_freq", "model_config", "flush")


def state_names(count: int, prefix: str = "") -> list[str]:
    """``state_0 .. state_{count-1}`` (or ``next_state_*``), the order of :meth:`Stream.get_state`."""
    return [f"{prefix}state_{i}" for i in range(count)]


def metadata(model: UNet, method: str, state_shapes: list[tuple[int, ...]], delay: int, frames_per_call: int,
             flush: str, batch: int | None = None) -> dict[str, str]:
    """What a runtime needs to drive the graph: state layout (the time last), look-ahead, the model and the STFT.

    ``flush`` names the flush graph (a file or a signature; empty without look-ahead); ``batch`` is the fixed
    number of streams of a graph traced with static shapes (None: any).
    """
    shapes = [list(shape) for shape in state_shapes] + [[]]
    meta = {
        "method": method,
        "state_shapes": json.dumps(shapes),
        "state_dtypes": json.dumps(["float32"] * (len(shapes) - 1) + ["int64"]),
        "frames_per_call": str(frames_per_call),
        "delay": str(delay),
        "receptive_field": json.dumps(list(model.receptive_field)),
        "n_freq": str(model.n_freq),
        "model_config": json.dumps(model.config),
        "flush": flush,
        "stft": json.dumps({"sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop": HOP}),
    }
    if batch is not None:
        meta["batch"] = str(batch)
    return meta


class GraphMetadata:
    """The parsed metadata of a step graph at ``source`` (named in errors)."""

    def __init__(self, meta: dict[str, str], source: str) -> None:
        missing = [key for key in REQUIRED if key not in meta]
        if missing:
            raise ValueError(f"{source} is not an STMC step graph (its metadata lacks {', '.join(missing)}); "
                             "export it with python -m stmc.export")
        shapes = [tuple(shape) for shape in json.loads(meta["state_shapes"])]
        self.state_shapes = shapes[:-1]  # the last one is the time's, which the driver keeps
        self.state_dtypes: list[str] = json.loads(meta["state_dtypes"])
        self.names = state_names(len(shapes))
        self.method = meta.get("method", "stmc")
        self.frames_per_call = int(meta["frames_per_call"])
        self.delay = int(meta["delay"])
        self.n_freq = int(meta["n_freq"])
        self.config: dict[str, Any] = json.loads(meta["model_config"])
        self.flush = meta["flush"]
        self.batch = int(meta["batch"]) if "batch" in meta else None
        self.source = source

    def check_inputs(self, found: dict[str, tuple[list[int], str]]) -> None:
        """Raise ``ValueError`` unless the graph's inputs (name -> shape, dtype name) are what the metadata says:
        a graph and metadata that do not belong together must not stream wrong audio."""
        expected = {INPUT: ([2, self.n_freq, self.frames_per_call], "float32")}
        expected.update({name: (list(shape), dtype) for name, shape, dtype
                         in zip(self.names, [*self.state_shapes, ()], self.state_dtypes, strict=True)})
        if set(found) != set(expected):
            raise ValueError(f"{self.source}: the graph's inputs {sorted(found)} are not those its metadata "
                             f"describes ({len(self.names)} state tensors); the metadata belongs to another graph")
        for name, (shape, dtype) in expected.items():
            got_shape, got_dtype = found[name]
            batch = "batch" if self.batch is None else self.batch
            if got_shape[1:] != shape or got_dtype != dtype or (self.batch is not None and got_shape[0] != batch):
                raise ValueError(f"{self.source}: input {name} is {got_dtype} {got_shape}, its metadata says "
                                 f"{dtype} {[batch, *shape]}; the metadata belongs to another graph")


class GraphEngine(Engine):
    """An exported step graph behind the stream driver: the metadata's layout, the inputs fed from the driver's
    state, ``frames_per_call`` frames per run, and the flush graph for a flush. A runtime subclass sets
    ``self.meta`` (checked against its graph's inputs) and runs a graph on named numpy inputs."""

    meta: GraphMetadata

    def __init__(self, meta: GraphMetadata) -> None:
        self.meta = meta
        self.frames_per_call, self.delay, self.n_freq = meta.frames_per_call, meta.delay, meta.n_freq
        self.config, self.method = meta.config, meta.method
        self.dtype, self.device = torch.float32, torch.device("cpu")

    def state_shapes(self) -> list[tuple[int, ...]]:
        return self.meta.state_shapes

    def run_step(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The step graph on ``frames`` and the state -> ``out`` and ``next_state_*``."""
        raise NotImplementedError

    def run_flush(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The flush graph on the state -> ``out``, the last ``D`` frames."""
        raise NotImplementedError

    def feeds(self, state: list[torch.Tensor], time: torch.Tensor) -> dict[str, np.ndarray]:
        """The graphs' state inputs from the driver's state and time."""
        if self.meta.batch is not None and time.shape[0] != self.meta.batch:
            raise ValueError(f"{self.meta.source} was exported for {self.meta.batch} stream(s) per call, got "
                             f"{time.shape[0]}; export it with --batch {time.shape[0]}")
        return dict(zip(self.meta.names, [t.numpy() for t in [*state, time]], strict=True))

    def step(self, chunk: torch.Tensor, state: list[torch.Tensor], clock: Clock
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if clock.end is not None:  # a flush: the flush graph knows its D zero frames
            return torch.from_numpy(self.run_flush(self.feeds(state, clock.time))), state
        frames, size, time = chunk.detach().cpu().numpy(), self.frames_per_call, clock.time
        outs = []
        for start in range(0, frames.shape[-1], size):
            result = self.run_step({INPUT: np.ascontiguousarray(frames[..., start : start + size]),
                                    **self.feeds(state, time)})
            outs.append(result[OUTPUT])
            *state, time = [torch.from_numpy(result[f"next_{name}"]) for name in self.meta.names]
        return torch.from_numpy(np.concatenate(outs, -1)), state


def offline_error(model: UNet, stream: Stream, frames: int = 64, batch: int = 2, seed: int = 0) -> float:
    """Largest difference between ``stream`` (one call, then the flush; ``frames`` a multiple of its frames per
    call) and offline PyTorch inference of ``model`` on random spectra."""
    spec = torch.randn(batch, 2, model.n_freq, frames, generator=torch.Generator().manual_seed(seed))
    out = torch.cat([stream(spec), stream.flush()], -1)
    training = model.training
    with torch.no_grad():
        expected = model.eval()(spec)
    model.train(training)
    return float((out - expected).abs().max())
