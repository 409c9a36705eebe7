"""Learning curves: validation SI-SNRi against optimizer steps and against training CPU-minutes, several seeds per
recipe, one CSV, one plot and one summary table; the tool behind the recipe study in docs/training.md.

    python -m scripts.learning_curve experiment=quickstart --seeds 0 1 2 --out outputs/curves/qs
    python -m scripts.learning_curve experiment=quickstart threads=1 trainer.max_time=00:00:07:00 \\
        --vary "module.optimizer.lr=6e-3" --vary "data.batch_size=8 data.segment_seconds=1.0" --out outputs/curves/x
    python -m scripts.learning_curve --collect outputs/curves/x      # tables and plot again from finished runs
    python -m scripts.learning_curve --collect outputs/mini/train/lookahead --out outputs/mini/curves

Each (recipe, seed) is one ``train.py`` run (a fresh process, ``logger=csv``, no test) in
``<out>/<recipe>/seed=<N>/`` (the layout of ``scripts.reproduce``'s sweeps, so ``--collect`` reads those too, each
look-ahead a recipe); recipes are the given overrides (``base``) and each ``--vary`` on top of them, run interleaved
by seed so that machine drift hits every recipe alike. The runs validate every ``--every`` steps
(``trainer.val_check_interval``); :class:`stmc.training.module.TrainingClock` logs the CPU time spent training (not
validating) at each validation. With ``module.ema_decay`` > 0 a run gives two curves: the moving average
(``val/si_snri``, the inference weights) and the trained weights (``val/si_snri_raw``), on the same steps.

Outputs in ``<out>``: ``curves.csv`` (recipe, weights, seed, step, cpu_minutes, si_snri), ``curves.png`` (mean
over seeds ± SD, against steps and CPU-minutes) and ``summary.md`` (final SI-SNRi mean ± SD per recipe, and the
gain over the last 20 % of the steps: under 0.1 dB means the curve has flattened).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from scripts.reproduce import DONE, quote
from stmc.evaluation.settings import natural_key
from stmc.files import atomic_write

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("recipe", "weights", "seed", "step", "cpu_minutes", "si_snri")


def recipe_name(overrides: str) -> str:
    """A folder name for a recipe's overrides."""
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in overrides)  # no "=" or "+": Hydra parses it
    return name or "base"


def run(overrides: list[str], folder: Path, seed: int, every: int) -> int:
    """One training run into ``folder`` (skipped when its curve is already there); the exit status."""
    if (folder / "csv" / "metrics.csv").is_file() and (folder / DONE).is_file():
        return 0
    argv = [
        sys.executable,
        str(ROOT / "train.py"),
        *overrides,
        f"seed={seed}",
        "logger=csv",
        "test=false",
        f"trainer.val_check_interval={every}",
        f"hydra.run.dir={quote(folder)}",
    ]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "run.log", "w") as log:
        status = subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if status == 0:
        (folder / DONE).touch()
    return status


def read_curves(out: Path) -> list[dict[str, object]]:
    """Every validation of every finished run under ``out`` as rows of :data:`FIELDS` (runs still going, or
    stopped, are left out: their last point is not the end of their budget)."""
    rows: list[dict[str, object]] = []
    for metrics in sorted(out.glob("*/seed=*/csv/metrics.csv")):
        if not (metrics.parents[1] / DONE).is_file():
            continue
        recipe, seed = metrics.parents[2].name, int(metrics.parents[1].name.removeprefix("seed="))
        for line in csv.DictReader(metrics.open()):
            if not line.get("val/si_snri"):
                continue
            for weights, key in (("inference", "val/si_snri"), ("raw", "val/si_snri_raw")):
                if line.get(key):
                    rows.append(
                        {
                            "recipe": recipe,
                            "weights": weights,
                            "seed": seed,
                            "step": int(line["step"]),
                            "cpu_minutes": float(line.get("time/train_cpu_minutes") or "nan"),
                            "si_snri": float(line[key]),
                        }
                    )
    return rows


def value_at(curve: list[dict[str, object]], step: float) -> float:
    """SI-SNRi of a curve (sorted by step) at ``step``, linearly interpolated between its validations."""
    points = [(int(r["step"]), float(r["si_snri"])) for r in curve]
    if step <= points[0][0]:
        return points[0][1]
    for (s0, v0), (s1, v1) in zip(points, points[1:], strict=False):
        if s0 <= step <= s1:
            return v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    return points[-1][1]


