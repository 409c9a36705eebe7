"""What an evaluation computes and on what: settings, checkpoint discovery, test utterances."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stmc.errors import InputError, MissingFileError
from stmc.evaluation.references import REFERENCE_SYSTEMS
from stmc.export import SUFFIXES as EXPORTED
from stmc.export import format_of
from stmc.model import checkpoint
from stmc.model.stft import HOP
from stmc.stream.engines import METHODS

log = logging.getLogger("stmc.evaluation")


OFFLINE = "offline"
BASELINES = ("mixture", "wiener")
METRICS = ("si_snri", "sdri", "pesq", "stoi", "dnsmos")  # what a user may ask for (si_snr/sdr come with si_snri/sdri)
LABELS = {
    "si_snr": "SI-SNR (dB)",
    "si_snri": "SI-SNRi (dB)",
    "sdr": "SDR (dB)",
    "sdri": "SDRi (dB)",
    "pesq": "PESQ (wb)",
    "stoi": "STOI",
    "dnsmos_ovrl": "DNSMOS OVRL",
    "dnsmos_sig": "DNSMOS SIG",
    "dnsmos_bak": "DNSMOS BAK",
    "dnsmos_p808": "DNSMOS P.808",
    "rtf": "real-time factor",
}
# the scores tables show, in this order (si_snr and sdr, the absolute values, come after where shown)
SCORES = ("si_snri", "sdri", "pesq", "stoi", "dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808", "rtf")
IMPROVEMENTS = ("si_snri", "sdri")  # relative to the mixture: none for the mixture itself
DIGITS = {"stoi": 3, "rtf": 3}  # decimals shown, 2 otherwise
ALL = "all"

Item = Mapping[str, Any]  # one utterance: noisy, clean (1-D float32; none for recordings), name, split, noise_type, snr
Row = dict[str, Any]  # the scores of one signal (method or baseline) on one utterance


@dataclass(frozen=True)
class Settings:
    """What is computed for every utterance: inference ``methods`` (``offline`` and streams), ``metrics``."""

    methods: tuple[str, ...] = (OFFLINE, "stmc")
    metrics: tuple[str, ...] = ("si_snri", "sdri", "pesq", "stoi")
    chunk: int = HOP  # samples per streamed chunk
    graph: str | None = None  # the exported step graph the methods onnx / litert stream (python -m stmc.export)

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(dict.fromkeys(self.methods)))  # once each, in the order given
        object.__setattr__(self, "metrics", tuple(dict.fromkeys(self.metrics)))
        known = {*METHODS, *EXPORTED, *REFERENCE_SYSTEMS}
        unknown = [m for m in self.methods if m != OFFLINE and m not in known]
        if unknown or OFFLINE not in self.methods:
            raise InputError(
                f"methods={list(self.methods)}: {OFFLINE} (the reference of every stream) and any of "
                f"{', '.join(METHODS)}, an exported graph ({' or '.join(EXPORTED)}, with graph=<file>), and "
                f"reference systems: {', '.join(REFERENCE_SYSTEMS)}"
            )
        self.check_graph()
        for name in self.references:
            REFERENCE_SYSTEMS[name].check_available(name)
        bad = [m for m in self.metrics if m not in METRICS]
        if bad:
            raise InputError(
                f"metrics={list(self.metrics)}: {', '.join(bad)} unknown; choose from {', '.join(METRICS)}"
            )
        if "si_snri" not in self.metrics:
            metrics = ",".join(["si_snri", *self.metrics])
            raise InputError(f"metrics={list(self.metrics)}: si_snri is always scored; use metrics=[{metrics}]")
        if "dnsmos" in self.metrics and importlib.util.find_spec("speechmos") is None:
            raise InputError("metrics: dnsmos needs the speechmos package (its DNSMOS models): make venv")
        if self.chunk < 1:
            raise InputError(f"chunk must be at least one sample, got {self.chunk}")

    def check_graph(self) -> None:
        """One-line errors unless the exported methods and ``graph`` go together: one such method, its format's file."""
        exported = [m for m in self.methods if m in EXPORTED]
        if not exported:
            if self.graph is not None:
                raise InputError(f"graph={self.graph} is streamed by methods=[...,onnx] or [...,litert]; add one")
            return
        if len(exported) > 1 or self.graph is None:
            raise InputError(
                f"methods {', '.join(exported)} stream one exported graph: keep one and give graph=<file"
                f"{EXPORTED[exported[0]]}> (python -m stmc.export)"
            )
        fmt = format_of(self.graph)  # a missing file or another kind of file: its own one-line error
        if fmt.name != exported[0]:
            raise InputError(f"graph={self.graph} is a {fmt.name} graph; use methods=[...,{fmt.name}] for it")

    @property
    def streams(self) -> tuple[str, ...]:
        """Our model streamed by each engine or by its exported graph (compared with offline)."""
        return tuple(m for m in self.methods if m in METHODS or m in EXPORTED)

    @property
    def references(self) -> tuple[str, ...]:
        """Reference systems run once per utterance, like the baselines."""
        return tuple(m for m in self.methods if m in REFERENCE_SYSTEMS)


