"""The paper's Table 1 on this machine: standard (window), INC and STMC streams of the causal and non-causal U-Nets.

    python -m scripts.speed_table --results outputs/evaluate/<run> --out outputs/speed   # SI-SNRi from evaluate.py
    python -m scripts.speed_table --rounds 3 --hops 10                                  # timing only, quicker
    .venv-litert/bin/python -m scripts.speed_table --litert --out outputs/speed         # + the LiteRT rows

Timing, MACs and memory come from the benchmark library (``stmc.bench.speed.measure``): one thread, one hop (256
samples, 16 ms) per call, methods interleaved in rounds so that background load hits them alike, medians and
ratios from that one run. Columns (the definitions every report of this project uses):

- algorithmic latency = window + look-ahead x hop (64 ms + D x 16 ms);
- compute latency = median wall time of one streaming step (what a hop waits for its output);
- total latency = algorithmic + compute latency;
- inference time = mean wall time per hop over all timed steps (what streaming costs; real time needs < 16 ms),
  and ``offline (floor)`` = offline inference time / frames;
- peak memory = weights + the stream's state + the most bytes its step allocates at once (not visible inside
  onnxruntime, nor the MACs: ``—`` in that row); for LiteRT rows (``--litert``), the growth of the peak resident
  memory of the process that streams it, from its start to the end of the timed run, as TFLite's benchmark tool
  reports it (:mod:`stmc.bench.litert`);
- model size = the inference weights (float32, BatchNorm folded); MACs per hop are counted, not derived.

STMC runs its native step (``stmc.stream.native``) where it can; ``STMC (tSTMC), PyTorch ops`` is the same engine on
PyTorch operators, as INC and standard run, so its ratios separate the algorithm from the kernel. For the causal
model, ``STMC (without tSTMC), PyTorch ops`` streams the same architecture with ``tstmc=False`` (the decoder
transposed in time, streamed by overlap-add); the tSTMC latency gain and peak-memory ratio compare it with the
tSTMC engine on the same operators, next to the paper's 0.57 ms and -20 %.

SI-SNRi: the mean offline SI-SNRi of the evaluated checkpoints with that look-ahead and width (``--results``);
the three streams give the same output (they equal offline within 1e-5), so they share it.
Writes ``speed_table.md``, ``speed_table.csv`` and ``speed_table.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scripts.common import architecture, depth_of, evaluated_models, mean_si_snri, weight_bytes, write_csv
from stmc.bench.speed import ABLATION, OPS, Row, floor_row, measure
from stmc.bench.throughput import gemm_rate
from stmc.files import atomic_write
from stmc.model.stft import HOP, N_FFT, SAMPLE_RATE
from stmc.model.unet import UNet
from stmc.stream.native import unavailable as native_unavailable

MODELS = ("causal", "non-causal")  # look-ahead 0 and 2 x depth (14 frames for the paper's depth 7)
LABELS = {"window": "standard (window)", "inc": "INC", "stmc": "STMC (tSTMC)", "full": "offline ÷ frames (floor)"}
# Ratios the paper quotes for Table 1 (TFLite on a desktop CPU; not comparable in absolute terms).
PAPER = {
    "causal": {"latency standard÷INC": 29.74, "latency INC÷STMC": 2.52},
    "non-causal": {"latency standard÷INC": 8.00, "latency INC÷STMC": 1.32},
    "inference time INC÷STMC": 5.68,
    # the causal decoder with tSTMC against without: "only a slight improvement in latency (0.57 ms), but it
    # reduces the peak memory consumption by approximately 20 %"
    "tSTMC latency gain (ms)": 0.57,
    "tSTMC peak memory ratio": 0.80,
}
HOP_MS = HOP / SAMPLE_RATE * 1000
KINDS = ("bf16", "PyTorch ops", "without tSTMC", "compiled", "onnxruntime", "onnxruntime int8", "LiteRT", "LiteRT int8")


def label(method: str) -> str:
    """``inc`` -> ``INC``, ``stmc (onnxruntime)`` -> ``STMC (tSTMC), onnxruntime``; offline rows are the floor."""
    if method.startswith(ABLATION):
        return "STMC (without tSTMC), " + (method[len(ABLATION) :].strip(" ()") or "PyTorch ops")
    base, _, variant = method.partition(" ")
    return LABELS[base] + (f", {variant.strip('()')}" if variant else "")


def records(name: str, model: UNet, rows: Sequence[Row], si_snri: float | None, n_models: int) -> list[dict]:
    """Table rows of one model: the streams (window, INC, STMC, then compiled ones) and the offline floor."""
    lookahead = model.receptive_field[1]
    algorithmic = (N_FFT + lookahead * HOP) / SAMPLE_RATE * 1000
    weights = weight_bytes(model)
    by = {row.method: row for row in rows}
    floor = floor_row(list(rows))
    order = [m for m in ("window", "inc", "stmc") if m in by]
    order += [f"{base} ({kind})" for kind in KINDS for base in ("window", "inc", "stmc") if f"{base} ({kind})" in by]
    order += [f"{ABLATION} (LiteRT)"] if f"{ABLATION} (LiteRT)" in by else []
    out = []
    for method in order:
        row = by[method]
        mean_ms = statistics.fmean(row.seconds) * 1e3
        out.append(
            {
                "model": name,
                "method": method,
                "label": label(method),
                "lookahead": lookahead,
                "si_snri_db": si_snri,
                "si_snri_models": n_models,
                "algorithmic_latency_ms": algorithmic,
                "compute_latency_ms": row.median_ms,
                "total_latency_ms": algorithmic + row.median_ms,
                "inference_time_ms": mean_ms,
                "real_time_factor": mean_ms / HOP_MS,
                # tensor bytes plus the weights, or (LiteRT) a process's resident growth, which holds them already
                "peak_memory_mb": None
                if row.peak_bytes is None
                else (row.peak_bytes + (0 if row.resident else weights)) / 1e6,
                "model_size_mb": weights / 1e6,
                "macs_per_hop_m": None if row.macs is None else row.macs / 1e6,
                "state_kib": row.state_bytes / 1024,
                "timed_steps": len(row.seconds),
            }
        )
    out.append(
        {
            "model": name,
            "method": floor.method,
            "lookahead": lookahead,
            "label": label(floor.method),
            "si_snri_db": si_snri,
            "si_snri_models": n_models,
            "algorithmic_latency_ms": None,
            "compute_latency_ms": None,
            "total_latency_ms": None,
            "inference_time_ms": statistics.fmean(floor.seconds) * 1e3,
            "real_time_factor": statistics.fmean(floor.seconds) * 1e3 / HOP_MS,
            "peak_memory_mb": None,
            "model_size_mb": weights / 1e6,
            "macs_per_hop_m": floor.macs / 1e6,
            "state_kib": None,
            "timed_steps": len(floor.seconds),
        }
    )
    return out


def ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: the latency reductions standard -> INC -> STMC and the inference-time ratio INC / STMC, and the
    tSTMC ablation's gain; with LiteRT rows, the same ratios among those (model ``<name>, LiteRT``)."""
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        by = {r["method"]: r for r in rows if r["model"] == name}
        if not all(m in by for m in ("window", "inc", "stmc")):
            continue
        ops = by.get(OPS)  # the STMC engine on PyTorch operators, like INC and window: same kernels, algorithm only
        out.append(
            {
                "model": name,
                **method_ratios(name, by["window"], by["inc"], by["stmc"]),
                "compute latency INC÷STMC (PyTorch ops)": ops
                and by["inc"]["compute_latency_ms"] / ops["compute_latency_ms"],
                "compute latency standard÷STMC (PyTorch ops)": ops
                and by["window"]["compute_latency_ms"] / ops["compute_latency_ms"],
                **tstmc_ratios(ops or by["stmc"], by.get(ABLATION)),  # both on PyTorch operators
            }
        )
        if all(f"{m} (LiteRT)" in by for m in ("window", "inc", "stmc")):
            window, inc, stmc = (by[f"{m} (LiteRT)"] for m in ("window", "inc", "stmc"))
            out.append(
                {
                    "model": f"{name}, LiteRT",
                    **method_ratios(name, window, inc, stmc),
                    "peak memory STMC÷INC": peak_ratio(stmc, inc),
                    **tstmc_ratios(stmc, by.get(f"{ABLATION} (LiteRT)")),
                }
            )
    return out


