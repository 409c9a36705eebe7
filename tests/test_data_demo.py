"""The demo corpus builder: missing-package guidance (fast) and a small real build (slow, needs the packages)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from stmc.conf import CONFIG_DIR
from stmc.data.demo import __main__ as cli
from stmc.data.demo import build, packages

SCALE = 0.05


def test_missing_packages_give_the_install_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(packages, "missing", lambda: ["flite", "sonic-pi-samples"])
    assert cli.main(["build", "--root", str(tmp_path / "corpus")]) == 2
    err = capsys.readouterr().err
    assert "apt-get install -y --no-install-recommends flite sonic-pi-samples" in err
    assert not (tmp_path / "corpus").exists()


def test_refuses_to_overwrite_a_foreign_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(packages, "missing", lambda: [])
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a demo corpus"):
        build.build_corpus(tmp_path, scale=SCALE)


@pytest.mark.corpus  # planning lists the packages' files
def test_plan_keeps_splits_disjoint():
    plan = build.plan(0, build.Sizes().scaled(SCALE))
    speakers = {split: set(names) for split, names in plan.speakers.items()}
    assert speakers["test_real"] == {"June"}
    assert "June" not in speakers["train"] | speakers["val_real"]
    assert not speakers["test_tts"] & (speakers["train"] | speakers["val_tts"])
    assert not speakers["val_tts"] & speakers["train"]
    sources = plan.noise_sources
    for kind in ("music_on_hold", "sonic_pi_music", "sonic_pi_sfx"):
        groups = [set(sources[split][kind]) for split in ("train", "val", "test")]
        assert all(groups) and not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    talkers = [{t.split("-")[1] for t in sources[s]["babble_talkers"]} for s in ("train", "val", "test")]
    everyone = set().union(*speakers.values())
    assert not (talkers[0] & talkers[1] or talkers[0] & talkers[2] or talkers[1] & talkers[2])
    assert not any(t & everyone for t in talkers)


@pytest.mark.slow
@pytest.mark.corpus
def test_small_corpus_builds_reproducibly_and_loads(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert build.build_corpus(first, seed=3, scale=SCALE, workers=2)
    assert not build.build_corpus(first, seed=3, scale=SCALE)  # already built: nothing to do
    assert build.build_corpus(second, seed=3, scale=SCALE, workers=1)
    manifest = json.loads((first / "manifest.json").read_text())
    assert (second / "manifest.json").read_text() == (first / "manifest.json").read_text()
    assert manifest["seed"] == 3 and set(manifest["debian_packages"]) == set(packages.PACKAGES)

    files = manifest["files"]
    on_disk = {str(p.relative_to(first)) for p in first.rglob("*.wav")}
    assert on_disk == set(files)
    for split in ("train", "val_real", "val_tts", "test_real", "test_tts"):
        assert any(meta["split"] == split for meta in files.values())
    for rel, meta in files.items():
        info = sf.info(first / rel)
        assert (info.samplerate, info.channels, info.subtype) == (16_000, 1, "PCM_16")
        assert meta["kind"] == "noise" or meta["speaker"] and meta["text"]
        if meta["kind"] == "noisy":
            noisy, _ = sf.read(first / rel)
            clean, _ = sf.read(first / meta["clean"])
            measured = 10 * np.log10(np.sum(clean**2) / np.sum((noisy - clean) ** 2))
            assert abs(measured - meta["snr"]) < 0.1 and meta["noise_type"]
    train_noise = {meta["noise_type"] for meta in files.values() if meta["kind"] == "noise"}
    assert train_noise == {"pink", "brown", "hum", "clicks", "babble", "music", "sfx", "mixed"}

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    configs = CONFIG_DIR / "data"
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        module = instantiate(compose(config_name="demo", overrides=[f"root={first}", "batch_size=2"]))
    module.setup(None)
    batch = next(iter(module.train_dataloader()))
    assert batch["noisy"].shape == (2, 32_000)
    real = next(iter(module.test_dataloader(split="test_real")))
    assert set(real["split"]) == {"test_real"} and "unknown" not in real["noise_type"]