def find_checkpoints(paths: Iterable[str | Path], select: str = "best", newest: bool = False) -> list[Path]:
    """Checkpoint files from files and run folders.

    A folder stands for every training run below it (a folder holding ``checkpoints/*.ckpt``), each giving its
    best checkpoint (``best*.ckpt``, the newest if several) or, for ``select="last"`` or when it has no best
    one, ``last.ckpt``. ``newest`` keeps only the most recently written run of each folder (the quickstart's).
    """
    if select not in ("best", "last"):
        raise InputError(f"select={select!r}: choose best or last")
    found: list[Path] = []
    for entry in paths:
        path = Path(entry).expanduser()
        if path.is_file():
            found.append(path)
            continue
        if not path.is_dir():
            raise MissingFileError(f"checkpoints: {path} is neither a checkpoint file nor a folder")
        runs = sorted({ckpt.parent.parent for ckpt in path.rglob("checkpoints/*.ckpt")}, key=natural_key)
        picks = [pick for run in runs if (pick := _pick(run / "checkpoints", select)) is not None]
        if newest and picks:
            picks = [max(picks, key=lambda p: p.stat().st_mtime)]
        if not picks:
            raise MissingFileError(f"checkpoints: no checkpoints/*.ckpt under {path}")
        found.extend(picks)
    if not found:
        raise InputError("checkpoints: give at least one checkpoint file or run folder")
    return found


def natural_key(path: str | Path) -> list[str | float]:
    """Sort key that orders numbers by value: ``lookahead=2`` before ``lookahead=14``, ``0.25`` before ``0.5``."""
    parts = re.split(r"(\d+(?:\.\d+)?)", str(path))
    return [float(part) if i % 2 else part for i, part in enumerate(parts)]


def _pick(folder: Path, select: str) -> Path | None:
    best = sorted(folder.glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
    last = folder / "last.ckpt"
    if select == "last" and last.is_file():
        return last
    if best:
        return best[-1]
    if select == "best" and last.is_file():
        log.warning("select=best: %s has no best checkpoint (no validation ran); using last.ckpt", folder.parent)
    return last if last.is_file() else None


def checkpoint_info(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    """What a results file records about a checkpoint: architecture, look-ahead, width, seed, step, size."""
    ckpt = checkpoint.read(path)
    meta = ckpt.get(checkpoint.KEY, {})
    config = dict(meta.get("model_config", {}))
    run = meta.get("run_config") or {}
    params = sum(p.numel() for p in model.parameters())
    return {
        "checkpoint": str(path),
        "model_config": config,
        "lookahead": model.receptive_field[1],
        "width": config.get("width", 1.0),
        "seed": run.get("seed"),
        "step": ckpt.get("global_step"),
        "params": params,
        "size_mb": params * 4 / 1e6,
        "receptive_field": list(model.receptive_field),
    }


def model_names(paths: Sequence[Path]) -> list[str]:
    """Short distinct names: each run folder (or loose checkpoint file) relative to what they all share."""
    keys = [(p.parent.parent if p.parent.name == "checkpoints" else p.with_suffix("")).resolve() for p in paths]
    if len(set(keys)) < len(keys):
        keys = [p.resolve() for p in paths]
    if len(keys) == 1:
        return [keys[0].name]
    common = Path(os.path.commonpath([str(k) for k in keys]))
    return [str(k.relative_to(common)) for k in keys]


def spread(count: int, keep: int | None) -> list[int]:
    """``keep`` indices spread evenly over ``range(count)`` (all of them when ``keep`` is None or larger)."""
    if keep is None or keep >= count:
        return list(range(count))
    return sorted({round(i * (count - 1) / max(keep - 1, 1)) for i in range(keep)})


def load_items(
    datamodule: Any, stage: str = "test", splits: Sequence[str] | None = None, max_items: int | None = None
) -> list[Item]:
    """The whole utterances of the data module's test (or validation) splits, ``max_items`` per split at most.

    A subset is spread evenly over each split's utterances (they are ordered by length), not its shortest.
    """
    if stage not in ("test", "val"):
        raise InputError(f"stage={stage!r}: choose test or val")
    datamodule.setup("test" if stage == "test" else "validate")
    sets = datamodule.test_sets if stage == "test" else datamodule.val_sets
    names = [getattr(s, "split", str(i)) for i, s in enumerate(sets)]
    if splits:
        unknown = [s for s in splits if s not in names]
        if unknown:
            raise InputError(f"splits={list(splits)}: unknown {unknown}; this data has {names}")
        sets = [s for s, name in zip(sets, names, strict=True) if name in splits]
    items = []
    for dataset in sets:
        for index in spread(len(dataset), max_items):
            item = dict(dataset[index])
            length = int(item.get("length", len(item["noisy"])))
            item["noisy"] = item["noisy"][:length].float()
            if "clean" in item:  # recordings without a clean reference have none
                item["clean"] = item["clean"][:length].float()
            items.append(item)
    if not items:
        raise InputError(f"no {stage} utterances in the selected splits {list(splits or names)}")
    return items
