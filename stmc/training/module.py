"""The LightningModule that trains a U-Net as a complex-mask speech enhancer, and its learning-rate schedule.

Loss: negative SI-SNR of the waveform after the iSTFT (the paper's metric, so training optimises what is
reported), plus an optional power-law-compressed spectral term. The UNet is held as ``self.model`` and the
checkpoint carries :mod:`stmc.model.checkpoint`'s entry, which is all ``stmc.Enhancer.from_checkpoint`` needs.
"""

from __future__ import annotations

import copy
import inspect
import math
import random
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.loggers import WandbLogger
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MeanMetric

from stmc.errors import InputError
from stmc.evaluation.metrics import si_snr
from stmc.evaluation.references import wiener
from stmc.evaluation.settings import ALL
from stmc.evaluation.summary import cell, summarize
from stmc.model import checkpoint as ckpt_format
from stmc.model.enhancer import Enhancer
from stmc.model.stft import SAMPLE_RATE, STFT
from stmc.model.unet import UNet

Batch = Mapping[str, Any]


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradients became NaN/Inf; raised before the optimizer step, so weights stay finite."""


class WarmupCosine(LRScheduler):
    """Linear warm-up, then cosine decay to ``floor`` times the base rate, over the *fraction of the budget used*.

    ``progress()`` returns that fraction in ``[0, 1]``; :class:`EnhancementModule` supplies the larger of
    steps / max_steps (or the epoch budget) and elapsed / max_time. A time-limited run (the CPU quickstart)
    therefore always completes its schedule, however fast the machine; a step-limited run is deterministic.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup: float = 0.05,
        floor: float = 0.01,
        progress: Callable[[], float] | None = None,
    ) -> None:
        if not 0 <= warmup < 1 or not 0 <= floor <= 1:
            raise InputError(f"warmup must be in [0, 1) and floor in [0, 1], got {warmup}, {floor}")
        self.warmup, self.floor = warmup, floor
        self.progress = progress if progress is not None else (lambda: 0.0)
        super().__init__(optimizer)

    def factor(self, p: float) -> float:
        """Learning-rate multiplier at budget fraction ``p``."""
        p = min(max(p, 0.0), 1.0)
        if p < self.warmup:
            return max(p / self.warmup, 1e-3)
        cosine = 0.5 * (1 + math.cos(math.pi * (p - self.warmup) / (1 - self.warmup)))
        return self.floor + (1 - self.floor) * cosine

    def get_lr(self) -> list[float]:
        factor = self.factor(self.progress())
        return [base * factor for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        """Everything but the progress callable (it belongs to the running trainer, and is not a tensor)."""
        state = super().state_dict()
        state.pop("progress", None)
        return state


def rng_states() -> dict[str, Any]:
    """Torch, CUDA, NumPy and Python RNG states as tensors and primitives (safe for ``weights_only`` loading)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss},
        "python": {"version": version, "internal": list(internal), "gauss": python_gauss},
    }


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Inverse of :func:`rng_states`."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    state = states["numpy"]
    np.random.set_state(
        ("MT19937", state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["gauss"])
    )
    state = states["python"]
    random.setstate((state["version"], tuple(state["internal"]), state["gauss"]))


def spectrogram_image(stft: STFT, waves: Mapping[str, torch.Tensor]) -> np.ndarray:
    """RGB image ``[H, W, 3]`` (uint8) of the dB spectrograms of the 1-D waveforms in ``waves``, one row each."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(len(waves), 1, figsize=(8, 2.2 * len(waves)), sharex=True, squeeze=False)
    for ax, (title, wave) in zip(axes[:, 0], waves.items(), strict=True):
        db = stft.spectrogram_db(wave).cpu().numpy()
        extent = (0, db.shape[1], 0, SAMPLE_RATE / 2000)
        ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=db.max() - 80, vmax=db.max(), extent=extent)
        ax.set_ylabel(f"{title}\nkHz")
    axes[-1, 0].set_xlabel(f"frame (hop {stft.hop / SAMPLE_RATE * 1000:.0f} ms)")
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


