"""``train(cfg)``: build everything from a composed Hydra config and fit; ``train.py`` is a thin wrapper around it.

Config mistakes (an unknown config name, a look-ahead out of range, a missing value, a data root that does not
exist) raise :class:`ConfigError` with one line naming the key and the allowed values, before any training
starts. A non-finite loss raises :class:`TrainingStopped` naming the last good checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from stmc.conf import group_options, missing_keys
from stmc.errors import ConfigError, InputError, StmcError
from stmc.model import checkpoint
from stmc.model.unet import UNet, architecture
from stmc.training.module import NonFiniteLossError

log = logging.getLogger(__name__)

LAST = "last"


class TrainingStopped(StmcError, RuntimeError):
    """Training could not go on (non-finite loss); the message names the last good checkpoint."""


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for a model that cannot be built or a value left unset (``???``)."""
    model = cfg.get("model")
    if not model or "_target_" not in model:
        raise ConfigError(f"model: none selected; allowed values: {', '.join(group_options('model'))}")
    depth = model.get("depth", 7)
    if OmegaConf.is_missing(model, "lookahead"):
        raise ConfigError(f"model.lookahead is required (model=lookahead); allowed values: 0..{2 * depth}")
    lookahead = model.lookahead
    if not isinstance(lookahead, int) or isinstance(lookahead, bool) or not 0 <= lookahead <= 2 * depth:
        raise ConfigError(
            f"model.lookahead={lookahead} is out of range; allowed values: 0..{2 * depth} "
            f"(0 = causal, {2 * depth} = non-causal, 2 * model.depth)"
        )
    missing = missing_keys(OmegaConf.to_container(cfg, resolve=False))
    if missing:
        raise ConfigError(f"{missing[0]} is required (set {missing[0]}=...)")
    data = cfg.get("data") or {}
    for key in ("batch_size", "eval_batch_size"):
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"data.{key}={value} must be a positive integer")


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions and GEMMs on fast kernels (oneDNN's own check: AVX-512 with
    BF16/AMX on x86). Elsewhere bf16 autocast falls back to reference kernels, several times slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


AUTO = "auto"
PRECISIONS_TRIED = ("32-true", "bf16-mixed")
BF16_GAIN = 0.9  # bf16 autocast must time at most this fraction of fp32: a tie within the probe's noise stays fp32


def step_seconds(cfg: DictConfig, precision: str, steps: int = 3, warmup: int = 2) -> float:
    """Median seconds of one forward + backward pass of ``cfg.model`` on a random batch of the configured size
    (``data.batch_size`` x ``data.segment_seconds``) in ``precision`` (``32-true`` or ``bf16-mixed``)."""
    from stmc.model.enhancer import Enhancer
    from stmc.model.stft import SAMPLE_RATE

    data = cfg.get("data") or {}
    samples = int(float(data.get("segment_seconds", 2.0)) * SAMPLE_RATE)
    noisy = torch.randn(int(data.get("batch_size", 4)), samples, generator=torch.Generator().manual_seed(0)) * 0.1
    enhancer = Enhancer(build_model(cfg)).to(memory_format=torch.channels_last)
    times = []
    for i in range(warmup + steps):
        started = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=precision.startswith("bf16")):
            loss = enhancer(noisy).float().square().mean()
        loss.backward()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return float(np.median(times))


