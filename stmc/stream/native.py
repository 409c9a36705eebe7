"""The STMC engine's step as one native call per chunk (``stmc/stream/native_step.cpp``), bound to a stream's state.

Why: a streamed hop of the depth-7 U-Net is 14 small GEMMs plus ~180 tiny tensor operations (register shifts,
im2col, PReLU, skip merges). In PyTorch each of those costs microseconds of dispatch and allocation, more
than the GEMMs themselves. The native step does the same arithmetic on buffers allocated once (the stream's
own state tensors, shifted in place), with libtorch_cpu's small-GEMM kernel (``at::native::cpublas::brgemm``:
oneDNN's JIT micro-kernel on AVX2 CPUs, BLAS elsewhere), which on one-frame shapes is faster than the BLAS
call behind ``torch.mm``. With ``dtype=torch.bfloat16`` (:func:`stmc.stream.engines.streaming`) the GEMMs round
their operands to bfloat16 and sum in float32 on libtorch_cpu's bf16 brgemm where the CPU has AVX512-BF16 (the
step writes each left operand straight as bfloat16); a CPU without those instructions gets the same numbers
through the float32 GEMM.

The library is compiled on first use with the system C++ compiler (``$CXX``, else ``g++``; ~2 s, for this
CPU) into ``$STMC_NATIVE_CACHE`` (default ``~/.cache/stmc-native``), keyed by the source, the torch version
and the CPU, and loaded with ``ctypes``. :func:`unavailable` says why it cannot run where it cannot.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from stmc.errors import InputError
from stmc.model.layers import FREQ_KERNEL, FREQ_STRIDE, FrozenLayer
from stmc.model.unet import BOUND_EPS, FEATURE_EPS, UNet

SOURCE = Path(__file__).with_name("native_step.cpp")


class LayerSpec(ctypes.Structure):
    """Mirror of ``struct LayerSpec`` in native_step.cpp (field meanings there)."""

    _fields_ = [
        ("transposed", ctypes.c_int64),
        ("hist", ctypes.c_int64),
        ("step", ctypes.c_int64),
        ("delay", ctypes.c_int64),
        ("kernel", ctypes.c_int64),
        ("stride", ctypes.c_int64),
        ("in_bins", ctypes.c_int64),
        ("in_ch", ctypes.c_int64),
        ("out_bins", ctypes.c_int64),
        ("out_ch", ctypes.c_int64),
        ("matrix", ctypes.c_void_p),
        ("packed", ctypes.c_void_p),
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
        ("feature_eps", ctypes.c_double),
        ("bound_eps", ctypes.c_double),
        ("input", ctypes.c_void_p),
        ("layers", ctypes.POINTER(LayerSpec)),
        ("cols", ctypes.c_void_p),
        ("spread", ctypes.c_void_p),
        ("mask", ctypes.c_void_p),
        ("operand", ctypes.c_void_p),
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


def sources_of(source: Path) -> list[Path]:
    """``source`` and the files it includes by a quoted relative path (``#include "..."``), recursively."""
    found, todo = [], [source.resolve()]
    while todo:
        path = todo.pop()
        if path in found:
            continue
        found.append(path)
        for line in path.read_text().splitlines():
            if line.startswith('#include "'):
                todo.append((path.parent / line.split('"')[1]).resolve())
    return found


def build(source: Path = SOURCE) -> Path:
    """The shared library of a C++ source linked against libtorch_cpu (this step by default), compiled for this
    CPU and torch version if not cached yet (into a temporary file, then renamed: never half-written)."""
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (install g++, or set CXX)")
    torch_lib = Path(torch.__file__).parent / "lib"
    flags = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC"]
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    # everything the library depends on: its sources (local includes too), the flags, compiler, torch and CPU
    parts = [*(f.read_bytes() for f in sources_of(source)), " ".join(flags).encode(), version.encode()]
    key = hashlib.sha1(b"\0".join([*parts, torch.__version__.encode(), compiler.encode(), cpu_signature()]))
    target = cache_dir() / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = Path(tmp) / target.name
        command = [compiler, *flags, str(source), "-o", str(partial),
                   f"-L{torch_lib}", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {source.name} failed:\n{done.stderr.strip()}")
        os.replace(partial, target)
    return target


@functools.cache
def _load() -> ctypes.CDLL | str:
    try:
        library = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError) as error:
        return str(error)
    library.stmc_step.restype = ctypes.c_char_p
    pointer = ctypes.c_void_p
    library.stmc_step.argtypes = [ctypes.POINTER(StepSpec), pointer, pointer, pointer, pointer, ctypes.c_int64]
    library.stmc_step.argtypes += [pointer, pointer]
    library.stmc_gemm.restype = ctypes.c_char_p
    library.stmc_gemm.argtypes = [ctypes.c_int64] * 3 + [pointer] * 3
    library.stmc_gemm_bf16.restype = ctypes.c_char_p
    library.stmc_gemm_bf16.argtypes = [ctypes.c_int64] * 3 + [pointer] * 4
    library.stmc_pack_bf16.restype = None
    library.stmc_pack_bf16.argtypes = [ctypes.c_int64] * 2 + [pointer] * 2
    for name in ("stmc_bf16_packed_bytes", "stmc_bf16_operand_bytes"):
        getattr(library, name).restype = ctypes.c_int64
        getattr(library, name).argtypes = [ctypes.c_int64] * 2
    library.stmc_bf16_kernels.restype = ctypes.c_int64
    library.stmc_bf16_kernels.argtypes = []
    library.stmc_layout.restype = ctypes.c_char_p
    library.stmc_layout.argtypes = []
    mismatch = layout_mismatch(library.stmc_layout().decode())
    return mismatch if mismatch else library


def ctypes_layout() -> str:
    """The ctypes mirrors' layout in the text form ``stmc_layout`` of native_step.cpp gives for its structures."""
    parts = []
    for struct, spec in (("LayerSpec", LayerSpec), ("StepSpec", StepSpec)):
        fields = " ".join(f"{name}={getattr(spec, name).offset}" for name, _ in spec._fields_)
        parts.append(f"{struct} size={ctypes.sizeof(spec)} {fields}")
    return ";".join(parts)


def layout_mismatch(native: str) -> str | None:
    """Why the ctypes mirrors differ from the native structures (``native``: their layout as ``stmc_layout`` gives
    it; sizes and every field's offset, by name), or None."""

    def parse(text: str) -> dict[str, dict[str, str]]:
        return {
            name: dict(item.split("=") for item in rest.split())
            for name, _, rest in (part.partition(" ") for part in text.split(";"))
        }

    theirs, ours = parse(native), parse(ctypes_layout())
    if theirs != ours:
        differ = sorted(
            f"{s}.{f}"
            for s in set(theirs) | set(ours)
            for f in set(theirs.get(s, {})) | set(ours.get(s, {}))
            if theirs.get(s, {}).get(f) != ours.get(s, {}).get(f)
        )
        return (
            f"the native step's structures do not match stmc.stream.native's ctypes mirrors ({', '.join(differ)} "
            "differ in offset or size); the native step is not used"
        )
    return None


class KernelMismatch(RuntimeError):
    """The native GEMM disagreed with ``torch.mm`` on a shape the step would use (see :func:`gemm_mismatch`)."""


GEMM_DTYPES = (torch.float32, torch.bfloat16)  # the native step's GEMM operands (float32 sums either way)


def reference_gemm(x: torch.Tensor, w: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """What the native GEMM must equal: ``torch.mm`` of the operands rounded to ``dtype``, in float32."""
    return torch.mm(x.to(dtype).float(), w.to(dtype).float())


_CHECKED: dict[tuple[int, int, int, torch.dtype], str | None] = {}


def native_gemm(library: ctypes.CDLL, x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, dtype: torch.dtype):
    """``y = x @ w`` through the step's own GEMM path for operands of ``dtype``; the native error message or None."""
    (rows, inner), cols = x.shape, w.shape[1]
    if dtype == torch.float32:
        return library.stmc_gemm(rows, cols, inner, x.data_ptr(), w.data_ptr(), y.data_ptr())
    size = library.stmc_bf16_packed_bytes(inner, cols) + library.stmc_bf16_operand_bytes(rows, inner)
    scratch = torch.empty(size, dtype=torch.uint8)
    return library.stmc_gemm_bf16(rows, cols, inner, x.data_ptr(), w.data_ptr(), y.data_ptr(), scratch.data_ptr())


def gemm_mismatch(shapes: list[tuple[int, int, int]], dtype: torch.dtype = torch.float32) -> str | None:
    """Why the native GEMM cannot be trusted on one of these ``(rows, cols, inner)`` shapes, or None.

    The step binds internal libtorch functions by hand-written prototypes (the float32 and the bfloat16
    brgemm); a torch release that changed the function's meaning under the same name would compute wrong
    audio silently. So each distinct shape is checked once per process: seeded random operands through the
    step's own GEMM path against :func:`reference_gemm`.
    """
    library = _load()
    if isinstance(library, str):
        return library
    for shape in dict.fromkeys(shapes):
        if (*shape, dtype) not in _CHECKED:
            rows, cols, inner = shape
            generator = torch.Generator().manual_seed(0)
            x, w = torch.randn(rows, inner, generator=generator), torch.randn(inner, cols, generator=generator)
            y = torch.full((rows, cols), math.nan)  # a kernel that accumulated into its output would show
            error = native_gemm(library, x, w, y, dtype)
            expected = reference_gemm(x, w, dtype)
            worst = float((y - expected).abs().max()) if error is None else math.inf
            tolerance = 1e-4 * math.sqrt(inner) * max(1.0, float(expected.abs().max()))
            _CHECKED[(*shape, dtype)] = (
                None
                if worst <= tolerance
                else (
                    f"its {str(dtype).removeprefix('torch.')} GEMM ({rows} x {inner} @ {inner} x {cols}) differs "
                    f"from torch.mm by {worst:.3g}{f' ({error.decode(errors=chr(63))})' if error is not None else ''}"
                )
            )
        if _CHECKED[(*shape, dtype)] is not None:
            return _CHECKED[(*shape, dtype)]
    return None


def bf16_kernels() -> bool:
    """Whether the native step's bfloat16 GEMM runs on the CPU's bf16 instructions (AVX512-BF16) here; elsewhere it
    computes the same numbers more slowly (rounded operands through the float32 GEMM)."""
    library = _load()
    return not isinstance(library, str) and bool(library.stmc_bf16_kernels())


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


class NativeGraph:
    """The layer chain wired for the native code: weights, the buffer each layer reads its frames from, where its
    output goes (the next layer's input, a skip's decoder input or delay line) and the scratch it needs.

    ``rows`` is what the native code iterates as its batch: streams (a step) or frames (a whole sequence).
    Layer ``k`` reads its newest frame from ``current[k]`` (None: every frame from ``frames[k]``, where
    consecutive rows start ``step[k]`` frames apart) and writes its output into ``targets[k + 1]``; ``owned``
    are the buffers allocated for this graph (its scratch, besides ``cols``, ``spread`` and ``mask``).
    """

    def __init__(
        self,
        model: UNet,
        layers: list[FrozenLayer],
        rows: int,
        frames: list[torch.Tensor],
        step: list[int],
        current: list[torch.Tensor | None],
        targets: list[torch.Tensor],
        lines: dict[int, torch.Tensor],
        owned: list[torch.Tensor],
        gemm_dtype: torch.dtype = torch.float32,
    ) -> None:
        loaded = _load()
        if isinstance(loaded, str):
            raise RuntimeError(f"the native STMC step is unavailable: {loaded}")
        self.library, self.layers = loaded, layers
        self.buffers = [*frames, *current, *targets, *lines.values()]  # kept alive: the specs point into them
        self.owned = owned
        self.mask = torch.zeros(rows, model.n_freq, 2)
        self.matrices = [gemm_matrix(layer) for layer in layers]
        shapes = [model.input_shape(k) for k in range(len(layers))]  # (channels, bins)
        skips = {source: target for target, source in model.joins.items()}
        specs, cols, spread, gemms = [], 1, 1, []
        for k, layer in enumerate(layers):
            channels, bins = shapes[k]
            out_bins = layer.out_bins(bins)
            dst = targets[k + 1] if k + 1 < len(layers) else self.mask
            spec = LayerSpec(
                transposed=layer.transposed,
                hist=layer.past + layer.future,
                step=step[k],
                delay=model.delays[k],
                kernel=FREQ_KERNEL,
                stride=FREQ_STRIDE,
                in_bins=bins,
                in_ch=channels,
                out_bins=out_bins,
                out_ch=layer.out_channels,
                matrix=self.matrices[k].data_ptr(),
                bias=layer.bias.data_ptr(),
                prelu=None if layer.prelu is None else layer.prelu.data_ptr(),
                reg=frames[k].data_ptr(),
                cur=None if current[k] is None else current[k].data_ptr(),
                dst=dst.data_ptr(),
                dst_ch=shapes[k + 1][0] if k + 1 < len(layers) else 2,  # the mask: real, imag
            )
            if k in skips:
                target = skips[k]
                spec.skip, spec.skip_ch = targets[target].data_ptr(), shapes[target][0]
                if k in lines:
                    spec.line, spec.line_len = lines[k].data_ptr(), lines[k].shape[1]
            specs.append(spec)
            if layer.transposed:
                cols = max(cols, rows * bins * layer.taps * channels)
                spread = max(spread, rows * bins * FREQ_KERNEL * layer.out_channels)
                gemms.append((rows * bins, FREQ_KERNEL * layer.out_channels, layer.taps * channels))
            else:
                cols = max(cols, rows * out_bins * layer.taps * FREQ_KERNEL * channels)
                gemms.append((rows * out_bins, layer.out_channels, layer.taps * FREQ_KERNEL * channels))
        mismatch = gemm_mismatch(gemms, gemm_dtype)
        if mismatch is not None:
            raise KernelMismatch(f"the native STMC step is not used: {mismatch}")
        if gemm_dtype == torch.bfloat16 and loaded.stmc_bf16_kernels():
            cols = 1  # the bf16 kernels' operands are written straight into `operand`, never as float32 rows
        self.cols, self.spread = torch.zeros(cols), torch.zeros(spread)
        self.packed: list[torch.Tensor] = []  # bf16: each layer's matrix packed for the bf16 GEMM
        self.operand = torch.zeros(0, dtype=torch.uint8)
        if gemm_dtype == torch.bfloat16:
            for spec, matrix in zip(specs, self.matrices, strict=True):
                inner, columns = matrix.shape
                packed = torch.empty(loaded.stmc_bf16_packed_bytes(inner, columns), dtype=torch.uint8)
                loaded.stmc_pack_bf16(inner, columns, matrix.data_ptr(), packed.data_ptr())
                self.packed.append(packed)
                spec.packed = packed.data_ptr()
            size = max(loaded.stmc_bf16_operand_bytes(rows, inner) for rows, _, inner in gemms)
            self.operand = torch.zeros(size, dtype=torch.uint8)
        self._strides: dict[tuple[int, ...], ctypes.Array] = {}
        self.specs = (LayerSpec * len(specs))(*specs)
        self.spec = StepSpec(
            n_layers=len(specs),
            batch=rows,
            n_freq=model.n_freq,
            compress=int(model.compress != 1),
            exponent=(model.compress - 1) / 2,
            feature_eps=FEATURE_EPS,
            bound_eps=BOUND_EPS,
            input=targets[0].data_ptr(),
            layers=self.specs,
            cols=self.cols.data_ptr(),
            spread=self.spread.data_ptr(),
            mask=self.mask.data_ptr(),
            operand=self.operand.data_ptr() if gemm_dtype == torch.bfloat16 else None,
        )

    @property
    def macs(self) -> int:
        """Multiply-accumulates done by the GEMMs so far (counted in the native code)."""
        return self.spec.macs

    @property
    def scratch_bytes(self) -> int:
        """Bytes of the buffers allocated here (besides the weights, a stream's state and each call's output)."""
        return sum(t.nbytes for t in [*self.owned, self.mask, self.cols, self.spread, self.operand, *self.packed])

    def run(
        self,
        spec: torch.Tensor,
        spec_strides: tuple[int, ...],
        out: torch.Tensor,
        out_strides: tuple[int, ...],
        frames: int,
        time: torch.Tensor,
        end: torch.Tensor | None,
    ) -> None:
        key = (*spec_strides, *out_strides)
        strides = self._strides.get(key)
        if strides is None:  # one ctypes array per layout: building it costs more than the call's bookkeeping
            strides = self._strides[key] = (ctypes.c_int64 * 8)(*key)
        error = self.library.stmc_step(
            ctypes.byref(self.spec),
            spec.data_ptr(),
            strides,
            out.data_ptr(),
            ctypes.addressof(strides) + 4 * 8,
            frames,
            time.data_ptr(),
            None if end is None else end.data_ptr(),
        )
        if error is not None:
            raise RuntimeError(f"native STMC step failed: {error.decode(errors='replace')}")


def check_buffers(tensors: list[torch.Tensor], shapes: list[tuple[int, ...]]) -> None:
    """Raise ``ValueError`` unless each tensor is a contiguous float32 CPU tensor of its shape: the native code
    writes through raw pointers and trusts these, so they are checked once, when it binds them."""
    if len(tensors) != len(shapes):
        raise InputError(f"native STMC step: expected {len(shapes)} state buffers, got {len(tensors)}")
    for index, (tensor, shape) in enumerate(zip(tensors, shapes, strict=True)):
        if (
            tuple(tensor.shape) != shape
            or tensor.dtype != torch.float32
            or not tensor.is_cpu
            or not tensor.is_contiguous()
        ):
            raise InputError(
                f"native STMC step: state buffer {index} must be a contiguous float32 CPU tensor of "
                f"shape {list(shape)}, got {tensor.dtype} {list(tensor.shape)} on {tensor.device}"
                f"{'' if tensor.is_contiguous() else ' (not contiguous)'}"
            )


class NativeStep(NativeGraph):
    """One STMC stream's frozen layers, state tensors and scratch, bound to the native step.

    The state tensors are shifted in place, so the stream's :meth:`get_state` stays valid. Bound to the exact
    tensor objects given: :meth:`binds` tells the stream when it must bind again (new state, new weights).
    """

    def __init__(
        self,
        model: UNet,
        layers: list[FrozenLayer],
        state: list[torch.Tensor],
        batch: int,
        state_shapes: list[tuple[int, ...]],
        gemm_dtype: torch.dtype = torch.float32,
    ) -> None:
        """``state_shapes``: the stream's (``STMCEngine.state_shapes``, without the batch axis), which every
        buffer must have before the native code gets its pointer; ``gemm_dtype``: the GEMMs' operands."""
        self.state = state
        check_buffers(state, [(batch, *shape) for shape in state_shapes])
        shapes = [model.input_shape(k) for k in range(len(layers))]
        self.current = current = [torch.zeros(batch, bins, channels) for channels, bins in shapes]
        slots = iter(range(len(layers), len(state)))
        lines = {model.joins[k]: state[next(slots)] for k in model.joins if model.join_delay(k)}
        steps = [layer.past + layer.future for layer in layers]
        super().__init__(
            model, layers, batch, state[: len(layers)], steps, current, current, lines, current, gemm_dtype
        )

    def binds(self, layers: list[FrozenLayer], state: list[torch.Tensor]) -> bool:
        """Whether this binding is to exactly these weights and state tensors."""
        return layers is self.layers and (
            state is self.state
            or (len(state) == len(self.state) and all(a is b for a, b in zip(state, self.state, strict=True)))
        )

    def __call__(self, chunk: torch.Tensor, time: torch.Tensor, end: torch.Tensor | None) -> torch.Tensor:
        """``chunk [B, 2, F, t]`` -> bounded mask ``[B, 2, F, t]`` at times ``time - D..``; state advanced."""
        out = torch.empty_like(chunk, memory_format=torch.contiguous_format)
        self.run(chunk, chunk.stride(), out, out.stride(), chunk.shape[-1], time, end)
        return out


def frame_rows(spec: torch.Tensor) -> tuple[int, int, int, int]:
    """Strides of ``[1, 2, F, T]`` read as rows = frames (what the native code calls its batch), one column."""
    return spec.stride(3), spec.stride(1), spec.stride(2), 0


class NativeOffline(NativeGraph):
    """Offline inference of one sequence with the native step's kernels: each layer one GEMM over all frames
    (its input zero-padded in time as offline inference pads it). What :mod:`stmc.bench.speed` compares the native
    stream with: the same kernels, with every weight reused across the sequence's frames."""

    def __init__(self, model: UNet, frames: int) -> None:
        layers = model.frozen()
        shapes = [model.input_shape(k) for k in range(len(layers))]
        padded = [
            torch.zeros(layer.past + frames + layer.future, bins, channels)
            for layer, (channels, bins) in zip(layers, shapes, strict=True)
        ]
        targets = [seq[layer.past :] for seq, layer in zip(padded, layers, strict=True)]
        super().__init__(model, layers, frames, padded, [1] * len(layers), [None] * len(layers), targets, {}, padded)
        self.times = torch.arange(frames) + model.receptive_field[1]  # every output frame is inside the sequence
        self.model, self.frames = model, frames

    def __call__(self, spec: torch.Tensor) -> torch.Tensor:
        """``spec [1, 2, F, frames]`` -> the bounded mask, as ``model(spec)``."""
        self.model.check_input(spec, batch=1)
        if spec.dtype != torch.float32 or spec.shape[-1] != self.frames:
            raise InputError(
                f"expected float32 [1, 2, {self.model.n_freq}, {self.frames}], got {spec.dtype} {list(spec.shape)}"
            )
        out = torch.empty(spec.shape, dtype=spec.dtype)
        self.run(spec, frame_rows(spec), out, frame_rows(out), 1, self.times, None)
        return out
