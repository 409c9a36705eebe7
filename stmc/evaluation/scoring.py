"""Scoring: each utterance enhanced by every method and scored, over many utterances in worker processes,
with a journal so that an interrupted evaluation resumes."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal as signals_os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import active_children, get_context
from pathlib import Path
from typing import Any

import torch

import stmc.export
from stmc.errors import InputError
from stmc.evaluation import dnsmos
from stmc.evaluation.metrics import si_snr, si_snri
from stmc.evaluation.references import REFERENCE_SYSTEMS, wiener
from stmc.evaluation.settings import OFFLINE, Item, Row, Settings
from stmc.model.enhancer import Enhancer, EnhancerStream
from stmc.model.stft import SAMPLE_RATE
from stmc.model.unet import architecture
from stmc.stream.driver import Stream
from stmc.stream.engines import METHODS

log = logging.getLogger("stmc.evaluation")


def enhance(enhancer: Enhancer, noisy: torch.Tensor, method: str, chunk: int, graph: str | None = None) -> torch.Tensor:
    """``[N]`` -> ``[N]``: offline over the whole utterance, or streamed in chunks of ``chunk`` samples (by an engine,
    or for the methods ``onnx`` / ``litert`` by the exported ``graph``)."""
    x = noisy.reshape(1, -1)
    with torch.inference_mode():
        if method == OFFLINE:
            return enhancer(x)[0]
        stream = enhancer.stream(method) if graph is None or method in METHODS else graph_stream(enhancer, graph)
        outs = [stream(part) for part in x.split(chunk, -1)]
        out = torch.cat([*outs, stream.flush()], -1)[0]
    if out.shape[-1] != x.shape[-1]:
        raise RuntimeError(f"the {method} stream returned {out.shape[-1]} samples for {x.shape[-1]}")
    return out


_GRAPHS: dict[str, tuple[dict, Stream]] = {}  # an exported graph's model config and runtime session, opened once


def graph_stream(enhancer: Enhancer, graph: str) -> EnhancerStream:
    """The enhancer's STFT around the exported ``graph`` (a fresh stream; the session is opened once per process),
    which must have been exported from this enhancer's architecture."""
    if graph not in _GRAPHS:
        _GRAPHS[graph] = json.loads(stmc.export.read_metadata(graph)["model_config"]), stmc.export.open(graph)
    config, frames = _GRAPHS[graph]
    if architecture(config) != architecture(enhancer.model.config):
        raise InputError(
            f"graph={graph} was exported from another architecture ({config}); the checkpoint's is "
            f"{enhancer.model.config}: export it with python -m stmc.export <file> --ckpt <checkpoint>"
        )
    return EnhancerStream(enhancer, frames)


def _pesq(estimate: torch.Tensor, clean: torch.Tensor) -> float:
    import pesq as pesq_backend
    from torchmetrics.functional.audio import perceptual_evaluation_speech_quality

    try:
        return float(perceptual_evaluation_speech_quality(estimate, clean, SAMPLE_RATE, "wb"))
    except pesq_backend.PesqError:  # e.g. no speech found: the utterance counts as missing for PESQ only
        return math.nan


def score(estimate: torch.Tensor, noisy: torch.Tensor, clean: torch.Tensor | None, metrics: Sequence[str]) -> Row:
    """Scores of one enhanced utterance ``[N]`` (improvements relative to the mixture ``noisy``); without a
    ``clean`` reference, only the non-intrusive ones (DNSMOS)."""
    from torchmetrics.functional.audio import short_time_objective_intelligibility, signal_distortion_ratio

    row: Row = dnsmos.scores(estimate) if "dnsmos" in metrics else {}
    if clean is None:
        return row
    est, mix, ref = estimate.reshape(1, -1).float(), noisy.reshape(1, -1), clean.reshape(1, -1)
    row.update(si_snr=float(si_snr(est, ref)), si_snri=float(si_snri(est, mix, ref)))
    if "sdri" in metrics:
        sdr_est = float(signal_distortion_ratio(est.double(), ref.double()))
        sdr_mix = float(signal_distortion_ratio(mix.double(), ref.double()))
        row.update(sdr=sdr_est, sdri=sdr_est - sdr_mix)
    if "pesq" in metrics:
        row["pesq"] = _pesq(est[0], ref[0])
    if "stoi" in metrics:
        row["stoi"] = float(short_time_objective_intelligibility(est[0], ref[0], SAMPLE_RATE))
    return row


