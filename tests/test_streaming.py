"""Streamed inference equals offline inference, for every engine, on random U-Nets and random chunkings."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stmc
from tests.randmodel import randomise_norms, split_points, stream_all, unets

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# every engine: STMC with its native step and on PyTorch operators, INC, window (each a quarter of the examples)
ENGINES = [
    pytest.param(("stmc", True), marks=pytest.mark.compiler, id="stmc-native"),
    pytest.param(("stmc", False), id="stmc-ops"),
    pytest.param(("inc", None), id="inc"),
    pytest.param(("window", None), id="window"),
]


@pytest.mark.parametrize("engine", ENGINES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=unets(), batch=st.integers(1, 3), data=st.data())
def test_stream_then_flush_equals_offline(model, engine, batch, data):
    method, native = engine
    frames = data.draw(st.integers(0, 40))
    spec = torch.randn(batch, 2, model.n_freq, frames)
    sizes = split_points(data.draw, frames, 12)
    out = stream_all(stmc.streaming(model, method, native=native), spec, sizes)
    expected = model(spec)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@PROPERTY
@given(model=unets(), data=st.data())
def test_chunk_outputs_lag_inputs_by_the_lookahead(model, data):
    """After n input frames a stream has emitted exactly max(0, n - future) frames: no more, no less."""
    frames = data.draw(st.integers(1, 30))
    spec = torch.randn(1, 2, model.n_freq, frames)
    stream = stmc.streaming(model, "stmc")
    emitted, fed = 0, 0
    for size in split_points(data.draw, frames, 7):
        emitted += stream(spec[..., fed : fed + size]).shape[-1]
        fed += size
        assert emitted == max(0, fed - model.receptive_field[1])


@pytest.mark.parametrize("tstmc", [True, False], ids=["tstmc", "no-tstmc"])
@pytest.mark.parametrize("lookahead", [0, 1, 5, 14])
@pytest.mark.parametrize("placement", ["first", "last", "spread"])
def test_dependency_cone_is_the_declared_receptive_field(lookahead, placement, tstmc):
    """Perturbing input frame t changes exactly output frames t - future .. t + past (causality, look-ahead),
    also for the decoder transposed in time (tstmc=False)."""
    torch.manual_seed(lookahead)
    model = randomise_norms(stmc.UNet(lookahead=lookahead, lookahead_layers=placement, width=0.25, tstmc=tstmc), 1)
    past, future = model.receptive_field
    assert (past, future) == (14, lookahead)
    frames, t = 40, 20
    spec = torch.randn(1, 2, model.n_freq, frames)
    bumped = spec.clone()
    bumped[..., t] += 10 * torch.randn(2, model.n_freq)
    with torch.no_grad():
        changed = (model(spec) != model(bumped)).flatten(0, 2).any(0)
    expected = torch.zeros(frames, dtype=torch.bool)
    expected[max(0, t - future) : t + past + 1] = True
    assert changed.tolist() == expected.tolist()


def test_paper_models_receptive_fields_and_sizes():
    causal, noncausal = stmc.UNet(lookahead=0), stmc.UNet(lookahead=14)
    assert causal.receptive_field == (14, 0)
    assert noncausal.receptive_field == (14, 14)
    n_causal = sum(p.numel() for p in causal.parameters())
    n_noncausal = sum(p.numel() for p in noncausal.parameters())
    assert (n_causal, n_noncausal) == (1_120_834, 1_679_394)  # any change to the architecture shows here
    documented = (Path(__file__).resolve().parents[1] / "docs/architecture.md").read_text()
    assert "Causal model 1.12 M parameters, non-causal 1.68 M" in documented


def test_multi_stream_reset_restarts_only_the_masked_streams():
    """B streams advance together; a restarted stream equals offline on its new input, the others continue."""
    model = randomise_norms(stmc.UNet(depth=3, lookahead=2, channels=[3, 4, 5], n_freq=17), 0)
    delay = model.receptive_field[1]
    a = torch.randn(1, 2, 17, 30)
    b_old, b_new = torch.randn(1, 2, 17, 12), torch.randn(1, 2, 17, 18)
    stream = stmc.streaming(model, "stmc")
    first = stream(torch.cat([a[..., :12], b_old], 0))
    stream.reset(torch.tensor([False, True]))
    second = stream(torch.cat([a[..., 12:], b_new], 0))
    rest = stream.flush()
    out_a = torch.cat([first[:1], second[:1], rest[:1]], -1)
    torch.testing.assert_close(out_a, model(a), atol=1e-5, rtol=0)
    restarted = torch.cat([second[1:], rest[1:]], -1)[..., delay:]  # its first `delay` frames precede it
    torch.testing.assert_close(restarted, model(b_new), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", stmc.METHODS)
def test_state_has_fixed_shapes_and_round_trips(method):
    model = randomise_norms(stmc.UNet(depth=3, lookahead=3, channels=[2, 3, 4], n_freq=17), 0)
    spec = torch.randn(2, 2, 17, 9)
    stream = stmc.streaming(model, method)
    shapes = None
    for t in range(9):
        stream(spec[..., t : t + 1])
        now = [tuple(s.shape) for s in stream.get_state()]
        assert shapes is None or now == shapes
        shapes = now
    assert shapes[:-1] == [(2, *s) for s in stream.engine.state_shapes()]
    saved = [s.clone() for s in stream.get_state()]
    twin = stmc.streaming(model, method)
    twin(spec[..., :1])
    twin.set_state(saved)
    torch.testing.assert_close(twin.flush(), stream.flush())


def test_flushed_stream_refuses_chunks_until_reset():
    model = stmc.UNet(depth=2, lookahead=1, channels=[2, 2], n_freq=5).eval()
    stream = stmc.streaming(model)
    spec = torch.randn(1, 2, 5, 4)
    stream(spec)
    stream.flush()
    with pytest.raises(RuntimeError, match="reset"):
        stream(spec)
    with pytest.raises(RuntimeError, match="reset"):
        stream.flush()
    stream.reset()
    torch.testing.assert_close(torch.cat([stream(spec), stream.flush()], -1), model(spec))


def test_stream_reads_new_weights_at_reset():
    model = stmc.UNet(depth=2, lookahead=0, channels=[2, 2], n_freq=5).eval()
    stream = stmc.streaming(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    stream.reset()
    spec = torch.randn(1, 2, 5, 6)
    torch.testing.assert_close(stream(spec), model(spec), atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.compiler
def test_compiled_stream_equals_offline():
    model = randomise_norms(stmc.UNet(depth=3, lookahead=2, channels=[2, 3, 4], n_freq=17), 0)
    spec = torch.randn(1, 2, 17, 12)
    stream = stmc.streaming(model, "stmc", compile=True)
    out = stream_all(stream, spec, [1] * 12)
    torch.testing.assert_close(out, model(spec), atol=1e-5, rtol=0)


@pytest.mark.compiler
@pytest.mark.parametrize("lookahead", [0, 7, 14])
def test_stmc_step_does_no_redundant_work(lookahead):
    """Counted MACs of one steady-state STMC hop equal offline MACs divided by the frames: on PyTorch operators
    (counted by torch's FlopCounterMode) and in the native step (counted by the step itself)."""
    from stmc.bench.speed import count_macs, offline_frozen

    model = randomise_norms(stmc.UNet(lookahead=lookahead, width=0.25), 0)
    frames = 64
    spec = torch.randn(1, 2, model.n_freq, frames + 1)
    offline = count_macs(lambda: offline_frozen(model)(spec[..., :frames])) / frames
    stream = stmc.streaming(model, "stmc", native=False)
    stream(spec[..., :frames])
    per_hop = count_macs(lambda: stream(spec[..., frames:]))
    assert per_hop == offline > 0
    fast = stmc.streaming(model, "stmc", native=True)
    fast(spec[..., :frames])
    before = fast.engine.native_step.macs
    fast(spec[..., frames:])
    assert fast.engine.native_step.macs - before == per_hop
    inc = stmc.streaming(model, "inc")
    inc(spec[..., :frames])
    assert count_macs(lambda: inc(spec[..., frames:])) > 2 * per_hop  # INC recomputes inside the receptive field


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=unets(), data=st.data())
def test_windowed_offline_inference_equals_the_whole_sequence(model, data):
    """Offline inference in windows widened by the receptive field (what bounds evaluation memory on long
    utterances) gives the whole-sequence output, for any window length."""
    frames = data.draw(st.integers(1, 60))
    window = data.draw(st.integers(1, 20))
    spec = torch.randn(2, 2, model.n_freq, frames)
    with torch.no_grad():
        torch.testing.assert_close(model.windowed(spec, window), model(spec), atol=1e-5, rtol=0)


