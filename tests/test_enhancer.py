"""The waveform path: our STFT agrees with torch's, and the streamed Enhancer equals the offline one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stmc
from stmc.model.stft import STFT
from tests.randmodel import randomise_norms, split_points


def small_model(lookahead: int, seed: int) -> stmc.UNet:
    torch.manual_seed(seed)
    return randomise_norms(stmc.UNet(depth=7, lookahead=lookahead, channels=[2, 2, 3, 3, 4, 4, 4]), seed)


@pytest.mark.parametrize("length", [1, 255, 256, 1000, 16_000])
def test_stft_matches_torch_stft_on_the_zero_padded_signal(length):
    stft = STFT()
    x = torch.randn(2, length)
    ours = stft.stft(x)
    total = (ours.shape[-1] - 1) * stft.hop + stft.n_fft
    padded = F.pad(x, (stft.lead, total - stft.lead - length))
    theirs = torch.stft(padded, 1024, 256, window=torch.hann_window(1024), center=False, return_complex=True)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-5)


def test_istft_matches_torch_istft_and_inverts_stft():
    stft = STFT()
    x = torch.randn(2, 10_000)
    spec = stft.stft(x)
    ours = stft.istft(spec, x.shape[-1])
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=0)
    # torch.istft(center=True) centres frame m at m*hop; ours starts it at m*hop - (n_fft - hop): shift by 256
    theirs = torch.istft(spec, 1024, 256, window=torch.hann_window(1024), center=True)
    shift = stft.n_fft // 2 - stft.lead
    torch.testing.assert_close(ours[..., 2000:8000], theirs[..., 2000 - shift : 8000 - shift], atol=1e-5, rtol=0)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lookahead=st.integers(0, 14),
    method=st.sampled_from(stmc.METHODS),
    batch=st.integers(1, 2),
    length=st.integers(0, 6000),
    data=st.data(),
)
def test_streamed_enhancer_equals_offline_sample_for_sample(lookahead, method, batch, length, data):
    enhancer = stmc.Enhancer(small_model(lookahead, length))
    x = torch.randn(batch, length)
    expected = enhancer(x)
    stream = enhancer.stream(method)
    outs, start = [], 0
    for size in split_points(data.draw, length, 1500):
        outs.append(stream(x[:, start : start + size]))
        start += size
    out = torch.cat(outs + [stream.flush()], -1)
    assert out.shape == expected.shape
    if length:
        peak = expected.abs().max().clamp_min(1e-3)
        assert (out - expected).abs().max() <= 1e-5 * peak


@pytest.mark.parametrize("lookahead", [0, 3])
def test_stream_emits_every_sample_within_the_algorithmic_latency(lookahead):
    enhancer = stmc.Enhancer(small_model(lookahead, 0))
    stream = enhancer.stream()
    assert stream.latency_samples == 1024 + 256 * lookahead
    fed = emitted = 0
    for size in [100, 700, 256, 1, 3000, 512, 77]:
        emitted += stream(torch.randn(1, size)).shape[-1]
        fed += size
        assert fed - stream.latency_samples <= emitted <= fed


def test_si_snr_matches_torchmetrics():
    from torchmetrics.functional.audio import scale_invariant_signal_noise_ratio

    ref = torch.randn(4, 8000)
    est = ref + 0.3 * torch.randn(4, 8000)
    torch.testing.assert_close(stmc.si_snr(est, ref), scale_invariant_signal_noise_ratio(est, ref))


def test_si_snr_with_lengths_scores_only_the_real_samples():
    ref, est = torch.randn(2, 6000), torch.randn(2, 6000)
    lengths = torch.tensor([6000, 3500])
    padded_ref, padded_est = ref.clone(), est.clone()
    padded_ref[1, 3500:] = 0
    padded_est[1, 3500:] = 5.0  # garbage in the padding must not count
    got = stmc.si_snr(padded_est, padded_ref, lengths)
    torch.testing.assert_close(got[0], stmc.si_snr(est[:1], ref[:1])[0])
    torch.testing.assert_close(got[1], stmc.si_snr(est[1:, :3500], ref[1:, :3500])[0])
