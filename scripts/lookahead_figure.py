"""SI-SNRi against look-ahead (the paper's Figure 5) from evaluated sweep runs.

    python train.py experiment=paper_lookahead sweep=lookahead              # 15 look-aheads x 5 seeds
    python evaluate.py checkpoints=[multirun/paper_lookahead] methods=[offline]
    python -m scripts.lookahead_figure outputs/evaluate/<run> --out figures/

Reads every evaluated model from the given ``results.json`` files or folders, groups them by look-ahead (frames)
and draws the mean offline SI-SNRi with error bars of one standard deviation across seeds and each seed's point.
It also reports the marginal gain per added frame at the start and at the end of the range (the paper: +0.177 dB
for the first frame, +0.019 dB for the last) and how much the causal model loses against the longest
look-ahead (the paper: ~6 %). Where the swept look-aheads are not consecutive (e.g. 0, 2, 7, 14)
the gain is the average per frame over the first and the last interval, and says so.

Where the evaluation wrote ``utterances.csv`` next to ``results.json``, every difference between two look-aheads
is also reported **paired over the same test utterances**, with a 95 % confidence interval that holds both
sources of spread: training (the variance of the per-seed mean SI-SNRi within each look-ahead, s_a² / n_a +
s_b² / n_b) and the test set (the variance over utterances of the seed-averaged per-utterance difference / n);
Student t with the Welch degrees of freedom of the seed part. It says whether the difference exceeds twice the
larger seed SD of its two points (the criterion of a resolved effect).
Every difference is also reported **paired by seed**, the analysis the sweep's design is built for: the same seed
gives every look-ahead the same data order and the same initial values of every weight the models share (common
random numbers, :meth:`stmc.model.layers.TemporalLayer.initialize`), so the per-seed differences cancel most of
the seed-to-seed spread; their mean gets a Student t 95 % interval over seeds (and so does the causal loss in %,
computed per seed).
Writes ``lookahead.png``, ``lookahead.csv`` (one line per model), ``lookahead_summary.csv`` and
``lookahead.json`` (summary, gains, both kinds of paired differences, the paper's numbers).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scipy import stats

from scripts.common import evaluated_models, write_csv
from stmc.files import atomic_write
from stmc.model.stft import HOP, SAMPLE_RATE
from stmc.model.unet import architecture

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
        rows.append(
            {
                "lookahead": lookahead,
                "lookahead_ms": lookahead * HOP / SAMPLE_RATE * 1000,
                "models": len(values),
                "mean_db": statistics.fmean(values),
                "sd_db": statistics.stdev(values) if len(values) > 1 else None,
                "seeds": " ".join(str(m["seed"]) for m in groups[lookahead]),
            }
        )
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


def utterance_scores(models: Sequence[dict[str, Any]]) -> dict[str, dict[tuple[str, str], float]]:
    """Checkpoint -> {(split, utterance): offline SI-SNRi}, from the ``utterances.csv`` beside each results file
    (models whose file has none are left out)."""
    import csv

    by_file: dict[str, dict[str, dict[tuple[str, str], float]]] = {}
    scores = {}
    for model in models:
        table = Path(model["results"]).with_name("utterances.csv")
        if not table.is_file():
            continue
        if str(table) not in by_file:
            per_model: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
            with open(table, newline="") as handle:
                for row in csv.DictReader(handle):
                    if row["signal"] == "offline" and row["si_snri"] not in ("", "nan"):
                        per_model[row["model"]][(row["split"], row["utterance"])] = float(row["si_snri"])
            by_file[str(table)] = per_model
        if model["name"] in by_file[str(table)]:
            scores[model["checkpoint"]] = by_file[str(table)][model["name"]]
    return scores


def paired_difference(
    models: Sequence[dict[str, Any]], scores: dict[str, dict[tuple[str, str], float]], a: int, b: int
) -> dict[str, Any] | None:
    """SI-SNRi(look-ahead b) - SI-SNRi(look-ahead a), paired over the utterances every model of both was scored on,
    with its 95 % CI (seed and utterance variance, see the module docstring) and the resolved-effect criterion."""
    arms = [[m for m in models if m["lookahead"] == lookahead and m["checkpoint"] in scores] for lookahead in (a, b)]
    if not all(arms):
        return None
    keys = sorted(set.intersection(*(set(scores[m["checkpoint"]]) for arm in arms for m in arm)))
    if len(keys) < 2:
        return None
    per_seed = [[statistics.fmean(scores[m["checkpoint"]][k] for k in keys) for m in arm] for arm in arms]
    per_utt = [[statistics.fmean(scores[m["checkpoint"]][k] for m in arm) for k in keys] for arm in arms]
    diffs = [y - x for x, y in zip(*per_utt, strict=True)]
    diff = statistics.fmean(diffs)
    sds = [statistics.stdev(v) if len(v) > 1 else None for v in per_seed]
    seed_parts = [sd**2 / len(v) for sd, v in zip(sds, per_seed, strict=True) if sd is not None]
    utt_part = statistics.variance(diffs) / len(diffs)
    if len(seed_parts) == 2 and sum(seed_parts) > 0:  # Welch-Satterthwaite
        df = sum(seed_parts) ** 2 / sum(p**2 / (len(v) - 1) for p, v in zip(seed_parts, per_seed, strict=True))
    else:
        df = len(diffs) - 1
    half = float(stats.t.ppf(0.975, df)) * math.sqrt(sum(seed_parts) + utt_part)
    largest_sd = max((sd for sd in sds if sd is not None), default=None)
    return {
        "from": a,
        "to": b,
        "diff_db": diff,
        "ci95_db": [diff - half, diff + half],
        "per_frame_db": diff / (b - a),
        "per_frame_ci95_db": [(diff - half) / (b - a), (diff + half) / (b - a)],
        "utterances": len(keys),
        "seeds": [len(v) for v in per_seed],
        "seed_sd_db": sds,
        "resolved": largest_sd is not None and abs(diff) > 2 * largest_sd,
        "twice_seed_sd_db": None if largest_sd is None else 2 * largest_sd,
    }


def paired_differences(models: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Paired differences from the causal model to every look-ahead, and between consecutive swept look-aheads."""
    scores = utterance_scores(models)
    swept = [row["lookahead"] for row in summary]
    pairs = [(swept[0], b) for b in swept[1:]]
    pairs += [(a, b) for a, b in zip(swept[1:], swept[2:], strict=False)]
    found = [paired_difference(models, scores, a, b) for a, b in pairs]
    return [d for d in found if d is not None]


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean, and the Student t 95 % interval of the mean, of at least two values."""
    mean = statistics.fmean(values)
    half = float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def seed_pairs(models: Sequence[dict[str, Any]], a: int, b: int) -> list[tuple[float, float]]:
    """``(SI-SNRi at a, SI-SNRi at b)`` of every seed evaluated at both look-aheads, in seed order."""
    at = [{str(m["seed"]): m["si_snri"] for m in models if m["lookahead"] == lookahead} for lookahead in (a, b)]
    return [(at[0][seed], at[1][seed]) for seed in sorted(set(at[0]) & set(at[1]))]


def seed_paired_difference(models: Sequence[dict[str, Any]], a: int, b: int) -> dict[str, Any] | None:
    """SI-SNRi(look-ahead b) - SI-SNRi(look-ahead a) paired by seed: the mean per-seed difference and its t interval
    over seeds (None with fewer than two seeds at both)."""
    pairs = seed_pairs(models, a, b)
    if len(pairs) < 2:
        return None
    diffs = [y - x for x, y in pairs]
    mean, low, high = t_interval(diffs)
    return {
        "from": a,
        "to": b,
        "seeds": len(diffs),
        "diffs_db": diffs,
        "diff_db": mean,
        "sd_db": statistics.stdev(diffs),
        "ci95_db": [low, high],
        "per_frame_db": mean / (b - a),
        "per_frame_ci95_db": [low / (b - a), high / (b - a)],
        "above_zero": low > 0,
    }


def seed_paired(models: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Differences paired by seed (the causal model to every look-ahead, and consecutive look-aheads) and the
    causal loss in % of the longest look-ahead, computed per seed, with its t interval."""
    swept = [row["lookahead"] for row in summary]
    pairs = [(swept[0], b) for b in swept[1:]] + [(a, b) for a, b in zip(swept[1:], swept[2:], strict=False)]
    found = [seed_paired_difference(models, a, b) for a, b in pairs]
    out: dict[str, Any] = {"differences": [d for d in found if d is not None]}
    if len(swept) > 1 and swept[0] == 0:
        losses = [100 * (y - x) / abs(y) for x, y in seed_pairs(models, 0, swept[-1]) if y]
        if len(losses) > 1:
            mean, low, high = t_interval(losses)
            out["causal_loss_percent"] = {"to": swept[-1], "seeds": len(losses), "mean": mean, "ci95": [low, high]}
    return out


