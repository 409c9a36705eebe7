"""The listening report of an evaluation: ``report.html``, one self-contained static page to listen and look.

It shows the run (checkpoints, model config, parameters, MACs per hop, algorithmic latency, chunk size, date),
the tables of ``results.json`` with 95 % CIs next to the mixture and Wiener baselines, and, per noise type, a
few examples (the median and the worst utterance by the stream's SI-SNRi, or DNSMOS OVRL for recordings without
clean references, then others spread over the rest): ``<audio>`` players for noisy, enhanced (the stream's
output), Wiener, the reference systems evaluated and clean (where there is one), each with its spectrogram on
one colour scale shared by every image of the page. Figures and a speed table are added when given.

The page has no script, font or style from elsewhere and references its files by relative path (16-bit WAVs
and PNGs under ``examples/``, figures under ``figures/``), so it works opened from disk and in a copied folder.
:func:`write_report` computes the examples and writes ``report.json`` (what the page shows besides
``results.json``); :func:`render` turns both into the page, so ``python -m stmc.evaluation.listening_report FOLDER``
re-renders it, e.g. with figures made later, without enhancing anything again.
"""

from __future__ import annotations

import argparse
import datetime
import html
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch

from stmc.evaluation.references import REFERENCE_SYSTEMS, wiener
from stmc.evaluation.results import HEADLINES, group_label, headline_metric, jsonable, utterances
from stmc.evaluation.scoring import enhance
from stmc.evaluation.settings import ALL, DIGITS, IMPROVEMENTS, LABELS, OFFLINE, SCORES, Item, Row, Settings
from stmc.evaluation.summary import cell
from stmc.files import atomic_audio_file, atomic_write
from stmc.model.enhancer import Enhancer
from stmc.model.stft import SAMPLE_RATE

SIGNALS = ("noisy", "enhanced", "wiener", "clean")  # an example's players (reports written before "signals")
DYNAMIC_RANGE_DB = 80.0  # the shared colour scale spans this much below the loudest bin of any example
MANIFEST = "report.json"