def summarize(rows: list[dict[str, object]]) -> str:
    """Markdown: per recipe and weights, the final validation SI-SNRi (mean ± SD over seeds) and the gain over
    the last 20 % of the steps (mean over seeds)."""
    runs: dict[tuple[str, str], dict[int, list[dict[str, object]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        runs[(str(row["recipe"]), str(row["weights"]))][int(row["seed"])].append(row)
    lines = [
        "| recipe | weights | seeds | steps | CPU-min | final val SI-SNRi (dB) | gain in the last 20 % (dB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (recipe, weights), seeds in sorted(runs.items(), key=lambda entry: (natural_key(entry[0][0]), entry[0][1])):
        finals, gains, steps, minutes = [], [], [], []
        for curve in seeds.values():
            curve.sort(key=lambda r: r["step"])
            last = curve[-1]
            finals.append(float(last["si_snri"]))
            steps.append(int(last["step"]))
            minutes.append(float(last["cpu_minutes"]))
            gains.append(float(last["si_snri"]) - value_at(curve, 0.8 * int(last["step"])))
        sd = statistics.stdev(finals) if len(finals) > 1 else float("nan")
        gain = f"{statistics.mean(gains):+.2f}" if gains else "—"
        lines.append(
            f"| {recipe} | {weights} | {len(finals)} | {statistics.mean(steps):.0f} | "
            f"{statistics.mean(minutes):.1f} | {statistics.mean(finals):.2f} ± {sd:.2f} | {gain} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, object]], path: Path) -> None:
    """Mean ± SD over seeds per recipe and weights, against steps and against CPU-minutes. Seeds are aligned by
    validation (the k-th of each run): a time-budgeted run ends at its own step, and its last point is its end."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    runs: dict[tuple[str, str], dict[int, list[dict[str, object]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        runs[(str(row["recipe"]), str(row["weights"]))][int(row["seed"])].append(row)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for (recipe, weights), seeds in sorted(runs.items(), key=lambda entry: (natural_key(entry[0][0]), entry[0][1])):
        curves = [sorted(curve, key=lambda r: int(r["step"])) for curve in seeds.values()]
        points = min(len(curve) for curve in curves)
        at = [[curve[k] for curve in curves] for k in range(points)]
        mean = [statistics.mean(float(r["si_snri"]) for r in rs) for rs in at]
        sd = [statistics.stdev([float(r["si_snri"]) for r in rs]) if len(rs) > 1 else 0.0 for rs in at]
        steps = [statistics.mean(int(r["step"]) for r in rs) for rs in at]
        minutes = [statistics.mean(float(r["cpu_minutes"]) for r in rs) for rs in at]
        style = "-" if weights == "inference" else ":"
        for ax, x in zip(axes, (steps, minutes), strict=True):
            (line,) = ax.plot(x, mean, style, marker=".", label=f"{recipe} ({weights}, {len(curves)} seeds)")
            low = [m - d for m, d in zip(mean, sd, strict=True)]
            high = [m + d for m, d in zip(mean, sd, strict=True)]
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15)
    axes[0].set_xlabel("optimizer steps (mean over seeds at each validation)")
    axes[1].set_xlabel("training CPU-minutes (all threads, validation excluded)")
    axes[0].set_ylabel("validation SI-SNRi (dB), mean ± SD over seeds")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic_write(path, writer=lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def collect(runs: Path, out: Path | None = None) -> int:
    """Write ``curves.csv``, ``curves.png`` and ``summary.md`` of the runs under ``runs`` into ``out`` (default:
    ``runs``); print the summary."""
    rows = read_curves(runs)
    if not rows:
        print(f"error: no finished runs under {runs} (expected <recipe>/seed=<N>/csv/metrics.csv)", file=sys.stderr)
        return 1
    out = runs if out is None else out
    out.mkdir(parents=True, exist_ok=True)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: (r["recipe"], r["weights"], r["seed"], r["step"])))
    atomic_write(out / "curves.csv", table.getvalue())
    plot(rows, out / "curves.png")
    summary = summarize(rows)
    atomic_write(out / "summary.md", summary + "\n")
    print(summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.learning_curve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="train.py overrides of the base recipe")
    parser.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="OVERRIDES",
        help="another recipe: these overrides (space-separated) on top of the base; repeatable",
    )
    parser.add_argument("--no-base", action="store_true", help="run only the --vary recipes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--every", type=int, default=250, help="validate every N optimizer steps (default 250)")
    parser.add_argument("--out", type=Path, help="runs and results (default outputs/curves; with --collect: RUNS)")
    parser.add_argument("--collect", type=Path, metavar="RUNS", help="only collect the finished runs under RUNS")
    args = parser.parse_args(argv)
    if args.collect is not None:
        return collect(args.collect, args.out)
    args.out = args.out or Path("outputs/curves")
    if args.every < 1:
        print("error: --every must be a positive number of steps", file=sys.stderr)
        return 2
    recipes = {} if args.no_base else {"base": list(args.overrides)}
    recipes.update({recipe_name(extra): [*args.overrides, *extra.split()] for extra in args.vary})
    if not recipes:
        print("error: --no-base needs at least one --vary recipe", file=sys.stderr)
        return 2
    os.environ.setdefault("STMC_DEMO_ROOT", str(ROOT / "demo_corpus"))
    for seed in args.seeds:
        for name, overrides in recipes.items():
            folder = args.out.resolve() / name / f"seed={seed}"
            print(f"seed {seed}: {name} -> {folder}", file=sys.stderr, flush=True)
            status = run(overrides, folder, seed, args.every)
            if status != 0:
                print(f"error: the run in {folder} failed (exit {status}); see {folder / 'run.log'}", file=sys.stderr)
                return 1
    return collect(args.out)


if __name__ == "__main__":
    sys.exit(main())
