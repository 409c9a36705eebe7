"""Streaming engines: one set of U-Net weights run chunk by chunk, exactly equal to offline inference.

All engines share the stream contract (:class:`Stream`): chunks ``[B, 2, F, t]`` with any ``t >= 0`` go in,
frames come out delayed by the model's look-ahead ``D = receptive_field[1]``, ``flush()`` returns the last
``D`` frames, and the concatenation equals ``model(spec)``. They differ only in how a layer gets its context:

- ``stmc``: a shift register of the last ``past + future`` input frames per layer and a delay line per skip
  connection, so each input frame is convolved once per layer (cost linear in the chunk size);
- ``inc``: our reconstruction of incremental inference: a buffer of the receptive field of *input* frames,
  every layer evaluated (valid in time) only on the frames the new outputs depend on; no per-layer state;
- ``window``: standard convolutions: the whole padded model recomputed over the last receptive-field frames
  for every new frame (hop).

State is explicit (:meth:`Stream.get_state` / :meth:`Stream.set_state`, fixed shapes, zeros at the start) and
resettable per stream (:meth:`Stream.reset` with a mask). Frames at times before a stream's start or after its
end stand for the zero padding of offline inference: every layer zeroes its outputs there
(:meth:`Stream.clip`), which is what makes zero-initialised state exact. Streams run the model's inference form
(BatchNorm folded into the convolutions, running statistics); weights are read at construction and ``reset()``.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from stmc.layers import FrozenLayer
from stmc.native import KernelMismatch, NativeStep
from stmc.native import unavailable as native_unavailable
from stmc.unet import UNet

TIME = 1  # the time axis of the frozen layers' layout [batch, time, freq, channels]


def merge(k: int, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """The U-Net skip merge in the frozen layout: decoder channels, then encoder channels."""
    return torch.cat([h, skip], -1)


def pad_time(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Zero frames before and after, on the time axis of the frozen layout."""
    return F.pad(x, (0, 0, 0, 0, before, after))


def padded_walk(model: UNet, layers: list[FrozenLayer], h: torch.Tensor, clip=None) -> torch.Tensor:
    """Offline inference in the frozen layout: each layer's input padded with its (past, future) zeros.

    ``clip(y)``, if given, post-processes every layer output (the window engine masks time there).
    """

    def apply(k: int, x: torch.Tensor) -> torch.Tensor:
        y = layers[k](pad_time(x, layers[k].past, layers[k].future))
        return y if clip is None else clip(y)

    return model.walk(h, apply, merge)