# -- examples --
def select_examples(
    items: Sequence[Item], rows: Sequence[Mapping[str, Row]], signal: str, per_noise: int, metric: str = "si_snri"
) -> list[tuple[int, str]]:
    """``(item index, why)`` per noise type: the median utterance by ``signal``'s ``metric``, the worst, then
    others spread over the rest; utterances whose score is NaN count last."""
    by_noise: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_noise.setdefault(str(item.get("noise_type", "unknown")), []).append(index)
    chosen = []
    for noise in sorted(by_noise):

        def score(i: int) -> float:
            value = rows[i].get(signal, {}).get(metric, math.nan)
            return math.inf if value is None or math.isnan(value) else value

        ranked = sorted(by_noise[noise], key=score)
        scored = [i for i in ranked if math.isfinite(score(i))] or ranked
        picks = [(scored[len(scored) // 2], "median"), (scored[0], "worst")]
        rest = [i for i in ranked if i not in {p for p, _ in picks}]
        picks += [(i, "other") for i in rest[:: max(1, len(rest) // max(1, per_noise - 2))]]
        seen: set[int] = set()
        for index, why in picks:
            if index not in seen and len(seen) < per_noise:
                seen.add(index)
                chosen.append((index, why))
    return chosen


def write_png(path: Path, image: np.ndarray, low: float, high: float) -> None:
    """``image`` as a PNG on the colour scale ``[low, high]`` (magma), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    atomic_write(path, writer=lambda tmp: plt.imsave(tmp, image, cmap="magma", vmin=low, vmax=high, format="png"))


def write_pcm16(path: Path, audio: torch.Tensor) -> None:
    """A 16 kHz 16-bit WAV (clipped to full scale), written atomically."""
    with atomic_audio_file(path, 1, "PCM_16") as write:
        write(audio.detach().float().clamp(-1.0, 1.0).reshape(1, -1))


def safe_name(text: str) -> str:
    """A file-name part from an utterance name: path separators replaced (spaces and other scripts kept)."""
    return text.replace("/", "_").replace("\\", "_").strip(". ") or "utterance"


def write_examples(
    folder: Path,
    enhancer: Enhancer,
    items: Sequence[Item],
    rows: Sequence[Mapping[str, Row]],
    settings: Settings,
    per_noise: int,
    metric: str = "si_snri",
) -> list[dict[str, Any]]:
    """Each selected utterance as ``examples/<noise>/<split>-<name>/<signal>.{wav,png}``; their manifest entries.

    The enhanced signal is the first stream's output (``offline`` when no stream was evaluated); utterances are
    chosen by ``metric``, the results' headline.
    """
    method = settings.streams[0] if settings.streams else OFFLINE
    stft, examples = enhancer.stft, []
    for index, why in select_examples(items, rows, method, per_noise, metric):
        item = items[index]
        noisy, clean = item["noisy"], item.get("clean")
        audio = {
            "noisy": noisy,
            "enhanced": enhance(enhancer, noisy, method, settings.chunk, settings.graph),
            "wiener": wiener(noisy.reshape(1, -1))[0],
            **{name: REFERENCE_SYSTEMS[name].start()(noisy) for name in settings.references},
            **({"clean": clean} if clean is not None else {}),  # recordings have none
        }
        where = (
            Path("examples")
            / safe_name(str(item.get("noise_type", "unknown")))
            / safe_name(f"{item.get('split', 'test')}-{item.get('name', index)}")
        )
        for signal, wave in audio.items():
            write_pcm16(folder / where / f"{signal}.wav", wave)
        examples.append(
            {
                "noise_type": str(item.get("noise_type", "unknown")),
                "split": str(item.get("split", "")),
                "name": str(item.get("name", index)),
                "why": why,
                "method": method,
                "metric": metric,
                "seconds": len(noisy) / SAMPLE_RATE,
                "dir": where.as_posix(),
                "signals": list(audio),
                "scores": {
                    "mixture": dict(rows[index].get("mixture", {})),
                    "enhanced": dict(rows[index].get(method, {})),
                    **{name: dict(rows[index].get(name, {})) for name in ("wiener", *settings.references)},
                },
                "_audio": audio,
            }
        )
    images = {id(e): {s: stft.spectrogram_db(w).flip(0).numpy() for s, w in e.pop("_audio").items()} for e in examples}
    high = max((float(im.max()) for ims in images.values() for im in ims.values()), default=0.0)
    for example in examples:
        for signal, image in images[id(example)].items():
            write_png(folder / example["dir"] / f"{signal}.png", image, high - DYNAMIC_RANGE_DB, high)
    return examples


def run_info(enhancer: Enhancer, settings: Settings) -> dict[str, Any]:
    """What the page says about the run's first model: MACs per hop (counted) and algorithmic latency."""
    from stmc.bench.speed import count_macs, offline_frozen

    model = enhancer.model
    frames = 8
    spec = torch.zeros(1, 2, model.n_freq, frames)
    macs = count_macs(lambda: offline_frozen(model)(spec)) / frames  # = an STMC hop's (tests/test_streaming.py)
    return {
        "macs_per_hop": macs,
        "latency_ms": 1e3 * enhancer.latency_samples / SAMPLE_RATE,
        "chunk_samples": settings.chunk,
        "chunk_ms": 1e3 * settings.chunk / SAMPLE_RATE,
        "date": datetime.datetime.now().isoformat(" ", "seconds"),
    }


# -- the page --
def esc(value: object) -> str:
    return html.escape(str(value))


def number(value: float | None) -> str:
    """A score with two decimals, ``—`` where there is none (NaN: e.g. PESQ found no speech)."""
    return "—" if value is None or not math.isfinite(value) else f"{value:.2f}"


def href(path: str) -> str:
    """A relative URL of a file of the report folder (spaces and non-ASCII characters quoted)."""
    return quote(path)


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def summary_groups(groups: Mapping[str, Any]) -> list[str]:
    """The groups a summary table has rows for: all, the splits when there are several, each noise type."""
    splits = [g for g in groups if g.startswith("split:")]
    return [ALL, *(splits if len(splits) > 1 else []), *(g for g in groups if g.startswith("noise:"))]


def model_tables(model: Mapping[str, Any]) -> str:
    """One table per metric: rows all / splits / noise types (with n), columns the signals, means ± 95 % CIs;
    the headline metric's table first with the input's own score; then max |streamed − offline| per stream."""
    groups = model["groups"]
    metric = headline_metric(groups)
    given = HEADLINES[metric]
    signals = list(groups[ALL])
    scored = set().union(*groups[ALL].values())
    metrics = sorted((m for m in SCORES if m in scored), key=lambda m: m != metric)
    out = []
    for m in metrics:
        shown = [s for s in signals if m in groups[ALL].get(s, {}) and not (s == "mixture" and m in IMPROVEMENTS)]
        head = ["group", "n", *([f"input {LABELS[given]}"] if m == metric else []), *shown]
        rows = []
        for group in summary_groups(groups):
            by_signal = groups[group]
            first = [cell(by_signal.get("mixture", {}).get(given))] if m == metric else []
            values = [cell(by_signal.get(s, {}).get(m), DIGITS.get(m, 2)) for s in shown]
            rows.append([group_label(group, "all utterances"), str(utterances(by_signal)), *first, *values])
        out.append(f"<h4>{esc(LABELS[m])}</h4>" + table(head, rows))
    streams = [s for s in signals if "max_abs_diff" in groups[ALL][s]]
    if streams:
        diffs = ", ".join(f"{s} {groups[ALL][s]['max_abs_diff']['max']:.1e}" for s in streams)
        out.append(f"<p>max |streamed − offline| over all utterances: {esc(diffs)}</p>")
    return "\n".join(out)


def write_bar_chart(path: Path, model: Mapping[str, Any]) -> None:
    """A PNG of the headline metric per noise type (and overall), one bar per enhancer, with its 95 % CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = model["groups"]
    metric = headline_metric(groups)
    rows = [g for g in summary_groups(groups) if not g.startswith("split:")]
    signals = [s for s in groups[ALL] if metric in groups[ALL][s] and not (s == "mixture" and metric in IMPROVEMENTS)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) * max(1, len(signals)) / 2), 3.6))
    width = 0.8 / max(1, len(signals))
    for k, signal in enumerate(signals):
        stats = [groups[g].get(signal, {}).get(metric) or {} for g in rows]
        means = [st.get("mean") if st.get("mean") is not None else np.nan for st in stats]
        errors = [st.get("ci95") or 0.0 for st in stats]
        ax.bar(np.arange(len(rows)) + (k - (len(signals) - 1) / 2) * width, means, width, yerr=errors, label=signal)
    ax.set_xticks(np.arange(len(rows)), [group_label(g, "all utterances") for g in rows], rotation=20)
    ax.set_ylabel(LABELS[metric])
    ax.axhline(0, color="#555", linewidth=0.8)
    ax.legend(fontsize=8, ncols=min(len(signals), 6))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, writer=lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def example_block(folder: Path, example: Mapping[str, Any]) -> str:
    """One utterance: scores, then per signal its player and spectrogram (or what is missing)."""
    scores = example["scores"]
    metric = example.get("metric", "si_snri")
    given = HEADLINES[metric]
    line = ", ".join(f"{k} {LABELS[metric]}: {number(v.get(metric))}" for k, v in scores.items() if k != "mixture")
    parts = [
        f"<h4>{esc(example['split'])} / {esc(example['name'])} — {esc(example['why'])} "
        f"({example['seconds']:.1f} s)</h4>",
        f"<p>input {LABELS[given]}: {number(scores['mixture'].get(given))}; {esc(line)}; enhanced = "
        f"{esc(example['method'])}</p>",
        f'<div class="signals" style="--n:{len(example.get("signals", SIGNALS))}">',
    ]
    for signal in example.get("signals", SIGNALS):
        wav, png = f"{example['dir']}/{signal}.wav", f"{example['dir']}/{signal}.png"
        player = (
            f'<audio controls preload="metadata" src="{href(wav)}"></audio>'
            if (folder / wav).is_file()
            else f"<p class=missing>missing: {esc(wav)}</p>"
        )
        image = (
            f'<img alt="{esc(signal)} spectrogram" src="{href(png)}">'
            if (folder / png).is_file()
            else f"<p class=missing>missing: {esc(png)}</p>"
        )
        parts.append(f"<figure><figcaption>{esc(signal)}</figcaption>{player}{image}</figure>")
    return "\n".join([*parts, "</div>"])


def markdown_table(text: str) -> str:
    """The first pipe table of a markdown text as HTML (the speed table's format)."""
    rows = [line.strip().strip("|").split("|") for line in text.splitlines() if line.strip().startswith("|")]
    rows = [[c.strip() for c in r] for r in rows if not all(set(c.strip()) <= set("-: ") for c in r)]
    return table(rows[0], rows[1:]) if rows else "<p class=missing>no table in the speed table file</p>"


STYLE = """body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #bbb;padding:.2em .5em;text-align:right}td:first-child,th:first-child{text-align:left}
.signals{display:grid;grid-template-columns:repeat(var(--n),minmax(0,1fr));gap:.6em}figure{margin:0}
.signals img{display:block;width:100%;height:8em}.missing{color:#a00}audio{width:100%}
img.figure{width:auto;height:auto;max-width:100%}"""
BAR_CHART = "figures/by_noise_type.png"  # the headline metric per noise type and enhancer, first model


def render(
    folder: Path,
    document: Mapping[str, Any],
    manifest: Mapping[str, Any],
    figures: Sequence[str] = (),
    speed_table: str | None = None,
) -> str:
    """The page, from ``results.json``'s document and ``report.json``'s manifest (paths relative to ``folder``)."""
    settings, info = document.get("settings", {}), manifest.get("run", {})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>STMC evaluation report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>STMC evaluation report</h1>",
        f"<p>{esc(settings.get('test_set', ''))}; {esc(settings.get('utterances', '?'))} utterances; methods "
        f"{esc(', '.join(settings.get('methods', [])))}; streamed in chunks of {esc(info.get('chunk_samples'))} "
        f"samples ({info.get('chunk_ms', 0):g} ms); written {esc(info.get('date', '?'))}. Means ± 95 % "
        "confidence intervals over utterances.</p>",
        "<h2>Models</h2>",
    ]
    rows = [
        [m["name"], m["lookahead"], m["width"], m.get("seed"), m.get("step"), f"{m['params'] / 1e6:.3f}"]
        for m in document.get("models", [])
    ]
    parts.append(table(["model", "look-ahead", "width", "seed", "step", "params (M)"], rows))
    parts.append(
        "<ul>"
        + "".join(
            f"<li>{esc(m['name'])}: <code>{esc(m['checkpoint'])}</code>, model config "
            f"<code>{esc(json.dumps(m.get('model_config', {})))}</code></li>"
            for m in document.get("models", [])
        )
        + "</ul>"
    )
    if info:
        parts.append(
            f"<p>First model: {info['macs_per_hop'] / 1e6:.2f} M MACs per hop (16 ms), algorithmic "
            f"latency {info['latency_ms']:.1f} ms (window + look-ahead).</p>"
        )
    for index, model in enumerate(document.get("models", [])):
        parts += [f"<h2>Scores: {esc(model['name'])}</h2>"]
        if index == 0 and (folder / BAR_CHART).is_file():
            parts.append(f'<img class=figure alt="scores by noise type" src="{href(BAR_CHART)}">')
        parts.append(model_tables(model))
    parts.append("<h2>Examples</h2>")
    examples = manifest.get("examples", [])
    if not examples:
        parts.append(
            f"<p class=missing>no examples in this run "
            f"(examples_per_noise={esc(manifest.get('examples_per_noise', 0))}).</p>"
        )
    for noise in dict.fromkeys(e["noise_type"] for e in examples):
        parts.append(f"<h3>noise: {esc(noise)}</h3>")
        parts += [example_block(folder, e) for e in examples if e["noise_type"] == noise]
    if figures:
        parts.append("<h2>Figures</h2>")
        for figure in figures:
            parts.append(
                f'<img class=figure alt="{esc(figure)}" src="{href(figure)}">'
                if (folder / figure).is_file()
                else f"<p class=missing>missing figure: {esc(figure)}</p>"
            )
    if speed_table is not None:
        parts += ["<h2>Speed</h2>", markdown_table(speed_table)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def include(folder: Path, files: Sequence[str | Path], under: str) -> list[str]:
    """Copy ``files`` into ``folder/under`` (those outside the folder); their paths relative to ``folder``. A missing
    file keeps its name, so that the page says it is missing."""
    out = []
    for file in map(Path, files):
        if file.is_file() and folder.resolve() in file.resolve().parents:
            out.append(file.resolve().relative_to(folder.resolve()).as_posix())
            continue
        target = Path(under) / file.name
        if file.is_file():
            (folder / under).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, folder / target)
        out.append(target.as_posix())
    return out


def write_page(folder: Path, figures: Sequence[str | Path] = (), speed_table: str | Path | None = None) -> Path:
    """``report.html`` (and its bar chart) from the folder's ``results.json`` and ``report.json``, atomically;
    returns its path."""
    document = json.loads((folder / "results.json").read_text())
    manifest = json.loads((folder / MANIFEST).read_text()) if (folder / MANIFEST).is_file() else {}
    if document.get("models"):
        write_bar_chart(folder / BAR_CHART, document["models"][0])
    speed = Path(speed_table).read_text() if speed_table is not None and Path(speed_table).is_file() else None
    page = render(folder, document, manifest, include(folder, figures, "figures"), speed)
    atomic_write(folder / "report.html", page)
    return folder / "report.html"


def write_report(
    folder: Path,
    evaluation: Any,
    enhancer: Enhancer,
    settings: Settings,
    per_noise: int = 2,
    figures: Sequence[str | Path] = (),
    speed_table: str | Path | None = None,
) -> Path:
    """The examples of the first model, ``report.json`` and ``report.html`` in the evaluation's ``folder``."""
    rows = [{**base, **own} for base, own in zip(evaluation.baselines, evaluation.per_model[0], strict=True)]
    headline = evaluation.document["headline"]
    examples = (
        write_examples(folder, enhancer, evaluation.items, rows, settings, per_noise, headline) if per_noise > 0 else []
    )
    manifest = {"run": run_info(enhancer, settings), "examples_per_noise": per_noise, "examples": examples}
    atomic_write(folder / MANIFEST, json.dumps(jsonable(manifest), indent=1) + "\n")
    return write_page(folder, figures, speed_table)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stmc.evaluation.listening_report FOLDER [--figure PNG ...] [--speed-table MD]``: re-render a
    report."""
    parser = argparse.ArgumentParser(prog="python -m stmc.evaluation.listening_report", description=main.__doc__)
    parser.add_argument("folder", type=Path, help="an evaluate.py run folder (holding results.json)")
    parser.add_argument("--figure", action="append", default=[], help="a figure to show (PNG); repeatable")
    parser.add_argument("--speed-table", help="a speed table (markdown, scripts.speed_table's speed_table.md)")
    args = parser.parse_args(argv)
    if not (args.folder / "results.json").is_file():
        parser.error(f"{args.folder} holds no results.json (give an evaluate.py run folder)")
    print(f"wrote {write_page(args.folder, args.figure, args.speed_table)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
