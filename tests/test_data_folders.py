"""Folder corpora on tiny generated trees: indexing, bad files, pairing, resampling, the DataModule, configs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from stmc.conf import CONFIG_DIR
from stmc.data.audio import read
from stmc.data.datamodule import SpeechDataModule
from stmc.data.index import pair, pair_key, resolve_folder, scan
from stmc.data.synthetic import SR, demo_like_tree, speechlike, write

CONFIGS = CONFIG_DIR / "data"


def vctk_tree(root: Path) -> None:
    """VCTK-DEMAND layout: 4 speakers in train, 48 kHz, noisy = clean + noise."""
    for split, speakers in (("trainset_28spk", ("p226", "p227", "p228", "p229")), ("testset", ("p232",))):
        for s, spk in enumerate(speakers):
            for u in range(3):
                clean = speechlike(0.6 + 0.2 * u, 100 * s + u, rate=48_000)
                noisy = clean + 0.02 * np.random.default_rng(u).standard_normal(clean.size).astype(np.float32)
                write(root / f"clean_{split}_wav" / f"{spk}_{u:03d}.wav", clean, 48_000)
                write(root / f"noisy_{split}_wav" / f"{spk}_{u:03d}.wav", noisy, 48_000)


def demo_module(root: Path, **overrides) -> SpeechDataModule:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="demo", overrides=[f"root={root}", *[f"{k}={v}" for k, v in overrides.items()]])
    return instantiate(cfg)


# ---------------------------------------------------------------------------------------------- index
def test_bad_files_are_reported_once_and_excluded(tmp_path, caplog):
    folder = tmp_path / "clean"
    write(folder / "good.wav", speechlike(0.5, 0))
    write(folder / "silent.wav", np.zeros(SR, dtype=np.float32))
    write(folder / "empty.wav", np.zeros(0, dtype=np.float32))
    (folder / "broken.wav").write_bytes(b"RIFF not really a wave file")
    (folder / "notes.txt").write_text("not audio, ignored")
    with caplog.at_level(logging.WARNING):
        entries = scan(folder, tmp_path)
    assert [e.rel for e in entries] == ["clean/good.wav"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    for name, reason in (("silent", "silent"), ("empty", "empty"), ("broken", "unreadable")):
        assert f"{name}.wav: {reason}" in warnings[0]


def test_index_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    folder = tmp_path / "clean"
    write(folder / "a.wav", speechlike(0.5, 0))
    write(folder / "b.wav", speechlike(0.5, 1))
    assert len(scan(folder, tmp_path)) == 2
    probed = []
    import stmc.data.index

    original = stmc.data.index.probe
    monkeypatch.setattr(stmc.data.index, "probe", lambda p: probed.append(p) or original(p))
    assert len(scan(folder, tmp_path)) == 2 and probed == []
    write(folder / "b.wav", np.zeros(SR, dtype=np.float32))  # now silent: must be re-probed
    assert [e.rel for e in scan(folder, tmp_path)] == ["clean/a.wav"]
    assert probed == [str(folder / "b.wav")]


def test_resampling_and_downmix(tmp_path, caplog):
    t = np.arange(48_000) / 48_000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    write(tmp_path / "x/stereo48k.wav", np.stack([tone, 0.5 * tone], axis=1).astype(np.float32), 48_000)
    with caplog.at_level(logging.INFO, logger="stmc.data.index"):
        (entry,) = scan(tmp_path / "x", tmp_path)
    notes = " ".join(r.getMessage() for r in caplog.records)
    assert "downmixed to mono" in notes and "48000 Hz" in notes
    assert entry.length == SR
    whole = read(entry.path, entry.info)
    assert whole.shape == (SR,) and whole.dtype == np.float32
    expected = 0.375 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)
    assert np.abs(whole[200:-200] - expected[200:-200]).max() < 0.01
    crop = read(entry.path, entry.info, start=4000, length=3000)  # a crop equals the same span of the whole
    assert np.abs(crop - whole[4000:7000]).max() < 1e-3


def test_pairing_by_name_and_fileid_reports_unmatched(tmp_path, caplog):
    write(tmp_path / "clean/clean_fileid_1.wav", speechlike(0.5, 1))
    write(tmp_path / "clean/clean_fileid_2.wav", speechlike(0.5, 2))
    write(tmp_path / "clean/clean_fileid_3.wav", speechlike(0.5, 3))
    write(tmp_path / "noisy/book_00012_snr5_fileid_1.wav", speechlike(0.5, 4))
    write(tmp_path / "noisy/book_00099_snr0_fileid_2.wav", speechlike(0.7, 5))  # wrong length
    write(tmp_path / "noisy/book_00013_snr9_fileid_7.wav", speechlike(0.5, 6))
    assert pair_key("book_00012_snr5_fileid_1") == "fileid_1" and pair_key("p232_001") == "p232_001"
    with caplog.at_level(logging.WARNING):
        pairs = pair(scan(tmp_path / "clean", tmp_path), scan(tmp_path / "noisy", tmp_path), where="data.test[0]")
    assert [(c.stem, n.stem) for c, n in pairs] == [("clean_fileid_1", "book_00012_snr5_fileid_1")]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "clean files without a noisy pair" in text and "clean/clean_fileid_3.wav" in text
    assert "noisy files without a clean pair" in text and "noisy/book_00013_snr9_fileid_7.wav" in text
    assert "differ in length" in text and "fileid_2" in text


def test_folder_glob_must_match_one(tmp_path):
    (tmp_path / "clean_trainset_28spk_wav").mkdir()
    assert resolve_folder(tmp_path, "clean_trainset_*wav", "data.train.clean").name == "clean_trainset_28spk_wav"
    (tmp_path / "clean_trainset_56spk_wav").mkdir()
    with pytest.raises(ValueError, match="data.train.clean"):
        resolve_folder(tmp_path, "clean_trainset_*wav", "data.train.clean")
    with pytest.raises(FileNotFoundError, match="data.val.clean"):
        resolve_folder(tmp_path, "nothing_here", "data.val.clean")


def test_empty_folder_names_its_key(tmp_path):
    demo_like_tree(tmp_path)
    for wav in (tmp_path / "train/noise").iterdir():
        wav.unlink()
    with pytest.raises(FileNotFoundError, match=r"data\.train\.noise: no usable audio"):
        demo_module(tmp_path).setup("fit")


# ------------------------------------------------------------------------------------------ datamodule
def test_missing_root_names_the_key_and_the_way_to_build(tmp_path):
    module = demo_module(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"data\.root.*make corpus"):
        module.setup("fit")


def test_demo_layout_batches(tmp_path):
    demo_like_tree(tmp_path)
    module = demo_module(tmp_path, batch_size=4, segment_seconds=0.5, eval_batch_size=5)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["noisy"].shape == batch["clean"].shape == (4, SR // 2)
    assert batch["noisy"].dtype == batch["clean"].dtype == torch.float32
    assert batch["length"].dtype == torch.int64 and (batch["length"] == SR // 2).all()
    assert set(batch) == {"noisy", "clean", "length"}
    val = list(module.val_dataloader())
    assert module.val_splits == ["val_real", "val_tts"]
    assert sorted({s for b in val for s in b["split"]}) == ["val_real", "val_tts"]
    for b in val:
        for row, n in enumerate(b["length"].tolist()):
            assert (b["noisy"][row, n:] == 0).all() and (b["clean"][row, n:] == 0).all()
            assert b["clean"][row, :n].abs().sum() > 0
    module.setup("test")
    names = [n for b in module.test_dataloader() for n in b["name"]]
    assert len(names) == 6 and module.test_splits == ["test_real", "test_tts"]
    real = list(module.test_dataloader(split="test_real"))
    assert {s for b in real for s in b["split"]} == {"test_real"}
    assert sorted(t for b in real for t in b["noise_type"]) == ["babble", "music", "sfx"]
    assert all(isinstance(s, float) for b in real for s in b["snr"])
    with pytest.raises(KeyError):
        module.test_dataloader(split="nope")


def test_vctk_layout_holds_out_speakers(tmp_path):
    vctk_tree(tmp_path)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(
            config_name="vctk_demand",
            overrides=[f"root={tmp_path}", "val_fraction=0.25", "segment_seconds=0.5", "batch_size=2"],
        )
    module = instantiate(cfg)
    module.setup(None)
    train_speakers = {p[0].stem[:4] for p in module.train_set.pairs}
    val_speakers = {p[0].stem[:4] for p in module.val_sets[0].pairs}
    assert len(val_speakers) == 1 and not train_speakers & val_speakers
    assert len(train_speakers) == 3
    batch = next(iter(module.train_dataloader()))
    assert batch["noisy"].shape == (2, SR // 2)
    test = next(iter(module.test_dataloader()))
    assert test["split"][0] == "test" and test["noise_type"][0] == "unknown"
    assert test["length"][0] == round(0.6 * SR)  # resampled from 48 kHz
    clean, _ = sf.read(tmp_path / "clean_testset_wav/p232_000.wav")
    noisy, _ = sf.read(tmp_path / "noisy_testset_wav/p232_000.wav")
    native_snr = 10 * np.log10(np.sum(clean**2) / np.sum((noisy - clean) ** 2))
    assert abs(test["snr"][0] - native_snr) < 1.0  # measured from the pair after resampling


def dns_tree(root: Path) -> None:
    """DNS Challenge layout: 4 readers x 2 clean utterances, 4 noise files, one synthetic test pair."""
    for r in range(4):
        for u in range(2):
            write(root / f"datasets/clean/book_0001_chp_01_reader_{r:05d}_{u}.wav", speechlike(1.0, 10 * r + u))
    for k in range(4):
        write(root / f"datasets/noise/noise_{k}.wav", speechlike(1.0, 90 + k))
    base = root / "datasets/test_set/synthetic/no_reverb"
    write(base / "clean/clean_fileid_0.wav", speechlike(0.5, 7))
    write(base / "noisy/book_x_snr3_fileid_0.wav", speechlike(0.5, 8))


def folders_tree(root: Path) -> None:
    """The `folders` layout: train clean + noise, a paired test set."""
    for i in range(4):
        write(root / "train/clean" / f"s{i}.wav", speechlike(1.5, 400 + i))
        write(root / "train/noise" / f"n{i}.wav", speechlike(1.0, 500 + i))
    for i in range(2):
        clean = speechlike(0.5, 600 + i)
        write(root / "test/clean" / f"t{i}.wav", clean)
        write(root / "test/noisy" / f"t{i}.wav", clean + speechlike(0.5, 610 + i))


def test_dns_layout_mixes_and_holds_out_readers(tmp_path):
    dns_tree(tmp_path)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(
            config_name="dns",
            overrides=[f"root={tmp_path}", "val_fraction=0.25", "num_workers=0", "segment_seconds=0.25"],
        )
    module = instantiate(cfg)
    module.setup(None)
    val = module.val_sets[0]
    assert {e.stem.split("_")[5] for e in val.clean} == {e.stem.split("_")[5] for e in val.clean[:1]}
    held_readers = {e.stem.split("_")[5] for e in val.clean}
    assert not held_readers & {e.stem.split("_")[5] for e in module.train_set.clean}
    item = val[0]
    assert item["split"] == "val" and item["length"] == SR
    assert len(list(module.test_dataloader())) == 1


@pytest.mark.parametrize("name", ["demo", "dns", "vctk_demand", "folders"])
def test_every_config_instantiates(name, tmp_path):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        module = instantiate(compose(config_name=name, overrides=[f"root={tmp_path / 'missing'}"]))
    assert isinstance(module, SpeechDataModule)
    with pytest.raises(FileNotFoundError, match="data.root"):
        module.setup("fit")


def test_recordings_alone_are_test_items_without_clean_and_cannot_train(tmp_path):
    from stmc.errors import InputError

    write(tmp_path / "a.wav", speechlike(0.5, 1))
    write(tmp_path / "sub" / "b.wav", speechlike(0.7, 2))
    data = SpeechDataModule(root=str(tmp_path), train=None, val=[], test=[{"split": "calls", "noisy": "."}])
    data.setup("test")
    items = [data.test_sets[0][i] for i in range(len(data.test_sets[0]))]
    assert [item["name"] for item in items] == ["a", "b"] and all("clean" not in item for item in items)
    assert items[0]["split"] == "calls" and items[0]["length"] == 8000
    with pytest.raises(InputError, match="data.train is null: this data config is for evaluation only"):
        data.setup("fit")
    with pytest.raises(InputError, match=r"data.val\[0\]: expected keys clean"):  # validation needs references
        SpeechDataModule(root=str(tmp_path), train=None, val=[{"split": "v", "noisy": "."}])
