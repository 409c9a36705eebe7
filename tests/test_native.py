"""The native STMC step keeps the PyTorch engine's state exactly, and where it cannot run the error or fallback
is clear. (Equality with offline inference and its MAC count: tests/test_streaming.py.)"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stmc
from stmc.stream import native
from stmc.stream.native import NativeOffline
from tests.randmodel import split_points, stream_all, unets


@pytest.mark.compiler
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=unets(), batch=st.integers(1, 3), data=st.data())
def test_native_and_ops_streams_keep_the_same_state_and_can_swap_it(model, batch, data):
    """After every chunk the native step's registers and delay lines equal the PyTorch engine's, so a state
    saved from one continues exactly in the other."""
    frames = data.draw(st.integers(1, 30))
    spec = torch.randn(batch, 2, model.n_freq, frames)
    fast, ops = stmc.streaming(model, native=True), stmc.streaming(model, native=False)
    start = 0
    for size in split_points(data.draw, frames, 9):
        chunk = spec[..., start : start + size]
        torch.testing.assert_close(fast(chunk), ops(chunk), atol=1e-5, rtol=0)
        assert fast.engine.native  # no fallback to the operators
        start += size
        for a, b in zip(fast.get_state(), ops.get_state(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert fast.engine.native_step is not None or frames < model.receptive_field[1] + 1  # the native step ran
    from_fast, from_ops = ([s.clone() for s in stream.get_state()] for stream in (fast, ops))
    fast.set_state(from_ops)
    ops.set_state(from_fast)
    torch.testing.assert_close(fast.flush(), ops.flush(), atol=1e-5, rtol=0)


@pytest.mark.compiler
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=unets(), frames=st.integers(1, 24))
def test_native_offline_equals_the_model(model, frames):
    """The benchmark's floor for the native stream (its kernels over a whole sequence) is offline inference."""
    spec = torch.randn(1, 2, model.n_freq, frames)
    offline = NativeOffline(model, frames)
    torch.testing.assert_close(offline(spec), model(spec), atol=1e-5, rtol=0)
    assert offline.macs > 0


@pytest.mark.compiler
def test_default_stmc_stream_is_native_where_it_can_run():
    model = stmc.UNet(depth=2, channels=[2, 2], n_freq=5).eval()
    assert native.unavailable() is None  # CI and the dev machines have a C++ compiler
    assert stmc.streaming(model).engine.native
    assert not stmc.streaming(model.double()).engine.native  # float64: PyTorch operators, no warning needed


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda m: stmc.streaming(m.double(), native=True), "float32"),
        (lambda m: stmc.streaming(m, compile=True, native=True), "torch.compile"),
        (lambda m: stmc.streaming(m, "inc", native=True), "stmc method only"),
    ],
)
def test_native_true_where_it_cannot_run_is_a_clear_error(make, match):
    model = stmc.UNet(depth=2, channels=[2, 2], n_freq=5).eval()
    with pytest.raises(ValueError, match=match):
        make(model)


def test_without_a_compiler_streams_fall_back_with_a_warning(tmp_path, monkeypatch):
    model = stmc.UNet(depth=2, lookahead=1, channels=[2, 2], n_freq=5).eval()
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("STMC_NATIVE_CACHE", str(tmp_path / "cache"))
    native._load.cache_clear()
    try:
        assert "no C++ compiler" in native.unavailable()
        with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
            stream = stmc.streaming(model)
        assert not stream.engine.native
        spec = torch.randn(1, 2, 5, 7)
        torch.testing.assert_close(torch.cat([stream(spec), stream.flush()], -1), model(spec), atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="no C\\+\\+ compiler"):
            stmc.streaming(model, native=True)
    finally:
        native._load.cache_clear()


def bad_states(state: list[torch.Tensor]) -> dict[str, tuple[list[torch.Tensor], str]]:
    """Wrong states built from a good one, each with the message set_state must give."""
    first = state[0]
    return {
        "one frame short": (
            [first[:, 1:].clone(), *state[1:]],
            rf"tensor 0 must be torch.float32 of shape \[1, {first.shape[1]}, .*got torch.float32 "
            rf"of shape \[1, {first.shape[1] - 1}, ",
        ),
        "float64": ([s.double() if i == 1 else s for i, s in enumerate(state)], r"tensor 1 must be torch.float32"),
        "one tensor short": (state[1:], rf"expected a list of {len(state)} tensors"),
        "time as float": ([*state[:-1], state[-1].float()], r"\(the time\) must be int64 of shape \[batch\]"),
        "not a list": (state[0], r"expected a list of .* got Tensor"),
    }


