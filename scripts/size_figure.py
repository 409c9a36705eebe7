"""Influence of model size on STMC (the paper's Figure 4), over channel-width multipliers of one U-Net.

    python train.py experiment=paper_causal -m model.width=0.25,0.5,0.75,1.0,1.5,2.0   # the trained models
    python evaluate.py checkpoints=[multirun/paper_causal] methods=[offline]
    python -m scripts.size_figure outputs/evaluate/<run> --out figures/

Four panels against the model size (MB of float32 inference weights): A) SI-SNRi of the evaluated models of
each width (offline; STMC and INC give the same output), B) peak-memory gain of STMC over INC, 1 - STMC / INC
(peak = weights + state + the step's largest live intermediates), C) inference time per hop of STMC and INC
(mean over the timed steps), D) STMC speed-up over INC, 1 - time STMC / time INC (the paper: ~81 %, ~74 % at
<= 1.32 MB; its peak-memory gain falls from 16 % to 11 %). Speed and memory come from ``stmc.bench.speed.measure``
(one thread, one hop per call, interleaved rounds) on every width given, trained or not: they do not depend
on the weights. Writes ``size.png``, ``size.csv`` and ``size.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scripts.common import architecture, evaluated_models, weight_bytes, write_csv
from stmc.bench.speed import measure
from stmc.files import atomic_write

WIDTHS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
PAPER = {
    "speed_up_percent": 81.0,
    "speed_up_small_percent": 74.0,
    "small_mb": 1.32,
    "peak_memory_gain_percent": [16.0, 11.0],
}


def measure_widths(
    widths: Sequence[float],
    lookahead: int,
    evaluated: Sequence[dict[str, Any]],
    rounds: int,
    hops: int,
    frames: int = 64,
) -> list[dict[str, Any]]:
    """Per width: size, STMC and INC inference time and peak memory, the gains, and the evaluated SI-SNRi."""
    rows = []
    for width in widths:
        model = architecture(evaluated, lookahead, width)
        by = {row.method: row for row in measure(model, frames, rounds, hops, compile=False)}
        weights = weight_bytes(model)
        stmc_ms, inc_ms = (statistics.fmean(by[m].seconds) * 1e3 for m in ("stmc", "inc"))
        stmc_peak, inc_peak = (weights + by[m].peak_bytes for m in ("stmc", "inc"))
        scores = [m for m in evaluated if m["lookahead"] == lookahead and abs(m["width"] - width) < 1e-9]
        values = [m["si_snri"] for m in scores]
        rows.append(
            {
                "width": width,
                "params": sum(p.numel() for p in model.parameters()),
                "size_mb": weights / 1e6,
                "stmc_ms": stmc_ms,
                "inc_ms": inc_ms,
                "speed_up_percent": 100 * (1 - stmc_ms / inc_ms),
                "stmc_peak_mb": stmc_peak / 1e6,
                "inc_peak_mb": inc_peak / 1e6,
                "peak_gain_percent": 100 * (1 - stmc_peak / inc_peak),
                "peak_gain_mb": (inc_peak - stmc_peak) / 1e6,
                "si_snri_db": statistics.fmean(values) if values else None,
                "si_snri_values": values,
                "models": len(values),
            }
        )
    return rows


def draw(path: Path, rows: Sequence[dict[str, Any]], title: str) -> None:
    """The four panels against model size; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    size = [r["size_mb"] for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(9.0, 6.4), sharex=True)
    (a, b), (c, d) = axes
    trained = [r for r in rows if r["si_snri_db"] is not None]
    for r in trained:
        a.scatter([r["size_mb"]] * len(r["si_snri_values"]), r["si_snri_values"], s=14, color="0.6", zorder=2)
    a.plot([r["size_mb"] for r in trained], [r["si_snri_db"] for r in trained], "o-", color="C0", zorder=3)
    a.set_ylabel("SI-SNRi (dB)")
    a.set_title("A) SI-SNRi (STMC = INC = offline)", fontsize=9)
    b.plot(size, [r["peak_gain_percent"] for r in rows], "o-", color="C2")
    b.set_ylabel("%")
    b.set_title("B) peak-memory gain of STMC over INC", fontsize=9)
    c.plot(size, [r["inc_ms"] for r in rows], "s-", color="C1", label="INC")
    c.plot(size, [r["stmc_ms"] for r in rows], "o-", color="C0", label="STMC")
    c.set_ylabel("ms per hop")
    c.set_title("C) inference time (1 thread)", fontsize=9)
    c.legend(fontsize=8)
    d.plot(size, [r["speed_up_percent"] for r in rows], "o-", color="C3")
    d.set_ylabel("%")
    d.set_title("D) STMC speed-up over INC: 1 − STMC / INC", fontsize=9)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.set_xscale("log")
        ax.ticklabel_format(axis="y", useOffset=False)
    for ax in (c, d):
        ax.set_xlabel("model size (MB, float32 weights)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, writer=lambda tmp: fig.savefig(tmp, dpi=130, format="png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.size_figure", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="*", help="results.json files or folders holding them (panel A)")
    parser.add_argument("--out", type=Path, required=True, help="folder for size.{png,csv,json}")
    parser.add_argument("--widths", type=float, nargs="+", default=list(WIDTHS), help="channel multipliers timed")
    parser.add_argument("--lookahead", type=int, default=0, help="look-ahead of the size sweep's models (frames)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per width")
    parser.add_argument("--hops", type=int, default=10, help="timed hops per method per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--title", default="Influence of model size on STMC", help="figure title")
    args = parser.parse_args(argv)
    if len(args.widths) < 2:
        parser.error("give at least two widths")
    torch.set_num_threads(args.threads)
    evaluated = [m for m in evaluated_models(args.results) if m["tstmc"]]  # the ablation is the speed table's
    widths = sorted(set(args.widths) | {m["width"] for m in evaluated if m["lookahead"] == args.lookahead})
    rows = measure_widths(widths, args.lookahead, evaluated, args.rounds, args.hops)
    draw(args.out / "size.png", rows, args.title)
    write_csv(
        args.out / "size.csv",
        [{**r, "si_snri_values": " ".join(f"{v:.4f}" for v in r["si_snri_values"])} for r in rows],
    )
    atomic_write(
        args.out / "size.json",
        json.dumps({"rows": rows, "paper": PAPER, "lookahead": args.lookahead, "threads": args.threads}, indent=1)
        + "\n",
    )
    for r in rows:
        si = f"{r['si_snri_db']:.2f} dB ({r['models']} model(s))" if r["si_snri_db"] is not None else "not trained"
        print(
            f"width {r['width']:<5g} {r['size_mb']:6.2f} MB: STMC {r['stmc_ms']:.3f} ms vs INC {r['inc_ms']:.3f} ms "
            f"per hop (speed-up {r['speed_up_percent']:.0f} %), peak-memory gain {r['peak_gain_percent']:.0f} %, "
            f"SI-SNRi {si}"
        )
    return rows


if __name__ == "__main__":
    main()
