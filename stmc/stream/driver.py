"""The stream driver: one per-call contract for every engine that runs a U-Net chunk by chunk.

A :class:`Stream` takes spectrum chunks ``[B, 2, F, t]`` (any ``t >= 0`` that is a multiple of the engine's
``frames_per_call``), returns the mask frames delayed by the model's look-ahead ``D`` (nothing for times before
the streams' start), and ``flush()`` returns the last ``D`` frames, so that the concatenation equals offline
inference. It owns everything that is the same for every engine: the input checks, each stream's time, the
output alignment, the flush, ``reset()`` / ``reset(mask)`` and a ``get_state`` / ``set_state`` that round-trips.

An :class:`Engine` (STMC native / operators / compiled, INC, window: :mod:`stmc.stream.engines`; onnxruntime:
:mod:`stmc.export.onnx`) only says what state it keeps (:meth:`Engine.state_shapes`) and computes one step
from a chunk, its state and a :class:`Clock`.
"""

from __future__ import annotations

import torch

from stmc.errors import InputError
from stmc.model.unet import check_spectrum

TIME = 1  # the time axis of the frozen layers' layout [batch, time, freq, channels]


class Clock:
    """Where each stream of a batch is in time during one step: what an engine needs to zero the frames that stand
    for offline inference's zero padding (before a stream's start, and after its end during a flush).

    ``time [B]``: frames each stream took in before this chunk. ``end [B]``: each stream's length, during a flush
    (None otherwise). ``settled``: a lower bound of ``time`` known without reading it, so that steady-state steps
    skip the masking; None means only the bound every stream has (0), and every layer output that may precede a
    stream's start is masked by tensor ops (what a traced step needs: it must not depend on the time).
    """

    def __init__(self, time: torch.Tensor, end: torch.Tensor | None = None, settled: int | None = None) -> None:
        self.time, self.end, self.settled = time, end, settled

    def clip(self, y: torch.Tensor, offset: int) -> torch.Tensor:
        """Zero the frames of ``y [B, T, F, C]`` outside each stream's ``[0, end)``; ``y`` starts at ``time +
        offset``."""
        if self.end is None and (self.settled or 0) + offset >= 0:  # no frame of y can precede a start
            return y
        times = self.time.unsqueeze(1) + torch.arange(offset, offset + int(y.shape[TIME]), device=y.device)
        valid = times >= 0
        if self.end is not None:
            valid = valid & (times < self.end.unsqueeze(1))
        return y * valid[:, :, None, None].to(y.dtype)


