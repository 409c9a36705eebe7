"""Streaming engines: one set of U-Net weights run chunk by chunk, exactly equal to offline inference.

All engines share the stream contract (:class:`Stream`): chunks ``[B, 2, F, t]`` with any ``t >= 0`` go in,
frames come out delayed by the model's look-ahead ``D = receptive_field[1]``, ``flush()`` returns the last ``D``
frames, and the concatenation equals ``model(spec)``. They differ only in how each layer gets its context:

- ``stmc``: a shift register of the last ``past + future`` input frames per layer and a delay line per skip
  connection, so each input frame is convolved once per layer (cost linear in the chunk size);
- ``inc``: our reconstruction of incremental inference: a buffer of the receptive field of *input* frames, and
  every layer evaluated (valid in time) only on the frames the new outputs depend on; no per-layer state;
- ``window``: standard convolutions: the whole padded model recomputed over the last receptive-field frames
  for every new frame (hop).

Stream state is explicit: ``reset()`` clears it. Frames at times before the stream start or after its end stand
for the zero padding of offline inference; every layer zeroes its outputs there (:meth:`Stream.clip`), which is
what makes zero-initialised state exact. Streams run the inference form of the model (BatchNorm folded, running
statistics); the weights are read at construction and at every ``reset()``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stmc.unet import UNet, concat_skip


class Stream(nn.Module):
    """Common contract of the engines: input checks, output alignment, ``flush`` and ``reset``."""

    def __init__(self, model: UNet) -> None:
        super().__init__()
        if not isinstance(model, UNet):
            raise ValueError(f"streaming() needs a stmc.UNet, got {type(model).__name__}")
        self.model = model
        self.reset()

    @property
    def delay(self) -> int:
        """Output frames lag input frames by the look-ahead."""
        return self.model.receptive_field[1]

    def reset(self) -> None:
        """Forget the stream: zero state, re-read the model's weights."""
        self.layers = self.model.frozen()
        self.batch: int | None = None
        self.frames_in = 0
        self.end: int | None = None
        self.flushed = False
        self.clear_state()

    def clear_state(self) -> None:
        """Drop the engine's buffers (they are re-created, zero, at the next chunk)."""

    def step(self, h: torch.Tensor) -> torch.Tensor:
        """Features of input frames at times ``frames_in..`` -> network output at times ``frames_in - D..``."""
        raise NotImplementedError

    def clip(self, y: torch.Tensor, start: int) -> torch.Tensor:
        """Zero the frames of ``y`` (first frame at time ``start``) that lie outside the stream ``[0, end)``."""
        length = y.shape[-1]
        low = min(max(0, -start), length)
        high = length if self.end is None else min(max(0, self.end - start), length)
        if low == 0 and high == length:
            return y
        y[..., :low] = 0
        y[..., high:] = 0
        return y

    @torch.inference_mode()
    def forward(self, chunk: torch.Tensor) -> torch.Tensor:
        if self.flushed:
            raise RuntimeError("this stream was flushed; call reset() before streaming again")
        self.model.check_input(chunk, self.batch)
        self.batch = chunk.shape[0]
        if chunk.shape[-1] == 0:
            return chunk.new_zeros(chunk.shape)
        return self._emit(self.model.features(chunk))

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:
        """Run the look-ahead out with the zero frames offline padding gives; the stream then needs reset()."""
        if self.flushed:
            raise RuntimeError("this stream was flushed already; call reset() before streaming again")
        self.flushed = True
        batch = self.batch or 0
        if self.delay == 0 or batch == 0:
            return torch.zeros(batch, 2, self.model.n_freq, 0, dtype=self.layers[0].weight.dtype)
        self.end = self.frames_in
        weight = self.layers[0].weight
        zeros = weight.new_zeros(batch, 2, self.model.n_freq, self.delay)
        return self._emit(zeros)

    def _emit(self, h: torch.Tensor) -> torch.Tensor:
        out = self.model.bound(self.step(h))
        early = max(0, self.delay - self.frames_in)  # outputs at times < 0 are not part of the signal
        self.frames_in += h.shape[-1]
        return out[..., early:]


