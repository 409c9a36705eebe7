"""Results files of an evaluation: the ``results.json`` document, ``results.md`` and ``utterances.csv``."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stmc.evaluation.references import REFERENCE_SYSTEMS
from stmc.evaluation.settings import ALL, BASELINES, DIGITS, IMPROVEMENTS, LABELS, OFFLINE, SCORES, Item, Row
from stmc.evaluation.summary import cell
from stmc.files import atomic_write
from stmc.model.stft import SAMPLE_RATE
from stmc.stream.engines import METHODS

# The headline metric of a document (SI-SNRi where there are clean references, else DNSMOS OVRL) and the mixture's
# score that is its input: the unprocessed recording's own value.
HEADLINES = {"si_snri": "si_snr", "dnsmos_ovrl": "dnsmos_ovrl"}


def headline_metric(groups: Mapping[str, Any]) -> str:
    """``si_snri`` where utterances have clean references, else ``dnsmos_ovrl`` (recordings alone)."""
    return "si_snri" if "si_snr" in groups[ALL].get("mixture", {}) else "dnsmos_ovrl"


def results_document(models: Sequence[dict[str, Any]], settings: Mapping[str, Any]) -> dict[str, Any]:
    """``results.json``: headline numbers (means over the models when there are several), then everything.

    ``headline``: the metric of the headline numbers, ``si_snri`` (or ``dnsmos_ovrl`` for recordings without clean
    references); under its name, ``{signal: mean}`` over all utterances (signals: ``wiener``, the reference
    systems, ``offline``, the streams);
    ``max_abs_diff``: the largest |streamed - offline| of any stream, model and utterance (linear, full scale 1);
    ``per_noise`` and ``per_split``: ``{name: {signal: mean, "input_<metric>": the mixture's, "n": utterances}}``
    (``input_si_snr`` for SI-SNRi);
    ``models``: one entry per checkpoint with every metric as ``{mean, ci95, n}`` per group.
    """
    metric = headline_metric(models[0]["groups"])
    given = HEADLINES[metric]

    def headline(group: str) -> dict[str, Any]:
        present = [m["groups"][group] for m in models]
        signals = sorted({s for g in present for s in g if s != "mixture"}, key=_signal_order)
        out: dict[str, Any] = {}
        for s in signals:
            means = [g[s][metric]["mean"] for g in present if (g[s].get(metric) or {}).get("mean") is not None]
            out[s] = statistics.fmean(means) if means else None
        out[f"input_{given}"] = (present[0]["mixture"].get(given) or {}).get("mean")
        out["n"] = utterances(present[0])
        return out

    first = models[0]["groups"]
    diffs = [d for m in models for d in m["max_abs_diff"].values()]
    rels = [d for m in models for d in m["max_rel_diff"].values()]
    overall = headline(ALL)
    del overall["n"], overall[f"input_{given}"]
    return {
        "headline": metric,
        metric: overall,
        "max_abs_diff": max(diffs) if diffs else None,
        "max_rel_diff": max(rels) if rels else None,
        "per_noise": {g.removeprefix("noise:"): headline(g) for g in first if g.startswith("noise:")},
        "per_split": {g.removeprefix("split:"): headline(g) for g in first if g.startswith("split:")},
        "settings": dict(settings),
        "models": list(models),
    }


def _signal_order(signal: str) -> tuple[int, str]:
    order = [*BASELINES, *REFERENCE_SYSTEMS, OFFLINE, *METHODS]
    return (order.index(signal) if signal in order else len(order)), signal


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as None (JSON has no NaN), keys as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def utterance_csv(
    names: Sequence[str],
    items: Sequence[Item],
    baselines: Sequence[dict[str, Row]],
    rows: Sequence[Sequence[dict[str, Row]]],
) -> str:
    """One line per model, utterance and signal with every score (baselines once, model ``-``)."""
    columns = [
        "model",
        "utterance",
        "split",
        "noise_type",
        "snr",
        "signal",
        "si_snr",
        "sdr",
        *SCORES,
        "max_abs_diff",
    ]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    blocks = [("-", baselines), *zip(names, rows, strict=True)]
    for model, per_item in blocks:
        for item, signals in zip(items, per_item, strict=True):
            meta = {
                "model": model,
                "utterance": item.get("name", ""),
                "split": item.get("split", ""),
                "noise_type": item.get("noise_type", ""),
                "snr": _fmt_csv(item.get("snr", "")),
            }
            for signal, row in signals.items():
                writer.writerow({**meta, "signal": signal, **{k: _fmt_csv(v) for k, v in row.items()}})
    return out.getvalue()


def _fmt_csv(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def write_results(folder: Path, document: dict[str, Any], csv_text: str | None = None) -> None:
    """``results.json``, ``results.md`` (and ``utterances.csv``) in ``folder``, each written atomically."""
    atomic_write(folder / "results.json", json.dumps(jsonable(document), indent=1) + "\n")
    atomic_write(folder / "results.md", markdown(document) + "\n")
    if csv_text is not None:
        atomic_write(folder / "utterances.csv", csv_text)


def group_label(group: str, everything: str = "**all**") -> str:
    """A result group as a table row names it: ``everything`` for all utterances, else the split or noise type."""
    if group == ALL:
        return everything
    return group.split(":", 1)[1] if ":" in group else group


def utterances(by_signal: Mapping[str, Any]) -> int:
    """How many utterances a group's statistics are over (the mixture's counts, its largest)."""
    return max((stat["n"] for stat in by_signal.get("mixture", {}).values()), default=0)


def model_markdown(model: Mapping[str, Any]) -> str:
    """The headline metric (SI-SNRi, or DNSMOS OVRL without clean references) per group for every signal, then
    every metric overall and per split, for one checkpoint."""
    groups = model["groups"]
    metric = headline_metric(groups)
    given = HEADLINES[metric]
    signals = sorted(groups[ALL], key=_signal_order)
    streams = [s for s in signals if "max_abs_diff" in groups[ALL][s]]
    head = ["group", "n", f"mixture {LABELS[given]}", *[f"{s} {LABELS[metric]}" for s in signals if s != "mixture"]]
    head += [f"max \\|{s} − offline\\|" for s in streams]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for group, by_signal in groups.items():
        if "/" in group and group != ALL:
            continue
        n = utterances(by_signal)
        cells = [group_label(group), str(n), cell(by_signal["mixture"].get(given))]
        cells += [cell(by_signal[s].get(metric)) for s in signals if s != "mixture"]
        cells += [f"{by_signal[s]['max_abs_diff']['max']:.1e}" for s in streams]
        lines.append("| " + " | ".join(cells) + " |")
    scored = set().union(*groups[ALL].values())
    metrics = [m for m in (*SCORES, "si_snr", "sdr") if m in scored]
    quality = [
        "",
        "| group | signal | " + " | ".join(LABELS[m] for m in metrics) + " |",
        "|---|---|" + "---:|" * len(metrics),
    ]
    for group, by_signal in groups.items():
        if group != ALL and not group.startswith("split:"):
            continue
        for signal in signals:
            values = [cell(by_signal[signal].get(m), DIGITS.get(m, 2)) for m in metrics]
            if signal == "mixture":
                values = ["—" if m in IMPROVEMENTS else v for m, v in zip(metrics, values, strict=True)]
            quality.append(f"| {group_label(group)} | {signal} | " + " | ".join(values) + " |")
    return "\n".join(lines + quality)


def markdown(document: Mapping[str, Any]) -> str:
    """``results.md``: settings, a one-line-per-model overview when there are several, then each model."""
    settings, models = document["settings"], document["models"]
    lines = [
        "# Evaluation",
        "",
        f"Test set: {settings.get('test_set', '?')}, {settings.get('utterances', '?')} utterances; methods: "
        f"{', '.join(settings.get('methods', []))}; streamed in chunks of {settings.get('chunk_samples')} samples "
        f"({settings.get('chunk_samples', 0) / SAMPLE_RATE * 1000:g} ms). Means ± 95 % confidence intervals over "
        "utterances; SI-SNRi = SI-SNR(estimate) − SI-SNR(mixture). `mixture` is the unprocessed input, `wiener` "
        "the untrained Wiener filter; DNSMOS (1–5) needs no clean reference; the real-time factor is wall-clock "
        "seconds per second of audio, one thread.",
        "",
    ]
    if len(models) > 1:
        metric = document.get("headline", "si_snri")
        lines += [
            f"| model | look-ahead | width | seed | params (M) | offline {LABELS[metric]} | streamed {LABELS[metric]} "
            "| max \\|streamed − offline\\| |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for model in models:
            overall = model["groups"][ALL]
            streams = list(model["max_abs_diff"])
            streamed = cell(overall[streams[0]].get(metric)) if streams else "—"
            diff = f"{max(model['max_abs_diff'].values()):.1e}" if streams else "—"
            lines.append(
                f"| {model['name']} | {model['lookahead']} | {model['width']} | {model['seed']} "
                f"| {model['params'] / 1e6:.2f} | {cell(overall.get(OFFLINE, {}).get(metric))} "
                f"| {streamed} | {diff} |"
            )
        lines.append("")
    for model in models:
        lines += [
            f"## {model['name']}",
            "",
            f"`{model['checkpoint']}`: look-ahead {model['lookahead']} frames, width "
            f"{model['width']}, seed {model['seed']}, step {model['step']}, {model['params'] / 1e6:.2f} M "
            "parameters.",
            "",
            model_markdown(model),
            "",
        ]
    return "\n".join(lines).rstrip()


def headline_table(document: Mapping[str, Any]) -> str:
    """The headline table printed at the end of a run (SI-SNRi, or DNSMOS OVRL for recordings without clean
    references): per noise type and split, every signal, plus max diff."""
    metric = document.get("headline", "si_snri")
    given = HEADLINES[metric]
    overall = document[metric]
    signals = list(overall)
    lines = [
        f"| test set | n | input {LABELS[given]} | " + " | ".join(f"{s} {LABELS[metric]}" for s in signals) + " |",
        "|---|---:|---:|" + "---:|" * len(signals),
    ]
    groups = document["models"][0]["groups"][ALL]
    mixture = groups["mixture"].get(given) or {}
    rows = [("**all**", {**overall, "n": utterances(groups), f"input_{given}": mixture.get("mean")})]
    rows += [*document["per_split"].items(), *document["per_noise"].items()]
    for name, row in rows:
        values = [row[f"input_{given}"], *(row.get(s) for s in signals)]
        lines.append(f"| {name} | {row['n']} | " + " | ".join("—" if v is None else f"{v:.2f}" for v in values) + " |")
    diff = document.get("max_abs_diff")
    if diff is not None:
        lines.append(
            f"\nmax |streamed − offline| over all utterances: {diff:.2e} "
            f"({document['max_rel_diff']:.2e} of the offline peak)"
        )
    return "\n".join(lines)
