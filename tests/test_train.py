"""Training on a tiny generated corpus, on CPU: one-batch fits of the causal, non-causal and a look-ahead
model, the checkpoint in ``Enhancer.from_checkpoint`` (streaming equals offline), wandb offline media,
NaN handling, and killed runs that resume as if uninterrupted."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

import stmc
import stmc.model.checkpoint
from stmc.data.synthetic import demo_like_tree
from stmc.training.module import WarmupCosine
from stmc.training.run import (
    ConfigError,
    TrainingStopped,
    check_resumable,
    resolve_checkpoint,
    resolve_precision,
    train,
)

ROOT = Path(__file__).resolve().parents[1]


class KillAtStep(pl.Callback):
    """SIGKILL this process once ``step`` optimizer steps are done (a crash, no clean-up, no checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class RecordBudgetAtStart(pl.Callback):
    """Write the module's used budget fraction at the start of the fit to ``path`` (JSON), then stop the fit."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        Path(self.path).write_text(json.dumps({"used": module.budget_used(), "step": trainer.global_step}))
        trainer.should_stop = True


class PoisonAtStep(pl.Callback):
    """Turn the noisy input of the batch after ``step`` optimizer steps into NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: dict, *args) -> None:
        if trainer.global_step == self.step:
            batch["noisy"].fill_(math.nan)


def tiny_run(corpus: Path, out: Path, *extra: str) -> list[str]:
    """Overrides for a short CPU run on the tiny corpus: 1 s crops, batches of 2, 3 batches per epoch."""
    return [
        f"paths.output_dir={out}",
        f"data.root={corpus}",
        "data.segment_seconds=1.0",
        "data.batch_size=2",
        "data.eval_batch_size=3",
        "data.epoch_items=6",
        "logger=csv",
        "trainer.max_steps=1",
        "trainer.val_check_interval=1",
        "trainer.log_every_n_steps=1",
        "callbacks.progress_bar.refresh_rate=0",
        "test=false",
        *extra,
    ]


def checkpoint(out: Path, kind: str) -> Path:
    (path,) = (out / "checkpoints").glob("last.ckpt" if kind == "last" else "best-*.ckpt")
    return path


@pytest.mark.parametrize(
    ("model", "lookahead"),
    [
        (["model=causal"], 0),
        (["model=noncausal"], 14),
        (["model=lookahead", "model.lookahead=3"], 3),
        (["model=lookahead", "model.lookahead=2", "model.tstmc=false"], 2),
    ],
)
def test_one_batch_fit_gives_a_streamable_checkpoint(model, lookahead, corpus, tmp_path, compose_train):
    metrics = train(compose_train(tiny_run(corpus, tmp_path, *model)))
    assert math.isfinite(metrics["val/si_snri"]) and math.isfinite(metrics["train/loss"])
    best = checkpoint(tmp_path, "best")
    enhancer = stmc.Enhancer.from_checkpoint(best)  # weights_only=True: the whole checkpoint is plain data
    assert enhancer.model.config["lookahead"] == lookahead
    assert enhancer.model.receptive_field == (14, lookahead)
    x = 0.1 * torch.randn(1, 16_000 + 123)
    with torch.no_grad():
        offline = enhancer(x)
    stream = enhancer.stream("stmc")
    chunks = [stream(c) for c in x.split(700, -1)]
    streamed = torch.cat([*chunks, stream.flush()], -1)
    assert streamed.shape == offline.shape
    assert (streamed - offline).abs().max() <= 1e-5 * offline.abs().max()
    saved = torch.load(best, weights_only=True)
    assert saved["stmc"]["run_config"]["model"]["lookahead"] == lookahead
    assert saved["global_step"] == 1


def test_test_split_report_next_to_wiener(corpus, tmp_path, capsys, compose_train):
    metrics = train(compose_train(tiny_run(corpus, tmp_path, "test=true", "model.width=0.25")))
    for split in ("test_real", "test_tts"):
        assert math.isfinite(metrics[f"test/{split}/si_snri"])
        assert math.isfinite(metrics[f"test/{split}/wiener_si_snri"])
    assert "test_real/babble" in capsys.readouterr().out