class STMCStream(Stream):
    """Short-Term Memory Convolution: per-layer shift registers and per-skip delay lines."""

    def clear_state(self) -> None:
        self.registers: dict[int, torch.Tensor] = {}
        self.lines: dict[int, torch.Tensor] = {}

    def step(self, h: torch.Tensor) -> torch.Tensor:
        model, now = self.model, self.frames_in

        def apply(k: int, x: torch.Tensor) -> torch.Tensor:
            layer = self.layers[k]
            memory = layer.past + layer.future
            register = self.registers.get(k)
            x = F.pad(x, (memory, 0)) if register is None else torch.cat([register, x], -1)
            self.registers[k] = x[..., x.shape[-1] - memory :]
            return self.clip(layer(x), now - model.delays[k])

        def join(k: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
            delay = model.join_delay(k)
            if delay:
                line = self.lines.get(k)
                skip = F.pad(skip, (delay, 0)) if line is None else torch.cat([line, skip], -1)
                self.lines[k] = skip[..., skip.shape[-1] - delay :]
            return concat_skip(k, x, skip[..., : x.shape[-1]])

        return model.walk(h, apply, join)

    def state_bytes(self) -> int:
        """Bytes held between chunks (registers and delay lines)."""
        tensors = [*self.registers.values(), *self.lines.values()]
        return sum(t.numel() * t.element_size() for t in tensors)


class IncStream(Stream):
    """Incremental inference: keep the receptive field of input frames, compute only what new outputs need."""

    def clear_state(self) -> None:
        self.history: torch.Tensor | None = None

    def step(self, h: torch.Tensor) -> torch.Tensor:
        model = self.model
        context = sum(model.receptive_field)
        x = F.pad(h, (context, 0)) if self.history is None else torch.cat([self.history, h], -1)
        self.history = x[..., x.shape[-1] - context :]
        first = self.frames_in - context  # time of x's first frame

        def apply(k: int, x: torch.Tensor) -> torch.Tensor:
            return self.clip(self.layers[k](x), first + model.lags[k])

        def join(k: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
            offset = model.join_offset(k)
            return concat_skip(k, x, skip[..., offset : offset + x.shape[-1]])

        return model.walk(x, apply, join)

    def state_bytes(self) -> int:
        return 0 if self.history is None else self.history.numel() * self.history.element_size()


class WindowStream(IncStream):
    """Standard convolutions: the padded model over the last receptive-field frames, once per new frame."""

    def step(self, h: torch.Tensor) -> torch.Tensor:
        model = self.model
        past, future = model.receptive_field
        context = past + future
        x = F.pad(h, (context, 0)) if self.history is None else torch.cat([self.history, h], -1)
        self.history = x[..., x.shape[-1] - context :]
        outputs = []
        for i in range(h.shape[-1]):
            first = self.frames_in + i - context  # time of the window's first frame

            def apply(k: int, w: torch.Tensor, first: int = first) -> torch.Tensor:
                layer = self.layers[k]
                return self.clip(layer(F.pad(w, (layer.past, layer.future))), first)

            out = model.walk(x[..., i : i + context + 1], apply, concat_skip)
            outputs.append(out[..., past : past + 1])
        return torch.cat(outputs, -1)


ENGINES: dict[str, type[Stream]] = {"stmc": STMCStream, "inc": IncStream, "window": WindowStream}
METHODS = tuple(ENGINES)


def streaming(model: UNet, method: str = "stmc") -> Stream:
    """A stateful stream over ``model``'s weights; ``method`` is one of :data:`METHODS`."""
    if method not in ENGINES:
        raise ValueError(f"unknown streaming method {method!r}; choose one of {', '.join(METHODS)}")
    return ENGINES[method](model)