@pytest.mark.parametrize("engine", ENGINES)
def test_flush_of_chosen_streams_ends_them_exactly_and_the_others_go_on(engine):
    """flush(mask) gives the chosen streams' last D frames as offline padding would, restarts them, and leaves
    the other streams untouched: both rows equal their own offline outputs (what batched folders rely on)."""
    method, native = engine
    model = randomise_norms(stmc.UNet(depth=3, lookahead=3, channels=[3, 4, 5], n_freq=17), 2)
    delay = model.receptive_field[1]
    a, b, c = torch.randn(1, 2, 17, 20), torch.randn(1, 2, 17, 9), torch.randn(1, 2, 17, 11)
    stream = stmc.streaming(model, method, native=native)
    first = stream(torch.cat([a[..., :9], b], 0))
    tail_b = stream.flush(torch.tensor([False, True]))
    assert tail_b.shape == (1, 2, 17, delay)
    second = stream(torch.cat([a[..., 9:], c], 0))
    rest = stream.flush()
    torch.testing.assert_close(torch.cat([first[1:], tail_b], -1), model(b), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([first[:1], second[:1], rest[:1]], -1), model(a), atol=1e-5, rtol=0)
    restarted = torch.cat([second[1:], rest[1:]], -1)[..., delay:]  # its first D frames precede its start
    torch.testing.assert_close(restarted, model(c), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", stmc.METHODS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=unets(tstmc=False), batch=st.integers(1, 3), data=st.data())
def test_decoder_transposed_in_time_streams_exactly(model, method, batch, data):
    """tstmc=False (the ablation): STMC streams the decoder's transposed convolutions by overlap-add (pending
    output sums as state), INC and window by their valid form; stream + flush equals offline for random
    U-Nets and chunkings."""
    frames = data.draw(st.integers(0, 40))
    spec = torch.randn(batch, 2, model.n_freq, frames)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the one-time note that the native step has no overlap-add decoder
        stream = stmc.streaming(model, method)
    out = stream_all(stream, spec, split_points(data.draw, frames, 12))
    torch.testing.assert_close(out, model(spec), atol=1e-5, rtol=0)


def test_no_tstmc_model_has_the_same_parameters_context_and_a_state_of_output_sums():
    """The ablation keeps the parameter count and receptive field; its STMC state holds, per decoder layer, the
    pending sums of its output frames (output bins and channels) instead of its last input frames."""
    with_t, without = stmc.UNet(lookahead=3), stmc.UNet(lookahead=3, tstmc=False)
    assert sum(p.numel() for p in with_t.parameters()) == sum(p.numel() for p in without.parameters())
    assert with_t.receptive_field == without.receptive_field == (14, 3)
    assert without.config["tstmc"] is False and "tstmc" not in with_t.config  # old checkpoints stay equal
    shapes = stmc.streaming(without.eval(), native=False).engine.state_shapes()
    for k in range(7, 14):
        channels, bins = without.input_shape(k)
        layer = without.layers[k]
        assert shapes[k] == (layer.past + layer.future, layer.out_bins(bins), layer.out_channels)
    with pytest.raises(ValueError, match="no overlap-add decoder"):
        stmc.streaming(without.eval(), native=True)
