"""The contract of an exported step graph, whatever runtime holds it (onnxruntime, LiteRT): names and metadata.

A step graph is one call of an engine's pure step (:meth:`stmc.stream.engines.ModelEngine.pure_step`)::

    inputs   frames [B, 2, n_freq, frames_per_call] float32, state_0 .. state_N
    outputs  out    [B, 2, n_freq, frames_per_call] float32, next_state_0 .. next_state_N

``state_0 .. state_{N-1}`` are the engine's float32 buffers and ``state_N`` each stream's time in frames (int64
``[B]``); a new stream starts from zeros. A model with look-ahead masks the layer outputs that stand for time before
a stream's start; from time ``settles_at`` on none can, and a second graph of the same contract without the masks
(``settled``, fewer operators per hop) computes the same step.

The metadata (string values, JSON where structured) tells a runtime how to drive the graphs; :func:`metadata`
writes it at export, :class:`GraphMetadata` reads and checks it. The exporters (:mod:`stmc.export`) store it in
their format's own metadata; the engines (:mod:`stmc.export.onnx`, :mod:`stmc.export.litert`) read it there and run
the graphs through :class:`GraphEngine`, which owns the per-call part of the contract (the feeds, the
frames-per-call loop, the choice of the settled graph, the flush) so that a runtime only says how to run a graph on
named inputs.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stmc.errors import InputError
from stmc.model.layers import FREQ_KERNEL, FREQ_STRIDE, FrozenLayer, TimeContext, out_bins
from stmc.model.stft import HOP, N_FFT, SAMPLE_RATE
from stmc.model.unet import UNet
from stmc.stream.driver import TIME, Clock, Engine, Stream
from stmc.stream.engines import ModelEngine, shift

INPUT, OUTPUT = "frames", "out"
REQUIRED = ("state_shapes", "state_dtypes", "frames_per_call", "delay", "n_freq", "model_config", "flush")
EXPORT_IDENTITY = ("state_shapes", "model_config", "frames_per_call", "delay")  # equal in every graph of one export


def state_names(count: int, prefix: str = "") -> list[str]:
    """``state_0 .. state_{count-1}`` (or ``next_state_*``), the order of :meth:`Stream.get_state`."""
    return [f"{prefix}state_{i}" for i in range(count)]


def metadata(
    model: UNet,
    method: str,
    state_shapes: list[tuple[int, ...]],
    delay: int,
    frames_per_call: int,
    flush: str,
    batch: int | None = None,
    settled: str = "",
    settles_at: int = 0,
) -> dict[str, str]:
    """What a runtime needs to drive the graph: state layout (the time last), look-ahead, the model and the STFT.

    ``flush`` names the flush graph (a file or a signature; empty without look-ahead); ``batch`` is the fixed
    number of streams of a graph traced with static shapes (None: any); ``settled`` names the step graph without
    time masks that may run once every stream's time is ``settles_at`` or more (empty: none).
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
    if settled:
        meta.update(settled=settled, settles_at=str(settles_at))
    return meta


