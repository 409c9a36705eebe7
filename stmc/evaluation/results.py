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


def results_document(models: Sequence[dict[str, Any]], settings: Mapping[str, Any]) -> dict[str, Any]:
    """``results.json``: headline numbers (means over the models when there are several), then everything.

    ``si_snri``: ``{signal: mean dB}`` over all utterances (signals: ``wiener``, the reference systems, ``offline``,
    the streams);
    ``max_abs_diff``: the largest |streamed - offline| of any stream, model and utterance (linear, full scale 1);
    ``per_noise`` and ``per_split``: ``{name: {signal: mean SI-SNRi dB, "input_si_snr": dB, "n": utterances}}``;
    ``models``: one entry per checkpoint with every metric as ``{mean, ci95, n}`` per group.
    """

    def headline(group: str) -> dict[str, Any]:
        present = [m["groups"][group] for m in models]
        signals = sorted({s for g in present for s in g if s != "mixture"}, key=_signal_order)
        out: dict[str, Any] = {s: statistics.fmean(g[s]["si_snri"]["mean"] for g in present) for s in signals}
        out["input_si_snr"] = present[0]["mixture"]["si_snr"]["mean"]
        out["n"] = present[0]["mixture"]["si_snr"]["n"]
        return out

    first = models[0]["groups"]
    diffs = [d for m in models for d in m["max_abs_diff"].values()]
    rels = [d for m in models for d in m["max_rel_diff"].values()]
    overall = headline(ALL)
    del overall["n"], overall["input_si_snr"]
    return {
        "si_snri": overall,
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


def _label(group: str) -> str:
    if group == ALL:
        return "**all**"
    return group.split(":", 1)[1] if ":" in group else group


def model_markdown(model: Mapping[str, Any]) -> str:
    """SI-SNRi per group for every signal, then every metric overall and per split, for one checkpoint."""
    groups = model["groups"]
    signals = sorted(groups[ALL], key=_signal_order)
    streams = [s for s in signals if "max_abs_diff" in groups[ALL][s]]
    head = ["group", "n", "mixture SI-SNR (dB)", *[f"{s} SI-SNRi (dB)" for s in signals if s != "mixture"]]
    head += [f"max \\|{s} − offline\\|" for s in streams]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for group, by_signal in groups.items():
        if "/" in group and group != ALL:
            continue
        n = by_signal["mixture"]["si_snr"]["n"]
        cells = [_label(group), str(n), cell(by_signal["mixture"]["si_snr"])]
        cells += [cell(by_signal[s]["si_snri"]) for s in signals if s != "mixture"]
        cells += [f"{by_signal[s]['max_abs_diff']['max']:.1e}" for s in streams]
        lines.append("| " + " | ".join(cells) + " |")
    metrics = [m for m in (*SCORES, "si_snr", "sdr") if m in groups[ALL]["mixture"]]
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
            quality.append(f"| {_label(group)} | {signal} | " + " | ".join(values) + " |")
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
        "the untrained Wiener filter.",
        "",
    ]
    if len(models) > 1:
        lines += [
            "| model | look-ahead | width | seed | params (M) | offline SI-SNRi (dB) | streamed SI-SNRi (dB) "
            "| max \\|streamed − offline\\| |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for model in models:
            overall = model["groups"][ALL]
            streams = list(model["max_abs_diff"])
            streamed = cell(overall[streams[0]]["si_snri"]) if streams else "—"
            diff = f"{max(model['max_abs_diff'].values()):.1e}" if streams else "—"
            lines.append(
                f"| {model['name']} | {model['lookahead']} | {model['width']} | {model['seed']} "
                f"| {model['params'] / 1e6:.2f} | {cell(overall.get(OFFLINE, {}).get('si_snri'))} "
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
    """The SI-SNRi table printed at the end of a run: per noise type and split, every signal, plus max diff."""
    overall = document["si_snri"]
    signals = list(overall)
    lines = [
        "| test set | n | input SI-SNR (dB) | " + " | ".join(f"{s} SI-SNRi (dB)" for s in signals) + " |",
        "|---|---:|---:|" + "---:|" * len(signals),
    ]
    summary = document["models"][0]["groups"][ALL]["mixture"]["si_snr"]
    rows = [("**all**", {**overall, "n": summary["n"], "input_si_snr": summary["mean"]})]
    rows += [*document["per_split"].items(), *document["per_noise"].items()]
    for name, row in rows:
        lines.append(
            f"| {name} | {row['n']} | {row['input_si_snr']:.2f} | "
            + " | ".join(f"{row[s]:.2f}" for s in signals)
            + " |"
        )
    diff = document.get("max_abs_diff")
    if diff is not None:
        lines.append(
            f"\nmax |streamed − offline| over all utterances: {diff:.2e} "
            f"({document['max_rel_diff']:.2e} of the offline peak)"
        )
    return "\n".join(lines)