def test_wandb_runs_offline_and_logs_audio_and_spectrograms(corpus, tmp_path, monkeypatch, compose_train):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "")  # never needs an account
    train(compose_train(tiny_run(corpus, tmp_path, "logger=wandb", "model.width=0.25")))
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    media = run / "files" / "media"
    assert len(list((media / "audio/val/audio").glob("*.wav"))) == 2 * 3  # 2 examples: noisy, enhanced, clean
    assert len(list((media / "images/val/spectrogram").glob("*.png"))) == 2


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(corpus, tmp_path, compose_train):
    cfg = compose_train(
        tiny_run(
            corpus,
            tmp_path,
            "model.width=0.25",
            "trainer.max_steps=10",
            "trainer.val_check_interval=100",
            "callbacks.last_checkpoint.every_n_train_steps=2",
            "+callbacks.poison._target_=tests.test_train.PoisonAtStep",
            "+callbacks.poison.step=3",
        )
    )
    with pytest.raises(TrainingStopped, match=r"loss is nan at step 3 \(epoch 1\).*last good checkpoint: .*last.ckpt"):
        train(cfg)
    saved = torch.load(checkpoint(tmp_path, "last"), weights_only=True)
    assert saved["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


def run_train_py(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_a_killed_run_resumes_bit_for_bit(corpus, tmp_path, compose_train):
    """Killed mid-epoch and resumed from its last checkpoint, a step-budgeted run ends with the weights, optimizer
    moments, schedule and generator states of an uninterrupted one, bit for bit (same data, same order)."""
    common = [
        "model.width=0.25",
        "threads=1",  # float sums depend on the thread count (auto: the cores free at the start)
        "trainer.precision=32-true",  # and on the arithmetic (auto: timed, so it may differ between the runs)
        "trainer.max_steps=8",
        "trainer.val_check_interval=3",
        "callbacks.last_checkpoint.every_n_train_steps=2",
    ]
    reference = train(compose_train(tiny_run(corpus, tmp_path / "reference", *common)))
    killed = tmp_path / "killed"
    args = [*tiny_run(corpus, killed, *common), f"hydra.run.dir={killed}"]
    first = run_train_py(*args, "+callbacks.kill._target_=tests.test_train.KillAtStep", "+callbacks.kill.step=5")
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    interrupted = torch.load(checkpoint(killed, "last"), weights_only=True)
    assert interrupted["global_step"] == 4  # mid-epoch: epochs are 3 steps long
    second = run_train_py(*args, "ckpt_path=last")
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"resuming from {killed}/checkpoints/last.ckpt" in (killed / "train.log").read_text()
    assert "ended before the epoch ended" not in second.stderr  # Lightning sees a resumable loader, no warning

    resumed = torch.load(checkpoint(killed, "last"), weights_only=True)
    expected = torch.load(checkpoint(tmp_path / "reference", "last"), weights_only=True)
    assert resumed["global_step"] == expected["global_step"] == 8
    assert resumed["epoch"] == expected["epoch"]
    for key in ("last_epoch", "_step_count", "_last_lr"):
        assert resumed["lr_schedulers"][0][key] == expected["lr_schedulers"][0][key]
    steps = [s["step"] for s in resumed["optimizer_states"][0]["state"].values()]
    assert all(int(s) == 8 for s in steps)
    assert math.isfinite(reference["val/si_snri"])
    for name, value in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), name
    for index, state in expected["optimizer_states"][0]["state"].items():
        for key, value in state.items():
            assert torch.equal(resumed["optimizer_states"][0]["state"][index][key], value), (index, key)
    assert torch.equal(resumed["rng_states"]["torch"], expected["rng_states"]["torch"])
    assert torch.equal(resumed["rng_states"]["numpy"]["keys"], expected["rng_states"]["numpy"]["keys"])
    assert resumed["rng_states"]["python"] == expected["rng_states"]["python"]


def test_a_killed_time_budgeted_run_resumes_with_the_time_it_had_used(corpus, tmp_path):
    """With ``max_time``, the learning-rate schedule follows the share of the wall-clock budget spent: a resumed
    run starts from the share the killed run had used (saved with its checkpoint), not from zero."""
    budget = 600.0
    killed = tmp_path / "killed"
    args = [
        *tiny_run(corpus, killed, "model.width=0.25", "trainer.max_steps=-1", "trainer.val_check_interval=3"),
        "trainer.max_time=00:00:10:00",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        f"hydra.run.dir={killed}",
    ]
    first = run_train_py(*args, "+callbacks.kill._target_=tests.test_train.KillAtStep", "+callbacks.kill.step=5")
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    saved = torch.load(checkpoint(killed, "last"), weights_only=True)
    spent = saved["callbacks"]["Timer"]["time_elapsed"]["train"]
    assert saved["global_step"] == 4 and spent > 0
    record = tmp_path / "budget.json"
    second = run_train_py(
        *args,
        "ckpt_path=last",
        "+callbacks.record._target_=tests.test_train.RecordBudgetAtStart",
        f"+callbacks.record.path={record}",
    )
    assert second.returncode == 0, second.stderr[-2000:]
    at_start = json.loads(record.read_text())
    assert at_start["step"] == 4
    assert spent / budget <= at_start["used"] < spent / budget + 0.05


def test_ckpt_path_last_prefers_this_run_then_the_newest_sibling(tmp_path):
    runs = [tmp_path / "task" / name for name in ("2025-01-01", "2025-01-02", "2025-01-03")]
    for i, run in enumerate(runs[:2]):
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
        os.utime(run / "checkpoints" / "last.ckpt", (1000 + i, 1000 + i))
    assert resolve_checkpoint("last", runs[0], search_siblings=True) == str(runs[0] / "checkpoints/last.ckpt")
    assert resolve_checkpoint("last", runs[2], search_siblings=True) == str(runs[1] / "checkpoints/last.ckpt")
    assert resolve_checkpoint("last", runs[2], search_siblings=False) is None
    assert resolve_checkpoint(None, runs[0], search_siblings=True) is None


def test_schedule_warms_up_then_decays_over_the_budget():
    progress = [0.0]
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupCosine(optimizer, warmup=0.1, floor=0.01, progress=lambda: progress[0])
    lrs = []
    for p in (0.05, 0.1, 0.55, 1.0, 2.0):
        progress[0] = p
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.5, 1.0, 0.505, 0.01, 0.01])
    assert "progress" not in scheduler.state_dict()


