"""``SpeechDataModule``: one LightningDataModule for the demo corpus, DNS Challenge, VCTK-DEMAND and folders.

A corpus is described by folders under ``root`` (see ``stmc/conf/data/*.yaml``):

- ``train``: ``{clean, noise}`` (mixed on the fly) or ``{clean, noisy}`` (paired by file name);
- ``val`` / ``test``: lists of ``{split, clean, noisy}`` or ``{split, clean, noise}`` (fixed mixtures,
  seeded); ``val: null`` holds out about ``val_fraction`` of the training speakers (``speaker_pattern``,
  a regex whose first group is the speaker) and noise files, at most ``max_val_items`` utterances;
- ``metadata``: optional JSON (the demo's ``manifest.json``) whose ``files`` map relative paths of noisy
  or noise files to ``{"noise_type": ...}``, used to report results per noise type.

Batches are dicts: ``noisy`` and ``clean`` float32 ``[B, N]``, ``length`` int64 ``[B]`` (valid samples,
zeros after); validation and test batches also carry lists ``name``, ``split``, ``noise_type``, ``snr``.
Training batches are random crops of ``segment_seconds`` (so ``length == N``); validation and test
batches hold whole utterances. ``test_dataloader(split="test_real")`` gives one test split only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from stmc.data.datasets import EpochSampler, MixingDataset, PairedDataset, RecordingsDataset, collate
from stmc.data.index import Entry, hold_out, pair, resolve_folder, scan, speaker_of
from stmc.errors import InputError, MissingFileError
from stmc.model.stft import SAMPLE_RATE

log = logging.getLogger(__name__)


def original_cwd() -> Path:
    """The directory the program was started from, also under Hydra (which may change the cwd)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.cwd)
    except ImportError:
        pass
    return Path.cwd()


def _plain(value: object) -> object:
    """OmegaConf containers (Hydra instantiation without ``_convert_``) as plain lists and dicts."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


def _check_spec(spec: Mapping[str, str], key: str, named: bool = False, recordings: bool = False) -> None:
    """A folder spec needs ``clean`` and exactly one of ``noise``/``noisy`` (and ``split`` if ``named``); with
    ``recordings`` (test splits), ``noisy`` alone is noisy recordings without a clean reference."""
    if recordings and set(spec) == {"split", "noisy"}:
        return
    needed = ["clean"] + (["split"] if named else [])
    missing = [k for k in needed if k not in spec]
    if missing or ("noise" in spec) == ("noisy" in spec):
        alone = " (or noisy alone: recordings without a clean reference)" if recordings else ""
        raise InputError(
            f"{key}: expected keys clean, one of noise (mix on the fly) or noisy (paired){alone}"
            f"{', split' if named else ''}; got {sorted(spec)}"
        )


class ResumableLoader(DataLoader):
    """The training loader: its :class:`EpochSampler` continues an interrupted epoch from the trainer's restored
    progress (a distributed run restarts that epoch, see ``SpeechDataModule._training_position``), so the loader has
    no state of its own to save. The (empty) ``state_dict`` / ``load_state_dict`` pair tells Lightning so, instead
    of its warning about an "unreliable" resume, and keeps checkpoints of one-process and distributed runs
    resumable by each other."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