class TrainingClock(pl.Callback):
    """Logs ``time/train_cpu_minutes`` at each validation: this process's CPU time spent outside validation
    since the fit began (all threads; kept across a resume), the x axis of a learning curve at equal compute."""

    def __init__(self) -> None:
        self.spent = 0.0  # CPU seconds of training before the current stretch
        self.mark: float | None = None  # process time at the start of the current stretch of training
        self.paused = False

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.mark = time.process_time()

    def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.paused = self.mark is not None
        if self.paused:
            self.spent += time.process_time() - self.mark
            self.mark = None

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.paused:  # a validation inside the fit: training goes on
            self.mark = time.process_time()

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        module.log("time/train_cpu_minutes", self.spent / 60)

    def state_dict(self) -> dict[str, float]:
        running = time.process_time() - self.mark if self.mark is not None else 0.0
        return {"spent": self.spent + running}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.spent = float(state_dict["spent"])


class SaveOnInterrupt(pl.Callback):
    """On Ctrl-C (KeyboardInterrupt) during the fit, save ``last.ckpt`` where the last checkpoint goes and say how
    to resume, so that an interrupted run loses nothing, also before its first periodic checkpoint."""

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt) or trainer.state.fn != "fit":
            return
        folders = [c.dirpath for c in trainer.checkpoint_callbacks if getattr(c, "save_last", False) and c.dirpath]
        if not folders:
            return
        path = Path(folders[0]) / "last.ckpt"
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            print(
                f"interrupted at step {trainer.global_step}: saved {path}; resume with ckpt_path=last "
                f"(or ckpt_path={path})",
                file=sys.stderr,
                flush=True,
            )