def test_bf16_mixed_precision_fit(corpus, tmp_path, monkeypatch, compose_train):
    """The bf16 autocast path trains (the mask is applied in the spectrum's precision), also where the CPU
    would have been refused for it (kernels are slow there, not wrong)."""
    monkeypatch.setattr("stmc.training.run.cpu_supports_bf16", lambda: True)
    metrics = train(compose_train(tiny_run(corpus, tmp_path, "model.width=0.25", "trainer.precision=bf16-mixed")))
    assert math.isfinite(metrics["train/loss"])


@pytest.mark.parametrize(
    ("supported", "seconds", "chosen"),
    [
        (True, {"32-true": 0.20, "bf16-mixed": 0.23}, "32-true"),  # the Zen 4 case: bf16 kernels, fp32 faster
        (True, {"32-true": 0.20, "bf16-mixed": 0.12}, "bf16-mixed"),
        (True, {"32-true": 0.20, "bf16-mixed": 0.19}, "32-true"),  # a tie within the probe's noise: exact fp32
        (False, {}, "32-true"),  # no bf16 kernels: nothing to measure
    ],
)
def test_cpu_precision_auto_takes_bf16_only_when_clearly_faster(supported, seconds, chosen, monkeypatch, compose_train):
    """precision=auto is chosen by timing, not by the CPU's flags (bf16 only when clearly faster); without bf16
    kernels nothing is timed."""
    monkeypatch.setattr("stmc.training.run.cpu_supports_bf16", lambda: supported)
    probed = []
    cfg = compose_train(["trainer=cpu"])
    assert cfg.trainer.precision == "auto"
    resolve_precision(cfg, probe=lambda p: probed.append(p) or seconds[p])
    assert cfg.trainer.precision == chosen
    assert sorted(probed) == sorted(seconds)


