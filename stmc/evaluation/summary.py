"""Statistics over utterances: means with 95 % confidence intervals per group (all, split, noise type, split x
noise type). Also what the training's test report uses."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from scipy import stats

from stmc.evaluation.settings import ALL, Item, Row


def mean_ci(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean and the half-width of its 95 % confidence interval (Student t); NaNs (failed PESQ) are left out."""
    kept = [v for v in values if not math.isnan(v)]
    n = len(kept)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0}
    mean = math.fsum(kept) / n
    ci = None
    if n > 1:
        ci = float(stats.t.ppf(0.975, n - 1)) * statistics.stdev(kept) / math.sqrt(n)
    return {"mean": mean, "ci95": ci, "n": n}


def cell(stat: Mapping[str, Any] | None, digits: int = 2) -> str:
    """A ``{mean, ci95}`` statistic as text: ``mean ± ci95``, ``mean`` alone for one value, ``—`` for none."""
    if not stat or stat.get("mean") is None:
        return "—"
    ci = stat.get("ci95")
    return f"{stat['mean']:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")


def groups_of(item: Item) -> list[str]:
    """The result groups an utterance counts in: all, its split, its noise type, split/noise type."""
    split, noise = item.get("split", "test"), item.get("noise_type", "unknown")
    return [ALL, f"split:{split}", f"noise:{noise}", f"{split}/{noise}"]


def summarize(items: Sequence[Item], rows: Sequence[dict[str, Row]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{group: {signal: {metric: {mean, ci95, n}}}}`` over the utterances of each group."""
    gathered: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for item, signals in zip(items, rows, strict=True):
        for group in groups_of(item):
            for signal, row in signals.items():
                for metric, value in row.items():
                    gathered[group][signal][metric].append(value)
    summary = {}
    for group in sorted(gathered, key=_group_order):
        summary[group] = {
            signal: {metric: _stat(metric, values) for metric, values in metrics.items()}
            for signal, metrics in gathered[group].items()
        }
    return summary


def _stat(metric: str, values: list[float]) -> dict[str, Any]:
    if metric in ("max_abs_diff", "max_rel_diff"):
        return {"max": max(values), "n": len(values)}
    return mean_ci(values)


def _group_order(group: str) -> tuple[int, str]:
    kind = 0 if group == ALL else 1 if group.startswith("split:") else 2 if group.startswith("noise:") else 3
    return kind, group


def model_summary(
    info: dict[str, Any], items: Sequence[Item], baselines: Sequence[dict[str, Row]], rows: Sequence[dict[str, Row]]
) -> dict[str, Any]:
    """One checkpoint's entry of ``results.json``: its info, its groups (baselines included), its max diff."""
    merged = [{**base, **own} for base, own in zip(baselines, rows, strict=True)]
    groups = summarize(items, merged)
    streams = [s for s in groups[ALL] if "max_abs_diff" in groups[ALL][s]]
    return {
        **info,
        "max_abs_diff": {s: groups[ALL][s]["max_abs_diff"]["max"] for s in streams},
        "max_rel_diff": {s: groups[ALL][s]["max_rel_diff"]["max"] for s in streams},
        "groups": groups,
    }
