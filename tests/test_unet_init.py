"""Common random numbers: a seed gives every look-ahead variant the same shared initial weights."""

import pytest
import torch

from stmc.model.unet import UNet


def build(seed: int, **kwargs) -> UNet:
    torch.manual_seed(seed)
    return UNet(depth=4, width=0.25, n_freq=65, **kwargs)


@pytest.mark.parametrize("lookahead", [1, 2, 5, 8])
def test_same_seed_same_shared_weights_across_lookaheads(lookahead):
    """Past and present taps and biases equal the causal model's bit for bit; only future taps are new."""
    causal, ahead = build(3), build(3, lookahead=lookahead)
    new_taps = 0
    for k, (a, b) in enumerate(zip(causal.layers, ahead.layers, strict=True)):
        assert torch.equal(a.conv.bias, b.conv.bias), k
        for offset in range(-a.past, a.future + 1):
            assert torch.equal(a.time_tap(offset), b.time_tap(offset)), (k, offset)
        if b.future:
            new_taps += 1
            assert not torch.equal(b.time_tap(1), b.time_tap(0))
            assert b.time_tap(1).abs().max() <= b.time_tap(0).abs().max() * 4  # drawn at the same scale
    assert new_taps == lookahead


def test_the_global_random_stream_after_the_model_does_not_depend_on_its_shape():
    """What the seed draws after the model (data order, dropout) is the same for every look-ahead."""
    build(5)
    after_causal = torch.rand(4)
    build(5, lookahead=8)
    assert torch.equal(torch.rand(4), after_causal)


def test_different_seeds_draw_different_weights_and_so_do_consecutive_models():
    assert not torch.equal(build(0).layers[0].conv.weight, build(1).layers[0].conv.weight)
    torch.manual_seed(0)
    first, second = UNet(depth=2, n_freq=65), UNet(depth=2, n_freq=65)
    assert not torch.equal(first.layers[0].conv.weight, second.layers[0].conv.weight)


def test_the_ablation_starts_from_the_same_linear_map():
    """tstmc=False lays its decoder weights out differently; with the same seed they are the same map."""
    tstmc, ablation = build(2, lookahead=3), build(2, lookahead=3, tstmc=False)
    for a, b in zip(tstmc.layers, ablation.layers, strict=True):
        assert torch.equal(
            a.tstmc_weight() if a.transposed else a.conv.weight, b.tstmc_weight() if b.transposed else b.conv.weight
        )


def test_weights_fill_the_causal_default_bound():
    """Uniform within PyTorch's default bound 1/sqrt(fan_in) of the causal form (not zero, not wider)."""
    layer = build(0, lookahead=0).layers[1]  # an encoder layer, in_channels * 5 * 2 inputs per output
    bound = (layer.in_channels * 5 * 2) ** -0.5
    weight = layer.conv.weight
    assert weight.abs().max() <= bound
    assert weight.abs().max() > 0.9 * bound
    assert abs(float(weight.mean())) < 0.1 * bound