def test_explicit_precision_wins_over_the_measurement(monkeypatch, compose_train):
    monkeypatch.setattr("stmc.training.run.cpu_supports_bf16", lambda: True)
    cfg = compose_train(["trainer=cpu", "trainer.precision=bf16-mixed"])
    resolve_precision(cfg, probe=lambda p: pytest.fail("an explicit precision must not be measured"))
    assert cfg.trainer.precision == "bf16-mixed"


def test_precision_probe_times_a_real_step(compose_train):
    """The default probe runs the configured model forward and backward and returns a positive duration."""
    from stmc.training.run import step_seconds

    cfg = compose_train(
        ["trainer=cpu", "model.width=0.25", "model.depth=3", "data.segment_seconds=0.25", "data.batch_size=1"]
    )
    assert 0 < step_seconds(cfg, "32-true", steps=1, warmup=0) < 60


def test_explicit_bf16_on_a_cpu_without_bf16_kernels_is_a_config_error(monkeypatch, compose_train):
    monkeypatch.setattr("stmc.training.run.cpu_supports_bf16", lambda: False)
    cfg = compose_train(["trainer=cpu", "trainer.precision=bf16-mixed"])
    with pytest.raises(ConfigError, match=r"trainer.precision=bf16-mixed: this CPU has no bf16 kernels"):
        resolve_precision(cfg)
    explicit = compose_train(["trainer=cpu", "trainer.precision=32-true"])
    resolve_precision(explicit)  # an explicit fp32 stays
    assert explicit.trainer.precision == "32-true"


@pytest.mark.slow
def test_ddp_with_two_processes_on_cpu(corpus, tmp_path):
    out = tmp_path / "ddp"
    run = run_train_py(
        *tiny_run(corpus, out, "model.width=0.25", "trainer.max_steps=2"),
        f"hydra.run.dir={out}",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.sync_batchnorm=false",  # SyncBatchNorm is GPU-only
    )
    assert run.returncode == 0, run.stderr[-3000:]
    saved = torch.load(checkpoint(out, "last"), weights_only=True)
    assert saved["global_step"] == 2
    stmc.Enhancer.from_checkpoint(checkpoint(out, "best"))


@pytest.mark.parametrize("logger", ["csv", "none"])
def test_every_logger_option_fits_one_step(logger, corpus, tmp_path, compose_train):
    """Each documented logger trains (without a logger the learning-rate monitor has nowhere to write: dropped)."""
    metrics = train(compose_train(tiny_run(corpus, tmp_path, f"logger={logger}", "model.width=0.25")))
    assert math.isfinite(metrics["train/loss"])
    assert (tmp_path / "csv").is_dir() == (logger == "csv")


def test_resuming_with_another_model_or_an_unreadable_file_is_a_config_error(corpus, tmp_path, compose_train):
    """Resuming a checkpoint of another architecture names the differing model keys (instead of a size-mismatch
    traceback from deep in torch), the decoder variant (model.tstmc) too; a random-bytes file is refused without
    advice to unpickle it."""
    train(compose_train(tiny_run(corpus, tmp_path / "a", "model.width=0.25")))
    last = checkpoint(tmp_path / "a", "last")
    cfg = compose_train(tiny_run(corpus, tmp_path / "b", "model.width=0.5", f"ckpt_path={last}"))
    with pytest.raises(ConfigError, match=r"holds another model: model.width=0.25 \(this config: 0.5\); resume") as err:
        train(cfg)
    assert "\n" not in str(err.value)
    ablation = compose_train(
        tiny_run(corpus, tmp_path / "c", "model.width=0.25", "model.tstmc=false", f"ckpt_path={last}")
    )
    with pytest.raises(ConfigError, match=r"another model: model.tstmc=True \(this config: False\); resume"):
        train(ablation)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(os.urandom(4096))
    unreadable = r"^ckpt_path: cannot read checkpoint .*garbage.ckpt: torch cannot load"
    with pytest.raises(ConfigError, match=unreadable) as err:
        train(compose_train(tiny_run(corpus, tmp_path / "c", f"ckpt_path={garbage}")))
    assert "weights_only=False" not in str(err.value)


