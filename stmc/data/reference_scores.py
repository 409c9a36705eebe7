"""Context for every number: per split and noise type, the input SI-SNR and the SI-SNRi of an untrained
Wiener filter and of the oracle bounded complex mask (``stmc.evaluation.references``).

    python -m stmc.data.reference_scores                       # the demo corpus (stmc/conf/data/demo.yaml)
    python -m stmc.data.reference_scores --data vctk_demand root=/data/VCTK-DEMAND --json baselines.json

Arguments after the options are Hydra overrides of the data config (``root=...`` or ``data.root=...``).
A model's SI-SNRi reads against these: near the Wiener column, it learned what stationary-noise
suppression gives for free; the oracle column is the ceiling for a bounded mask on this STFT.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from stmc.conf import CONFIG_DIR
from stmc.data.datamodule import SpeechDataModule
from stmc.evaluation.metrics import si_snr
from stmc.evaluation.references import oracle_mask, wiener

CONFIGS = CONFIG_DIR / "data"
COLUMNS = ("input_si_snr", "wiener_si_snri", "oracle_si_snri")


def load_datamodule(name: str, overrides: list[str]) -> SpeechDataModule:
    """Instantiate ``stmc/conf/data/<name>.yaml`` with Hydra overrides (a ``data.`` prefix is optional)."""
    overrides = [o.removeprefix("data.") for o in overrides]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return instantiate(compose(config_name=name, overrides=overrides))


def evaluate(loaders: list[torch.utils.data.DataLoader]) -> dict[str, dict[str, dict[str, float]]]:
    """``{split: {noise_type or "all": {count, input_si_snr, wiener_si_snri, oracle_si_snri}}}`` (dB means)."""
    scores: dict[tuple[str, str], list[torch.Tensor]] = defaultdict(list)
    for loader in loaders:
        for batch in loader:
            noisy, clean, length = batch["noisy"], batch["clean"], batch["length"]
            before = si_snr(noisy, clean, length)
            rows = torch.stack(
                [
                    before,
                    si_snr(wiener(noisy, length), clean, length) - before,
                    si_snr(oracle_mask(noisy, clean), clean, length) - before,
                ],
                dim=1,
            )
            for row, split, kind in zip(rows, batch["split"], batch["noise_type"], strict=True):
                scores[(split, kind)].append(row)
                scores[(split, "all")].append(row)
    table: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (split, kind), rows in scores.items():  # splits in loader order (validation, then test)
        mean = torch.stack(rows).mean(0)
        table[split][kind] = {"count": len(rows), **{c: round(float(v), 2) for c, v in zip(COLUMNS, mean, strict=True)}}
    return dict(table)


def markdown(table: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| split | noise type | n | input SI-SNR (dB) | Wiener SI-SNRi (dB) | oracle SI-SNRi (dB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for split, kinds in table.items():
        for kind in sorted(kinds, key=lambda k: (k == "all", k)):
            row = kinds[kind]
            label = f"**{kind}**" if kind == "all" else kind
            values = " | ".join(f"{row[c]:.2f}" for c in COLUMNS)
            lines.append(f"| {split} | {label} | {row['count']} | {values} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stmc.data.reference_scores",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", default="demo", help="config name in stmc/conf/data")
    parser.add_argument("--stage", choices=("val", "test", "all"), default="all")
    parser.add_argument("--json", type=Path, help="also write the table here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the data config")
    args = parser.parse_args(argv)
    datamodule = load_datamodule(args.data, args.overrides)
    loaders = []
    if args.stage in ("val", "all"):
        datamodule.setup("validate")
        loaders.append(datamodule.val_dataloader())
    if args.stage in ("test", "all"):
        datamodule.setup("test")
        loaders.append(datamodule.test_dataloader())
    table = evaluate(loaders)
    print(markdown(table))
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
