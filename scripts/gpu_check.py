"""The GPU path, checked on one GPU in a few minutes: a bf16-mixed training fit, a DDP fit, CUDA streams.

    python -m scripts.gpu_check                     # the demo corpus if built, else a generated one
    python -m scripts.gpu_check --corpus /data/demo --steps 200 --batches 1 64 256

1. ``trainer=gpu`` (bf16-mixed): ``--steps`` optimizer steps of the default causal U-Net (batch 8 x 2 s) through
   ``stmc.training.run.train``, timed with ``scripts.train_throughput.PhaseTimer``: steps/s and peak GPU memory.
2. ``trainer=ddp`` on one device: a short fit through the same entry point (the strategy, its launcher and
   synchronised BatchNorm run end to end).
3. STMC streaming on CUDA (the engine on PyTorch operators: the native step is CPU-only) of the default causal
   and non-causal models, one hop per call at each batch size: ms per hop (median of CUDA-synchronised calls)
   and max |stream - offline| over a 2 s spectrum.

Ends with one table. Without a CUDA GPU it prints one line saying so and exits 0. Where the demo corpus is
missing (``make corpus`` needs Debian packages a GPU node may lack), a small generated corpus in the same
layout is used and the table says so: steps/s and memory do not depend on what the audio is.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def fit(overrides: list[str], steps: int, corpus: Path, folder: Path) -> dict[str, Any]:
    """A short ``train(cfg)`` (``scripts.train_throughput.timed_fit``); steps/s, peak GPU memory (MiB), final loss."""
    from scripts.train_throughput import seconds_per_step, timed_fit

    warmup = min(10, max(1, steps // 4))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    cfg, metrics, record = timed_fit(
        [*overrides, f"data.root={corpus}", "logger=csv", "callbacks.progress_bar.refresh_rate=0"],
        warmup,
        steps - warmup,
        folder,
    )
    return {
        "steps": steps,
        "steps_per_s": 1 / seconds_per_step(record["times"]),
        "seconds": time.perf_counter() - started,
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan"),
        "loss": metrics.get("train/loss", float("nan")),
        "precision": str(cfg.trainer.precision),
    }


def stream_check(lookahead: int, batch: int, device: str, hops: int = 50) -> dict[str, Any]:
    """ms per one-hop call of a CUDA STMC stream (operator engine) and max |stream - offline| on 2 s."""
    import stmc

    torch.manual_seed(0)
    model = stmc.UNet(lookahead=lookahead).eval().to(device)
    frames = 125
    spec = torch.randn(batch, 2, model.n_freq, frames, device=device)
    with torch.no_grad():
        offline = model(spec)
        stream = stmc.streaming(model, "stmc", native=False)
        streamed = torch.cat([*(stream(spec[..., t : t + 1]) for t in range(frames)), stream.flush()], -1)
        diff = float((streamed - offline).abs().max())
        stream.reset()
        hop = spec[..., :1]
        times = []
        for i in range(hops + 5):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            stream(hop)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= 5:
                times.append(time.perf_counter() - started)
    return {"lookahead": lookahead, "batch": batch, "ms_per_hop": 1e3 * statistics.median(times), "max_diff": diff}


def report(fits: dict[str, dict[str, Any]], streams: list[dict[str, Any]], device: str, corpus_note: str) -> str:
    """The check's table (markdown)."""
    lines = [
        f"GPU check on {device}, torch {torch.__version__}; corpus: {corpus_note}.",
        "",
        "| fit | precision | steps | steps/s | peak GPU memory (MiB) | wall (s) | final loss |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in fits.items():
        lines.append(
            f"| {name} | {r['precision']} | {r['steps']} | {r['steps_per_s']:.2f} | {r['peak_mib']:.0f} "
            f"| {r['seconds']:.0f} | {r['loss']:.3f} |"
        )
    lines += [
        "",
        "| STMC stream (operators) | batch | ms per hop (median) | ms per stream-hop | max abs(stream - offline) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in streams:
        kind = "causal" if r["lookahead"] == 0 else f"look-ahead {r['lookahead']}"
        lines.append(
            f"| {kind} | {r['batch']} | {r['ms_per_hop']:.3f} | {r['ms_per_hop'] / r['batch']:.4f} "
            f"| {r['max_diff']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=ROOT / "demo_corpus", help="a corpus in the demo layout")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps of the trainer=gpu fit")
    parser.add_argument("--ddp-steps", type=int, default=20, help="optimizer steps of the trainer=ddp fit")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256], help="stream batch sizes")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) and the numbers (JSON) here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing to check")
        return 0
    device = f"cuda ({torch.cuda.get_device_name(0)})"
    with tempfile.TemporaryDirectory() as scratch:
        corpus, note = args.corpus, str(args.corpus)
        if not (corpus / "train").is_dir():
            from stmc.data.synthetic import demo_like_tree

            corpus, note = Path(scratch) / "corpus", f"generated (no demo corpus at {args.corpus})"
            demo_like_tree(corpus, train_files=24, seconds=4.0)
        fits = {
            "trainer=gpu": fit(["trainer=gpu"], args.steps, corpus, Path(scratch) / "gpu"),
            "trainer=ddp (1 device)": fit(
                ["trainer=ddp", "trainer.devices=1"], args.ddp_steps, corpus, Path(scratch) / "ddp"
            ),
        }
    streams = [stream_check(lookahead, batch, "cuda") for lookahead in (0, 14) for batch in args.batches]
    text = report(fits, streams, device, note)
    print(text)
    if args.out:
        from stmc.files import atomic_write

        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out / "gpu_check.md", text + "\n")
        atomic_write(args.out / "gpu_check.json", json.dumps({"fits": fits, "streams": streams}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