class Stream(nn.Module):
    """Common contract of the engines: input checks, per-stream time, output alignment, flush and reset."""

    def __init__(self, model: UNet, compile: bool = False, native: bool | None = None) -> None:
        super().__init__()
        if not isinstance(model, UNet):
            raise ValueError(f"streaming() needs a stmc.UNet, got {type(model).__name__}")
        self.model = model
        self.native = self.native_choice(native, compile)
        self.native_step: NativeStep | None = None  # bound at the first chunk that runs natively
        # Masks by tensor ops even where no frame needs one: a traced step must not depend on the time.
        self.always_mask = compile
        self.compiled = None
        if compile:
            # every stream shares pure_step's code object, and dynamo guards each instance separately:
            # leave room for many streams before it would silently fall back to eager
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            torch._dynamo.config.accumulated_recompile_limit = max(
                torch._dynamo.config.accumulated_recompile_limit, 1024
            )
            self.compiled = torch.compile(self.pure_step, dynamic=False)
        self.reset()

    def native_choice(self, native: bool | None, compile: bool) -> bool:
        """Whether this engine runs the native step (only STMC has one); ``native=True`` where it cannot is a
        ``ValueError``."""
        if native:
            raise ValueError(f"native=True is for the stmc method only, got {type(self).__name__}")
        return False

    @property
    def delay(self) -> int:
        """Output frames lag input frames by the look-ahead."""
        return self.model.receptive_field[1]

    # -- state --
    def state_shapes(self) -> list[tuple[int, ...]]:
        """Shapes (without the batch axis) of the engine's state tensors, in :meth:`get_state` order."""
        raise NotImplementedError

    def init_state(self, batch: int, like: torch.Tensor) -> None:
        """Zero state for ``batch`` streams, then every stream at time 0."""
        self.state = [like.new_zeros(batch, *shape) for shape in self.state_shapes()]
        self.time = torch.zeros(batch, dtype=torch.long, device=like.device)
        self.settled = 0  # every stream is at least this many frames in (the fast path of clip)
        self.batch = batch

    def get_state(self) -> list[torch.Tensor]:
        """The whole state: the engine's buffers, then each stream's time (frames since its start).

        The tensors are live (the native STMC step shifts them in place): ``clone()`` them to keep a snapshot.
        """
        return [*self.state, self.time]

    def set_state(self, state: list[torch.Tensor]) -> None:
        """Adopt a state from :meth:`get_state` (or exported step outputs), after checking it: the count, and every
        tensor's shape, dtype and device (``ValueError`` naming the first wrong one). Nothing reads the tensors
        before that, so a wrong state never reaches the native step's memory."""
        self.check_state(state)
        self.adopt_state(list(state))

    def check_state(self, state: object) -> None:
        """Raise ``ValueError`` unless ``state`` is a list of tensors shaped, typed and placed as get_state's."""
        shapes = self.state_shapes()
        if not isinstance(state, list | tuple) or len(state) != len(shapes) + 1:
            got = f"{len(state)} items" if isinstance(state, list | tuple) else type(state).__name__
            raise ValueError(f"set_state: expected a list of {len(shapes) + 1} tensors ({len(shapes)} state buffers, "
                             f"then the time), got {got}")
        time = state[-1]
        if not isinstance(time, torch.Tensor) or time.dim() != 1 or time.dtype != torch.long:
            got = f"{time.dtype} of shape {list(time.shape)}" if isinstance(time, torch.Tensor) else type(time).__name__
            raise ValueError(f"set_state: tensor {len(shapes)} (the time) must be int64 of shape [batch], got {got}")
        like = self.layers[0].bias
        if time.device != like.device:
            raise ValueError(f"set_state: tensor {len(shapes)} (the time) must be on {like.device}, got {time.device}")
        for index, (tensor, shape) in enumerate(zip(state, shapes, strict=False)):
            expected = [time.shape[0], *shape]
            if (not isinstance(tensor, torch.Tensor) or list(tensor.shape) != expected or tensor.dtype != like.dtype
                    or tensor.device != like.device):
                got = (f"{tensor.dtype} of shape {list(tensor.shape)} on {tensor.device}"
                       if isinstance(tensor, torch.Tensor) else type(tensor).__name__)
                raise ValueError(f"set_state: tensor {index} must be {like.dtype} of shape {expected} on "
                                 f"{like.device}, got {got}")

    def adopt_state(self, state: list[torch.Tensor]) -> None:
        """Take ``state`` as it is (the traced step's own inputs; users go through :meth:`set_state`)."""
        self.state, self.time = list(state[:-1]), state[-1]
        if not self.always_mask:
            self.settled = int(self.time.min())
        self.batch = self.time.shape[0]

    @torch.inference_mode()
    def reset(self, mask: torch.Tensor | None = None) -> None:
        """Restart every stream (weights re-read), or only those where ``mask [B]`` is true.

        Restarted streams begin at time 0 again: their next ``D`` output frames belong to no input and are zero.
        """
        if mask is None:
            self.layers = self.model.frozen()
            self.state: list[torch.Tensor] = []
            self.time = torch.zeros(0, dtype=torch.long)
            self.batch: int | None = None
            self.frames_in = 0
            self.end: torch.Tensor | None = None
            self.flushed = False
            return
        if self.batch is None or mask.shape != (self.batch,) or mask.dtype != torch.bool:
            raise ValueError(f"reset(mask) needs a bool mask of shape [{self.batch}] after the first chunk")
        for tensor in self.state:
            tensor[mask] = 0
        self.time[mask] = 0
        self.settled = 0

    def clip(self, y: torch.Tensor, offset: int) -> torch.Tensor:
        """Zero the frames of ``y`` outside each stream's ``[0, end)``; ``y`` starts at ``time + offset``."""
        length = y.shape[TIME]
        if not self.always_mask and self.end is None and self.settled + offset >= 0:
            return y
        times = self.time.unsqueeze(1) + offset + torch.arange(length, device=y.device)
        valid = times >= 0
        if self.end is not None:
            valid = valid & (times < self.end.unsqueeze(1))
        return y * valid[:, :, None, None].to(y.dtype)

    # -- running --
    def step(self, h: torch.Tensor) -> torch.Tensor:
        """Features of input frames at times ``time..`` -> network output at times ``time - D..``."""
        raise NotImplementedError

    @torch.inference_mode()
    def forward(self, chunk: torch.Tensor) -> torch.Tensor:
        if self.flushed:
            raise RuntimeError("this stream was flushed; call reset() before streaming again")
        self.model.check_input(chunk, self.batch)
        if self.batch is None:
            self.init_state(chunk.shape[0], chunk)
        if chunk.shape[-1] == 0:
            return chunk.new_zeros(chunk.shape)
        return self._emit(chunk)

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:
        """Run the look-ahead out with the zero frames offline padding gives; the stream then needs reset()."""
        if self.flushed:
            raise RuntimeError("this stream was flushed already; call reset() before streaming again")
        self.flushed = True
        like = self.layers[0].bias  # dtype and device of the frames
        if self.delay == 0 or self.batch is None:
            return like.new_zeros(self.batch or 0, 2, self.model.n_freq, 0)
        self.end = self.time.clone()
        return self._emit(like.new_zeros(self.batch, 2, self.model.n_freq, self.delay))

    def advance(self, chunk: torch.Tensor) -> torch.Tensor:
        """Run one chunk ``[B, 2, F, t]`` through the engine; the bounded mask at times ``time - D..``."""
        return self.advance_ops(chunk)

    def advance_ops(self, chunk: torch.Tensor) -> torch.Tensor:
        """:meth:`advance` with PyTorch operators; state tensors are replaced, never written in place."""
        out = self.model.through_frames(chunk, self.step)
        self.time = self.time + chunk.shape[-1]
        return out

    def pure_step(self, chunk: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One step as a function of its inputs: ``(chunk, *state) -> (out, *next_state)``.

        ``out`` covers times ``time - D ..`` of every stream, including times before its start. This is what
        ``torch.compile`` and the ONNX export trace (with ``always_mask``).
        """
        self.adopt_state(list(state))
        return (self.advance_ops(chunk), *self.get_state())

    def _emit(self, chunk: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None and self.end is None:
            out, *state = self.compiled(chunk, *self.get_state())
            self.adopt_state(state)
        else:
            out = self.advance(chunk)
        self.settled += chunk.shape[-1]
        early = max(0, self.delay - self.frames_in)  # outputs at times < 0 are not part of the signal
        self.frames_in += chunk.shape[-1]
        return out[..., early:]


class STMCStream(Stream):
    """Short-Term Memory Convolution: per-layer shift registers and per-skip delay lines.

    ``native`` runs each chunk through the native step (:mod:`stmc.native`: the same arithmetic in one call,
    the registers shifted in place); ``None`` (the default) uses it wherever it can run (float32 on CPU, not
    compiled, a C++ compiler present) and the PyTorch operators otherwise; ``False`` always uses the latter.
    """

    def native_choice(self, native: bool | None, compile: bool) -> bool:
        if native is False or (native is None and compile):
            return False
        weight = self.model.layers[0].conv.weight
        unsupported = weight.dtype != torch.float32 or not weight.is_cpu
        if compile:
            reason = "torch.compile traces the PyTorch operators; pass native=False or compile=False"
        elif unsupported:
            reason = f"it runs float32 models on the CPU, this one is {weight.dtype} on {weight.device}"
        else:
            reason = native_unavailable()
        if reason is None:
            return True
        if native:
            raise ValueError(f"native=True, but the native STMC step cannot run: {reason}")
        if not unsupported:  # a model it cannot run is no surprise; a missing compiler is worth a line
            warn_once(f"STMC streams use PyTorch operators (slower per hop): {reason}")
        return False

    def advance(self, chunk: torch.Tensor) -> torch.Tensor:
        if not self.native or not chunk.is_cpu:
            return self.advance_ops(chunk)
        if self.native_step is None or not self.native_step.binds(self.layers, self.state):
            self.state = [tensor.contiguous() for tensor in self.state]
            self.time = self.time.contiguous()
            try:
                self.native_step = NativeStep(self.model, self.layers, self.state, self.batch, self.state_shapes())
            except KernelMismatch as err:  # never silently wrong: the operators compute the same state
                warn_once(f"STMC streams use PyTorch operators (slower per hop): {err}")
                self.native = False
                return self.advance_ops(chunk)
        out = self.native_step(chunk, self.time, self.end)
        self.time = self.time + chunk.shape[-1]
        return out

    def state_shapes(self) -> list[tuple[int, ...]]:
        model = self.model
        shapes = []
        for k, layer in enumerate(model.layers):
            channels, bins = model.input_shape(k)
            shapes.append((layer.past + layer.future, bins, channels))
        for k, source in model.joins.items():
            if model.join_delay(k):
                shapes.append((model.join_delay(k), model.bins(source + 1), model.layers[source].out_channels))
        return shapes

    def step(self, h: torch.Tensor) -> torch.Tensor:
        model, registers = self.model, self.state
        lines = iter(range(len(model.layers), len(registers)))
        slots = {k: next(lines) for k in model.joins if model.join_delay(k)}

        def apply(k: int, x: torch.Tensor) -> torch.Tensor:
            layer = self.layers[k]
            x = torch.cat([registers[k], x], TIME)
            registers[k] = x[:, x.shape[TIME] - layer.past - layer.future :]
            return self.clip(layer(x), -model.delays[k])

        def join(k: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
            if k in slots:
                slot = slots[k]
                skip = torch.cat([registers[slot], skip], TIME)
                registers[slot] = skip[:, skip.shape[TIME] - model.join_delay(k) :]
            return merge(k, x, skip[:, : x.shape[TIME]])

        return model.walk(h, apply, join)


class IncStream(Stream):
    """Incremental inference: keep the receptive field of input frames, compute only what new outputs need."""

    def state_shapes(self) -> list[tuple[int, ...]]:
        return [(sum(self.model.receptive_field), self.model.n_freq, 2)]

    def history(self, h: torch.Tensor) -> torch.Tensor:
        """The input frames of the receptive field followed by ``h``; keeps the newest as state."""
        x = torch.cat([self.state[0], h], TIME)
        self.state[0] = x[:, h.shape[TIME] :]
        return x

    def step(self, h: torch.Tensor) -> torch.Tensor:
        model = self.model
        first = -sum(model.receptive_field)  # time of the history's first frame, relative to h's

        def apply(k: int, x: torch.Tensor) -> torch.Tensor:
            return self.clip(self.layers[k](x), first + model.lags[k])

        def join(k: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
            offset = model.join_offset(k)
            return merge(k, x, skip[:, offset : offset + x.shape[TIME]])

        return model.walk(self.history(h), apply, join)


class WindowStream(IncStream):
    """Standard convolutions: the padded model over the last receptive-field frames, once per new frame."""

    def step(self, h: torch.Tensor) -> torch.Tensor:
        model = self.model
        past, future = model.receptive_field
        x = self.history(h)
        outputs = []
        for i in range(h.shape[TIME]):
            first = i - past - future  # time of this window's first frame, relative to h's
            window = x[:, i : i + past + future + 1]
            out = padded_walk(model, self.layers, window, lambda y, first=first: self.clip(y, first))
            outputs.append(out[:, past : past + 1])
        return torch.cat(outputs, TIME)


@functools.cache
def warn_once(message: str) -> None:
    """A warning given once per process (streams are built in loops: one line is enough)."""
    warnings.warn(message, stacklevel=5)


ENGINES: dict[str, type[Stream]] = {"stmc": STMCStream, "inc": IncStream, "window": WindowStream}
METHODS = tuple(ENGINES)


def streaming(model: UNet, method: str = "stmc", compile: bool = False, native: bool | None = None) -> Stream:
    """A stateful stream over ``model``'s weights; ``method`` is one of :data:`METHODS`.

    ``native`` (``stmc`` only) chooses the native step of :class:`STMCStream`; None: wherever it can run.

    ``compile=True`` runs each step through ``torch.compile`` (inductor): the first chunk of each new size
    compiles for tens of seconds, then per-step Python and dispatch overhead all but vanishes. Use it with a
    fixed chunk size.
    """
    if method not in ENGINES:
        raise ValueError(f"unknown streaming method {method!r}; choose one of {', '.join(METHODS)}")
    return ENGINES[method](model, compile=compile, native=native)
