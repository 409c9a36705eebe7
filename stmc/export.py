"""ONNX export of the STMC step with all state explicit (run by :mod:`stmc.onnx_engine` behind the stream driver).

The exported **step graph** is one call of the STMC engine's pure step (:meth:`stmc.streaming.STMCEngine.pure_step`)
on a fixed number of spectrum frames (``frames_per_call``, default 1 = one hop)::

    inputs   frames [B, 2, n_freq, frames_per_call] float32, state_0 .. state_N
    outputs  out    [B, 2, n_freq, frames_per_call] float32, next_state_0 .. next_state_N

``state_0 .. state_{N-1}`` are the per-layer shift registers and skip delay lines (float32) and ``state_N`` is each
stream's time in frames (int64 ``[B]``). A new stream starts from zeros of the shapes stored in the model's ONNX
metadata (``stmc.state_shapes``/``stmc.state_dtypes``, without the batch axis); the batch axis is dynamic, and
zeroing one row of every state restarts that stream alone. ``out`` is the bounded complex mask of the frames
``D = stmc.delay`` hops earlier; the first ``D`` outputs of a fresh stream precede its start (zeros, drop them).

Look-ahead models (``D > 0``) also get a **flush graph** (``<name>.flush.onnx``, named in ``stmc.flush``): inputs
``state_0 .. state_N``, output ``out [B, 2, n_freq, D]``, the last ``D`` mask frames of every stream in the
batch, computed as offline inference's zero padding would give them (each layer's outputs past the end are
masked). It is pure: to end only some streams of a batch, take their rows and zero their state rows.

How: the engine's own code (registers, delay lines, time masks: :meth:`STMCEngine.pure_step`, every mask as tensor
ops) is traced by the TorchScript exporter (``onnxscript``, which the dynamo exporter needs, is not a dependency).
Its layers (:class:`stmc.layers.FrozenLayer`, im2col + GEMM via ``unfold``) do not export (``unfold`` needs sizes
the tracer loses), so the graph runs the same folded weights as plain ``Conv``/``ConvTranspose`` nodes
(:class:`ExportLayer`). The trace uses a fixed batch of 2 so that every size folds to a constant (a graph with
symbolic sizes carries hundreds of ``Shape``/``Gather`` nodes and ran several times slower per call); no node
depends on the batch size, so the batch axis of the inputs and outputs is then declared symbolic (tests run batches
1 to 4).
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from stmc.layers import FREQ_KERNEL, FREQ_STRIDE, FrozenLayer
from stmc.onnx_engine import INPUT, META, OUTPUT, max_error, read_metadata, state_names
from stmc.stft import HOP, N_FFT, SAMPLE_RATE
from stmc.stream import Clock
from stmc.streaming import STMCEngine
from stmc.unet import UNet

OPSET = 17


def flush_path(path: str | Path) -> Path:
    """Where the flush graph of the step graph at ``path`` lives: ``model.onnx`` -> ``model.flush.onnx``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.flush{path.suffix or '.onnx'}")


