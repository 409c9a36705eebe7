"""Evaluation of trained enhancers: offline (full-sequence) and streamed inference on every test utterance.

For each checkpoint and each utterance, one at a time (batch 1, so no padding touches the result):

- ``offline``: ``Enhancer(x)`` over the whole utterance;
- streamed (``stmc``, or ``inc``/``window``): the utterance cut into chunks of ``chunk`` samples, fed to
  ``Enhancer.stream(method)``, then ``flush()``; ``max_abs_diff`` = max |streamed - offline| over its samples;
- scored against the clean speech: SI-SNR and SI-SNRi (``stmc.metrics``), SDR and SDRi, wide-band PESQ and STOI
  (torchmetrics), next to the same scores of the mixture itself and of the untrained Wiener filter
  (``stmc.baselines.wiener``), which depend on the utterance only and are computed once.

Results are means with 95 % confidence intervals (Student t over utterances) overall, per split, per noise type
and per split x noise type. :func:`write_results` writes ``results.json`` (machine-readable, the contract the
figure scripts read), ``results.md`` and ``utterances.csv`` atomically. Every number depends only on the
checkpoint, the utterances and the settings (one BLAS thread per worker), so evaluating twice gives the same
numbers, whatever the number of workers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import signal as signals_os
import statistics
import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import InvalidStateError, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from stmc.baselines import wiener
from stmc.enhancer import CHECKPOINT_KEY, Enhancer, read_checkpoint
from stmc.io import atomic_write
from stmc.metrics import si_snr, si_snri
from stmc.stft import HOP, SAMPLE_RATE
from stmc.streaming import METHODS

log = logging.getLogger(__name__)

OFFLINE = "offline"
BASELINES = ("mixture", "wiener")
METRICS = ("si_snri", "sdri", "pesq", "stoi")  # what a user may ask for; si_snr/sdr come with si_snri/sdri
LABELS = {
    "si_snr": "SI-SNR (dB)",
    "si_snri": "SI-SNRi (dB)",
    "sdr": "SDR (dB)",
    "sdri": "SDRi (dB)",
    "pesq": "PESQ (wb)",
    "stoi": "STOI",
}
ALL = "all"

Item = Mapping[str, Any]  # one utterance: noisy, clean (1-D float32), name, split, noise_type, snr
Row = dict[str, Any]  # the scores of one signal (method or baseline) on one utterance


# -- settings --
@dataclass(frozen=True)
class Settings:
    """What is computed for every utterance: inference ``methods`` (``offline`` and streams), ``metrics``."""

    methods: tuple[str, ...] = (OFFLINE, "stmc")
    metrics: tuple[str, ...] = METRICS
    chunk: int = HOP  # samples per streamed chunk

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m != OFFLINE and m not in METHODS]
        if unknown or OFFLINE not in self.methods:
            raise ValueError(f"methods={list(self.methods)}: {OFFLINE} (the reference of every stream) and any of "
                             f"{', '.join(METHODS)}")
        bad = [m for m in self.metrics if m not in METRICS]
        if bad or "si_snri" not in self.metrics:
            raise ValueError(f"metrics={list(self.metrics)}: choose from {', '.join(METRICS)} (si_snri always)")
        if self.chunk < 1:
            raise ValueError(f"chunk must be at least one sample, got {self.chunk}")

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(m for m in self.methods if m != OFFLINE)


# -- checkpoints --
def find_checkpoints(paths: Iterable[str | Path], select: str = "best", newest: bool = False) -> list[Path]:
    """Checkpoint files from files and run folders.

    A folder stands for every training run below it (a folder holding ``checkpoints/*.ckpt``), each giving its
    best checkpoint (``best*.ckpt``, the newest if several) or, for ``select="last"`` or when it has no best
    one, ``last.ckpt``. ``newest`` keeps only the most recently written run of each folder (the quickstart's).
    """
    if select not in ("best", "last"):
        raise ValueError(f"select={select!r}: choose best or last")
    found: list[Path] = []
    for entry in paths:
        path = Path(entry).expanduser()
        if path.is_file():
            found.append(path)
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoints: {path} is neither a checkpoint file nor a folder")
        runs = sorted({ckpt.parent.parent for ckpt in path.rglob("checkpoints/*.ckpt")}, key=natural_key)
        picks = [pick for run in runs if (pick := _pick(run / "checkpoints", select)) is not None]
        if newest and picks:
            picks = [max(picks, key=lambda p: p.stat().st_mtime)]
        if not picks:
            raise FileNotFoundError(f"checkpoints: no checkpoints/*.ckpt under {path}")
        found.extend(picks)
    if not found:
        raise ValueError("checkpoints: give at least one checkpoint file or run folder")
    return found


def natural_key(path: Path) -> list[str | float]:
    """Sort key that orders numbers by value: ``lookahead=2`` before ``lookahead=14``, ``0.25`` before ``0.5``."""
    parts = re.split(r"(\d+(?:\.\d+)?)", str(path))
    return [float(part) if i % 2 else part for i, part in enumerate(parts)]


def _pick(folder: Path, select: str) -> Path | None:
    best = sorted(folder.glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
    last = folder / "last.ckpt"
    if select == "last" and last.is_file():
        return last
    if best:
        return best[-1]
    if select == "best" and last.is_file():
        log.warning("select=best: %s has no best checkpoint (no validation ran); using last.ckpt", folder.parent)
    return last if last.is_file() else None


def checkpoint_info(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    """What a results file records about a checkpoint: architecture, look-ahead, width, seed, step, size."""
    ckpt = read_checkpoint(path)
    meta = ckpt.get(CHECKPOINT_KEY, {})
    config = dict(meta.get("model_config", {}))
    run = meta.get("run_config") or {}
    params = sum(p.numel() for p in model.parameters())
    return {
        "checkpoint": str(path),
        "model_config": config,
        "lookahead": model.receptive_field[1],
        "width": config.get("width", 1.0),
        "seed": run.get("seed"),
        "step": ckpt.get("global_step"),
        "params": params,
        "size_mb": params * 4 / 1e6,
        "receptive_field": list(model.receptive_field),
    }


def model_names(paths: Sequence[Path]) -> list[str]:
    """Short distinct names: each run folder (or loose checkpoint file) relative to what they all share."""
    keys = [(p.parent.parent if p.parent.name == "checkpoints" else p.with_suffix("")).resolve() for p in paths]
    if len(set(keys)) < len(keys):
        keys = [p.resolve() for p in paths]
    if len(keys) == 1:
        return [keys[0].name]
    common = Path(os.path.commonpath([str(k) for k in keys]))
    return [str(k.relative_to(common)) for k in keys]


# -- one utterance --
def enhance(enhancer: Enhancer, noisy: torch.Tensor, method: str, chunk: int) -> torch.Tensor:
    """``[N]`` -> ``[N]``: offline over the whole utterance, or streamed in chunks of ``chunk`` samples."""
    x = noisy.reshape(1, -1)
    with torch.inference_mode():
        if method == OFFLINE:
            return enhancer(x)[0]
        stream = enhancer.stream(method)
        outs = [stream(part) for part in x.split(chunk, -1)]
        out = torch.cat([*outs, stream.flush()], -1)[0]
    if out.shape[-1] != x.shape[-1]:
        raise RuntimeError(f"the {method} stream returned {out.shape[-1]} samples for {x.shape[-1]}")
    return out


def _pesq(estimate: torch.Tensor, clean: torch.Tensor) -> float:
    import pesq as pesq_backend
    from torchmetrics.functional.audio import perceptual_evaluation_speech_quality

    try:
        return float(perceptual_evaluation_speech_quality(estimate, clean, SAMPLE_RATE, "wb"))
    except pesq_backend.PesqError:  # e.g. no speech found: the utterance counts as missing for PESQ only
        return math.nan


def score(estimate: torch.Tensor, noisy: torch.Tensor, clean: torch.Tensor, metrics: Sequence[str]) -> Row:
    """Scores of one enhanced utterance ``[N]`` (improvements relative to the mixture ``noisy``)."""
    from torchmetrics.functional.audio import short_time_objective_intelligibility, signal_distortion_ratio

    est, mix, ref = estimate.reshape(1, -1).float(), noisy.reshape(1, -1), clean.reshape(1, -1)
    row: Row = {"si_snr": float(si_snr(est, ref)), "si_snri": float(si_snri(est, mix, ref))}
    if "sdri" in metrics:
        sdr_est = float(signal_distortion_ratio(est.double(), ref.double()))
        sdr_mix = float(signal_distortion_ratio(mix.double(), ref.double()))
        row.update(sdr=sdr_est, sdri=sdr_est - sdr_mix)
    if "pesq" in metrics:
        row["pesq"] = _pesq(est[0], ref[0])
    if "stoi" in metrics:
        row["stoi"] = float(short_time_objective_intelligibility(est[0], ref[0], SAMPLE_RATE))
    return row


def evaluate_baselines(item: Item, settings: Settings) -> dict[str, Row]:
    """Scores of the mixture itself and of the untrained Wiener filter on one utterance."""
    noisy, clean = item["noisy"], item["clean"]
    return {
        "mixture": score(noisy, noisy, clean, settings.metrics),
        "wiener": score(wiener(noisy.reshape(1, -1))[0], noisy, clean, settings.metrics),
    }


def evaluate_utterance(enhancer: Enhancer, item: Item, settings: Settings) -> dict[str, Row]:
    """Scores of every method on one utterance; streamed rows also carry ``max_abs_diff`` to offline."""
    noisy, clean = item["noisy"], item["clean"]
    outputs = {method: enhance(enhancer, noisy, method, settings.chunk) for method in settings.methods}
    rows = {method: score(out, noisy, clean, settings.metrics) for method, out in outputs.items()}
    peak = float(outputs[OFFLINE].abs().max()) if OFFLINE in outputs else 0.0
    for method in settings.streams:
        diff = float((outputs[method] - outputs[OFFLINE]).abs().max()) if noisy.numel() else 0.0
        rows[method].update(max_abs_diff=diff, max_rel_diff=diff / peak if peak > 0 else 0.0)
    return rows


# -- many utterances, optionally in worker processes --
_WORKER: dict[str, Any] = {}


def _init_worker(items: Sequence[Item], checkpoints: Sequence[str], settings: Settings, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(items=items, checkpoints=checkpoints, settings=settings, enhancers={})


def _init_pool_worker(*args: Any) -> None:
    """A worker process: dies with its parent (Linux: even a ``kill -9`` of it), leaves Ctrl-C to the parent
    (which stops the pool), then :func:`_init_worker`."""
    signals_os.signal(signals_os.SIGINT, signals_os.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signals_os.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
    _init_worker(*args)


def _task(task: tuple[int | None, int]) -> dict[str, Row]:
    """``(model index or None for the baselines, item index)`` -> rows; runs in a worker (or in-process)."""
    model, index = task
    item, settings = _WORKER["items"][index], _WORKER["settings"]
    if model is None:
        return evaluate_baselines(item, settings)
    enhancers = _WORKER["enhancers"]
    if model not in enhancers:
        enhancers[model] = Enhancer.from_checkpoint(_WORKER["checkpoints"][model]).eval()
    return evaluate_utterance(enhancers[model], item, settings)


class Journal:
    """The utterance evaluations finished so far, one JSON line each, so that an interrupted evaluation resumes
    where it stopped. Its first line fingerprints what the numbers depend on (utterances, checkpoint files,
    settings, threads): a journal of other work is discarded, never mixed in."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.done: dict[tuple[int | None, int], dict[str, Row]] = {}
        if path.is_file():
            lines = path.read_text().splitlines()
            if lines and json.loads(lines[0]).get("fingerprint") == fingerprint:
                for line in lines[1:]:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:  # the line being written when the run was killed
                        break
                    self.done[(entry["task"][0], entry["task"][1])] = entry["rows"]
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "w")  # noqa: SIM115 (closed by close())
        self.handle.write(json.dumps({"fingerprint": fingerprint}) + "\n")
        for task, rows in self.done.items():
            self.record(task, rows)

    def record(self, task: tuple[int | None, int], rows: dict[str, Row]) -> None:
        self.handle.write(json.dumps({"task": list(task), "rows": rows}) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def fingerprint(items: Sequence[Item], checkpoints: Sequence[Path], settings: Settings, threads: int) -> str:
    """What an evaluation's numbers depend on, hashed: utterances, checkpoint files, settings, threads."""
    described = {
        "items": [[str(i.get("split", "")), str(i.get("name", "")), len(i["noisy"])] for i in items],
        "checkpoints": [[str(c), c.stat().st_size, c.stat().st_mtime_ns] for c in checkpoints],
        "settings": [list(settings.methods), list(settings.metrics), settings.chunk],
        "threads": threads,
    }
    return hashlib.sha1(json.dumps(described).encode()).hexdigest()


def run_all(
    items: Sequence[Item],
    checkpoints: Sequence[Path],
    settings: Settings,
    workers: int = 1,
    threads: int = 1,
    progress: Callable[[int, int], None] | None = None,
    journal: Journal | None = None,
) -> tuple[list[dict[str, Row]], list[list[dict[str, Row]]]]:
    """Baseline rows per item, and per checkpoint the method rows per item (in item order).

    ``workers > 1`` spreads utterances over processes (``threads`` BLAS threads each); results do not depend
    on the split, since every utterance is computed whole by one process with the same thread count.
    """
    tasks: list[tuple[int | None, int]] = [(None, i) for i in range(len(items))]
    tasks += [(m, i) for m in range(len(checkpoints)) for i in range(len(items))]
    # longest utterances first, so that no worker is left with a long one at the end; results in task order
    order = sorted(range(len(tasks)), key=lambda t: -len(items[tasks[t][1]]["noisy"]))
    args = (list(items), [str(c) for c in checkpoints], settings, threads)
    results: list[dict[str, Row]] = [{} for _ in tasks]
    finished = journal.done if journal is not None else {}
    for t, task in enumerate(tasks):
        if task in finished:
            results[t] = finished[task]
    order = [t for t in order if tasks[t] not in finished]
    ordered = [tasks[t] for t in order]

    def collect(outcomes: Iterable[dict[str, Row]]) -> None:
        for done, (t, rows) in enumerate(zip(order, outcomes, strict=True), len(tasks) - len(order) + 1):
            results[t] = rows
            if journal is not None:
                journal.record(tasks[t], rows)
            if progress:
                progress(done, len(tasks))

    if workers <= 1:
        previous = torch.get_num_threads()
        _init_worker(*args)
        try:
            collect(map(_task, ordered))
        finally:
            _WORKER.clear()
            torch.set_num_threads(previous)
    else:
        pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_pool_worker,
                                   initargs=args)
        try:
            collect(pool.map(_task, ordered, chunksize=1))
        except BaseException:  # Ctrl-C or a failed task: stop the workers now rather than after their tasks
            processes = list((pool._processes or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            previous = threading.excepthook
            # Python 3.11's pool thread then fails to mark the cancelled futures broken (InvalidStateError)
            threading.excepthook = lambda hook: None if isinstance(hook.exc_value, InvalidStateError) \
                else previous(hook)
            for process in processes:
                process.terminate()
            raise
        pool.shutdown()
    n = len(items)
    return results[:n], [results[n * (m + 1) : n * (m + 2)] for m in range(len(checkpoints))]


# -- statistics --
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


def evaluate_model_summary(
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


def results_document(models: Sequence[dict[str, Any]], settings: Mapping[str, Any]) -> dict[str, Any]:
    """``results.json``: headline numbers (means over the models when there are several), then everything.

    ``si_snri``: ``{signal: mean dB}`` over all utterances (signals: ``wiener``, ``offline``, the streams);
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
    order = [*BASELINES, OFFLINE, *METHODS]
    return (order.index(signal) if signal in order else len(order)), signal


# -- writing --
def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def utterance_csv(names: Sequence[str], items: Sequence[Item], baselines: Sequence[dict[str, Row]],
                  rows: Sequence[Sequence[dict[str, Row]]]) -> str:
    """One line per model, utterance and signal with every score (baselines once, model ``-``)."""
    columns = ["model", "utterance", "split", "noise_type", "snr", "signal", "si_snr", "si_snri", "sdr", "sdri",
               "pesq", "stoi", "max_abs_diff"]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    blocks = [("-", baselines), *zip(names, rows, strict=True)]
    for model, per_item in blocks:
        for item, signals in zip(items, per_item, strict=True):
            meta = {"model": model, "utterance": item.get("name", ""), "split": item.get("split", ""),
                    "noise_type": item.get("noise_type", ""), "snr": _fmt_csv(item.get("snr", ""))}
            for signal, row in signals.items():
                writer.writerow({**meta, "signal": signal, **{k: _fmt_csv(v) for k, v in row.items()}})
    return out.getvalue()


def _fmt_csv(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def write_results(folder: Path, document: dict[str, Any], csv_text: str | None = None) -> None:
    """``results.json``, ``results.md`` (and ``utterances.csv``) in ``folder``, each written atomically."""
    atomic_write(folder / "results.json", json.dumps(_jsonable(document), indent=1) + "\n")
    atomic_write(folder / "results.md", markdown(document) + "\n")
    if csv_text is not None:
        atomic_write(folder / "utterances.csv", csv_text)


# -- markdown --
def _cell(stat: Mapping[str, Any] | None, digits: int = 2) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    ci = stat.get("ci95")
    return f"{stat['mean']:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")


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
        cells = [_label(group), str(n), _cell(by_signal["mixture"]["si_snr"])]
        cells += [_cell(by_signal[s]["si_snri"]) for s in signals if s != "mixture"]
        cells += [f"{by_signal[s]['max_abs_diff']['max']:.1e}" for s in streams]
        lines.append("| " + " | ".join(cells) + " |")
    metrics = [m for m in ("si_snri", "sdri", "pesq", "stoi", "si_snr", "sdr") if m in groups[ALL]["mixture"]]
    quality = ["", "| group | signal | " + " | ".join(LABELS[m] for m in metrics) + " |",
               "|---|---|" + "---:|" * len(metrics)]
    for group, by_signal in groups.items():
        if group != ALL and not group.startswith("split:"):
            continue
        for signal in signals:
            values = [_cell(by_signal[signal].get(m), 3 if m == "stoi" else 2) for m in metrics]
            if signal == "mixture":
                values = ["—" if m in ("si_snri", "sdri") else v for m, v in zip(metrics, values, strict=True)]
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
        lines += ["| model | look-ahead | width | seed | params (M) | offline SI-SNRi (dB) | streamed SI-SNRi (dB) "
                  "| max \\|streamed − offline\\| |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for model in models:
            overall = model["groups"][ALL]
            streams = list(model["max_abs_diff"])
            streamed = _cell(overall[streams[0]]["si_snri"]) if streams else "—"
            diff = f"{max(model['max_abs_diff'].values()):.1e}" if streams else "—"
            lines.append(f"| {model['name']} | {model['lookahead']} | {model['width']} | {model['seed']} "
                         f"| {model['params'] / 1e6:.2f} | {_cell(overall.get(OFFLINE, {}).get('si_snri'))} "
                         f"| {streamed} | {diff} |")
        lines.append("")
    for model in models:
        lines += [f"## {model['name']}", "", f"`{model['checkpoint']}`: look-ahead {model['lookahead']} frames, width "
                  f"{model['width']}, seed {model['seed']}, step {model['step']}, {model['params'] / 1e6:.2f} M "
                  "parameters.", "", model_markdown(model), ""]
    return "\n".join(lines).rstrip()


def headline_table(document: Mapping[str, Any]) -> str:
    """The SI-SNRi table printed at the end of a run: per noise type and split, every signal, plus max diff."""
    overall = document["si_snri"]
    signals = list(overall)
    lines = ["| test set | n | input SI-SNR (dB) | " + " | ".join(f"{s} SI-SNRi (dB)" for s in signals) + " |",
             "|---|---:|---:|" + "---:|" * len(signals)]
    summary = document["models"][0]["groups"][ALL]["mixture"]["si_snr"]
    rows = [("**all**", {**overall, "n": summary["n"], "input_si_snr": summary["mean"]})]
    rows += [*document["per_split"].items(), *document["per_noise"].items()]
    for name, row in rows:
        lines.append(f"| {name} | {row['n']} | {row['input_si_snr']:.2f} | " + " | ".join(
            f"{row[s]:.2f}" for s in signals) + " |")
    diff = document.get("max_abs_diff")
    if diff is not None:
        lines.append(f"\nmax |streamed − offline| over all utterances: {diff:.2e} "
                     f"({document['max_rel_diff']:.2e} of the offline peak)")
    return "\n".join(lines)


def write_wav(path: Path, audio: torch.Tensor | np.ndarray) -> None:
    """A 16 kHz float WAV, written atomically."""
    import soundfile as sf

    data = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else audio
    atomic_write(path, writer=lambda tmp: sf.write(tmp, np.asarray(data, dtype=np.float32), SAMPLE_RATE,
                                                   subtype="FLOAT", format="WAV"))


# -- the whole run (evaluate.py) --
def spread(count: int, keep: int | None) -> list[int]:
    """``keep`` indices spread evenly over ``range(count)`` (all of them when ``keep`` is None or larger)."""
    if keep is None or keep >= count:
        return list(range(count))
    return sorted({round(i * (count - 1) / max(keep - 1, 1)) for i in range(keep)})


def load_items(datamodule: Any, stage: str = "test", splits: Sequence[str] | None = None,
               max_items: int | None = None) -> list[Item]:
    """The whole utterances of the data module's test (or validation) splits, ``max_items`` per split at most.

    A subset is spread evenly over each split's utterances (they are ordered by length), not its shortest.
    """
    if stage not in ("test", "val"):
        raise ValueError(f"stage={stage!r}: choose test or val")
    datamodule.setup("test" if stage == "test" else "validate")
    sets = datamodule.test_sets if stage == "test" else datamodule.val_sets
    names = [getattr(s, "split", str(i)) for i, s in enumerate(sets)]
    if splits:
        unknown = [s for s in splits if s not in names]
        if unknown:
            raise ValueError(f"splits={list(splits)}: unknown {unknown}; this data has {names}")
        sets = [s for s, name in zip(sets, names, strict=True) if name in splits]
    items = []
    for dataset in sets:
        for index in spread(len(dataset), max_items):
            item = dict(dataset[index])
            length = int(item.get("length", len(item["noisy"])))
            item["noisy"], item["clean"] = item["noisy"][:length].float(), item["clean"][:length].float()
            items.append(item)
    if not items:
        raise ValueError(f"no {stage} utterances in the selected splits {list(splits or names)}")
    return items


def write_examples(folder: Path, enhancer: Enhancer, items: Sequence[Item], count: int, method: str,
                   chunk: int) -> list[Path]:
    """``count`` utterances (spread over the set) as ``<name>/noisy.wav``, ``clean.wav`` and ``enhanced.wav``.

    ``enhanced.wav`` is the streamed output (``method``, ``chunk`` samples per chunk), next to its input.
    """
    written = []
    for index in spread(len(items), count) if count > 0 else []:
        item = items[index]
        where = folder / str(item.get("name", index))
        write_wav(where / "noisy.wav", item["noisy"])
        write_wav(where / "clean.wav", item["clean"])
        write_wav(where / "enhanced.wav", enhance(enhancer, item["noisy"], method, chunk))
        written.append(where / "enhanced.wav")
    return written


@dataclass
class Evaluation:
    """The outcome of :func:`evaluate`: the ``results.json`` document and the per-utterance rows behind it."""

    document: dict[str, Any]
    items: Sequence[Item]
    baselines: list[dict[str, Row]]
    per_model: list[list[dict[str, Row]]]

    def write(self, folder: Path) -> None:
        """``results.json``, ``results.md`` and ``utterances.csv`` in ``folder`` (atomically)."""
        names = [m["name"] for m in self.document["models"]]
        write_results(folder, self.document, utterance_csv(names, self.items, self.baselines, self.per_model))


def evaluate(
    checkpoints: Sequence[Path],
    items: Sequence[Item],
    settings: Settings,
    workers: int = 1,
    threads: int = 1,
    describe: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    journal: Path | None = None,
) -> Evaluation:
    """Evaluate every checkpoint on ``items`` (see :func:`results_document` for what the document holds).

    ``describe`` adds entries (test set name, ...) to the document's ``settings``. With a ``journal`` file, the
    utterance evaluations it holds from an interrupted run of the same work are not computed again.
    """
    log_of = Journal(journal, fingerprint(items, checkpoints, settings, threads)) if journal is not None else None
    if log_of is not None and log_of.done:
        log.info("resuming: %d of %d utterance evaluations done before (%s)", len(log_of.done),
                 len(items) * (len(checkpoints) + 1), journal)
    try:
        baselines, per_model = run_all(items, checkpoints, settings, workers, threads, progress, log_of)
    finally:
        if log_of is not None:
            log_of.close()
    names = model_names(checkpoints)
    models = []
    for path, name, rows in zip(checkpoints, names, per_model, strict=True):
        info = {"name": name, **checkpoint_info(path, Enhancer.from_checkpoint(path).model)}
        models.append(evaluate_model_summary(info, items, baselines, rows))
    settings_doc = {
        **(describe or {}),
        "utterances": len(items),
        "methods": list(settings.methods),
        "metrics": list(settings.metrics),
        "chunk_samples": settings.chunk,
        "threads_per_worker": threads,
        "torch": torch.__version__,
    }
    return Evaluation(results_document(models, settings_doc), items, baselines, per_model)
