"""Streaming engines: one set of U-Net weights run chunk by chunk, exactly equal to offline inference.

Every engine runs behind the one driver, :class:`stmc.stream.driver.Stream` (checks, per-stream time, alignment, flush,
reset, state round trip); an engine only lays out its state and computes a step. They differ in how a layer
gets its context:

- ``stmc``: a shift register of the last ``past + future`` input frames per layer and a delay line per skip
  connection, so each input frame is convolved once per layer (cost linear in the chunk size); on PyTorch
  operators (:class:`STMCEngine`) or in one native call per chunk (:class:`NativeSTMCEngine`);
- ``inc``: our reconstruction of incremental inference: a buffer of the receptive field of *input* frames,
  every layer evaluated (valid in time) only on the frames the new outputs depend on; no per-layer state;
- ``window``: standard convolutions: the whole padded model recomputed over the last receptive-field frames
  for every new frame (hop).

Frames at times before a stream's start or after its end stand for the zero padding of offline inference:
every layer zeroes its outputs there (:meth:`stmc.stream.driver.Clock.clip`), which is what makes zero-initialised
state exact. Engines run the model's inference form (BatchNorm folded into the convolutions, running
statistics); weights are read at construction and at every full ``reset()``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from stmc.errors import InputError
from stmc.model.layers import FrozenLayer, OverlapAddLayer
from stmc.model.unet import UNet, concat_skip
from stmc.stream.driver import TIME, Clock, Engine, Stream
from stmc.stream.native import GEMM_DTYPES, KernelMismatch, NativeStep
from stmc.stream.native import unavailable as native_unavailable

merge = functools.partial(concat_skip, channels=-1)  # the skip merge in the frozen layout [B, T, F, C]


def pad_time(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Zero frames before and after, on the time axis of the frozen layout."""
    return F.pad(x, (0, 0, 0, 0, before, after))


def last_frames(x: torch.Tensor, count: int) -> torch.Tensor:
    """The last ``count`` frames of ``x`` (none for 0), sliced with constant bounds: a traced step (the export)
    records no shape arithmetic for it."""
    return x[:, -count:] if count else x[:, :0]