def timed(enhance_fn: Callable[[], torch.Tensor], samples: int) -> tuple[torch.Tensor, float]:
    """``enhance_fn()`` and its real-time factor: wall-clock seconds per second of the ``samples`` enhanced."""
    started = time.perf_counter()
    out = enhance_fn()
    return out, (time.perf_counter() - started) / max(samples / SAMPLE_RATE, 1e-9)


def evaluate_baselines(item: Item, settings: Settings) -> dict[str, Row]:
    """Scores of the mixture itself, the untrained Wiener filter and the reference systems on one utterance; each
    enhancer's row carries its real-time factor ``rtf``."""
    noisy, clean = item["noisy"], item.get("clean")
    if "dnsmos" in settings.metrics and 0 < noisy.numel() < dnsmos.WINDOW:
        log.warning(
            "DNSMOS: %s is %.2f s, shorter than DNSMOS's %.2f s window; it is scored on the recording repeated to "
            "fill the window (as the DNS Challenge's reference does), which says little about a short recording",
            item.get("name", "an utterance"),
            noisy.numel() / SAMPLE_RATE,
            dnsmos.SECONDS,
        )
    rows = {"mixture": score(noisy, noisy, clean, settings.metrics)}
    enhancers = {"wiener": lambda x: wiener(x.reshape(1, -1))[0]}
    enhancers.update({name: REFERENCE_SYSTEMS[name].start() for name in settings.references})  # loaded: not timed
    for name, enhancer in enhancers.items():
        out, rtf = timed(lambda enhancer=enhancer: enhancer(noisy), noisy.numel())
        rows[name] = {**score(out, noisy, clean, settings.metrics), "rtf": rtf}
    return rows


def evaluate_utterance(enhancer: Enhancer, item: Item, settings: Settings) -> dict[str, Row]:
    """Scores of every method on one utterance, with its real-time factor ``rtf``; streamed rows also carry
    ``max_abs_diff`` to offline."""
    noisy, clean = item["noisy"], item.get("clean")
    outputs, rtfs = {}, {}
    if settings.graph is not None:
        graph_stream(enhancer, settings.graph)  # opened before the timing: the session loads once per process
    for method in (OFFLINE, *settings.streams):
        outputs[method], rtfs[method] = timed(
            lambda method=method: enhance(enhancer, noisy, method, settings.chunk, settings.graph), noisy.numel()
        )
    rows = {m: {**score(out, noisy, clean, settings.metrics), "rtf": rtfs[m]} for m, out in outputs.items()}
    peak = float(outputs[OFFLINE].abs().max())
    for method in settings.streams:
        diff = float((outputs[method] - outputs[OFFLINE]).abs().max()) if noisy.numel() else 0.0
        rows[method].update(max_abs_diff=diff, max_rel_diff=diff / peak if peak > 0 else 0.0)
    return rows


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
        "settings": [list(settings.methods), list(settings.metrics), settings.chunk, graph_identity(settings.graph)],
        "threads": threads,
    }
    return hashlib.sha1(json.dumps(described).encode()).hexdigest()


def graph_identity(graph: str | None) -> list | None:
    """An exported graph's path, size and modification time (None without one): part of the fingerprint."""
    if graph is None:
        return None
    stat = Path(graph).stat()
    return [str(graph), stat.st_size, stat.st_mtime_ns]


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
        others = set(active_children())  # the caller's own child processes, never stopped here
        pool = ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=_init_pool_worker, initargs=args
        )
        try:
            futures = [pool.submit(_task, task) for task in ordered]
            collect(future.result() for future in futures)
        except BaseException:  # Ctrl-C or a failed task: stop the workers now rather than after their tasks
            for process in set(active_children()) - others:
                process.terminate()
            pool.shutdown(wait=True)  # the pool sees its workers gone and fails the unfinished tasks
            raise
        pool.shutdown()
    n = len(items)
    return results[:n], [results[n * (m + 1) : n * (m + 2)] for m in range(len(checkpoints))]