class GraphMetadata:
    """The parsed metadata of a step graph at ``source`` (named in errors)."""

    def __init__(self, meta: dict[str, str], source: str) -> None:
        role = meta.get("role", "step")
        if role != "step":
            raise InputError(
                f"{source} is the {role} graph of a step graph, not one to open; open the step graph next to it "
                f"(the same name without .{role})"
            )
        missing = [key for key in REQUIRED if key not in meta]
        if missing:
            raise InputError(
                f"{source} is not an STMC step graph (its metadata lacks {', '.join(missing)}); "
                "export it with python -m stmc.export"
            )
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
        self.precision = meta.get("precision", "float32")  # graphs before int8 export were all float32
        self.settled = meta.get("settled", "")  # graphs before it have only the masked step
        self.settles_at = int(meta.get("settles_at", "0"))
        self.identity = {key: meta.get(key) for key in EXPORT_IDENTITY}
        self.source = source

    def check_companion(self, meta: dict[str, str], role: str, source: str) -> None:
        """Raise ``ValueError`` unless ``meta`` (of the graph file ``source``) is the ``role`` graph (``settled``,
        ``flush``) of this step graph's export: a graph left over from another export must not stream."""
        # no role: a flush graph from before the settled one
        if meta.get("role", role) != role or any(meta.get(key) != value for key, value in self.identity.items()):
            raise InputError(
                f"{source} is not the {role} graph of {self.source} (left over from another export?); export "
                "the model again: python -m stmc.export writes the files together"
            )

    def check_inputs(self, found: dict[str, tuple[list[int], str]]) -> None:
        """Raise ``ValueError`` unless the graph's inputs (name -> shape, dtype name) are what the metadata says:
        a graph and metadata that do not belong together must not stream wrong audio."""
        expected = {INPUT: ([2, self.n_freq, self.frames_per_call], "float32")}
        expected.update(
            {
                name: (list(shape), dtype)
                for name, shape, dtype in zip(self.names, [*self.state_shapes, ()], self.state_dtypes, strict=True)
            }
        )
        if set(found) != set(expected):
            raise InputError(
                f"{self.source}: the graph's inputs {sorted(found)} are not those its metadata "
                f"describes ({len(self.names)} state tensors); the metadata belongs to another graph"
            )
        for name, (shape, dtype) in expected.items():
            got_shape, got_dtype = found[name]
            batch = "batch" if self.batch is None else self.batch
            if got_shape[1:] != shape or got_dtype != dtype or (self.batch is not None and got_shape[0] != batch):
                raise InputError(
                    f"{self.source}: input {name} is {got_dtype} {got_shape}, its metadata says "
                    f"{dtype} {[batch, *shape]}; the metadata belongs to another graph"
                )


