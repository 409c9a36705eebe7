"""What the figure and table scripts share: reading the evaluated models out of ``results.json`` files."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from stmc.bench.speed import with_trained_slopes
from stmc.evaluation.settings import ALL, OFFLINE
from stmc.files import atomic_write
from stmc.model.unet import UNet


def results_files(paths: Iterable[str | Path]) -> list[Path]:
    """``results.json`` files: the given files, and every one below the given folders (sorted)."""
    found: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(path.rglob("results.json")))
        else:
            raise FileNotFoundError(f"{path}: no such results.json or folder")
    return found


def evaluated_models(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """One record per evaluated checkpoint in the results files: look-ahead, width, seed, size, SI-SNRi.

    ``si_snri`` is the offline mean over all utterances (streams equal offline; their own means are in the file).
    A checkpoint evaluated in several files counts once (the last file read wins); evaluations of recordings
    without clean references have no SI-SNRi and are left out.
    """
    records: dict[str, dict[str, Any]] = {}
    for file in results_files(paths):
        document = json.loads(file.read_text())
        if document.get("headline", "si_snri") != "si_snri":
            print(f"note: {file} scores recordings without clean references (no SI-SNRi): left out", file=sys.stderr)
            continue
        for model in document.get("models", []):
            overall = model["groups"][ALL]
            records[model["checkpoint"]] = {
                "name": model["name"],
                "checkpoint": model["checkpoint"],
                "lookahead": int(model["lookahead"]),
                "width": float(model["width"]),
                "seed": model.get("seed"),
                "params": int(model["params"]),
                "model_config": model.get("model_config", {}),
                "tstmc": bool(model.get("model_config", {}).get("tstmc", True)),  # False: the ablation
                "si_snri": float(overall[OFFLINE]["si_snri"]["mean"]),
                "results": str(file),
            }
    return list(records.values())


def mean_si_snri(
    models: Sequence[dict[str, Any]], lookahead: int, width: float, tstmc: bool = True
) -> tuple[float | None, int]:
    """Mean offline SI-SNRi of the evaluated models with this look-ahead, width and decoder (tSTMC or the
    ablation's), and how many there are."""
    chosen = [
        m["si_snri"]
        for m in models
        if m["lookahead"] == lookahead and abs(m["width"] - width) < 1e-9 and m.get("tstmc", True) == tstmc
    ]
    return (statistics.fmean(chosen) if chosen else None), len(chosen)


def weight_bytes(model: UNet) -> int:
    """Bytes of the inference weights the streams run (BatchNorm folded, float32): the model size."""
    total = 0
    for layer in model.frozen():
        tensors = [layer.matrix, layer.bias] + ([layer.prelu] if layer.prelu is not None else [])
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rows of dicts as CSV (columns from the first row; floats with 6 significant digits), atomically."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else "" if v is None else v) for k, v in row.items()})
    atomic_write(path, out.getvalue())


def architecture(models: Sequence[dict[str, Any]], lookahead: int, width: float) -> UNet:
    """The U-Net to time, at this look-ahead and width: the architecture of the evaluated models (those with this
    look-ahead and width first), else the default depth-7 model. Weights are seeded random, PReLU slopes as trained
    ones are (:func:`stmc.bench.speed.with_trained_slopes`): speed and memory depend on no weight's value."""
    config = base_config(models, lookahead, width)
    torch.manual_seed(0)
    return with_trained_slopes(UNet(**{**config, "lookahead": lookahead, "width": width}).eval())


def base_config(models: Sequence[dict[str, Any]], lookahead: int = 0, width: float = 1.0) -> dict[str, Any]:
    """The model config of the evaluated model closest to this look-ahead and width ({} when there is none)."""
    known = [m for m in models if m.get("model_config")]
    if not known:
        return {}
    best = min(known, key=lambda m: (m["lookahead"] != lookahead, abs(m["width"] - width)))
    return dict(best["model_config"])


def depth_of(models: Sequence[dict[str, Any]]) -> int:
    """Depth of the evaluated models' U-Net (the default 7 when there are none): non-causal = 2 x depth frames."""
    return int(base_config(models).get("depth", 7))
