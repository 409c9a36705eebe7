"""SI-SNRi against look-ahead (the paper's Figure 5) from evaluated sweep runs.

    python train.py experiment=paper_lookahead sweep=lookahead              # 15 look-aheads x 5 seeds
    python evaluate.py checkpoints=[multirun/paper_lookahead] methods=[offline]
    python -m scripts.lookahead_figure outputs/evaluate/<run> --out figures/

Reads every evaluated model from the given ``results.json`` files or folders, groups them by look-ahead (frames)
and draws the mean offline SI-SNRi with error bars of one standard deviation across seeds and each seed's point.
It also reports the marginal gain per added frame at the start and at the end of the range (the paper: +0.177 dB
for the first frame, +0.019 dB for the last) and how much the causal model loses against the longest
look-ahead (the paper: ~6 %). Where the swept look-aheads are not consecutive (the mini preset's 0, 2, 7, 14)
the gain is the average per frame over the first and the last interval, and says so.
Writes ``lookahead.png``, ``lookahead.csv`` (one line per model) and ``lookahead_summary.csv``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.common import evaluated_models, write_csv
from stmc.evaluation import atomic_write
from stmc.stft import HOP, SAMPLE_RATE

PAPER = {"first_frame_gain_db": 0.177, "last_frame_gain_db": 0.019, "causal_loss_percent": 6.0}


def summarize(models: Sequence[dict[str, Any]], width: float | None = None) -> list[dict[str, Any]]:
    """Per look-ahead: number of models, mean and standard deviation of their SI-SNRi, the seeds."""
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for model in models:
        if width is None or abs(model["width"] - width) < 1e-9:
            groups[model["lookahead"]].append(model)
    rows = []
    for lookahead in sorted(groups):
        values = [m["si_snri"] for m in groups[lookahead]]
        rows.append({
            "lookahead": lookahead,
            "lookahead_ms": lookahead * HOP / SAMPLE_RATE * 1000,
            "models": len(values),
            "mean_db": statistics.fmean(values),
            "sd_db": statistics.stdev(values) if len(values) > 1 else None,
            "seeds": " ".join(str(m["seed"]) for m in groups[lookahead]),
        })
    return rows


def gains(summary: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Gain per frame over the first and the last interval of the swept look-aheads; the causal loss."""
    if len(summary) < 2:
        return {}
    def per_frame(a: dict[str, Any], b: dict[str, Any]) -> float:
        return (b["mean_db"] - a["mean_db"]) / (b["lookahead"] - a["lookahead"])

    first, second, before_last, last = summary[0], summary[1], summary[-2], summary[-1]
    out = {
        "first_interval": [first["lookahead"], second["lookahead"]],
        "first_frame_gain_db": per_frame(first, second),
        "last_interval": [before_last["lookahead"], last["lookahead"]],
        "last_frame_gain_db": per_frame(before_last, last),
    }
    if first["lookahead"] == 0 and last["mean_db"]:  # > 0: the causal model is worse by this fraction
        out["causal_loss_percent"] = 100 * (last["mean_db"] - first["mean_db"]) / abs(last["mean_db"])
    return out


def describe(g: dict[str, Any]) -> str:
    """One paragraph comparing the measured gains with the paper's."""
    if not g:
        return "fewer than two look-ahead lengths evaluated: no gains to report"

    def interval(key: str) -> str:
        a, b = g[key]
        return f"frame {b}" if b - a == 1 else f"frames {a}→{b}, per frame"

    text = (f"gain of the first added frame ({interval('first_interval')}): {g['first_frame_gain_db']:+.3f} dB "
            f"(paper {PAPER['first_frame_gain_db']:+.3f}); of the last ({interval('last_interval')}): "
            f"{g['last_frame_gain_db']:+.3f} dB (paper {PAPER['last_frame_gain_db']:+.3f})")
    if "causal_loss_percent" in g:
        loss = g["causal_loss_percent"]
        text += (f"; the causal model is {abs(loss):.1f} % {'below' if loss >= 0 else 'above'} look-ahead "
                 f"{g['last_interval'][1]} (paper: ~{PAPER['causal_loss_percent']:.0f} % below)")
    return text


def draw(path: Path, models: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]], title: str) -> None:
    """Mean ± one standard deviation per look-ahead, each model's point, look-ahead in frames and ms; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    shown = {row["lookahead"] for row in summary}
    points = [m for m in models if m["lookahead"] in shown]
    ax.scatter([m["lookahead"] for m in points], [m["si_snri"] for m in points], s=14, color="0.6", zorder=2,
               label="one model (seed)")
    ax.errorbar([r["lookahead"] for r in summary], [r["mean_db"] for r in summary],
                yerr=[r["sd_db"] or 0.0 for r in summary], marker="o", capsize=4, color="C0", zorder=3,
                label="mean ± 1 SD over seeds")
    ax.set_xlabel(f"look-ahead (frames of {HOP / SAMPLE_RATE * 1000:.0f} ms)")
    ax.set_ylabel("SI-SNRi (dB)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    top = ax.secondary_xaxis("top", functions=(lambda f: f * HOP / SAMPLE_RATE * 1000,
                                               lambda ms: ms * SAMPLE_RATE / 1000 / HOP))
    top.set_xlabel("look-ahead (ms)")
    fig.tight_layout()
    atomic_write(path, writer=lambda tmp: fig.savefig(tmp, dpi=130, format="png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m scripts.lookahead_figure", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results.json files or folders holding them")
    parser.add_argument("--out", type=Path, required=True, help="folder for lookahead.{png,csv}")
    parser.add_argument("--width", type=float, default=1.0, help="only models of this width (the sweep's)")
    parser.add_argument("--title", default="SI-SNRi vs look-ahead", help="figure title")
    args = parser.parse_args(argv)
    models = [m for m in evaluated_models(args.results) if abs(m["width"] - args.width) < 1e-9]
    if not models:
        parser.error(f"no evaluated models of width {args.width} in {args.results}")
    models.sort(key=lambda m: (m["lookahead"], str(m["seed"])))
    summary = summarize(models)
    g = gains(summary)
    draw(args.out / "lookahead.png", models, summary, args.title)
    write_csv(args.out / "lookahead.csv", [{k: m[k] for k in ("lookahead", "seed", "si_snri", "width", "params",
                                                                 "name", "checkpoint")} for m in models])
    write_csv(args.out / "lookahead_summary.csv", summary)
    atomic_write(args.out / "lookahead.json", json.dumps({"summary": summary, "gains": g, "paper": PAPER},
                                                         indent=1) + "\n")
    for row in summary:
        sd = f" ± {row['sd_db']:.2f}" if row["sd_db"] is not None else ""
        print(f"look-ahead {row['lookahead']:>2} ({row['lookahead_ms']:>3.0f} ms): {row['mean_db']:.2f}{sd} dB "
              f"over {row['models']} model(s)")
    print(describe(g))
    return {"summary": summary, "gains": g}


if __name__ == "__main__":
    main()