class GraphEngine(Engine):
    """An exported step graph behind the stream driver: the metadata's layout, the inputs fed from the driver's
    state, ``frames_per_call`` frames per run, and the flush graph for a flush. A runtime subclass sets
    ``self.meta`` (checked against its graph's inputs) and runs one step graph on the state (:meth:`call`): the
    settled step graph where the metadata has one and every stream's time has reached ``settles_at``, else the
    step graph."""

    meta: GraphMetadata

    def __init__(self, meta: GraphMetadata) -> None:
        self.meta = meta
        self.frames_per_call, self.delay, self.n_freq = meta.frames_per_call, meta.delay, meta.n_freq
        self.config, self.method = meta.config, meta.method
        self.dtype, self.device = torch.float32, torch.device("cpu")

    def state_shapes(self) -> list[tuple[int, ...]]:
        return self.meta.state_shapes

    def run_flush(self, state: list[torch.Tensor], time: torch.Tensor) -> torch.Tensor:
        """The flush graph on the state and time -> ``out``, the last ``D`` frames."""
        raise NotImplementedError

    def step(
        self, chunk: torch.Tensor, state: list[torch.Tensor], clock: Clock
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.meta.batch is not None and clock.time.shape[0] != self.meta.batch:
            raise InputError(
                f"{self.meta.source} was exported for {self.meta.batch} stream(s) per call, got "
                f"{clock.time.shape[0]}; export it with --batch {clock.time.shape[0]}"
            )
        if clock.end is not None:  # a flush: the flush graph knows its D zero frames
            return self.run_flush(state, clock.time), state
        size, time, settled = self.frames_per_call, clock.time, clock.settled or 0
        if chunk.shape[-1] == size:  # one run (a hop per call): no slices, no concatenation
            return self.call(chunk, state, time, self.settled_at(settled))[:2]
        outs = []
        for start in range(0, chunk.shape[-1], size):
            frames = chunk[..., start : start + size]
            out, state, time = self.call(frames, state, time, self.settled_at(settled + start))
            outs.append(out)
        return torch.cat(outs, -1), state

    def settled_at(self, time: int) -> bool:
        """Whether the settled step graph computes the step at ``time``, a lower bound of every stream's time."""
        return bool(self.meta.settled) and time >= self.meta.settles_at

    def call(
        self, frames: torch.Tensor, state: list[torch.Tensor], time: torch.Tensor, use_settled: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """One run of the step graph (``use_settled``: the settled one): ``frames_per_call`` frames and the state
        -> ``out`` (a tensor the caller may keep), the next state and time (the runtime's buffers, which the next
        call reads)."""
        raise NotImplementedError


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


# -- the modules both writers trace: one engine step, its flush, its layers as graph nodes --


class GraphLayer(TimeContext, nn.Module):
    """What every form of a :class:`FrozenLayer` in an exported graph shares: its time context, the frozen
    ``[B, T, F, C]`` layout of its input and output, and its PReLU as elementwise nodes (:meth:`activate`)."""

    def __init__(self, frozen: FrozenLayer) -> None:
        super().__init__()
        self.past, self.future, self.transposed = frozen.past, frozen.future, frozen.transposed
        self.out_channels = frozen.out_channels
        self.register_buffer("prelu", frozen.prelu)
        self.slopes_at_most_one = frozen.prelu is not None and bool((frozen.prelu <= 1).all())

    def activate(self, y: torch.Tensor) -> torch.Tensor:
        """PReLU on a layer output ``[B, T', F', C']``, as branch-free elementwise nodes with the slopes tiled to
        ``[F', C']``: ``max(y, slope * y)`` where every slope is at most 1 (most layers of trained models), else
        ``y + (slope - 1) * min(y, 0)``.

        Not a ``PRelu`` node: onnxruntime's kernel selects per element with a branch that mispredicts on real
        activations and broadcasts a ``[C']`` slope in runs of ``C'`` numbers (0.4x the native hop per step on the
        paper's causal model); and the LiteRT converter lowers ``prelu`` to a ReLU branch fused into the preceding
        fully connected op, which it then computes twice (docs/benchmarks.md, "Exported steps")."""
        if self.prelu is None:
            return y
        bins, channels = (int(size) for size in y.shape[2:])  # static: a constant of the graph
        slope = self.prelu.expand(bins, channels)
        if self.slopes_at_most_one:
            return torch.maximum(y, y * slope)
        return y + torch.clamp(y, max=0) * (slope - 1)

    def step(self, register: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The STMC step: register ``[B, past + future, F, C]`` and new frames ``[B, t, F, C]`` -> the output frames
        and the next register, as :func:`stmc.stream.engines.shift` and the layer's ``forward`` compute them."""
        joined, register = shift(register, x, self.past + self.future, share=True)
        return self(joined), register


class ExportLayer(GraphLayer):
    """A :class:`FrozenLayer` as the nodes of an exported graph, in the frozen ``[B, T, F, C]`` layout (no transposes):
    a ``Gather`` of the im2col rows and one ``Gemm``, the native step's arithmetic.

    Encoder layers gather each output bin's ``taps x 5`` input positions (a zero row for the frequency padding);
    decoder layers gather the ``taps`` frames of each input bin, multiply by the weight with columns ``(freq tap,
    C')`` and add the five taps' columns into the output bins they land on (the transposed convolution's
    overlap-add in frequency, as three gathers and two adds). Sizes are static: the index tables are built for the
    traced sizes. :meth:`step` is the STMC step of a layer with a one-frame register, which needs no gather in
    time (see there).
    """

    def __init__(self, frozen: FrozenLayer) -> None:
        super().__init__(frozen)
        matrix, bias = frozen.matrix, frozen.bias
        if self.transposed:  # columns (cout, freq tap) -> (freq tap, cout); the bias rides on the one tap that
            # reaches every output bin exactly once (tap 2 the even bins, tap 3 the odd ones)
            matrix = matrix.view(matrix.shape[0], -1, FREQ_KERNEL).transpose(1, 2).reshape(matrix.shape[0], -1)
            bias = torch.cat([bias * (tap in CENTRE_TAPS) for tap in range(FREQ_KERNEL)])
        self.register_buffer("matrix", matrix.contiguous())
        if not self.transposed:  # the same rows ordered (freq tap, tap, C) for step()'s operand
            by_bin = matrix.view(self.taps, FREQ_KERNEL, -1, matrix.shape[1]).transpose(0, 1)
            self.register_buffer("matrix_bins_first", by_bin.reshape(matrix.shape).contiguous())
        self.register_buffer("bias", bias.contiguous())
        self.tables: dict[tuple[int, int], np.ndarray] = {}

    def table(self, frames: int, bins: int) -> torch.Tensor:
        """The im2col positions in the flattened ``[B, frames * bins (+ 1 zero row), C]`` input (a new tensor per
        call from cached numbers: a tensor cached across traces would carry one trace's fake tensors into the next)."""
        if (frames, bins) not in self.tables:
            time = np.arange(frames - self.taps + 1)[:, None, None, None] + np.arange(self.taps)[:, None]
            if self.transposed:  # [T', F, tap]
                index = time[..., 0] * bins + np.arange(bins)[:, None]
            else:  # [T', F', tap, freq tap]; out of range -> the zero row
                freq = FREQ_STRIDE * np.arange(out_bins(bins, False))[:, None, None] + np.arange(FREQ_KERNEL)
                freq = freq - FREQ_KERNEL // 2
                index = np.where((freq >= 0) & (freq < bins), time * bins + freq, frames * bins)
            self.tables[frames, bins] = index.reshape(-1).astype(np.int64)
        return torch.tensor(self.tables[frames, bins])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, F, C]`` -> ``[B, T - past - future, F', C']``, valid in time like the frozen layer."""
        frames, bins, channels = (int(size) for size in x.shape[1:])  # static in a traced step
        out_frames = frames - self.taps + 1
        flat = x.reshape(-1, frames * bins, channels)
        if not self.transposed:
            cols = F.pad(flat, (0, 0, 0, 1)).index_select(1, self.table(frames, bins))
            return self.encode(cols, self.matrix, out_frames, bins)
        cols = flat if self.taps == 1 else flat.index_select(1, self.table(frames, bins))
        return self.decode(cols, out_frames, bins)

    def step(self, register: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`GraphLayer.step`; with one new frame (a hop per call) the register's frames and the new one side by
        side in channels are each bin's time taps: a ``Concat`` replaces the concatenation in time, its reshape and
        the gather of the frames of each bin (the decoder's whole im2col; the encoder's gather then moves ``taps x C``
        numbers per index instead of ``C``). One interleaved run on the paper's causal model (Zen 4): onnxruntime
        1.61x -> 1.53x, LiteRT 1.51x -> 1.41x the native hop (docs/benchmarks.md).
        """
        count = self.past + self.future
        if x.shape[TIME] != 1:
            return super().step(register, x)
        # the time taps, oldest first (a one-frame register as it is: a traced slice of all of it is still a node)
        frames = [register] if count == 1 else [register[:, i : i + 1] for i in range(count)]
        frames.append(x)
        bins = int(x.shape[2])
        taps = torch.cat(frames, -1)  # [B, 1, F, (tap, C)]
        register = torch.cat(frames[1:], TIME) if count > 1 else x if count else x[:, :0]
        if self.transposed:
            return self.decode(taps, 1, bins), register
        freq = FREQ_STRIDE * np.arange(out_bins(bins, False))[:, None] + np.arange(FREQ_KERNEL) - FREQ_KERNEL // 2
        index = torch.tensor(np.where((freq >= 0) & (freq < bins), freq, bins).reshape(-1))  # out of range: zero row
        cols = F.pad(taps, (0, 0, 0, 1)).index_select(2, index)  # in place in [B, 1, F, ...]: no reshape first
        return self.encode(cols, self.matrix_bins_first, 1, bins), register

    def encode(self, cols: torch.Tensor, matrix: torch.Tensor, out_frames: int, bins: int) -> torch.Tensor:
        """An encoder layer's output ``[B, T', F', C']`` from its im2col rows (in ``matrix``'s row order)."""
        y = torch.addmm(self.bias, cols.reshape(-1, matrix.shape[0]), matrix)
        return self.activate(y.view(-1, out_frames, out_bins(bins, False), self.out_channels))

    def decode(self, cols: torch.Tensor, out_frames: int, bins: int) -> torch.Tensor:
        """A decoder layer's output ``[B, T', 2 bins - 1, C']`` from its rows of time taps ``(tap, C)``, one per
        input bin."""
        y = torch.addmm(self.bias, cols.reshape(-1, self.matrix.shape[0]), self.matrix)
        # the overlap-add in frequency: input bin f's tap j lands on output bin 2f + j - 2, so every output bin sums
        # the (at most 3) rows (f, j) of `fold_table` that land on it; absent ones read the zero row at the end
        rows = F.pad(y.view(-1, out_frames, bins * FREQ_KERNEL, self.out_channels), (0, 0, 0, 1))
        parts = [rows.index_select(2, torch.tensor(table)) for table in fold_table(bins)]
        return self.activate(functools.reduce(torch.add, parts))


class ConvExportLayer(GraphLayer):
    """A :class:`FrozenLayer` as one ``Conv`` over ``[B, C, T, F]`` between two transposes of the frozen layout: the
    form of onnxruntime's int8 graph, where the quantized ``Conv`` becomes a ``QLinearConv`` that onnxruntime runs in
    the channels-last layout (its transposes cancel) with the im2col inside the kernel, instead of the ``Gather``,
    ``Reshape`` and ``Gemm`` nodes of :class:`ExportLayer` (one interleaved run on the paper's causal model, Zen 4:
    0.93x -> 0.75x the native float32 hop; in float32 the convolution is the slower form, docs/benchmarks.md).

    A decoder layer (transposed in frequency, stride 2) is its two polyphase convolutions in one: output bin ``2m``
    sums input bins ``m + 1, m, m - 1`` through frequency taps 0, 2, 4 and bin ``2m + 1`` bins ``m + 1, m`` through
    taps 1, 3, so a 3-tap convolution with output channels ``(parity, C')`` gives both, and a reshape interleaves
    them (the odd phase's tap on input bin ``m - 1`` is zero; its last bin falls outside and is sliced off).
    """

    def __init__(self, frozen: FrozenLayer) -> None:
        super().__init__(frozen)
        taps, cout, matrix = self.taps, self.out_channels, frozen.matrix
        if not self.transposed:  # rows (tap, freq tap, C), columns C' -> [C', C, tap, freq tap]
            weight, bias = matrix.view(taps, FREQ_KERNEL, -1, cout).permute(3, 2, 0, 1), frozen.bias
        else:  # rows (tap, C), columns (C', freq tap) -> [(parity, C'), C, tap, 3]
            by_tap = matrix.view(taps, -1, cout, FREQ_KERNEL).permute(3, 2, 1, 0)  # [freq tap, C', C, tap]
            weight = matrix.new_zeros(FREQ_STRIDE, cout, by_tap.shape[2], taps, POLYPHASE_TAPS)
            for parity in range(FREQ_STRIDE):
                for k in range(POLYPHASE_TAPS):
                    # output bin 2m + parity from input bin m + k - 1, through frequency tap (2m + parity) -
                    # 2(m + k - 1) + 2
                    tap = FREQ_KERNEL // 2 + FREQ_STRIDE * (POLYPHASE_TAPS // 2 - k) + parity
                    if 0 <= tap < FREQ_KERNEL:
                        weight[parity, :, :, :, k] = by_tap[tap]
            weight, bias = weight.flatten(0, 1), frozen.bias.repeat(FREQ_STRIDE)
        self.register_buffer("weight", weight.contiguous())
        self.register_buffer("bias", bias.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, F, C]`` -> ``[B, T - past - future, F', C']``, valid in time like the frozen layer."""
        frames, bins = int(x.shape[1]) - self.taps + 1, int(x.shape[2])
        planes = x.permute(0, 3, 1, 2)
        if not self.transposed:
            y = F.conv2d(planes, self.weight, self.bias, stride=(1, FREQ_STRIDE), padding=(0, FREQ_KERNEL // 2))
            return self.activate(y.permute(0, 2, 3, 1))
        y = F.conv2d(planes, self.weight, self.bias, padding=(0, POLYPHASE_TAPS // 2)).permute(0, 2, 3, 1)
        # [B, T', F, (parity, C')] -> [B, T', (F, parity), C']: output bins 2m and 2m + 1 side by side
        y = y.reshape(-1, frames, FREQ_STRIDE * bins, self.out_channels)
        return self.activate(y[:, :, : out_bins(bins, True)])


POLYPHASE_TAPS = -(-FREQ_KERNEL // FREQ_STRIDE)  # input bins a decoder output bin draws on (ConvExportLayer): 3
CENTRE_TAPS = (2, 3)  # the decoder's frequency taps that reach every output bin exactly once (see ExportLayer)
FOLD_ROWS = 3  # the most (input bin, tap) pairs that land on one output bin of a decoder layer


@functools.cache
def fold_table(bins: int) -> np.ndarray:
    """The overlap-add of a decoder layer's ``[bins * 5 (+ 1 zero row), C']`` taps into its ``2 * bins - 1`` output
    bins as ``FOLD_ROWS`` gathers to add: for each output bin, the rows ``f * 5 + j`` that land on it (input bin
    ``f``, tap ``j``: output bin ``2f + j - 2``), the zero row ``bins * 5`` where fewer do."""
    table = np.full((FOLD_ROWS, 2 * bins - 1), bins * FREQ_KERNEL)
    filled = np.zeros(2 * bins - 1, dtype=int)
    for f in range(bins):
        for j in range(FREQ_KERNEL):
            out = FREQ_STRIDE * f + j - FREQ_KERNEL // 2
            if 0 <= out < 2 * bins - 1:
                table[filled[out], out] = f * FREQ_KERNEL + j
                filled[out] += 1
    return table


class StepGraph(nn.Module):
    """``(frames, *state) -> (out, *next_state)``: one engine step, the function the step graph holds; with
    ``settled`` (see :func:`settle_point`) the settled step graph's, without the time masks."""

    def __init__(self, engine: ModelEngine, settled: int = 0) -> None:
        super().__init__()
        self.engine, self.settled = engine, settled

    def forward(self, frames: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.engine.pure_step(frames, *state, settled=self.settled)


class _MaskRecorder(Clock):
    """A clock that masks nothing and records where the frames an engine asked it to mask begin."""

    def __init__(self, time: torch.Tensor) -> None:
        super().__init__(time)
        self.offsets: list[int] = []

    def clip(self, y: torch.Tensor, offset: int) -> torch.Tensor:
        self.offsets.append(offset)
        return y


def settle_point(model: UNet, engine: ModelEngine, frames_per_call: int) -> int:
    """The stream time from which no layer output of ``engine``'s step can precede a stream's start (0: none ever
    can): from there on its step graph's time masks are all ones, and the settled step graph computes the same."""
    frames, *state = trace_inputs(model, engine, 1, frames_per_call)
    clock = _MaskRecorder(state[-1])
    with torch.no_grad():
        engine.step(frames, state[:-1], clock)
    return max([0, *(-offset for offset in clock.offsets)])


class FlushGraph(nn.Module):
    """``(*state) -> out``: the last ``D`` frames of every stream, as :meth:`stmc.stream.driver.Stream.flush` computes
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
        raise InputError(f"export needs a stmc.UNet, got {type(model).__name__}")
    if not isinstance(frames_per_call, int) or frames_per_call < 1:
        raise InputError(f"frames_per_call must be a positive integer, got {frames_per_call!r}")
