"""Training configs without training: every experiment composes, the sweep expands to 75 distinct runs, and
config mistakes are one-line errors naming the key and the allowed values."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import stmc
from stmc.apps.configs import check_overrides
from stmc.conf import CONFIG_DIR, group_options
from stmc.training.run import ConfigError, check_config, train

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = group_options("experiment")


def test_groups_have_the_documented_options():
    assert EXPERIMENTS == ["paper_causal", "paper_lookahead", "paper_noncausal", "quickstart"]
    assert group_options("model") == ["causal", "lookahead", "noncausal"]
    assert set(group_options("trainer")) >= {"cpu", "gpu", "ddp"}
    assert set(group_options("logger")) == {"wandb", "csv", "none"}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("launcher", ["basic", "slurm"])
def test_every_experiment_composes_and_builds_its_model(experiment, launcher, tmp_path, compose_train):
    overrides = [f"experiment={experiment}", f"hydra/launcher={launcher}", f"paths.output_dir={tmp_path}"]
    if experiment == "paper_lookahead":
        overrides.append("model.lookahead=5")
    cfg = compose_train(overrides, hydra_config=True)
    assert cfg.task_name == experiment
    check_config(cfg)
    model = instantiate(cfg.model)
    assert isinstance(model, stmc.UNet)
    expected = {"paper_causal": 0, "paper_noncausal": 14, "paper_lookahead": 5, "quickstart": 0}[experiment]
    assert model.receptive_field[1] == expected
    OmegaConf.resolve(cfg.trainer)  # every interpolation resolves
    OmegaConf.resolve(cfg.callbacks)


def test_wandb_is_the_default_logger_and_offline(compose_train):
    cfg = compose_train(["paths.output_dir=/tmp/x"])
    assert cfg.logger._target_.endswith("WandbLogger") and cfg.logger.offline is True
    assert cfg.data._target_ == "stmc.data.datamodule.SpeechDataModule"


def test_gpu_trainers_use_bf16_and_ddp_syncs_batchnorm(compose_train):
    cfg = compose_train(["trainer=ddp", "paths.output_dir=/tmp/x"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm and cfg.trainer.precision == "bf16-mixed"


def sweep_jobs(compose_train: Callable[..., DictConfig], overrides: list[str]) -> list[list[str]]:
    """The job override lists Hydra's basic sweeper would launch (the same merge of config params and CLI)."""
    parser = OverridesParser.create()
    plain = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    cfg = compose_train(plain, hydra_config=True)
    assert cfg.hydra.mode == RunMode.MULTIRUN
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]  # as BasicSweeper does
    parsed = parser.parse_overrides(params + overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def test_lookahead_sweep_expands_to_75_runs_with_distinct_folders(compose_train):
    base = ["experiment=paper_lookahead", "sweep=lookahead"]
    jobs = sweep_jobs(compose_train, base)
    assert len(jobs) == 75
    folders, settings = set(), set()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        for num, job in enumerate(jobs):
            cfg = compose("train", overrides=[*base, *job, f"hydra.job.num={num}"], return_hydra_config=True)
            check_config(cfg)
            settings.add((cfg.model.lookahead, cfg.seed))
            folders.add(f"{cfg.hydra.sweep.dir}/{cfg.hydra.sweep.subdir}")
            assert cfg.ckpt_path == "last"  # a re-launched sweep resumes each run
    assert settings == {(n, s) for n in range(15) for s in range(5)}
    assert len(folders) == 75
    assert any(f.endswith("lookahead=14/seed=4") for f in folders)


def test_sweep_command_line_narrows_the_grid(compose_train):
    jobs = sweep_jobs(compose_train, ["experiment=quickstart", "sweep=lookahead", "model.lookahead=0,7,14", "seed=0"])
    assert len(jobs) == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=foo"], "model=foo does not exist; allowed values: causal, lookahead, noncausal"),
        (["trainer=tpu"], "trainer=tpu does not exist; allowed values: cpu, ddp, default, gpu"),
        (["experiment=paper"], "allowed values: paper_causal, paper_lookahead, paper_noncausal, quickstart"),
    ],
)
def test_unknown_config_names_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_overrides(overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.max_stpes=5"], r"^trainer.max_stpes is not a key of this config; did you mean trainer.max_steps"),
        (["model=noncausal", "model.widht=2"], r"^model.widht is not a key of this config; did you mean model.width"),
        (["foo.bar=1"], r"^foo is not a key of this config$"),
    ],
)
def test_mistyped_keys_are_one_line_errors_naming_the_closest_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_overrides(overrides)