def describe_seed_paired(result: dict[str, Any]) -> str:
    """One line per seed-paired difference, then the causal loss."""
    lines = []
    for d in result["differences"]:
        lo, hi = d["ci95_db"]
        verdict = "above zero" if d["above_zero"] else "includes zero" if lo <= 0 <= hi else "below zero"
        lines.append(
            f"look-ahead {d['from']} → {d['to']}, paired by seed: {d['diff_db']:+.2f} dB [{lo:+.2f}, {hi:+.2f}] "
            f"over {d['seeds']} seeds (SD of the differences {d['sd_db']:.2f} dB; {verdict})"
        )
    loss = result.get("causal_loss_percent")
    if loss:
        lo, hi = loss["ci95"]
        lines.append(
            f"causal loss against look-ahead {loss['to']}, per seed: {loss['mean']:.1f} % [{lo:.1f}, {hi:.1f}] "
            f"(paper: ~{PAPER['causal_loss_percent']:.0f} %)"
        )
    return "\n".join(lines)


def describe_paired(paired: Sequence[dict[str, Any]]) -> str:
    """One line per paired difference: value, CI, and whether it stands out from the seed spread."""
    lines = []
    for d in paired:
        lo, hi = d["ci95_db"]
        criterion = (
            ""
            if d["twice_seed_sd_db"] is None
            else (
                f"; {'exceeds' if d['resolved'] else 'does not exceed'} twice the larger seed SD "
                f"({d['twice_seed_sd_db']:.2f} dB)"
            )
        )
        lines.append(
            f"look-ahead {d['from']} → {d['to']}: {d['diff_db']:+.2f} dB [{lo:+.2f}, {hi:+.2f}] "
            f"({d['per_frame_db']:+.3f} dB per frame), paired over {d['utterances']} utterances, "
            f"seeds {'/'.join(map(str, d['seeds']))}{criterion}"
        )
    return "\n".join(lines)