def resolve_precision(cfg: DictConfig, probe: Callable[[str], float] | None = None) -> None:
    """Replace ``trainer.precision=auto`` by what trains fastest here, in place. On the CPU that is measured, not
    read from its flags: where the CPU has bf16 kernels, ``probe(precision)`` (default :func:`step_seconds`)
    times a training step in fp32 and in bf16 autocast, and bf16 is taken only when clearly faster (``BF16_GAIN``;
    it rounds, fp32 does not), logged with both times; without bf16 kernels, fp32. On a GPU, bf16 autocast. An
    explicit ``bf16-mixed`` / ``bf16-true`` on a CPU without them is a :class:`ConfigError` (it would run, but far
    slower); any explicit setting otherwise wins."""
    trainer_cfg = cfg.trainer
    precision = str(trainer_cfg.get("precision", "32-true"))
    on_cpu = trainer_cfg.get("accelerator") == "cpu"
    if precision == AUTO:
        if not on_cpu:
            chosen = "bf16-mixed"
        elif cpu_supports_bf16():
            probe = probe if probe is not None else (lambda p: step_seconds(cfg, p))
            seconds = {p: probe(p) for p in PRECISIONS_TRIED}
            chosen = "bf16-mixed" if seconds["bf16-mixed"] <= BF16_GAIN * seconds["32-true"] else "32-true"
            log.info(
                "trainer.precision=auto: a training step takes %s on this CPU (it has bf16 kernels); training in %s",
                ", ".join(f"{1000 * t:.0f} ms in {p}" for p, t in seconds.items()),
                chosen,
            )
        else:
            chosen = "32-true"
            log.info("trainer.precision=auto: this CPU has no bf16 kernels (no AVX-512 BF16/AMX); training in fp32")
        trainer_cfg.precision = chosen
    elif precision in ("bf16-true", "bf16"):
        raise ConfigError(
            f"trainer.precision={precision}: the STFT (torch.fft) has no bf16 kernels, so pure bf16 fails in the "
            "first step; use trainer.precision=bf16-mixed (bf16 autocast) or auto"
        )
    elif on_cpu and precision.startswith("bf16") and not cpu_supports_bf16():
        raise ConfigError(
            f"trainer.precision={precision}: this CPU has no bf16 kernels (no AVX-512 BF16/AMX), so bf16 runs "
            "several times slower than fp32; use trainer.precision=auto or 32-true"
        )


LOADAVG = Path("/proc/loadavg")  # its 4th field: runnable tasks / all tasks