class Engine:
    """What an engine gives the driver: its look-ahead, the layout of its state, and a step.

    Subclasses set ``delay`` (output frames lag input frames by it), ``n_freq``, ``dtype`` and ``device`` (of the
    frames and of the float state) and, where a step takes a fixed number of frames, ``frames_per_call``.
    """

    delay: int
    n_freq: int
    dtype: torch.dtype
    device: torch.device
    frames_per_call: int = 1
    native: bool = False  # the step runs compiled native code (stmc.stream.native), not PyTorch operators

    def state_shapes(self) -> list[tuple[int, ...]]:
        """Shapes (without the batch axis) of the state tensors, all of ``dtype`` on ``device``, zero at the start."""
        raise NotImplementedError

    def load(self) -> None:
        """(Re-)read the weights: at construction and at every full :meth:`Stream.reset`."""

    def step(
        self, chunk: torch.Tensor, state: list[torch.Tensor], clock: Clock
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Input frames ``[B, 2, F, t]`` at times ``clock.time..`` and the state -> the bounded mask at times
        ``clock.time - delay..`` (``[B, 2, F, t]``, including times before a stream's start) and the next state
        (the same tensors written in place, or new ones)."""
        raise NotImplementedError


class Stream:
    """The per-call contract around an :class:`Engine`; see the module docstring."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.reset()

    @property
    def delay(self) -> int:
        """Output frames lag input frames by the look-ahead."""
        return self.engine.delay

    @property
    def batch(self) -> int | None:
        """Streams in the batch; None before the first chunk."""
        return None if self.state is None else self.time.shape[0]

    # -- state --
    def get_state(self) -> list[torch.Tensor]:
        """The whole state: the engine's tensors, then each stream's time (frames since its start), int64 ``[B]``.

        The tensors are live (the native STMC step shifts them in place): ``clone()`` them to keep a snapshot.
        Nothing else is kept between calls, so :meth:`set_state` of this list continues exactly here.
        """
        return [] if self.state is None else [*self.state, self.time]

    def set_state(self, state: list[torch.Tensor]) -> None:
        """Adopt a state from :meth:`get_state` (or exported step outputs), after checking it: the count, and every
        tensor's shape, dtype and device (``ValueError`` naming the first wrong one). Nothing reads the tensors
        before that, so a wrong state never reaches the native step's memory."""
        self.check_state(state)
        self._adopt(list(state[:-1]), state[-1])
        self.flushed = False

    def check_state(self, state: object) -> None:
        """Raise ``ValueError`` unless ``state`` is a list of tensors shaped, typed and placed as get_state's."""
        shapes, engine = self.engine.state_shapes(), self.engine
        if not isinstance(state, list | tuple) or len(state) != len(shapes) + 1:
            got = f"{len(state)} items" if isinstance(state, list | tuple) else type(state).__name__
            raise InputError(
                f"set_state: expected a list of {len(shapes) + 1} tensors ({len(shapes)} state buffers, "
                f"then the time), got {got}"
            )
        time = state[-1]
        if not isinstance(time, torch.Tensor) or time.dim() != 1 or time.dtype != torch.long:
            got = f"{time.dtype} of shape {list(time.shape)}" if isinstance(time, torch.Tensor) else type(time).__name__
            raise InputError(f"set_state: tensor {len(shapes)} (the time) must be int64 of shape [batch], got {got}")
        if time.device != engine.device:
            raise InputError(
                f"set_state: tensor {len(shapes)} (the time) must be on {engine.device}, got {time.device}"
            )
        for index, (tensor, shape) in enumerate(zip(state, shapes, strict=False)):
            expected = [time.shape[0], *shape]
            if (
                not isinstance(tensor, torch.Tensor)
                or list(tensor.shape) != expected
                or tensor.dtype != engine.dtype
                or tensor.device != engine.device
            ):
                got = (
                    f"{tensor.dtype} of shape {list(tensor.shape)} on {tensor.device}"
                    if isinstance(tensor, torch.Tensor)
                    else type(tensor).__name__
                )
                raise InputError(
                    f"set_state: tensor {index} must be {engine.dtype} of shape {expected} on "
                    f"{engine.device}, got {got}"
                )

    def _adopt(self, state: list[torch.Tensor], time: torch.Tensor) -> None:
        self.state, self.time = state, time
        # cached bounds of `time` (read once here, then advanced with it): the fast path of Clock.clip, and the
        # alignment rule of _emit
        self.settled, self.newest = (int(time.min()), int(time.max())) if time.numel() else (0, 0)

    @torch.inference_mode()
    def reset(self, mask: torch.Tensor | None = None) -> None:
        """Restart every stream (weights re-read), or only those where ``mask [B]`` is true.

        Streams restarted by a mask begin at time 0 again while the others go on: their next ``D`` output frames
        belong to no input and are zero (once every stream has restarted, those frames are dropped instead).
        """
        if mask is None:
            self.engine.load()
            self.state: list[torch.Tensor] | None = None
            self.time = torch.zeros(0, dtype=torch.long, device=self.engine.device)
            self.settled = self.newest = 0
            self.flushed = False
            return
        if self.state is None or mask.shape != (self.batch,) or mask.dtype != torch.bool:
            raise InputError(f"reset(mask) needs a bool mask of shape [{self.batch}] after the first chunk")
        for tensor in self.state:
            tensor[mask] = 0
        self.time[mask] = 0
        self._adopt(self.state, self.time)

    # -- running --
    def check_open(self) -> None:
        """Raise ``RuntimeError`` after a flush: the stream takes no chunk and no second flush until reset()."""
        if self.flushed:
            raise RuntimeError("this stream was flushed; call reset() before streaming again")

    @torch.inference_mode()
    def __call__(self, chunk: torch.Tensor) -> torch.Tensor:
        """Input frames ``[B, 2, F, t]`` -> mask frames ``[B, 2, F, t']``, ``D`` frames behind."""
        self.check_open()
        engine = self.engine
        check_spectrum(chunk, engine.n_freq, engine.dtype, self.batch)
        if chunk.shape[-1] % engine.frames_per_call:
            raise InputError(
                f"this graph takes {engine.frames_per_call} frames per call; got a chunk of {chunk.shape[-1]} frames"
            )
        if self.state is None:
            batch = chunk.shape[0]
            zeros = [
                torch.zeros(batch, *shape, dtype=engine.dtype, device=engine.device) for shape in engine.state_shapes()
            ]
            self._adopt(zeros, torch.zeros(batch, dtype=torch.long, device=engine.device))
        if chunk.shape[-1] == 0:
            return chunk.new_zeros(chunk.shape)
        return self._emit(chunk, None)

    @torch.inference_mode()
    def flush(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run the look-ahead out with the zero frames offline padding gives; the stream then needs reset().

        With a bool ``mask [B]``, only the chosen streams end: their last ``D`` output frames (times ``time - D ..
        time - 1`` of each, zeros before its start) come back as ``[chosen, 2, F, D]``, they restart at time 0
        (as ``reset(mask)``) and the others go on untouched: the flush is computed on a copy of the state.
        """
        if mask is not None:
            return self._flush_some(mask)
        self.check_open()
        self.flushed = True
        engine = self.engine
        zeros = torch.zeros(
            self.batch or 0,
            2,
            engine.n_freq,
            self.delay if self.state is not None else 0,
            dtype=engine.dtype,
            device=engine.device,
        )
        if zeros.shape[-1] == 0:
            return zeros
        return self._emit(zeros, self.time.clone())

    def _flush_some(self, mask: torch.Tensor) -> torch.Tensor:
        if self.flushed or self.state is None or mask.shape != (self.batch,) or mask.dtype != torch.bool:
            raise InputError(
                f"flush(mask) needs a bool mask of shape [{self.batch}] after the first chunk, "
                "before a flush of all streams"
            )
        engine = self.engine
        zeros = torch.zeros(self.batch, 2, engine.n_freq, self.delay, dtype=engine.dtype, device=engine.device)
        out = zeros
        if self.delay:
            copy = [tensor.clone() for tensor in self.state]  # the native step shifts its registers in place
            out, _ = engine.step(zeros, copy, Clock(self.time, self.time.clone()))
        self.reset(mask)
        return out[mask]

    def _emit(self, chunk: torch.Tensor, end: torch.Tensor | None) -> torch.Tensor:
        """One engine step, the time advanced, and the alignment rule: output times before every stream's start
        (the first ``D`` frames of a fresh batch) are not part of any signal and are not returned."""
        frames = chunk.shape[-1]
        out, self.state = self.engine.step(chunk, self.state, Clock(self.time, end, self.settled))
        early = self.delay - self.newest
        self.time = self.time + frames
        self.settled += frames
        self.newest += frames
        return out[..., early:] if early > 0 else out