def shift(register: torch.Tensor, x: torch.Tensor, count: int, share: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A shift register's step: ``(cat(register, x), its last count frames)``.

    With ``share`` and ``x`` exactly ``count`` frames, the new register is ``x`` itself: an exported step graph
    then writes that state without copying a slice of the concatenation (its runtime copies every output into a
    buffer of its own). Otherwise it is a view of the concatenation, so that no two state tensors share memory
    (``x`` may also feed a skip's delay line, and the native step shifts registers in place).
    """
    joined = torch.cat([register, x], TIME)
    if share and 0 < count == x.shape[TIME]:
        return joined, x
    return joined, last_frames(joined, count)


def padded_walk(model: UNet, layers: list[FrozenLayer], h: torch.Tensor, clip=None) -> torch.Tensor:
    """Offline inference in the frozen layout: each layer's input padded with its (past, future) zeros.

    ``clip(y)``, if given, post-processes every layer output (the window engine masks time there).
    """

    def apply(k: int, x: torch.Tensor) -> torch.Tensor:
        y = layers[k](pad_time(x, layers[k].past, layers[k].future))
        return y if clip is None else clip(y)

    return model.walk(h, apply, merge)


class ModelEngine(Engine):
    """An engine over a :class:`UNet`'s frozen layers (``layer_form`` turns each into what the engine runs).

    ``exported``: the engine is traced into a step graph whose runtime copies the outputs (see :func:`shift`); its
    layers are forms of :class:`stmc.export.graph.GraphLayer` and take their STMC step themselves
    (``layer.step``), and the spectrum's compression and bound run on ``[B, 2, F * T]``
    (:meth:`stmc.model.unet.UNet.through_frames`).
    """

    def __init__(
        self, model: UNet, layer_form: Callable[[FrozenLayer], object] | None = None, exported: bool = False
    ) -> None:
        self.model, self.layer_form, self.exported = model, layer_form, exported
        self.delay, self.n_freq = model.receptive_field[1], model.n_freq
        self.load()

    def load(self) -> None:
        self.adopt(self.model.frozen())

    def adopt(self, layers: list[FrozenLayer]) -> None:
        """Take the model's frozen layers (read at construction and at every full reset) in the engine's form."""
        self.layers = layers if self.layer_form is None else [self.layer_form(layer) for layer in layers]
        self.dtype, self.device = layers[0].bias.dtype, layers[0].bias.device

    def step(
        self, chunk: torch.Tensor, state: list[torch.Tensor], clock: Clock
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        state = list(state)  # replaced, never written in place
        return self.model.through_frames(chunk, lambda h: self.walk(h, state, clock), flat=self.exported), state

    def walk(self, h: torch.Tensor, state: list[torch.Tensor], clock: Clock) -> torch.Tensor:
        """The layer chain on features ``[B, t, F, 2]``, updating ``state`` (a list the step owns)."""
        raise NotImplementedError

    def pure_step(self, chunk: torch.Tensor, *state: torch.Tensor, settled: int = 0) -> tuple[torch.Tensor, ...]:
        """One step as a function of its inputs, ``(chunk, *state, time) -> (out, *next_state, next_time)``: what
        ``torch.compile`` and the exporters trace. Every layer output that may precede a stream's start is masked by
        tensor ops, unless ``settled`` (a lower bound of every stream's time) says it cannot."""
        *buffers, time = state
        out, buffers = self.step(chunk, buffers, Clock(time, settled=settled))
        return (out, *buffers, time + chunk.shape[-1])


class STMCEngine(ModelEngine):
    """Short-Term Memory Convolution on PyTorch operators: per-layer shift registers, per-skip delay lines."""

    def adopt(self, layers: list[FrozenLayer]) -> None:
        super().adopt(layers)
        # tstmc=False decoder layers, streamed as transposed convolutions in time (INC and window run every layer
        # in its valid form)
        self.overlap = {
            k: OverlapAddLayer.of(layer, self.layer_form)
            for k, layer in enumerate(layers)
            if not self.model.layers[k].tstmc
        }

    def state_shapes(self) -> list[tuple[int, ...]]:
        model = self.model
        shapes = []
        for k, layer in enumerate(model.layers):
            channels, bins = model.input_shape(k)
            if k in self.overlap:  # the pending output sums
                shapes.append((layer.past + layer.future, layer.out_bins(bins), layer.out_channels))
            else:  # the last input frames
                shapes.append((layer.past + layer.future, bins, channels))
        for k, source in model.joins.items():
            if model.join_delay(k):
                shapes.append((model.join_delay(k), model.bins(source + 1), model.layers[source].out_channels))
        return shapes

    def walk(self, h: torch.Tensor, state: list[torch.Tensor], clock: Clock) -> torch.Tensor:
        model, registers = self.model, state
        lines = iter(range(len(model.layers), len(registers)))
        slots = {k: next(lines) for k in model.joins if model.join_delay(k)}

        def apply(k: int, x: torch.Tensor) -> torch.Tensor:
            if k in self.overlap:
                y, registers[k] = self.overlap[k](x, registers[k])
                return clock.clip(y, -model.delays[k])
            layer = self.layers[k]
            if self.exported:  # the exported layer's own step (e.g. stmc.export.graph.ExportLayer.step)
                y, registers[k] = layer.step(registers[k], x)
            else:
                x, registers[k] = shift(registers[k], x, layer.past + layer.future, share=False)
                y = layer(x)
            return clock.clip(y, -model.delays[k])

        def join(k: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
            if k in slots:
                skip, registers[slots[k]] = shift(registers[slots[k]], skip, model.join_delay(k), self.exported)
            frames = int(x.shape[TIME])  # static in a traced step: no slice where the skip has x's length
            return merge(k, x, skip if skip.shape[TIME] == frames else skip[:, :frames])

        return model.walk(h, apply, join)


class NativeSTMCEngine(STMCEngine):
    """STMC in one native call per chunk (:mod:`stmc.stream.native`: the same arithmetic, the registers shifted in
    place).

    Bound to the driver's state tensors at the first chunk (again when they are replaced); each distinct GEMM
    shape is checked against ``torch.mm`` then, and a mismatch means the PyTorch operators from there on.
    """

    def __init__(self, model: UNet, gemm_dtype: torch.dtype = torch.float32) -> None:
        super().__init__(model)
        self.native, self.gemm_dtype = True, gemm_dtype
        self.native_step: NativeStep | None = None

    def load(self) -> None:
        super().load()
        self.native_step = None

    def step(
        self, chunk: torch.Tensor, state: list[torch.Tensor], clock: Clock
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if not self.native or not chunk.is_cpu:
            return super().step(chunk, state, clock)
        if self.native_step is None or not self.native_step.binds(self.layers, state):
            state = [tensor.contiguous() for tensor in state]
            try:
                self.native_step = NativeStep(
                    self.model, self.layers, state, clock.time.shape[0], self.state_shapes(), self.gemm_dtype
                )
            except KernelMismatch as err:  # never silently wrong: the operators compute the same state
                if self.gemm_dtype != torch.float32:  # ... in float32 only: no silent change of precision
                    raise RuntimeError(f"the bfloat16 STMC step cannot run: {err}") from err
                warn_once(f"STMC streams use PyTorch operators (slower per hop): {err}")
                self.native, self.native_step = False, None
                return super().step(chunk, state, clock)
        return self.native_step(chunk, clock.time.contiguous(), clock.end), state


class IncEngine(ModelEngine):
    """Incremental inference: keep the receptive field of input frames, compute only what new outputs need."""

    def state_shapes(self) -> list[tuple[int, ...]]:
        return [(sum(self.model.receptive_field), self.model.n_freq, 2)]

    @staticmethod
    def history(h: torch.Tensor, state: list[torch.Tensor]) -> torch.Tensor:
        """The input frames of the receptive field followed by ``h``; keeps the newest as state."""
        x = torch.cat([state[0], h], TIME)
        state[0] = x[:, h.shape[TIME] :]
        return x

    def walk(self, h: torch.Tensor, state: list[torch.Tensor], clock: Clock) -> torch.Tensor:
        model = self.model
        first = -sum(model.receptive_field)  # time of the history's first frame, relative to h's

        def apply(k: int, x: torch.Tensor) -> torch.Tensor:
            return clock.clip(self.layers[k](x), first + model.lags[k])

        def join(k: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
            offset = model.join_offset(k)
            return merge(k, x, skip[:, offset : offset + x.shape[TIME]])

        return model.walk(self.history(h, state), apply, join)


class WindowEngine(IncEngine):
    """Standard convolutions: the padded model over the last receptive-field frames, once per new frame."""

    def walk(self, h: torch.Tensor, state: list[torch.Tensor], clock: Clock) -> torch.Tensor:
        model = self.model
        past, future = model.receptive_field
        x = self.history(h, state)
        outputs = []
        for i in range(h.shape[TIME]):
            first = i - past - future  # time of this window's first frame, relative to h's
            window = x[:, i : i + past + future + 1]
            out = padded_walk(model, self.layers, window, lambda y, first=first: clock.clip(y, first))
            outputs.append(out[:, past : past + 1])
        return torch.cat(outputs, TIME)


class CompiledEngine(Engine):
    """An engine's steps through ``torch.compile`` (inductor); flushes run eagerly (they happen once).

    Dynamo's recompilation limits are raised for these calls only: every stream shares the pure step's code
    object and dynamo guards each instance separately, so many streams would otherwise fall back to eager.
    """

    RECOMPILE_LIMITS = {"recompile_limit": 64, "accumulated_recompile_limit": 1024}

    def __init__(self, engine: ModelEngine) -> None:
        self.engine = engine
        self.delay, self.n_freq = engine.delay, engine.n_freq
        self.compiled = torch.compile(engine.pure_step, dynamic=False)

    @property
    def dtype(self) -> torch.dtype:
        """The wrapped engine's, read when asked: it follows the model after ``model.to()`` and a reset."""
        return self.engine.dtype

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def state_shapes(self) -> list[tuple[int, ...]]:
        return self.engine.state_shapes()

    def load(self) -> None:
        self.engine.load()

    def step(
        self, chunk: torch.Tensor, state: list[torch.Tensor], clock: Clock
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if clock.end is not None:
            return self.engine.step(chunk, state, clock)
        with torch._dynamo.config.patch(**self.RECOMPILE_LIMITS):
            out, *state, _ = self.compiled(chunk, *state, clock.time)  # the driver advances the time
        return out, state


class NativeFallback(UserWarning):
    """STMC streams run on PyTorch operators because the native step cannot (no compiler, a GEMM mismatch, ...)."""


@functools.cache
def warn_once(message: str) -> None:
    """A :class:`NativeFallback` warning given once per process (streams are built in loops: one line is enough)."""
    warnings.warn(message, NativeFallback, stacklevel=5)


ENGINES: dict[str, type[ModelEngine]] = {"stmc": STMCEngine, "inc": IncEngine, "window": WindowEngine}
METHODS = tuple(ENGINES)


def engine_for(
    model: UNet,
    method: str = "stmc",
    compile: bool = False,
    native: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> Engine:
    """The engine of ``method`` over ``model``; see :func:`streaming` for ``compile``, ``native`` and ``dtype``."""
    if method not in ENGINES:
        raise InputError(f"unknown streaming method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(model, UNet):
        raise InputError(f"streaming() needs a stmc.UNet, got {type(model).__name__}")
    if native and method != "stmc":
        raise InputError(f"native=True is for the stmc method only, got {method!r}")
    if dtype not in GEMM_DTYPES:
        raise InputError(f"dtype={dtype}: the stream's GEMMs run in torch.float32 or torch.bfloat16")
    required = "native=True"  # what insists on the native step, named in its error
    if dtype != torch.float32:
        if method != "stmc" or compile or native is False:
            raise InputError("dtype=torch.bfloat16 is the native STMC step's: method='stmc', native, not compiled")
        native, required = True, "dtype=torch.bfloat16"
    if method == "stmc" and native is not False and not (native is None and compile):
        weight = model.layers[0].conv.weight
        unsupported = weight.dtype != torch.float32 or not weight.is_cpu
        if compile:
            reason = "torch.compile traces the PyTorch operators; pass native=False or compile=False"
        elif unsupported:
            reason = f"it runs float32 models on the CPU, this one is {weight.dtype} on {weight.device}"
        elif not all(layer.tstmc for layer in model.layers):
            reason = "it has no overlap-add decoder for tstmc=False models"
        else:
            reason = native_unavailable()
        if reason is None:
            return NativeSTMCEngine(model, dtype)
        if native:
            raise InputError(f"{required}, but the native STMC step cannot run: {reason}")
        if not unsupported:  # a model it cannot run is no surprise; a missing compiler is worth a line
            warn_once(f"STMC streams use PyTorch operators (slower per hop): {reason}")
    engine = ENGINES[method](model)
    return CompiledEngine(engine) if compile else engine


def streaming(
    model: UNet,
    method: str = "stmc",
    compile: bool = False,
    native: bool | None = None,
    dtype: torch.dtype = torch.float32,
) -> Stream:
    """A stateful stream over ``model``'s weights; ``method`` is one of :data:`METHODS`.

    ``native`` (``stmc`` only): the native step wherever it can run (None: float32 on CPU, not compiled, a C++
    compiler present; PyTorch operators otherwise), always (True: a ``ValueError`` where it cannot) or never.

    ``dtype=torch.bfloat16`` (the native STMC step only): every GEMM takes its operands rounded to bfloat16 and
    sums in float32 (the state, bias, PReLU and the mask's bound stay float32). It runs on the CPU's bf16
    instructions where the CPU has them (AVX512-BF16: :func:`stmc.stream.native.bf16_kernels`) and computes the
    same numbers more slowly elsewhere.

    ``compile=True`` runs each step through ``torch.compile`` (inductor): the first chunk of each new size
    compiles for tens of seconds, then per-step Python and dispatch overhead all but vanishes. Use it with a
    fixed chunk size.

    A stream always runs the model's inference form (BatchNorm with its running statistics, as ``model.eval()``);
    a model still in training mode gets a warning saying so, since its own ``model(spec)`` would differ.
    """
    if model.training:
        warnings.warn(
            "stmc.streaming: the model is in training mode; the stream runs its inference form (BatchNorm running "
            "statistics), which model(spec) gives only after model.eval()",
            stacklevel=2,
        )
    return Stream(engine_for(model, method, compile, native, dtype))