class SpeechDataModule(LightningDataModule):
    """Training crops mixed on the fly or cut from pairs; whole utterances for validation and test."""

    def __init__(
        self,
        root: str,
        train: Mapping[str, str] | None,
        val: Sequence[Mapping[str, str]] | None = None,
        test: Sequence[Mapping[str, str]] = (),
        metadata: str | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        segment_seconds: float = 2.0,
        epoch_items: int | None = None,
        snr_range: Sequence[float] = (-5.0, 15.0),
        level_range_db: Sequence[float] = (-35.0, -15.0),
        val_fraction: float = 0.05,
        max_val_items: int = 200,
        speaker_pattern: str | None = None,
        seed: int = 0,
        source_hint: str = "",
    ) -> None:
        super().__init__()
        train, val, test = _plain(train), _plain(val), _plain(test)
        snr_range, level_range_db = _plain(snr_range), _plain(level_range_db)
        self.save_hyperparameters()  # plain containers only, so checkpoints load with weights_only=True
        if train is not None:
            _check_spec(train, "data.train")
        for i, spec in enumerate(val or ()):
            _check_spec(spec, f"data.val[{i}]", named=True)
        for i, spec in enumerate(test):
            _check_spec(spec, f"data.test[{i}]", named=True, recordings=True)
        self.root_setting = str(root)
        self.train_spec, self.val_specs, self.test_specs = dict(train) if train is not None else None, val, list(test)
        self.metadata_file, self.source_hint = metadata, source_hint
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.segment = round(segment_seconds * SAMPLE_RATE)
        self.epoch_items, self.seed = epoch_items, seed
        self.snr_range, self.level_range_db = tuple(snr_range), tuple(level_range_db)
        self.val_fraction, self.max_val_items = val_fraction, max_val_items
        self.speaker = speaker_of(speaker_pattern)
        self._scans: dict[Path, list[Entry]] = {}
        self._noise_types: dict[str, str] | None = None
        self.train_set: Dataset | None = None
        self.val_sets: list[Dataset] = []
        self.test_sets: list[Dataset] = []

    # -- locating data --
    @property
    def root(self) -> Path:
        """``data.root`` as an absolute path (relative ones are taken from the original cwd)."""
        root = Path(self.root_setting).expanduser()
        root = root if root.is_absolute() else original_cwd() / root
        if not root.is_dir():
            hint = self.source_hint or "Point data.root at the folder holding the corpus."
            raise MissingFileError(f"data.root: {root} does not exist (data.root={self.root_setting!r}). {hint}")
        return root

    def _entries(self, pattern: str, key: str) -> list[Entry]:
        folder = resolve_folder(self.root, pattern, key)
        if folder not in self._scans:
            self._scans[folder] = scan(folder, self.root)
        if not self._scans[folder]:
            raise MissingFileError(f"{key}: no usable audio files in {folder}")
        return self._scans[folder]

    @property
    def noise_types(self) -> dict[str, str]:
        """Relative path -> noise type, from the ``metadata`` JSON (empty without one)."""
        if self._noise_types is None:
            self._noise_types = {}
            if self.metadata_file:
                path = self.root / self.metadata_file
                if not path.is_file():
                    raise MissingFileError(f"data.metadata: {path} does not exist")
                files = json.loads(path.read_text()).get("files", {})
                self._noise_types = {rel: meta["noise_type"] for rel, meta in files.items() if "noise_type" in meta}
        return self._noise_types

    # -- datasets --
    def _dataset(self, spec: Mapping[str, str], key: str, split: str, training: bool) -> Dataset:
        """One dataset from ``{clean, noise}``, ``{clean, noisy}`` or (evaluation) ``{noisy}`` folders; ``key``
        names it in errors."""
        if "clean" not in spec:
            return RecordingsDataset(
                self._entries(spec["noisy"], f"{key}.noisy"), split=split, noise_types=self.noise_types
            )
        clean = self._entries(spec["clean"], f"{key}.clean")
        segment = self.segment if training else None
        items = self.epoch_items if training else None
        if "noise" in spec:
            noise = self._entries(spec["noise"], f"{key}.noise")
            return self._mixing(clean, noise, split, segment, items)
        pairs = pair(clean, self._entries(spec["noisy"], f"{key}.noisy"), where=key)
        return PairedDataset(
            pairs, split=split, seed=self.seed, segment=segment, items=items, noise_types=self.noise_types
        )

    def _mixing(
        self, clean: list[Entry], noise: list[Entry], split: str, segment: int | None, items: int | None
    ) -> MixingDataset:
        return MixingDataset(
            clean,
            noise,
            split=split,
            seed=self.seed,
            snr_range=self.snr_range,
            level_range_db=self.level_range_db,
            segment=segment,
            items=items,
            noise_types=self.noise_types,
        )

    def _train_and_held_out(self) -> tuple[Dataset, list[Dataset]]:
        """Training set, plus a validation set held out from it by speaker when ``val`` is null."""
        spec, key = self.train_spec, "data.train"
        if spec is None:
            raise InputError("data.train is null: this data config is for evaluation only (evaluate.py)")
        if self.val_specs is not None:
            return self._dataset(spec, key, "train", training=True), [
                self._dataset(v, f"data.val[{i}]", v["split"], training=False) for i, v in enumerate(self.val_specs)
            ]
        clean = self._entries(spec["clean"], f"{key}.clean")
        kept, held = hold_out(clean, self.val_fraction, self.seed, lambda e: self.speaker(e.rel))
        held = held[: self.max_val_items]
        if "noise" in spec:
            noise = self._entries(spec["noise"], f"{key}.noise")
            noise_kept, noise_held = hold_out(noise, self.val_fraction, self.seed, lambda e: e.rel)
            return (
                self._mixing(kept, noise_kept, "train", self.segment, self.epoch_items),
                [self._mixing(held, noise_held, "val", None, None)],
            )
        pairs = pair(clean, self._entries(spec["noisy"], f"{key}.noisy"), where=key)
        held_rels = {e.rel for e in held}
        kept_pairs = [p for p in pairs if p[0].rel not in held_rels]
        held_pairs = [p for p in pairs if p[0].rel in held_rels]
        common = {"seed": self.seed, "noise_types": self.noise_types}
        return (
            PairedDataset(kept_pairs, split="train", segment=self.segment, items=self.epoch_items, **common),
            [PairedDataset(held_pairs, split="val", **common)],
        )

    def setup(self, stage: str | None = None) -> None:
        """Index the folders needed for ``stage`` ("fit", "validate", "test" or None for all)."""
        if stage in (None, "fit", "validate") and self.train_set is None:
            self.train_set, self.val_sets = self._train_and_held_out()
            for dataset in self.val_sets:
                log.info("%s: %d utterances", dataset.split, len(dataset))
        if stage in (None, "test") and not self.test_sets:
            self.test_sets = [
                self._dataset(t, f"data.test[{i}]", t["split"], training=False) for i, t in enumerate(self.test_specs)
            ]

    # -- loaders --
    @property
    def val_splits(self) -> list[str]:
        """Names of the validation splits (as they appear in batches' ``split``)."""
        return [v["split"] for v in self.val_specs] if self.val_specs is not None else ["val"]

    @property
    def test_splits(self) -> list[str]:
        """Names of the test splits, e.g. ``["test_real", "test_tts"]`` for the demo corpus."""
        return [t["split"] for t in self.test_specs]

    def train_dataloader(self) -> DataLoader:
        self._require(self.train_set, "fit")
        return ResumableLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=EpochSampler(len(self.train_set), self._training_position),
            generator=torch.Generator(),  # see _eval_loader
            collate_fn=collate,
            num_workers=self.num_workers,
            drop_last=True,
            persistent_workers=self.num_workers > 0,
        )

    def _training_position(self) -> tuple[int, int] | None:
        """``(epoch, training items already used in it)`` from the attached trainer's restored progress (see
        :class:`EpochSampler`), None without a trainer; a distributed run, whose sampler Lightning wraps and pads,
        restarts an interrupted epoch."""
        trainer = self.trainer
        if trainer is None:
            return None
        # Lightning restores the loops' progress before the fit loop first iterates its loader (Trainer._run:
        # restore_training_state, then _run_stage); tests/test_train.py's bit-for-bit resume test guards it.
        fit = trainer.fit_loop
        done = fit.epoch_loop.batch_progress.current.processed if trainer.world_size == 1 else 0
        return fit.epoch_progress.current.processed, done * self.batch_size

    def val_dataloader(self) -> DataLoader:
        self._require(self.val_sets, "fit")
        return self._eval_loader(self.val_sets)

    def test_dataloader(self, split: str | None = None) -> DataLoader:
        """All test utterances, or only those of ``split`` (one of ``test_splits``)."""
        self._require(self.test_sets, "test")
        sets = self.test_sets
        if split is not None:
            if split not in self.test_splits:
                raise KeyError(f"unknown test split {split!r}; have {self.test_splits}")
            sets = [self.test_sets[self.test_splits.index(split)]]
        return self._eval_loader(sets)

    def _eval_loader(self, sets: list[Dataset]) -> DataLoader:
        return DataLoader(
            ConcatDataset(sets),
            batch_size=self.eval_batch_size,
            shuffle=False,
            # Each pass over a loader draws its workers' base seed from this generator: from the global one, a
            # resumed run (which iterates its loaders more often) would leave training with another RNG state.
            generator=torch.Generator(),
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    @staticmethod
    def _require(value: object, stage: str) -> None:
        if not value:
            raise RuntimeError(f"call setup({stage!r}) (or let Lightning do it) before asking for loaders")