class EnhancementModule(pl.LightningModule):
    """Train ``model`` (a :class:`stmc.UNet`) to mask the noisy STFT so that the iSTFT matches the clean speech.

    ``optimizer`` and ``scheduler`` are factories (Hydra ``_partial_``): ``optimizer(params)``,
    ``scheduler(optimizer[, progress=...])``, stepped every optimizer step. ``run_config`` (set by the trainer
    script: the resolved training config, plain data) is stored in the checkpoint next to the model config.
    ``channels_last`` stores the convolution weights channels-last, which the CPU (oneDNN) and GPU (cuDNN)
    convolutions run faster (~12 % per training step on CPU); the checkpoint's values are the same.

    ``ema_decay`` > 0 keeps an exponential moving average of the weights and buffers (``self.ema_model``, decay
    ``min(ema_decay, (1 + step) / (10 + step))`` so that early steps are not averaged with the initial values).
    The average is the *inference* model: validation, the best-checkpoint choice, the test and every reader of
    the checkpoint (:func:`stmc.model.checkpoint.model_state`) use it; ``val/si_snri_raw`` scores the trained weights.
    """

    def __init__(
        self,
        model: UNet,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[..., LRScheduler] | None = None,
        spectral_weight: float = 0.0,
        audio_examples: int = 2,
        channels_last: bool = True,
        ema_decay: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 <= ema_decay < 1:
            raise InputError(f"ema_decay must be in [0, 1) (0 = no moving average), got {ema_decay}")
        # only primitives go into the checkpoint's hyper_parameters (weights_only loading)
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        self.model = model
        self.ema_model = copy.deepcopy(model).requires_grad_(False) if ema_decay else None
        self.stft = STFT()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.run_config: dict[str, Any] = {}
        self.val_si_snr, self.val_si_snri, self.val_si_snri_raw = MeanMetric(), MeanMetric(), MeanMetric()
        self.test_rows: list[dict[str, Any]] = []
        self.step_budget = math.inf

    def setup(self, stage: str) -> None:
        if self.hparams.channels_last:
            self.model.to(memory_format=torch.channels_last)
            if self.ema_model is not None:
                self.ema_model.to(memory_format=torch.channels_last)

    # -- the model --
    @property
    def inference_model(self) -> UNet:
        """The weights that are validated, tested and read from the checkpoint: the moving average if kept."""
        return self.ema_model if self.ema_model is not None else self.model

    def forward(self, noisy: torch.Tensor, model: UNet | None = None) -> torch.Tensor:
        """Noisy waveform ``[B, N]`` -> enhanced waveform ``[B, N]`` (STFT, complex mask, iSTFT) by ``model``,
        the inference model by default."""
        return Enhancer(model if model is not None else self.inference_model, self.stft)(noisy)

    @torch.no_grad()
    def update_ema(self) -> None:
        """One step of the moving average towards the current weights (float buffers too; counters copied)."""
        if self.ema_model is None:
            return
        decay = min(self.hparams.ema_decay, (1 + self.global_step) / (10 + self.global_step))
        for average, current in zip(self.ema_model.parameters(), self.model.parameters(), strict=True):
            average.lerp_(current, 1 - decay)
        for average, current in zip(self.ema_model.buffers(), self.model.buffers(), strict=True):
            if average.is_floating_point():
                average.lerp_(current, 1 - decay)
            else:
                average.copy_(current)

    def spectral_loss(self, estimate: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """MSE of the power-law compressed complex spectra plus MSE of their magnitudes (exponent ``compress``)."""
        c = self.model.compress
        est, ref = self.stft.stft(estimate), self.stft.stft(clean)
        est_mag, ref_mag = (est.abs() + 1e-8).pow(c), (ref.abs() + 1e-8).pow(c)
        est_c, ref_c = est * (est_mag / (est.abs() + 1e-8)), ref * (ref_mag / (ref.abs() + 1e-8))
        return (est_c - ref_c).abs().square().mean() + (est_mag - ref_mag).square().mean()

    # -- training --
    def loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss of a batch and its mean SI-SNR (dB): ``-SI-SNR + spectral_weight x spectral MSE``."""
        noisy, clean, length = batch["noisy"], batch["clean"], batch["length"]
        estimate = self(noisy, self.model)
        score = si_snr(estimate.float(), clean, length).mean()
        loss = -score
        if self.hparams.spectral_weight:
            loss = loss + self.hparams.spectral_weight * self.spectral_loss(estimate.float(), clean)
        return loss, score

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, score = self.loss(batch)
        self.stop_unless_finite(loss, "loss")
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/si_snr", score)
        return loss

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """Log the gradient norm (before clipping); stop on a non-finite one, before it reaches the weights."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        self.stop_unless_finite(norm, "gradient norm")
        self.log("train/grad_norm", norm)

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        self.update_ema()

    def stop_unless_finite(self, value: torch.Tensor, what: str) -> None:
        """Raise :class:`NonFiniteLossError` if ``value`` is NaN/Inf on any process (all ranks stop together)."""
        finite = bool(torch.isfinite(value).all())
        if self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            raise NonFiniteLossError(
                f"the {what} is {value.item() if value.numel() == 1 else 'not finite'} at step "
                f"{self.global_step} (epoch {self.current_epoch}); the weights were not updated with it"
            )

    def budget_used(self) -> float:
        """Fraction of the training budget spent: the larger of steps/step budget and time/``max_time``."""
        used = self.global_step / self.step_budget if math.isfinite(self.step_budget) else 0.0
        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)
        if timer is not None:
            elapsed, remaining = timer.time_elapsed("train"), timer.time_remaining("train")
            if remaining is not None and elapsed + remaining > 0:
                used = max(used, elapsed / (elapsed + remaining))
        return min(used, 1.0)

    def configure_optimizers(self) -> Optimizer | dict[str, Any]:
        optimizer = self.optimizer_factory(self.model.parameters())
        if self.scheduler_factory is None:
            return optimizer
        self.step_budget = float(self.trainer.estimated_stepping_batches)
        factory = self.scheduler_factory
        accepts_progress = "progress" in inspect.signature(factory).parameters
        scheduler = factory(optimizer, progress=self.budget_used) if accepts_progress else factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- validation --
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        noisy, clean, length = batch["noisy"], batch["clean"], batch["length"]
        estimate = self(noisy).float()
        score, before = si_snr(estimate, clean, length), si_snr(noisy, clean, length)
        self.val_si_snr.update(score)
        self.val_si_snri.update(score - before)
        self.log("val/si_snr", self.val_si_snr)
        self.log("val/si_snri", self.val_si_snri, prog_bar=True)
        if self.ema_model is not None:
            self.val_si_snri_raw.update(si_snr(self(noisy, self.model).float(), clean, length) - before)
            self.log("val/si_snri_raw", self.val_si_snri_raw)
        if batch_idx == 0:
            self.log_examples(batch, estimate)

    def log_examples(self, batch: Batch, estimate: torch.Tensor) -> None:
        """Audio and spectrograms of the first validation items, for loggers that take media (wandb)."""
        if not isinstance(self.logger, WandbLogger) or self.global_rank != 0:
            return
        for i in range(min(self.hparams.audio_examples, len(estimate))):
            n = int(batch["length"][i])
            waves = {"noisy": batch["noisy"][i, :n], "enhanced": estimate[i, :n], "clean": batch["clean"][i, :n]}
            name = batch["name"][i] if "name" in batch else str(i)
            self.logger.log_audio(
                f"val/audio/{i}",
                [w.detach().cpu().numpy() for w in waves.values()],
                step=self.global_step,
                caption=[f"{name}: {kind}" for kind in waves],
                sample_rate=[SAMPLE_RATE] * len(waves),
            )
            self.logger.log_image(
                f"val/spectrogram/{i}", [spectrogram_image(self.stft, waves)], step=self.global_step, caption=[name]
            )

    # -- test: per split and noise type, next to the untrained Wiener filter --
    def on_test_epoch_start(self) -> None:
        self.test_rows = []

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        noisy, clean, length = batch["noisy"], batch["clean"], batch["length"]
        estimate = self(noisy).float()
        before = si_snr(noisy, clean, length)
        model = si_snr(estimate, clean, length) - before
        baseline = si_snr(wiener(noisy, length), clean, length) - before
        count = len(noisy)
        splits, noises = batch.get("split", ["test"] * count), batch.get("noise_type", ["unknown"] * count)
        for i in range(count):
            self.test_rows.append(
                {
                    "split": splits[i],
                    "noise_type": noises[i],
                    "si_snr_in": float(before[i]),
                    "si_snri": float(model[i]),
                    "wiener_si_snri": float(baseline[i]),
                }
            )

    def on_test_epoch_end(self) -> None:
        """SI-SNRi of the model and the Wiener filter, means ± 95 % CIs overall, per split, per noise type and per
        split x noise type (the statistics of ``evaluate.py``: :mod:`stmc.evaluation.summary`); printed and logged."""
        rows = self.test_rows
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[list[dict[str, Any]]] = [[] for _ in range(torch.distributed.get_world_size())]
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        items = [{"split": row["split"], "noise_type": row["noise_type"]} for row in rows]
        signals = [
            {
                "mixture": {"si_snr": row["si_snr_in"]},
                "model": {"si_snri": row["si_snri"]},
                "wiener": {"si_snri": row["wiener_si_snri"]},
            }
            for row in rows
        ]
        lines = [f"{'test set':<32} {'n':>5} {'SI-SNR in':>10} {'SI-SNRi':>14} {'Wiener':>14}"]
        for group, stat in summarize(items, signals).items():
            name = "test" if group == ALL else "test/" + group.replace("split:", "").replace("noise:", "noise/")
            self.log(f"{name}/si_snri", stat["model"]["si_snri"]["mean"], rank_zero_only=True)
            self.log(f"{name}/wiener_si_snri", stat["wiener"]["si_snri"]["mean"], rank_zero_only=True)
            cells = [f"{cell(stat[s]['si_snri']):>14}" for s in ("model", "wiener")]
            lines.append(
                f"{name.removeprefix('test/'):<32} {stat['mixture']['si_snr']['n']:>5} "
                f"{stat['mixture']['si_snr']['mean']:>10.2f} {' '.join(cells)}"
            )
        if self.global_rank == 0:
            print("\n".join(["", "SI-SNRi on the test set (dB, mean ± 95 % CI over utterances):", *lines]), flush=True)

    # -- checkpoint contents --
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[ckpt_format.KEY] = ckpt_format.entry(self.model.config, self.run_config)
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        if self.ema_model is not None and not any(k.startswith(ckpt_format.EMA_PREFIX) for k in state):
            # resuming a run saved without a moving average: the average starts from the saved weights
            for key in [k for k in state if k.startswith(ckpt_format.MODEL_PREFIX)]:
                state[ckpt_format.EMA_PREFIX + key[len(ckpt_format.MODEL_PREFIX) :]] = state[key].clone()
        if self.ema_model is None:  # resuming without a moving average: the saved one is dropped
            for key in [k for k in state if k.startswith(ckpt_format.EMA_PREFIX)]:
                del state[key]
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])