class ExportLayer(nn.Module):
    """A :class:`FrozenLayer` as ``Conv``/``ConvTranspose`` nodes: same weights, same ``[B, T, F, C]`` contract."""

    def __init__(self, frozen: FrozenLayer) -> None:
        super().__init__()
        self.past, self.future, self.transposed = frozen.past, frozen.future, frozen.transposed
        self.register_buffer("weight", frozen.conv_weight())
        self.register_buffer("bias", frozen.bias)
        self.register_buffer("prelu", frozen.prelu)

    @property
    def taps(self) -> int:
        return self.past + 1 + self.future

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, F, C]`` -> ``[B, T - past - future, F', C']``, valid in time like the frozen layer."""
        h = x.permute(0, 3, 2, 1)  # [B, C, F, T]
        pad = FREQ_KERNEL // 2
        if self.transposed:  # tSTMC: time taps stacked as channels (channel k*C + c = frame t + k of c)
            frames = h.shape[-1] - self.taps + 1
            h = torch.cat([h[..., k : k + frames] for k in range(self.taps)], 1)
            y = F.conv_transpose2d(h, self.weight, self.bias, (FREQ_STRIDE, 1), (pad, 0))
        else:
            y = F.conv2d(h, self.weight, self.bias, (FREQ_STRIDE, 1), (pad, 0))
        if self.prelu is not None:
            y = F.prelu(y, self.prelu)
        return y.permute(0, 3, 2, 1)


class StepGraph(nn.Module):
    """``(frames, *state) -> (out, *next_state)``: one engine step, the function the step graph holds."""

    def __init__(self, engine: STMCEngine) -> None:
        super().__init__()
        self.engine = engine

    def forward(self, frames: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.engine.pure_step(frames, *state)


class FlushGraph(nn.Module):
    """``(*state) -> out``: the last ``D`` frames of every stream, as :meth:`stmc.stream.Stream.flush` computes
    them (every layer's outputs at times >= a stream's end are offline padding)."""

    def __init__(self, engine: STMCEngine) -> None:
        super().__init__()
        self.engine = engine

    def forward(self, *state: torch.Tensor) -> torch.Tensor:
        *buffers, time = state
        first = buffers[0]  # the zero frames take the batch size from a state tensor: the axis stays symbolic
        zeros = first[:, :1, :1, :1] * 0 + first.new_zeros(1, 2, self.engine.n_freq, self.engine.delay)
        return self.engine.step(zeros, buffers, Clock(time, end=time))[0]


def metadata(model: UNet, engine: STMCEngine, frames_per_call: int, flush_name: str) -> dict[str, str]:
    """What a runtime needs to drive the graphs, stored as ONNX ``metadata_props`` (JSON values)."""
    shapes = [list(shape) for shape in engine.state_shapes()] + [[]]
    dtypes = ["float32"] * (len(shapes) - 1) + ["int64"]
    return {
        f"{META}state_shapes": json.dumps(shapes),
        f"{META}state_dtypes": json.dumps(dtypes),
        f"{META}frames_per_call": str(frames_per_call),
        f"{META}delay": str(engine.delay),
        f"{META}receptive_field": json.dumps(list(model.receptive_field)),
        f"{META}n_freq": str(model.n_freq),
        f"{META}model_config": json.dumps(model.config),
        f"{META}flush": flush_name,
        f"{META}stft": json.dumps({"sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop": HOP}),
    }


def _save(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    meta: dict[str, str],
    opset: int,
) -> None:
    """Trace ``module`` to ``path`` at the batch of ``args``; declare the inputs' and outputs' axis 0 symbolic.

    The intermediate shapes the exporter records (``value_info``) carry the traced batch, so they are dropped;
    onnxruntime infers them again from the inputs. ``meta`` goes into the graph's ``metadata_props``.
    """
    module.eval()  # the exporter restores this mode afterwards, on the wrapped model too
    with torch.no_grad(), warnings.catch_warnings():
        # deliberate: the dynamo exporter needs onnxscript (see the module docstring)
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
        torch.onnx.export(
            module, args, str(path), input_names=inputs, output_names=outputs, opset_version=opset, dynamo=False
        )
    graph = onnx.load(str(path))
    del graph.graph.value_info[:]
    for value in [*graph.graph.input, *graph.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    for key, value in meta.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))


def to_onnx(model: UNet, path: str | Path, frames_per_call: int = 1, opset: int = OPSET) -> Path:
    """Export ``model``'s STMC step (and, for look-ahead models, its flush graph); returns the step graph's path.

    ``frames_per_call`` is fixed in the graph (the tracer needs static time sizes); 1 is one hop per call, the
    lowest latency. Both files are written next to each other; see the module docstring for the contract.
    """
    if not isinstance(model, UNet):
        raise ValueError(f"to_onnx needs a stmc.UNet, got {type(model).__name__}")
    if not isinstance(frames_per_call, int) or frames_per_call < 1:
        raise ValueError(f"frames_per_call must be a positive integer, got {frames_per_call!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    training = model.training
    # traced: the PyTorch operators, every time mask as tensor ops (Clock without `settled`), Conv nodes
    engine = STMCEngine(model, layer_form=ExportLayer)
    batch = 2  # traced with 2 streams so that no size-1 broadcast is baked in
    state = [torch.zeros(batch, *shape) for shape in engine.state_shapes()] + [torch.zeros(batch, dtype=torch.long)]
    n = len(state)
    flush_name = flush_path(path).name if engine.delay else ""
    meta = metadata(model, engine, frames_per_call, flush_name)
    frames = torch.zeros(batch, 2, model.n_freq, frames_per_call)
    _save(
        StepGraph(engine),
        (frames, *state),
        path,
        [INPUT, *state_names(n)],
        [OUTPUT, *state_names(n, "next_")],
        meta,
        opset,
    )
    if engine.delay:
        _save(FlushGraph(engine), tuple(state), flush_path(path), state_names(n), [OUTPUT], meta, opset)
    model.train(training)
    return path


def load_model(ckpt: str | None, depth: int, lookahead: int, width: float, seed: int) -> UNet:
    """A checkpoint's model, or (``ckpt=None``) a fresh untrained one for dry runs."""
    from stmc.enhancer import Enhancer

    if ckpt:
        return Enhancer.from_checkpoint(ckpt).model
    torch.manual_seed(seed)
    return UNet(depth=depth, lookahead=lookahead, width=width).eval()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stmc.export OUT.onnx [--ckpt CKPT | --lookahead L --width W]``: export and verify."""
    parser = argparse.ArgumentParser(prog="python -m stmc.export", description=main.__doc__)
    parser.add_argument("out", help="path of the step graph (.onnx); look-ahead models add <name>.flush.onnx")
    parser.add_argument("--ckpt", help="checkpoint from train.py; without it a fresh untrained model (dry run)")
    parser.add_argument("--depth", type=int, default=7, help="dry-run model depth")
    parser.add_argument("--lookahead", type=int, default=0, help="dry-run model look-ahead frames")
    parser.add_argument("--width", type=float, default=1.0, help="dry-run model channel multiplier")
    parser.add_argument("--seed", type=int, default=0, help="dry-run model initialisation seed")
    parser.add_argument("--frames-per-call", type=int, default=1, help="spectrum frames per step call (hops)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime vs PyTorch comparison")
    args = parser.parse_args(argv)
    try:
        model = load_model(args.ckpt, args.depth, args.lookahead, args.width, args.seed)
        path = to_onnx(model, args.out, args.frames_per_call)
    except ValueError as err:
        parser.exit(1, f"error: {err}\n")
    meta = read_metadata(path)
    print(f"wrote {path}" + (f" and {flush_path(path)}" if meta["flush"] else ""))
    print(
        f"  state: {len(json.loads(meta['state_shapes']))} tensors, look-ahead D={meta['delay']} frames, "
        f"{meta['frames_per_call']} frame(s) per call"
    )
    if not args.no_check:
        frames = args.frames_per_call * max(1, 64 // args.frames_per_call)
        error = max_error(model, path, frames=frames)
        print(f"  onnxruntime vs offline PyTorch over {frames} frames: max |error| = {error:.2e}")
        if error > 1e-4:
            print("  error above 1e-4")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