def describe(g: dict[str, Any]) -> str:
    """One paragraph comparing the measured gains with the paper's."""
    if not g:
        return "fewer than two look-ahead lengths evaluated: no gains to report"

    def interval(key: str) -> str:
        a, b = g[key]
        return f"frame {b}" if b - a == 1 else f"frames {a}→{b}, per frame"

    text = (
        f"gain of the first added frame ({interval('first_interval')}): {g['first_frame_gain_db']:+.3f} dB "
        f"(paper {PAPER['first_frame_gain_db']:+.3f}); of the last ({interval('last_interval')}): "
        f"{g['last_frame_gain_db']:+.3f} dB (paper {PAPER['last_frame_gain_db']:+.3f})"
    )
    if "causal_loss_percent" in g:
        loss = g["causal_loss_percent"]
        text += (
            f"; the causal model is {abs(loss):.1f} % {'below' if loss >= 0 else 'above'} look-ahead "
            f"{g['last_interval'][1]} (paper: ~{PAPER['causal_loss_percent']:.0f} % below)"
        )
    for key, label in (("first_frame_paired", "first"), ("last_frame_paired", "last")):
        if key in g:
            lo, hi = g[key]["per_frame_ci95_db"]
            text += (
                f"; paired per-frame gain of the {label} interval {g[key]['per_frame_db']:+.3f} dB "
                f"[{lo:+.3f}, {hi:+.3f}]"
            )
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
    ax.scatter(
        [m["lookahead"] for m in points],
        [m["si_snri"] for m in points],
        s=14,
        color="0.6",
        zorder=2,
        label="one model (seed)",
    )
    ax.errorbar(
        [r["lookahead"] for r in summary],
        [r["mean_db"] for r in summary],
        yerr=[r["sd_db"] or 0.0 for r in summary],
        marker="o",
        capsize=4,
        color="C0",
        zorder=3,
        label="mean ± 1 SD over seeds",
    )
    ax.set_xlabel(f"look-ahead (frames of {HOP / SAMPLE_RATE * 1000:.0f} ms)")
    ax.set_ylabel("SI-SNRi (dB)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    top = ax.secondary_xaxis(
        "top", functions=(lambda f: f * HOP / SAMPLE_RATE * 1000, lambda ms: ms * SAMPLE_RATE / 1000 / HOP)
    )
    top.set_xlabel("look-ahead (ms)")
    fig.tight_layout()
    atomic_write(path, writer=lambda tmp: fig.savefig(tmp, dpi=130, format="png"))
    plt.close(fig)