@pytest.mark.parametrize("key", ["batch_size", "eval_batch_size"])
@pytest.mark.parametrize("value", [0, -2, 1.5])
def test_batch_sizes_must_be_positive_integers(key, value, tmp_path, compose_train):
    cfg = compose_train([f"data.{key}={value}", f"paths.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=rf"^data.{key}={value} must be a positive integer$"):
        train(cfg)


def test_valid_overrides_pass_the_check():
    check_overrides(["experiment=quickstart", "model=lookahead", "model.lookahead=3", "seed=0,1", "-m"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=lookahead"], r"model.lookahead is required \(model=lookahead\); allowed values: 0..14"),
        (["model.lookahead=15"], r"model.lookahead=15 is out of range; allowed values: 0..14"),
        (["model=lookahead", "model.lookahead=-1"], r"model.lookahead=-1 is out of range; allowed values: 0..14"),
        (["model.depth=5", "model.lookahead=11"], r"allowed values: 0..10"),
        (["model.compress=2"], r"^model: compress must be in \(0, 1\], got 2"),
    ],
)
def test_bad_model_values_stop_before_training(overrides, message, tmp_path, compose_train):
    cfg = compose_train([*overrides, f"paths.output_dir={tmp_path}", f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match=message) as err:
        train(cfg)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "checkpoints").exists()


def test_missing_data_root_stops_before_training(tmp_path, compose_train):
    cfg = compose_train([f"paths.output_dir={tmp_path}", f"data.root={tmp_path / 'nowhere'}", "logger=none"])
    with pytest.raises(ConfigError, match=r"^data.root: .*nowhere does not exist.*make corpus") as err:
        train(cfg)
    assert "\n" not in str(err.value)


def test_train_py_reports_a_config_error_in_one_line():
    run = subprocess.run(
        [sys.executable, "train.py", "model=lookahead", "model.lookahead=99"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("error: model.lookahead=99 is out of range; allowed values: 0..14 (0 = causal")


def test_threads_auto_leaves_the_busy_cores_alone(monkeypatch, compose_train):
    import os

    from stmc.training import run as training

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(training, "busy_cores", lambda: 1)
    assert training.training_threads("auto") == max(1, cores - 1)
    monkeypatch.setattr(training, "busy_cores", lambda: cores + 3)
    assert training.training_threads(None) == 1
    assert training.training_threads(3) == 3
    with pytest.raises(ConfigError, match="threads=0 must be a positive integer or auto"):
        training.training_threads(0)
    assert compose_train([]).threads == "auto"


def test_busy_cores_reads_the_runnable_tasks_less_this_process(tmp_path, monkeypatch):
    from stmc.training import run as training

    loadavg = tmp_path / "loadavg"
    monkeypatch.setattr(training, "LOADAVG", loadavg)
    loadavg.write_text("1.93 1.71 1.20 3/412 31337\n")  # 3 runnable: this process and 2 others
    assert training.busy_cores(samples=1) == 2
    loadavg.write_text("0.01 0.02 0.00 1/412 31337\n")
    assert training.busy_cores(samples=1) == 0
    reads = iter(["3/412", "1/412", "3/412"])  # two tasks ran at the first and last read only: passing, not busy
    monkeypatch.setattr(training, "LOADAVG", type("Reads", (), {"read_text": lambda self: f"1 1 1 {next(reads)} 9"})())
    assert training.busy_cores(samples=3, interval=0) == 0
    monkeypatch.setattr(training, "LOADAVG", loadavg)
    loadavg.unlink()  # no /proc (not Linux): nothing known to be busy
    assert training.busy_cores(samples=1) == 0


def test_a_config_mistake_leaves_no_empty_run_folder(tmp_path):
    run = subprocess.run(
        [sys.executable, "train.py", "data.batch_size=0", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == ["error: data.batch_size=0 must be a positive integer"]
    assert not (tmp_path / "run").exists()