@pytest.mark.parametrize(("lookahead", "same"), [(0, True), (14, True), (2, False)])
def test_resuming_compares_the_layers_a_placement_names_not_its_name(tmp_path, lookahead, same):
    """A checkpoint trained with ``lookahead_layers=first`` (the default before ``spread``) resumes under the new
    default where both name the same layers (look-ahead 0 and 14), and is refused where they do not."""
    old = stmc.model.checkpoint.save(
        stmc.UNet(lookahead=lookahead, lookahead_layers="first", width=0.25), tmp_path / "old.ckpt"
    )
    current = stmc.UNet(lookahead=lookahead, width=0.25)
    if same:
        check_resumable(str(old), current)
    else:
        with pytest.raises(ConfigError, match=r"model.lookahead_layers=\[0, 1\] \(this config: \[3, 10\]\)"):
            check_resumable(str(old), current)


def test_a_resumed_run_continues_in_its_own_folder(corpus, tmp_path, compose_train):
    """Resuming another folder's checkpoint writes the new checkpoints next to the old ones, so that the run is
    one folder of checkpoints (evaluate.py counts one model per run), not two."""
    first = tmp_path / "2026-12-01_10-00-00"
    train(compose_train(tiny_run(corpus, first, "model.width=0.25")))
    again = tmp_path / "2026-12-01_11-00-00"
    train(compose_train(tiny_run(corpus, again, "model.width=0.25", "trainer.max_steps=2", "ckpt_path=last")))
    assert torch.load(checkpoint(first, "last"), weights_only=True)["global_step"] == 2
    assert not (again / "checkpoints").exists()


@pytest.mark.parametrize("name", ["demo", "dns", "vctk_demand", "folders"])
def test_every_data_option_fits_one_step(name, tmp_path, compose_train):
    """Each documented data option trains on a tiny tree in its layout, not only composes."""
    from tests.test_data_folders import dns_tree, folders_tree, vctk_tree

    root = tmp_path / "corpus"
    {"demo": demo_like_tree, "dns": dns_tree, "vctk_demand": vctk_tree, "folders": folders_tree}[name](root)
    extra = [] if name == "demo" else ["data.val_fraction=0.25"]
    metrics = train(
        compose_train(
            tiny_run(root, tmp_path / "run", f"data={name}", "data.num_workers=0", "model.width=0.25", *extra)
        )
    )
    assert math.isfinite(metrics["train/loss"])


@pytest.mark.parametrize("trainer", ["cpu", "default"])
def test_every_cpu_trainer_option_fits_one_step(trainer, corpus, tmp_path, compose_train):
    """The trainer options that run on a CPU train (gpu needs a GPU: scripts/gpu_check.py; ddp on 2 CPU
    processes is the slow test above)."""
    metrics = train(compose_train(tiny_run(corpus, tmp_path, f"trainer={trainer}", "model.width=0.25")))
    assert math.isfinite(metrics["train/loss"])


def test_moving_average_is_what_the_checkpoint_serves_and_exports(corpus, tmp_path, compose_train):
    """With module.ema_decay the checkpoint holds the trained weights and their moving average; every reader
    (Enhancer.from_checkpoint, hence evaluate.py, stream_infer.py and the export) gets the average, and the
    best checkpoint is chosen by the average's validation score."""
    from stmc.export.cli import load_model
    from stmc.model import checkpoint as ckpt_format

    metrics = train(
        compose_train(tiny_run(corpus, tmp_path, "model.width=0.25", "module.ema_decay=0.5", "trainer.max_steps=3"))
    )
    assert math.isfinite(metrics["val/si_snri"]) and math.isfinite(metrics["val/si_snri_raw"])
    saved = torch.load(checkpoint(tmp_path, "last"), weights_only=True)
    raw = {k[len("model.") :]: v for k, v in saved["state_dict"].items() if k.startswith("model.")}
    ema = {k[len("ema_model.") :]: v for k, v in saved["state_dict"].items() if k.startswith("ema_model.")}
    assert raw.keys() == ema.keys()
    assert not torch.equal(raw["layers.0.conv.weight"], ema["layers.0.conv.weight"])
    for served in (
        stmc.Enhancer.from_checkpoint(checkpoint(tmp_path, "last")).model,
        load_model(str(checkpoint(tmp_path, "last")), 7, 0, 1.0, 0),
    ):
        assert all(torch.equal(served.state_dict()[k], ema[k]) for k in ema)
    assert ckpt_format.model_state(saved).keys() == ema.keys()