def mixed_placements(models: Sequence[dict[str, Any]]) -> str:
    """Why ``models`` do not make one sweep, or ``""``: models of one look-ahead with their future frames in
    different layers (``model.lookahead_layers``) are different experiments, and averaging them hides it."""
    layers: dict[int, set[tuple[int, ...]]] = defaultdict(set)
    for model in models:
        if model["model_config"]:
            layers[model["lookahead"]].add(tuple(architecture(model["model_config"])["lookahead_layers"]))
    for lookahead, found in sorted(layers.items()):
        if len(found) > 1:
            named = " and ".join(str(list(f)) for f in sorted(found))
            return (
                f"look-ahead {lookahead}: the models have their future frames in different layers ({named}); "
                "evaluate one placement (model.lookahead_layers) at a time"
            )
    return ""


def sweep_width(models: Sequence[dict[str, Any]]) -> float | None:
    """The width of the look-ahead sweep among ``models``: the one evaluated at the most distinct look-aheads
    (ties: the most models); None without models."""
    lookaheads: dict[float, set[int]] = defaultdict(set)
    for model in models:
        lookaheads[model["width"]].add(model["lookahead"])
    counts = Counter(model["width"] for model in models)
    return max(lookaheads, key=lambda w: (len(lookaheads[w]), counts[w]), default=None)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.lookahead_figure",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("results", nargs="+", help="results.json files or folders holding them")
    parser.add_argument("--out", type=Path, required=True, help="folder for lookahead.{png,csv}")
    parser.add_argument(
        "--width",
        type=float,
        default=None,
        help="only models of this width (default: the width evaluated at the most look-aheads, i.e. the sweep's)",
    )
    parser.add_argument("--title", default="SI-SNRi vs look-ahead", help="figure title")
    args = parser.parse_args(argv)
    found = [m for m in evaluated_models(args.results) if m["tstmc"]]  # the ablation is the speed table's
    width = args.width if args.width is not None else sweep_width(found)
    models = [m for m in found if width is not None and abs(m["width"] - width) < 1e-9]
    if not models:
        parser.error(f"no evaluated models of width {width} in {args.results}")
    models.sort(key=lambda m: (m["lookahead"], str(m["seed"])))
    mixed = mixed_placements(models)
    if mixed:
        parser.error(mixed)
    summary = summarize(models)
    g = gains(summary)
    paired = paired_differences(models, summary)
    by_seed = seed_paired(models, summary)
    for d in paired:
        if g and [d["from"], d["to"]] == g["first_interval"]:
            g["first_frame_paired"] = d
        if g and [d["from"], d["to"]] == g["last_interval"]:
            g["last_frame_paired"] = d
    draw(args.out / "lookahead.png", models, summary, args.title)
    write_csv(
        args.out / "lookahead.csv",
        [{k: m[k] for k in ("lookahead", "seed", "si_snri", "width", "params", "name", "checkpoint")} for m in models],
    )
    write_csv(args.out / "lookahead_summary.csv", summary)
    atomic_write(
        args.out / "lookahead.json",
        json.dumps({"summary": summary, "gains": g, "paired": paired, "seed_paired": by_seed, "paper": PAPER}, indent=1)
        + "\n",
    )
    for row in summary:
        sd = f" ± {row['sd_db']:.2f}" if row["sd_db"] is not None else ""
        print(
            f"look-ahead {row['lookahead']:>2} ({row['lookahead_ms']:>3.0f} ms): {row['mean_db']:.2f}{sd} dB "
            f"over {row['models']} model(s)"
        )
    print(describe(g))
    if paired:
        print(describe_paired(paired))
    if by_seed["differences"]:
        print(describe_seed_paired(by_seed))
    return {"summary": summary, "gains": g, "paired": paired, "seed_paired": by_seed}


if __name__ == "__main__":
    main()
