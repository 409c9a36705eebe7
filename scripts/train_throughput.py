"""Where training time goes: steps/s, audio seconds per second, the share of a step spent waiting for data,
in forward, backward and the optimizer, and the MAC rate reached against this machine's own GEMM rate.

    python -m scripts.train_throughput experiment=quickstart                  # any train.py overrides
    python -m scripts.train_throughput experiment=quickstart --against ../old # side by side with another checkout
    python -m scripts.train_throughput experiment=quickstart trainer.precision=32-true --rounds 5 --steps 40
    python -m scripts.train_throughput experiment=quickstart --vary threads=1 --vary threads=2   # settings side by side

Each measurement is a fresh ``train.py``-equivalent process (``stmc.training.run.train`` with the given overrides,
no validation, no test) that times ``--steps`` optimizer steps after ``--warmup`` steps with Lightning hooks:
*data* is the loop's time between one step's end and the next step's start (fetching the batch), *forward*
runs up to the loss, *backward* is ``loss.backward()``, *optimizer* is gradient norm, clipping, the optimizer
step and logging. MACs are counted (``torch.utils.flop_counter``: convolutions and matrix products, forward and
backward, one step) and compared with the GEMM rate (``torch.mm`` of 1024 x 1024 matrices, fp32 and bf16,
at the training's thread count) measured by the same process: the roof of the precision it trained in.
With ``--against DIR`` each round also measures the same overrides with the code of the checkout ``DIR``
(its ``stmc`` package, configs included: a commit of this layout), interleaved, and prints the ratio of
steps per second; each ``--vary
"key=value ..."`` adds a variant with those overrides on top of the others, measured the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from stmc.bench.throughput import gemm_rate

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("data", "forward", "backward", "optimizer")


class PhaseTimer(pl.Callback):
    """Times each optimizer step's phases after ``warmup`` steps; counts the MACs of the last warm-up step."""

    def __init__(self, warmup: int, out: str) -> None:
        self.warmup, self.out = warmup, out
        self.times: dict[str, list[float]] = {phase: [] for phase in PHASES}
        self.marks: dict[str, float] = {}
        self.counter: Any = None
        self.macs = 0.0
        self.batch_shape: list[int] = []

    def _timing(self, trainer: pl.Trainer) -> bool:
        return trainer.global_step >= self.warmup

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, idx: int) -> None:
        now = time.perf_counter()
        if self._timing(trainer) and "end" in self.marks:
            self.times["data"].append(now - self.marks["end"])
        self.marks["start"] = now
        self.batch_shape = list(batch["noisy"].shape)
        if trainer.global_step == self.warmup - 1:
            from torch.utils.flop_counter import FlopCounterMode

            self.counter = FlopCounterMode(display=False)
            self.counter.__enter__()

    def on_before_backward(self, trainer: pl.Trainer, module: pl.LightningModule, loss: torch.Tensor) -> None:
        self.marks["forward"] = time.perf_counter()

    def on_after_backward(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.marks["backward"] = time.perf_counter()
        if self.counter is not None:
            self.counter.__exit__(None, None, None)
            self.macs = self.counter.get_total_flops() / 2
            self.counter = None

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        now = time.perf_counter()
        if self._timing(trainer) and trainer.global_step > self.warmup:  # global_step already counts this one
            self.times["forward"].append(self.marks["forward"] - self.marks["start"])
            self.times["backward"].append(self.marks["backward"] - self.marks["forward"])
            self.times["optimizer"].append(now - self.marks["backward"])
        self.marks["end"] = now

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        Path(self.out).write_text(
            json.dumps(
                {
                    "times": self.times,
                    "macs": self.macs,
                    "batch_shape": self.batch_shape,
                    "precision": str(trainer.precision),
                    "threads": torch.get_num_threads(),
                }
            )
        )


def timed_fit(overrides: list[str], warmup: int, steps: int, folder: Path) -> tuple[Any, dict[str, float], dict]:
    """``train(cfg)`` for ``warmup + steps`` optimizer steps into ``folder``, without validation, test or
    checkpoints, timed by :class:`PhaseTimer`: the composed config, the final metrics and the timer's record."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from stmc.conf import CONFIG_DIR
    from stmc.training.run import train

    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "timing.json"
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                *overrides,
                f"paths.output_dir={folder}",
                f"trainer.max_steps={warmup + steps}",
                "trainer.max_time=null",
                "trainer.limit_val_batches=0",
                "test=false",
                "ckpt_path=null",
            ],
        )
    with open_dict(cfg):
        cfg.callbacks = {
            k: v
            for k, v in (cfg.get("callbacks") or {}).items()
            if v and "ModelCheckpoint" not in str(v.get("_target_", ""))
        }
        # this module's own name: __main__ when it runs as a worker script beside another checkout's stmc
        cfg.callbacks["throughput"] = {
            "_target_": f"{PhaseTimer.__module__}.PhaseTimer",
            "warmup": warmup,
            "out": str(record),
        }
    metrics = train(cfg)
    return cfg, metrics, json.loads(record.read_text())


def seconds_per_step(times: dict[str, list[float]]) -> float:
    """Mean wall time of a timed step: all its phases, the data wait included."""
    return sum(sum(times[phase]) for phase in PHASES) / len(times["forward"])


def worker(out: str, warmup: int, steps: int, overrides: list[str]) -> None:
    """One measurement, in this process: a :func:`timed_fit`, then the GEMM rates; the record goes to ``out``."""
    with tempfile.TemporaryDirectory() as folder:
        cfg, _, result = timed_fit(overrides, warmup, steps, Path(folder))
    result.update(
        gemm_fp32=gemm_rate(torch.float32),
        gemm_bf16=gemm_rate(torch.bfloat16),
        audio_seconds=float(cfg.data.batch_size) * float(cfg.data.segment_seconds),
        code=str(ROOT),
    )
    Path(out).write_text(json.dumps(result))


def measure(code: Path, overrides: list[str], warmup: int, steps: int, log: Path) -> dict[str, Any]:
    """Run :func:`worker` in a fresh process with the code of checkout ``code``; its result as a dict."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = handle.name
    env = {**os.environ, "PYTHONPATH": str(code), "HYDRA_FULL_ERROR": "1"}
    env.setdefault("STMC_DEMO_ROOT", str(ROOT / "demo_corpus"))  # the demo corpus of this checkout
    argv = [sys.executable, __file__, "--worker", out, "--warmup", str(warmup), "--steps", str(steps), *overrides]
    with open(log, "a") as sink:
        done = subprocess.run(argv, cwd=code, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        if done.returncode != 0:
            tail = log.read_text().strip().splitlines()[-1:] or ["?"]
            raise RuntimeError(f"the measurement in {code} failed (exit {done.returncode}): {tail[0]} (log: {log})")
        return json.loads(Path(out).read_text())
    finally:
        Path(out).unlink(missing_ok=True)


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughput and phase shares over the rounds of one variant (medians of per-round values)."""
    per_round = []
    for run in runs:
        totals = {phase: sum(run["times"][phase]) for phase in PHASES}
        steps = len(run["times"]["forward"])
        step = seconds_per_step(run["times"])
        precision = run["precision"]
        roof = run["gemm_bf16"] if precision.startswith("bf16") else run["gemm_fp32"]
        per_round.append(
            {
                "steps_per_s": 1 / step,
                "audio_per_s": run["audio_seconds"] / step,
                **{f"{phase}_share": totals[phase] / (step * steps) for phase in PHASES},
                "gmac_per_step": run["macs"] / 1e9,
                "gmac_per_s": run["macs"] / step / 1e9,
                "gemm_fp32": run["gemm_fp32"] / 1e9,
                "gemm_bf16": run["gemm_bf16"] / 1e9,
                "roof_share": run["macs"] / step / roof,
            }
        )
    result = {key: statistics.median(r[key] for r in per_round) for key in per_round[0]}
    result.update(
        precision=runs[0]["precision"],
        threads=runs[0]["threads"],
        batch=runs[0]["batch_shape"],
        rounds=len(runs),
        steps_per_s_rounds=[r["steps_per_s"] for r in per_round],
    )
    return result


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per variant."""
    lines = [
        "| code | precision | threads | steps/s | audio s/s | data | forward | backward | optimizer "
        "| GMAC/step | GMAC/s | fp32 GEMM GMAC/s | bf16 GEMM GMAC/s | of the GEMM roof |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        shares = " | ".join(f"{100 * r[f'{p}_share']:.1f} %" for p in PHASES)
        lines.append(
            f"| {name} | {r['precision']} | {r['threads']} | {r['steps_per_s']:.2f} | {r['audio_per_s']:.1f} "
            f"| {shares} | {r['gmac_per_step']:.2f} | {r['gmac_per_s']:.1f} | {r['gemm_fp32']:.1f} "
            f"| {r['gemm_bf16']:.1f} | {100 * r['roof_share']:.0f} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.train_throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. experiment=quickstart")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per round (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per variant, interleaved (default 3)")
    parser.add_argument("--against", type=Path, help="another checkout to measure side by side (e.g. a git worktree)")
    parser.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="OVERRIDES",
        help="a variant: these overrides (space-separated) on top of the others; repeatable",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.warmup, args.steps, args.overrides)
        return 0
    if args.steps < 1 or args.warmup < 1 or args.rounds < 1:
        print("error: --steps, --warmup and --rounds must be at least 1", file=sys.stderr)
        return 2
    variants = {"this checkout": (ROOT, args.overrides)}
    if args.against is not None:
        if not (args.against / "stmc").is_dir():
            print(f"error: --against {args.against}: not a checkout of this project (no stmc/)", file=sys.stderr)
            return 2
        variants[f"{args.against}"] = (args.against.resolve(), args.overrides)
    for extra in args.vary:
        variants[f"this checkout, {extra}"] = (ROOT, [*args.overrides, *extra.split()])
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    log = Path(tempfile.gettempdir()) / f"train_throughput-{os.getpid()}.log"
    started = time.perf_counter()
    for round_ in range(args.rounds):
        for name, (code, overrides) in variants.items():
            print(f"round {round_ + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
            try:
                runs[name].append(measure(code, overrides, args.warmup, args.steps, log))
            except RuntimeError as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
    results = {name: summary(r) for name, r in runs.items()}
    print(
        f"Training throughput, {' '.join(args.overrides) or 'defaults'}: {args.rounds} rounds x {args.steps} steps "
        f"(after {args.warmup}) per variant, interleaved, medians; {time.perf_counter() - started:.0f} s in all; "
        f"batch {results['this checkout']['batch']}.\n"
    )
    print(table(results))
    if args.against is not None:
        ratios = [
            a / b
            for a, b in zip(
                results["this checkout"]["steps_per_s_rounds"],
                results[str(args.against)]["steps_per_s_rounds"],
                strict=True,
            )
        ]
        print(
            f"\nsteps/s, this checkout ÷ {args.against}: median {statistics.median(ratios):.2f}x "
            f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
        )
    if args.json:
        from stmc.files import atomic_write

        atomic_write(args.json, json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