def test_moving_average_update_follows_its_formula():
    """One update moves each weight a fraction 1 - min(decay, (1 + step) / (10 + step)) towards the trained one;
    integer buffers (BatchNorm's counter) are copied."""
    from stmc.model.unet import UNet
    from stmc.training.module import EnhancementModule

    module = EnhancementModule(UNet(depth=2, width=0.25, n_freq=65), torch.optim.Adam, ema_decay=0.9)
    before = module.ema_model.layers[0].conv.weight.clone()
    with torch.no_grad():
        module.model.layers[0].conv.weight.add_(1.0)
        module.model.layers[0].norm.num_batches_tracked.fill_(7)
    module.update_ema()  # global_step 0: decay min(0.9, 1 / 10) = 0.1
    expected = 0.1 * before + 0.9 * module.model.layers[0].conv.weight
    assert torch.allclose(module.ema_model.layers[0].conv.weight, expected, atol=1e-6)
    assert int(module.ema_model.layers[0].norm.num_batches_tracked) == 7
    assert all(not p.requires_grad for p in module.ema_model.parameters())


class InterruptAtStep(pl.Callback):
    """Raise KeyboardInterrupt (what Ctrl-C does) once ``step`` optimizer steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_ctrl_c_before_the_first_checkpoint_saves_last_and_says_how_to_resume(corpus, tmp_path, compose_train, capsys):
    cfg = compose_train(
        tiny_run(
            corpus,
            tmp_path,
            "model.width=0.25",
            "trainer.max_steps=6",
            "trainer.val_check_interval=100",
            "callbacks.last_checkpoint.every_n_train_steps=100",
        )
    )
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.callbacks["interrupt_at"] = {"_target_": f"{__name__}.InterruptAtStep", "step": 2}
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown after Ctrl-C
        train(cfg)
    saved = torch.load(checkpoint(tmp_path, "last"), weights_only=True)
    assert saved["global_step"] == 2
    assert "resume with ckpt_path=last" in capsys.readouterr().err


@pytest.mark.parametrize("spectral_weight", [0.0, 1.0])
def test_training_on_one_batch_raises_its_si_snr(spectral_weight):
    """The loss drives the model the right way: 40 Adam steps on one batch take its SI-SNR 3 dB above the mixture's
    (checked: with the sign of the loss flipped it ends near -6 dB, far below)."""
    import functools

    from stmc.training.module import EnhancementModule

    torch.manual_seed(0)
    t = torch.arange(16000) / 16000
    clean = 0.3 * torch.sin(2 * torch.pi * 220 * t) * (1 + torch.sin(2 * torch.pi * 3 * t))
    noisy = clean + 0.1 * torch.randn(2, 16000)
    batch = {"noisy": noisy, "clean": clean.expand(2, -1).clone(), "length": torch.tensor([16000, 16000])}
    module = EnhancementModule(
        stmc.UNet(depth=3, width=0.25),
        functools.partial(torch.optim.Adam, lr=3e-3),
        spectral_weight=spectral_weight,
        channels_last=False,
    )
    optimizer = module.optimizer_factory(module.model.parameters())
    scores = []
    for _ in range(40):
        loss, score = module.loss(batch)
        scores.append(float(score))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    mixture = float(stmc.si_snr(noisy, batch["clean"]).mean())  # ~8.3 dB
    assert scores[-1] > mixture + 3.0, scores  # it enhances; with the loss's sign flipped it ends below -5 dB