@pytest.mark.parametrize("native_step", [pytest.param(True, marks=pytest.mark.compiler), False], ids=["native", "ops"])
@pytest.mark.parametrize("case", ["one frame short", "float64", "one tensor short", "time as float", "not a list"])
def test_set_state_refuses_a_wrong_state_before_anything_reads_it(native_step, case):
    """A wrong state is a ValueError naming the tensor and the expected shape and dtype; the stream keeps its
    own state and goes on exactly (on the native step a short register would otherwise corrupt the heap)."""
    model = stmc.UNet(lookahead=2, width=0.25).eval()
    spec = torch.randn(1, 2, model.n_freq, 12)
    stream, reference = stmc.streaming(model, native=native_step), stmc.streaming(model, native=native_step)
    torch.testing.assert_close(stream(spec[..., :5]), reference(spec[..., :5]))
    state, message = bad_states([s.clone() for s in stream.get_state()])[case]
    with pytest.raises(ValueError, match=message):
        stream.set_state(state)
    torch.testing.assert_close(stream(spec[..., 5:]), reference(spec[..., 5:]))
    torch.testing.assert_close(stream.flush(), reference.flush())


@pytest.mark.compiler
def test_native_binding_checks_its_buffers():
    model = stmc.UNet(width=0.25).eval()
    stream = stmc.streaming(model, native=True)
    stream(torch.randn(2, 2, model.n_freq, 3))
    state, engine = [s.clone() for s in stream.get_state()[:-1]], stream.engine
    with pytest.raises(ValueError, match=r"state buffer 0 must be a contiguous float32 CPU tensor of shape \[2, "):
        native.NativeStep(model, engine.layers, [state[0][:, :0], *state[1:]], 2, engine.state_shapes())
    transposed = state[0].transpose(2, 3).contiguous().transpose(2, 3)
    with pytest.raises(ValueError, match=r"\(not contiguous\)"):
        native.NativeStep(model, engine.layers, [transposed, *state[1:]], 2, engine.state_shapes())


@pytest.mark.compiler
def test_a_native_gemm_that_disagrees_with_torch_means_the_operator_engine(monkeypatch):
    """Each GEMM shape the step uses is checked once against torch.mm; a mismatch (here: torch.mm made to
    disagree) gives a warning naming the shape, and the stream goes on exactly on PyTorch operators."""
    model = stmc.UNet(depth=2, channels=[2, 3], n_freq=17, lookahead=1).eval()
    spec = torch.randn(1, 2, 17, 9)
    monkeypatch.setattr(native, "_CHECKED", {})
    monkeypatch.setattr(native, "reference_gemm", lambda x, w, dtype: torch.mm(x, w) + 1.0)
    stream = stmc.streaming(model, native=None)
    assert stream.engine.native
    with pytest.warns(UserWarning, match=r"not used: its float32 GEMM \(\d+ x \d+ @ \d+ x \d+\) differs from torch"):
        out = torch.cat([stream(spec[..., :4]), stream(spec[..., 4:]), stream.flush()], -1)
    assert not stream.engine.native and stream.engine.native_step is None
    torch.testing.assert_close(out, model(spec), atol=1e-5, rtol=0)
    monkeypatch.setattr(native, "_CHECKED", {})
    monkeypatch.setattr(native, "reference_gemm", lambda x, w, dtype: torch.mm(x, w))
    assert native.gemm_mismatch([(7, 5, 11), (1, 3, 40)]) is None  # the real kernel agrees