def tstmc_ratios(tstmc: dict[str, Any], ablation: dict[str, Any] | None) -> dict[str, Any]:
    """The ablation's comparison (tSTMC against the same architecture without it, in one runtime), next to the
    paper's; all None without an ablation row."""
    return {
        "tSTMC latency gain (ms)": ablation and ablation["compute_latency_ms"] - tstmc["compute_latency_ms"],
        "paper tSTMC latency gain (ms)": PAPER["tSTMC latency gain (ms)"] if ablation else None,
        "tSTMC÷no-tSTMC peak memory": ablation and peak_ratio(tstmc, ablation),
        "tSTMC÷no-tSTMC state": ablation and tstmc["state_kib"] / ablation["state_kib"],
        "paper tSTMC÷no-tSTMC peak memory": PAPER["tSTMC peak memory ratio"] if ablation else None,
    }


def peak_ratio(row: dict[str, Any], other: dict[str, Any]) -> float | None:
    """``row``'s peak memory over ``other``'s, where both were measured."""
    if row["peak_memory_mb"] is None or other["peak_memory_mb"] is None:
        return None
    return row["peak_memory_mb"] / other["peak_memory_mb"]


def method_ratios(name: str, window: dict[str, Any], inc: dict[str, Any], stmc: dict[str, Any]) -> dict[str, Any]:
    """The Table 1 ratios of three rows of one runtime, next to the paper's."""
    paper = PAPER.get(name, {})
    return {
        "compute latency standard÷INC": window["compute_latency_ms"] / inc["compute_latency_ms"],
        "compute latency INC÷STMC": inc["compute_latency_ms"] / stmc["compute_latency_ms"],
        "compute latency standard÷STMC": window["compute_latency_ms"] / stmc["compute_latency_ms"],
        "total latency standard÷STMC": window["total_latency_ms"] / stmc["total_latency_ms"],
        "inference time INC÷STMC": inc["inference_time_ms"] / stmc["inference_time_ms"],
        "paper latency standard÷INC": paper.get("latency standard÷INC"),
        "paper latency INC÷STMC": paper.get("latency INC÷STMC"),
        "paper inference time INC÷STMC": PAPER["inference time INC÷STMC"],
    }


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(rows: Sequence[dict[str, Any]], ratio_rows: Sequence[dict[str, Any]], header: str) -> str:
    """The table and the ratios, with the measurement conditions above them."""
    lines = [
        header,
        "",
        "| model | method | SI-SNRi (dB) | algorithmic latency (ms) | compute latency (ms/hop, median) "
        "| total latency (ms) | inference time (ms/hop, mean) | real-time factor | peak memory (MB) "
        "| model size (MB) | MACs per hop (M) | state (KiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        si = _fmt(r["si_snri_db"]) + (f" (n={r['si_snri_models']})" if r["si_snri_db"] is not None else "")
        lines.append(
            f"| {r['model']} | {r['label']} | {si} | {_fmt(r['algorithmic_latency_ms'], 0)} "
            f"| {_fmt(r['compute_latency_ms'], 3)} | {_fmt(r['total_latency_ms'], 1)} "
            f"| {_fmt(r['inference_time_ms'], 3)} | {_fmt(r['real_time_factor'], 3)} | {_fmt(r['peak_memory_mb'])} "
            f"| {_fmt(r['model_size_mb'])} | {_fmt(r['macs_per_hop_m'], 1)} | {_fmt(r['state_kib'], 1)} |"
        )
    if ratio_rows:
        keys = list(dict.fromkeys(k for r in ratio_rows for k in r if k != "model"))
        lines += ["", "| model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
        for r in ratio_rows:
            lines.append(
                f"| {r['model']} | "
                + " | ".join(
                    _fmt(r.get(k)) + ("×" if r.get(k) is not None and not k.endswith("(ms)") else "") for k in keys
                )
                + " |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.speed_table", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", nargs="*", default=[], help="results.json files or folders (SI-SNRi column)")
    parser.add_argument("--out", type=Path, default=None, help="folder for speed_table.{md,csv,json}")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument(
        "--width",
        type=float,
        default=None,
        help="channel multiplier of the timed U-Nets (default: the evaluated models' most common width, else 1.0)",
    )
    parser.add_argument("--frames", type=int, default=256, help="sequence length of the offline floor")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (medians over all of them)")
    parser.add_argument("--hops", type=int, default=20, help="streamed hops per method per round")
    parser.add_argument("--compile", action="store_true", help="also torch.compile'd streams (~1 min each)")
    parser.add_argument("--onnx", action="store_true", help="also the exported STMC step in onnxruntime")
    parser.add_argument(
        "--litert",
        action="store_true",
        help="also the standard, INC and STMC steps exported to LiteRT, each in a process of its "
        "own (needs the converter: make litert, then run with .venv-litert/bin/python)",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    evaluated = evaluated_models(args.results)
    if args.width is None:
        widths = [m["width"] for m in evaluated]
        args.width = max(set(widths), key=lambda w: (widths.count(w), w)) if widths else 1.0
    started = time.perf_counter()
    rows = []
    for name in args.models:
        lookahead = 0 if name == "causal" else 2 * depth_of(evaluated)
        model = architecture([m for m in evaluated if m["tstmc"]], lookahead, args.width)
        measured = measure(
            model,
            args.frames,
            args.rounds,
            args.hops,
            args.compile,
            args.onnx,
            ablation=name == "causal",
            litert=args.litert,
        )
        si_snri, n_models = mean_si_snri(evaluated, lookahead, args.width)
        ablation_si_snri = mean_si_snri(evaluated, lookahead, args.width, tstmc=False)
        for row in records(name, model, measured, si_snri, n_models):
            if row["method"].startswith(ABLATION):  # its own checkpoints (tstmc=false), when evaluated
                row["si_snri_db"], row["si_snri_models"] = ablation_si_snri
            rows.append(row)
    ratio_rows = ratios(rows)
    roof = gemm_rate(torch.float32)  # the floor every row is also read against: torch.mm 1024³ on these threads
    why = native_unavailable()
    stmc_kernel = "native step" if why is None else f"on PyTorch operators ({why})"
    header = (
        f"Speed on {platform.machine()} CPU ({torch.get_num_threads()} thread), torch {torch.__version__}; "
        f"width {args.width}; {args.rounds} rounds x {args.hops} hops per method, interleaved; chunk = 1 hop "
        f"(256 samples, 16 ms); STMC {stmc_kernel}; fp32 GEMM roof (torch.mm 1024³) {roof / 1e9:.1f} GMAC/s; "
        f"measured in {time.perf_counter() - started:.0f} s. Paper "
        "ratios: TFLite on a desktop CPU (Table 1), for comparison of ratios only."
        + (
            " LiteRT rows: ai-edge-litert's interpreter (XNNPACK, 1 thread), each in a process of its own; "
            "their peak memory is that process's growth of peak resident memory from its start to the end of "
            "the timed run (weights and runtime buffers included), as TFLite's benchmark tool reports its "
            "'memory footprint delta'."
            if args.litert
            else ""
        )
    )
    table = markdown(rows, ratio_rows, header)
    print(table)
    document = {
        "header": header,
        "rows": rows,
        "ratios": ratio_rows,
        "paper": PAPER,
        "threads": args.threads,
        "rounds": args.rounds,
        "hops": args.hops,
        "width": args.width,
        "gemm_roof_gmacs": roof / 1e9,
    }
    if args.out is not None:
        atomic_write(args.out / "speed_table.md", table + "\n")
        atomic_write(args.out / "speed_table.json", json.dumps(document, indent=1) + "\n")
        write_csv(args.out / "speed_table.csv", rows)
    return document


if __name__ == "__main__":
    main()