def busy_cores(samples: int = 10, interval: float = 0.1) -> int:
    """Cores kept busy by other processes: the fewest runnable tasks seen in ``samples`` reads of ``/proc/loadavg``,
    less this process (0 where that file does not exist). A busy process is runnable in every read; a passing one
    (a shell command, a compiler) is not, and must not cost a 9-minute training one of its two threads."""
    seen: int | None = None
    for i in range(samples):
        try:
            running = int(LOADAVG.read_text().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return 0
        seen = running - 1 if seen is None else min(seen, running - 1)
        if i + 1 < samples:
            time.sleep(interval)
    return max(0, seen or 0)


def training_threads(setting: int | str | None) -> int:
    """Intra-op threads for training: ``threads=N`` as given, ``auto`` (the default) the cores no other process
    is using at the start (at least 1). All cores beside a busy process make every parallel operator wait for
    its descheduled threads: on 2 cores beside two busy processes, 2 threads trained at half the steps/s of 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if setting in (None, AUTO):
        threads = max(1, cores - busy_cores())
        log.info(
            "threads=auto: %d of %d cores free, training with %d thread%s", threads, cores, threads, "s" * (threads > 1)
        )
        return threads
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ConfigError(f"threads={setting} must be a positive integer or auto")
    return setting


def build_model(cfg: DictConfig) -> UNet:
    """The UNet of ``cfg.model``; its argument errors (the constructor's own, an unknown keyword) become one-line
    :class:`ConfigError`; anything else is a bug and propagates."""
    try:
        return instantiate(cfg.model, _convert_="all")
    except InstantiationException as err:  # Hydra wraps the constructor's exception
        if not isinstance(err.__cause__, StmcError | TypeError):
            raise
        raise ConfigError(f"model: {err.__cause__}".splitlines()[0]) from err


def resolve_checkpoint(ckpt_path: str | None, output_dir: Path, search_siblings: bool) -> str | None:
    """The checkpoint to resume from: a path, or ``last``, this run folder's ``checkpoints/last.ckpt``.

    With ``search_siblings`` (single runs, whose folders are timestamped), ``last`` falls back to the newest
    ``last.ckpt`` among the other runs of the same task (``outputs/<task_name>/*/checkpoints/last.ckpt``).
    No checkpoint found for ``last`` means a fresh start (so that a re-launched sweep resumes what it can).
    """
    if ckpt_path is None:
        return None
    if str(ckpt_path) != LAST:
        if not Path(ckpt_path).is_file():
            raise ConfigError(f"ckpt_path={ckpt_path} does not exist; allowed values: a checkpoint file, last, null")
        return str(ckpt_path)
    own = output_dir / "checkpoints" / "last.ckpt"
    if own.is_file():
        return str(own)
    if search_siblings:
        found = sorted(output_dir.parent.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if found:
            return str(found[-1])
    log.warning(
        "ckpt_path=last: no last.ckpt in %s%s; starting from scratch",
        output_dir,
        " or its sibling runs" if search_siblings else "",
    )
    return None


def check_resumable(path: str, model: UNet) -> None:
    """Raise :class:`ConfigError` unless the checkpoint at ``path`` is readable and holds this config's model."""
    try:
        saved = checkpoint.read(path)[checkpoint.KEY]["model_config"]
    except InputError as err:
        raise ConfigError(f"ckpt_path: {err}") from None
    saved, current = architecture(saved), architecture(model.config)
    differ = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if differ:
        settings = ", ".join(f"model.{k}={saved.get(k)} (this config: {current.get(k)})" for k in differ)
        raise ConfigError(
            f"ckpt_path={path} holds another model: {settings}; resume with the checkpoint's model settings"
        )


def _checkpoint(trainer: pl.Trainer, kind: str) -> str:
    """Path of the best (``kind="best"``) or last checkpoint written so far, or ``""``."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            path = callback.best_model_path if kind == "best" and callback.monitor else ""
            path = path or (callback.last_model_path if kind == "last" else "")
            if path:
                return path
    return ""


def start_logging(logger: Logger, run_config: dict[str, Any]) -> None:
    """Log the run's config, which starts the logger's run; a wandb run that cannot start for want of an account
    is a :class:`ConfigError` naming the ways out."""
    if not isinstance(logger, WandbLogger):
        logger.log_hyperparams(run_config)
        return
    import wandb

    try:
        logger.log_hyperparams(run_config)
    except wandb.errors.UsageError as err:
        raise ConfigError(
            f"logger: {(str(err).splitlines() or ['wandb could not start its run.'])[0]} Or keep logger.offline=true "
            "(the default; no account needed)"
        ) from None


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit ``cfg.module`` (holding ``cfg.model``) on ``cfg.data``; then, if ``cfg.test``, test the best checkpoint.

    Returns the final logged metrics (``val/...``, and ``test/...`` when tested) as floats.
    """
    check_config(cfg)
    torch.set_num_threads(training_threads(cfg.get("threads")))
    resolve_precision(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(cfg)
    datamodule = instantiate(cfg.data, _convert_="all")  # plain containers: the checkpoint stays weights_only
    try:
        datamodule.setup("fit")
    except InputError as err:
        raise ConfigError(str(err).splitlines()[0]) from err
    output_dir = Path(cfg.paths.output_dir)
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    ckpt_path = resolve_checkpoint(cfg.get("ckpt_path"), output_dir, search_siblings=not multirun)
    if ckpt_path:
        check_resumable(ckpt_path, model)
        run_folder = Path(ckpt_path).parent.parent
        if Path(ckpt_path).parent.name == "checkpoints" and run_folder.resolve() != output_dir.resolve():
            # continue in the run's own folder: one run, one folder of checkpoints (what evaluate.py counts)
            log.info("resuming run %s there (this invocation's config and log: %s)", run_folder, output_dir)
            output_dir = run_folder
            with open_dict(cfg):
                cfg.paths.output_dir = str(run_folder)

    run_config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    module = instantiate(cfg.module, model=model)
    module.run_config = run_config
    logger = instantiate(cfg.logger) if cfg.get("logger") and "_target_" in cfg.logger else False
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    if not logger:  # Lightning refuses a learning-rate monitor without a logger: it would have nowhere to write
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    if logger:
        start_logging(logger, run_config)
    log.info("output folder: %s", output_dir)
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    try:
        started = time.monotonic()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        minutes = (time.monotonic() - started) / 60
        rate = f" ({trainer.global_step / minutes:.0f} steps/min)" if not ckpt_path and minutes > 0 else ""
        log.info("step %d after %.1f min of fitting%s", trainer.global_step, minutes, rate)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        best, last = _checkpoint(trainer, "best"), _checkpoint(trainer, "last")
        log.info("best checkpoint: %s", best or "none (no validation ran)")
        log.info("last checkpoint: %s", last or "none")
        if cfg.get("test"):
            results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
            metrics.update({k: float(v) for k, v in results[0].items()})
            log.info("tested checkpoint: %s", best or "the final weights")
    except NonFiniteLossError as err:
        last = _checkpoint(trainer, "last")
        raise TrainingStopped(f"training stopped: {err}; last good checkpoint: {last or 'none saved yet'}") from err
    finally:
        if isinstance(logger, WandbLogger):  # close the run, so that the next one in this process starts afresh
            import wandb

            wandb.finish()
    return metrics
