"""On-the-fly mixing (SNR exactness, seeding per epoch and worker), batching, and the reference enhancers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from stmc.data.datasets import EpochSampler, MixingDataset, collate
from stmc.data.index import scan
from stmc.data.mixing import PEAK_LIMIT, mix, snr_db
from stmc.evaluation.metrics import si_snr
from stmc.evaluation.references import oracle_mask, wiener

SR = 16_000


def voiced(seconds: float, seed: int) -> np.ndarray:
    """Harmonic bursts with pauses: a crude stand-in for speech (sparse in time and frequency)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = rng.uniform(100, 220)
    tone = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) / k for k in range(1, 20))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(1.5, 3) * t), 0, None) ** 2
    return (0.1 * envelope * tone).astype(np.float32)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[list, list]:
    for i in range(4):
        sf.write(tmp_path / f"clean_{i}.wav", voiced(0.3 + 0.4 * i, i), SR, subtype="PCM_16")
    for i in range(3):
        noise = np.random.default_rng(50 + i).standard_normal(int(SR * (0.5 + i))) * 0.05
        (tmp_path / "noise").mkdir(exist_ok=True)
        sf.write(tmp_path / "noise" / f"n{i}.wav", noise.astype(np.float32), SR, subtype="PCM_16")
    clean = [e for e in scan(tmp_path, tmp_path) if e.rel.startswith("clean")]
    return clean, scan(tmp_path / "noise", tmp_path)


def training_set(folders, seed: int = 0, items: int = 6) -> MixingDataset:
    clean, noise = folders
    return MixingDataset(
        clean,
        noise,
        split="train",
        seed=seed,
        snr_range=(-5, 15),
        level_range_db=(-35, -15),
        segment=SR // 2,
        items=items,
    )


@settings(max_examples=60, deadline=None)
@given(snr=st.floats(-10, 30), level=st.floats(-40, 0), seed=st.integers(0, 2**16), n=st.integers(256, 4000))
def test_mix_hits_the_drawn_snr(snr, level, seed, n):
    rng = np.random.default_rng(seed)
    clean = (rng.standard_normal(n) * rng.uniform(0.01, 2)).astype(np.float32)
    noise = (rng.standard_normal(n) * rng.uniform(0.01, 2)).astype(np.float32)
    noisy, scaled = mix(clean, noise, snr, level)
    assert abs(snr_db(scaled, noisy - scaled) - snr) < 0.1
    assert max(np.abs(noisy).max(), np.abs(scaled).max()) <= PEAK_LIMIT + 1e-6
    assert noisy.dtype == scaled.dtype == np.float32


def test_fixed_mixtures_report_their_snr(folders):
    clean, noise = folders
    dataset = MixingDataset(clean, noise, split="val", seed=3, snr_range=(-5, 15), level_range_db=(-35, -15))
    assert len(dataset) == len(clean)
    for item in dataset:
        measured = snr_db(item["clean"].numpy(), (item["noisy"] - item["clean"]).numpy())
        assert abs(measured - item["snr"]) < 0.1
        assert -5 <= item["snr"] <= 15 and item["length"] == item["noisy"].numel()
    assert [dataset[i]["length"] for i in range(len(dataset))] == sorted(e.length for e in clean)


def test_training_crops_have_fixed_length_and_snr_in_range(folders):
    dataset = training_set(folders)
    for key in range(12):
        item = dataset[key]
        assert item["noisy"].shape == item["clean"].shape == (SR // 2,)
        measured = snr_db(item["clean"].numpy(), (item["noisy"] - item["clean"]).numpy())
        assert -5.1 <= measured <= 15.1


def test_seeding_per_epoch_and_independent_of_workers(folders):
    def epoch_batches(dataset, workers: int, epoch: int) -> list[torch.Tensor]:
        sampler = EpochSampler(len(dataset))
        sampler.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=2, sampler=sampler, collate_fn=collate, num_workers=workers)
        return [b["noisy"] for b in loader]

    dataset = training_set(folders)
    first = epoch_batches(dataset, 0, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, epoch_batches(training_set(folders), 2, 0), strict=True))
    second = epoch_batches(dataset, 0, 1)
    assert not any(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    other_seed = epoch_batches(training_set(folders, seed=1), 0, 0)
    assert not torch.equal(first[0], other_seed[0])
    sampler = EpochSampler(3)  # without Lightning, each pass is the next epoch
    assert [list(sampler), list(sampler)] == [[0, 1, 2], [3, 4, 5]]


def test_collate_pads_with_lengths():
    items = [
        {
            "noisy": torch.ones(n),
            "clean": torch.full((n,), 2.0),
            "length": n,
            "name": f"u{n}",
            "split": "test",
            "noise_type": "hum",
            "snr": 1.0,
        }
        for n in (5, 3)
    ]
    batch = collate(items)
    assert batch["noisy"].shape == (2, 5) and batch["length"].tolist() == [5, 3]
    assert batch["noisy"][1].tolist() == [1, 1, 1, 0, 0] and batch["clean"][1, 3:].abs().sum() == 0
    assert batch["name"] == ["u5", "u3"] and batch["noise_type"] == ["hum", "hum"] and batch["snr"] == [1.0, 1.0]


# --------------------------------------------------------------------------------------- reference enhancers
def _noisy_batch(snr: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    clean = np.stack([voiced(4.0, s) for s in range(2)])
    noise = np.random.default_rng(9).standard_normal(clean.shape)
    pairs = [mix(c, n, snr, -25) for c, n in zip(clean, noise, strict=True)]
    return torch.tensor(np.stack([p[0] for p in pairs])), torch.tensor(np.stack([p[1] for p in pairs]))


def test_wiener_and_oracle_improve_stationary_noise():
    noisy, clean = _noisy_batch()
    before = si_snr(noisy, clean)
    wiener_gain = si_snr(wiener(noisy), clean) - before
    oracle_gain = si_snr(oracle_mask(noisy, clean), clean) - before
    assert (wiener_gain > 3).all(), wiener_gain
    assert (oracle_gain > wiener_gain + 3).all(), (oracle_gain, wiener_gain)


def test_oracle_is_identity_on_clean_input_and_bounded():
    noisy, clean = _noisy_batch()
    assert torch.allclose(oracle_mask(clean, clean), clean, atol=1e-5)
    out = oracle_mask(noisy, clean)
    assert out.shape == noisy.shape
    assert out.pow(2).sum() <= noisy.pow(2).sum() * 1.01  # |mask| <= 1 cannot add energy


def test_wiener_ignores_padding_given_lengths():
    noisy, _ = _noisy_batch(5.0)
    short = noisy[1, : SR * 3]
    padded = torch.stack([noisy[0], torch.cat([short, torch.zeros(SR)])])
    out = wiener(padded, torch.tensor([noisy.shape[1], short.numel()]))
    alone = wiener(short.unsqueeze(0))[0]
    assert torch.allclose(out[1, : short.numel()], alone, atol=1e-5)
    assert torch.allclose(out[0], wiener(noisy[:1])[0], atol=1e-5)