@pytest.mark.compiler
def test_the_ctypes_mirrors_match_the_native_structures_and_a_reordered_field_is_refused(monkeypatch):
    """The C++ step reports its structures' sizes and field offsets; a mirror that disagrees (a field added,
    removed or reordered on one side) keeps the native step from running instead of corrupting memory."""
    import ctypes

    library = native._load()
    assert not isinstance(library, str), library
    layout = library.stmc_layout().decode()
    assert native.layout_mismatch(layout) is None
    fields = list(native.LayerSpec._fields_)
    fields[0], fields[1] = fields[1], ("transposed", ctypes.c_int32)  # a narrower first field shifts the rest

    class Reordered(ctypes.Structure):
        _fields_ = fields

    monkeypatch.setattr(native, "LayerSpec", Reordered)
    assert "LayerSpec.hist, LayerSpec.transposed differ" in native.layout_mismatch(layout)


class RoundedOperands:
    """A frozen layer whose GEMM operands are rounded to bfloat16 (input frames and matrix; the im2col only copies
    and zero-pads them) and summed in float32: the reference of the native bf16 step, on PyTorch operators."""

    def __init__(self, layer):
        self.layer = type(layer)(
            layer.past, layer.future, layer.transposed, layer.matrix.bfloat16().float(), layer.bias, layer.prelu
        )
        self.past, self.future, self.transposed = layer.past, layer.future, layer.transposed

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.bfloat16().float())


@pytest.mark.compiler
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=unets(), batch=st.integers(1, 3), data=st.data())
def test_bf16_step_rounds_its_gemm_operands_and_sums_in_float32(model, batch, data):
    """The bfloat16 native step equals the PyTorch engine with bf16-rounded GEMM operands (up to the order of the
    float32 sums), chunk by chunk and through the flush, on this CPU's bf16 instructions or without them."""
    from stmc.stream.driver import Stream
    from stmc.stream.engines import STMCEngine

    frames, seed = data.draw(st.integers(1, 24)), data.draw(st.integers(0, 2**31 - 1))
    spec = torch.randn(batch, 2, model.n_freq, frames, generator=torch.Generator().manual_seed(seed))
    bf16 = stmc.streaming(model, dtype=torch.bfloat16)
    streams = [bf16, Stream(STMCEngine(model, layer_form=RoundedOperands)), stmc.streaming(model)]
    sizes = split_points(data.draw, frames, 6)
    out, expected, float32 = (stream_all(stream, spec, sizes) for stream in streams)
    # A float32 sum that lands on the other side of a bf16 rounding boundary (the kernels sum in another order)
    # moves the next layer's input by one bf16 step: rare and bounded, but in a short output one such flip can move
    # a third of the values. A kernel that skips the rounding (its error is then the rounding's own: float32 against
    # the reference) or sums in bf16 moves nearly all of them. So: the lower quartile of |bf16 - reference| is at
    # most a tenth of the lower quartile of |float32 - reference| over the output, and at most half of it in every
    # stream of the batch (a fault in one row).
    differ, rounding = (out - expected).abs().flatten(1), (float32 - expected).abs().flatten(1)
    assert float(differ.max()) < 2e-2
    assert float(differ.quantile(0.25)) <= 0.1 * float(rounding.quantile(0.25))
    assert bool((differ.quantile(0.25, dim=1) <= 0.5 * rounding.quantile(0.25, dim=1)).all())
    assert bf16.engine.native and bf16.engine.gemm_dtype == torch.bfloat16


@pytest.mark.compiler
def test_bf16_differs_from_float32_by_rounding_only_and_refuses_what_it_cannot_run():
    """On a depth-7 model the bf16 step's masks stay within bf16 rounding of float32 (and are not float32's);
    dtype settings it cannot honour are one-line errors."""
    torch.manual_seed(0)
    model = stmc.UNet(width=0.5).eval()
    spec = torch.randn(1, 2, model.n_freq, 30)
    error = float((stmc.streaming(model, dtype=torch.bfloat16)(spec) - stmc.streaming(model)(spec)).abs().max())
    assert 1e-5 < error < 0.05
    for kwargs in [
        dict(dtype=torch.float16),
        dict(dtype=torch.bfloat16, native=False),
        dict(dtype=torch.bfloat16, method="inc"),
        dict(dtype=torch.bfloat16, compile=True),
    ]:
        with pytest.raises(ValueError, match="dtype"):
            stmc.streaming(model, **kwargs)
