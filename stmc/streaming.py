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

import torch
import torch.nn.functional as F
from torch import nn

from stmc.unet import UNet, concat_skip


class Stream(nn.Module):
    """Common contract of the engines: input checks, per-stream time, output alignment, flush and reset."""

    def __init__(self, model: UNet) -> None:
        super().__init__()
        if not isinstance(model, UNet):
            raise ValueError(f"streaming() needs a stmc.UNet, got {type(model).__name__}")
        self.model = model
        self.always_mask = False  # compute time masks with tensor ops even when no frame needs it (export)
        self.reset()

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
        self.batch = batch

    def get_state(self) -> list[torch.Tensor]:
        """The whole state: the engine's buffers, then each stream's time (frames since its start)."""
        return [*self.state, self.time]

    def set_state(self, state: list[torch.Tensor]) -> None:
        """Adopt a state from :meth:`get_state` (or exported step outputs)."""
        *self.state, self.time = state
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

    def clip(self, y: torch.Tensor, offset: int) -> torch.Tensor:
        """Zero the frames of ``y`` outside each stream's ``[0, end)``; ``y`` starts at ``time + offset``."""
        length = y.shape[-1]
        if not self.always_mask and self.end is None and self.settled + offset >= 0:
            return y
        times = self.time.unsqueeze(1) + offset + torch.arange(length, device=y.device)
        valid = times >= 0
        if self.end is not None:
            valid = valid & (times < self.end.unsqueeze(1))
        return y * valid[:, None, None, :].to(y.dtype)

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
        return self._emit(self.model.features(chunk))

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:
        """Run the look-ahead out with the zero frames offline padding gives; the stream then needs reset()."""
        if self.flushed:
            raise RuntimeError("this stream was flushed already; call reset() before streaming again")
        self.flushed = True
        weight = self.layers[0].weight
        if self.delay == 0 or self.batch is None:
            return weight.new_zeros(self.batch or 0, 2, self.model.n_freq, 0)
        self.end = self.time.clone()
        return self._emit(weight.new_zeros(self.batch, 2, self.model.n_freq, self.delay))

    def _emit(self, h: torch.Tensor) -> torch.Tensor:
        self.settled = int(self.time.min())  # every stream is at least this far in (fast path of clip)
        out = self.model.bound(self.step(h))
        early = max(0, self.delay - self.frames_in)  # outputs at times < 0 are not part of the signal
        self.frames_in += h.shape[-1]
        self.time = self.time + h.shape[-1]
        return out[..., early:]


class STMCStream(Stream):
    """Short-Term Memory Convolution: per-layer shift registers and per-skip delay lines."""

    def state_shapes(self) -> list[tuple[int, ...]]:
        model = self.model
        shapes = [(*model.input_shape(k), layer.past + layer.future) for k, layer in enumerate(model.layers)]
        for k, source in model.joins.items():
            if model.join_delay(k):
                bins = model.bins(source + 1)
                shapes.append((model.layers[source].out_channels, bins, model.join_delay(k)))
        return shapes

    def step(self, h: torch.Tensor) -> torch.Tensor:
        model, registers = self.model, self.state
        lines = iter(range(len(model.layers), len(registers)))
        slots = {k: next(lines) for k in model.joins if model.join_delay(k)}

        def apply(k: int, x: torch.Tensor) -> torch.Tensor:
            layer = self.layers[k]
            x = torch.cat([registers[k], x], -1)
            registers[k] = x[..., x.shape[-1] - layer.past - layer.future :]
            return self.clip(layer(x), -model.delays[k])

        def join(k: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
            if k in slots:
                slot = slots[k]
                skip = torch.cat([registers[slot], skip], -1)
                registers[slot] = skip[..., skip.shape[-1] - model.join_delay(k) :]
            return concat_skip(k, x, skip[..., : x.shape[-1]])

        return model.walk(h, apply, join)


class IncStream(Stream):
    """Incremental inference: keep the receptive field of input frames, compute only what new outputs need."""

    def state_shapes(self) -> list[tuple[int, ...]]:
        return [(2, self.model.n_freq, sum(self.model.receptive_field))]

    def history(self, h: torch.Tensor) -> torch.Tensor:
        """The input frames of the receptive field followed by ``h``; keeps the newest as state."""
        x = torch.cat([self.state[0], h], -1)
        self.state[0] = x[..., h.shape[-1] :]
        return x

    def step(self, h: torch.Tensor) -> torch.Tensor:
        model = self.model
        first = -sum(model.receptive_field)  # time of the history's first frame, relative to h's

        def apply(k: int, x: torch.Tensor) -> torch.Tensor:
            return self.clip(self.layers[k](x), first + model.lags[k])

        def join(k: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
            offset = model.join_offset(k)
            return concat_skip(k, x, skip[..., offset : offset + x.shape[-1]])

        return model.walk(self.history(h), apply, join)


class WindowStream(IncStream):
    """Standard convolutions: the padded model over the last receptive-field frames, once per new frame."""

    def step(self, h: torch.Tensor) -> torch.Tensor:
        model = self.model
        past, future = model.receptive_field
        x = self.history(h)
        outputs = []
        for i in range(h.shape[-1]):
            first = i - past - future  # time of this window's first frame, relative to h's

            def apply(k: int, w: torch.Tensor, first: int = first) -> torch.Tensor:
                layer = self.layers[k]
                return self.clip(layer(F.pad(w, (layer.past, layer.future))), first)

            out = model.walk(x[..., i : i + past + future + 1], apply, concat_skip)
            outputs.append(out[..., past : past + 1])
        return torch.cat(outputs, -1)


ENGINES: dict[str, type[Stream]] = {"stmc": STMCStream, "inc": IncStream, "window": WindowStream}
METHODS = tuple(ENGINES)


def streaming(model: UNet, method: str = "stmc") -> Stream:
    """A stateful stream over ``model``'s weights; ``method`` is one of :data:`METHODS`."""
    if method not in ENGINES:
        raise ValueError(f"unknown streaming method {method!r}; choose one of {', '.join(METHODS)}")
    return ENGINES[method](model)
