"""The STMC engine's step as one native call per chunk (``stmc/native_step.cpp``), bound to a stream's state.

Why: a streamed hop of the depth-7 U-Net is 14 small GEMMs plus ~180 tiny tensor operations (register shifts,
im2col, PReLU, skip merges). In PyTorch each of those costs microseconds of dispatch and allocation, more
than the GEMMs themselves. The native step does the same arithmetic on buffers allocated once (the stream's
own state tensors, shifted in place), with libtorch_cpu's small-GEMM kernel (``at::native::cpublas::brgemm``:
oneDNN's JIT micro-kernel on AVX2 CPUs, BLAS elsewhere), which on one-frame shapes is faster than the BLAS
call behind ``torch.mm``.

The library is compiled on first use with the system C++ compiler (``$CXX``, else ``g++``; ~2 s, for this
CPU) into ``$STMC_NATIVE_CACHE`` (default ``~/.cache/stmc-native``), keyed by the source, the torch version
and the CPU, and loaded with ``ctypes``. :func:`unavailable` says why it cannot run where it cannot.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from stmc.layers import FREQ_KERNEL, FREQ_STRIDE, FrozenLayer
from stmc.unet import UNet

SOURCE = Path(__file__).with_name("native_step.cpp")


class LayerSpec(ctypes.Structure):
    """Mirror of ``struct LayerSpec`` in native_step.cpp (field meanings there)."""

    _fields_ = [
        ("transposed", ctypes.c_int64),
        ("hist", ctypes.c_int64),
        ("delay", ctypes.c_int64),
        ("in_bins", ctypes.c_int64),
        ("in_ch", ctypes.c_int64),
        ("out_bins", ctypes.c_int64),
        ("out_ch", ctypes.c_int64),
        ("matrix", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("prelu", ctypes.c_void_p),
        ("reg", ctypes.c_void_p),
        ("cur", ctypes.c_void_p),
        ("dst", ctypes.c_void_p),
        ("dst_ch", ctypes.c_int64),
        ("line", ctypes.c_void_p),
        ("line_len", ctypes.c_int64),
        ("skip", ctypes.c_void_p),
        ("skip_ch", ctypes.c_int64),
    ]


class StepSpec(ctypes.Structure):
    """Mirror of ``struct StepSpec`` in native_step.cpp."""

    _fields_ = [
        ("n_layers", ctypes.c_int64),
        ("batch", ctypes.c_int64),
        ("n_freq", ctypes.c_int64),
        ("compress", ctypes.c_int64),
        ("exponent", ctypes.c_double),
        ("layers", ctypes.POINTER(LayerSpec)),
        ("cols", ctypes.c_void_p),
        ("spread", ctypes.c_void_p),
        ("mask", ctypes.c_void_p),
        ("macs", ctypes.c_int64),
    ]


def cache_dir() -> Path:
    return Path(os.environ.get("STMC_NATIVE_CACHE", Path.home() / ".cache" / "stmc-native"))


def cpu_signature() -> bytes:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return platform.processor().encode()
    return "\n".join(line for line in info.splitlines() if line.startswith(("model name", "flags"))).encode()


def build() -> Path:
    """The compiled library for this source and torch version, compiling it if needed (atomic rename)."""
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (install g++, or set CXX)")
    torch_lib = Path(torch.__file__).parent / "lib"
    source = SOURCE.read_bytes()
    key = hashlib.sha1(source + torch.__version__.encode() + compiler.encode() + cpu_signature()).hexdigest()[:16]
    target = cache_dir() / f"stmc_step-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = Path(tmp) / target.name
        command = [
            compiler, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", str(SOURCE), "-o", str(partial),
            f"-L{torch_lib}", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} failed:\n{done.stderr.strip()}")
        os.replace(partial, target)
    return target


@functools.cache
def _load() -> ctypes.CDLL | str:
    try:
        library = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError) as error:
        return str(error)
    library.stmc_step.restype = ctypes.c_char_p
    library.stmc_step.argtypes = [ctypes.POINTER(StepSpec)] + [ctypes.c_void_p] * 4 + [ctypes.c_int64] + [
        ctypes.c_void_p
    ] * 2
    return library


def unavailable() -> str | None:
    """Why the native step cannot run here, or None when it can."""
    loaded = _load()
    return loaded if isinstance(loaded, str) else None


def gemm_matrix(layer: FrozenLayer) -> torch.Tensor:
    """The layer's GEMM matrix as the native step reads it: decoder columns ordered (freq tap, cout), so the
    overlap-add in frequency adds contiguous rows."""
    if not layer.transposed:
        return layer.matrix
    rows = layer.matrix.shape[0]
    return layer.matrix.view(rows, -1, FREQ_KERNEL).transpose(1, 2).reshape(rows, -1).contiguous()


class NativeStep:
    """One STMC stream's frozen layers, state tensors and scratch, bound to the native step.

    The state tensors are shifted in place, so the stream's :meth:`get_state` stays valid. Bound to the exact
    tensor objects given: :meth:`binds` tells the stream when it must bind again (new state, new weights).
    """

    def __init__(self, model: UNet, layers: list[FrozenLayer], state: list[torch.Tensor], batch: int) -> None:
        loaded = _load()
        if isinstance(loaded, str):
            raise RuntimeError(f"the native STMC step is unavailable: {loaded}")
        self.library, self.layers, self.state = loaded, layers, state
        new = functools.partial(torch.zeros, dtype=torch.float32)
        shapes = [model.input_shape(k) for k in range(len(layers))]  # (channels, bins)
        self.cur = [new(batch, bins, channels) for channels, bins in shapes]
        self.mask = new(batch, model.n_freq, 2)
        self.matrices = [gemm_matrix(layer) for layer in layers]
        slots = iter(range(len(layers), len(state)))
        lines = {model.joins[k]: (k, next(slots) if model.join_delay(k) else None) for k in model.joins}
        specs, cols, spread = [], 1, 1
        for k, layer in enumerate(layers):
            channels, bins = shapes[k]
            out_bins = (bins - 1) * FREQ_STRIDE + 1 if layer.transposed else (bins - 1) // FREQ_STRIDE + 1
            dst = self.cur[k + 1] if k + 1 < len(layers) else self.mask
            spec = LayerSpec(
                transposed=layer.transposed,
                hist=layer.past + layer.future,
                delay=model.delays[k],
                in_bins=bins,
                in_ch=channels,
                out_bins=out_bins,
                out_ch=layer.out_channels,
                matrix=self.matrices[k].data_ptr(),
                bias=layer.bias.data_ptr(),
                prelu=None if layer.prelu is None else layer.prelu.data_ptr(),
                reg=state[k].data_ptr(),
                cur=self.cur[k].data_ptr(),
                dst=dst.data_ptr(),
                dst_ch=dst.shape[-1],
            )
            if k in lines:
                target, slot = lines[k]
                spec.skip, spec.skip_ch = self.cur[target].data_ptr(), shapes[target][0]
                if slot is not None:
                    spec.line, spec.line_len = state[slot].data_ptr(), state[slot].shape[1]
            specs.append(spec)
            taps = layer.taps
            if layer.transposed:
                cols = max(cols, batch * bins * taps * channels)
                spread = max(spread, batch * bins * FREQ_KERNEL * layer.out_channels)
            else:
                cols = max(cols, batch * out_bins * taps * FREQ_KERNEL * channels)
        self.cols, self.spread = new(cols), new(spread)
        self.specs = (LayerSpec * len(specs))(*specs)
        self.spec = StepSpec(
            n_layers=len(specs),
            batch=batch,
            n_freq=model.n_freq,
            compress=int(model.compress != 1),
            exponent=(model.compress - 1) / 2,
            layers=self.specs,
            cols=self.cols.data_ptr(),
            spread=self.spread.data_ptr(),
            mask=self.mask.data_ptr(),
        )

    def binds(self, layers: list[FrozenLayer], state: list[torch.Tensor]) -> bool:
        """Whether this binding is to exactly these weights and state tensors."""
        return (
            layers is self.layers
            and len(state) == len(self.state)
            and all(a is b for a, b in zip(state, self.state, strict=True))
        )

    @property
    def macs(self) -> int:
        """Multiply-accumulates done by the GEMMs so far (counted in the native code)."""
        return self.spec.macs

    @property
    def scratch_bytes(self) -> int:
        """Bytes of the buffers this binding holds besides the weights, the stream's state and each output."""
        return sum(t.nbytes for t in [*self.cur, self.mask, self.cols, self.spread])

    def __call__(self, chunk: torch.Tensor, time: torch.Tensor, end: torch.Tensor | None) -> torch.Tensor:
        """``chunk [B, 2, F, t]`` -> bounded mask ``[B, 2, F, t]`` at times ``time - D..``; state advanced."""
        out = torch.empty(chunk.shape, dtype=chunk.dtype)
        strides = (ctypes.c_int64 * 8)(*chunk.stride(), *out.stride())
        error = self.library.stmc_step(
            ctypes.byref(self.spec),
            chunk.data_ptr(),
            strides,
            out.data_ptr(),
            ctypes.addressof(strides) + 4 * 8,
            chunk.shape[-1],
            time.data_ptr(),
            None if end is None else end.data_ptr(),
        )
        if error is not None:
            raise RuntimeError(f"native STMC step failed: {error.decode(errors='replace')}")
        return out
