"""Bad input is refused with a ValueError that says what was expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import stmc
from stmc.model import checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return stmc.UNet(depth=2, channels=[2, 2], n_freq=513).eval()


@pytest.mark.parametrize(
    "spec, needle",
    [
        (torch.randn(2, 513, 4), r"\[batch, 2 \(real, imag\), 513 bins, frames\]"),
        (torch.randn(1, 3, 513, 4), r"got shape \[1, 3, 513, 4\]"),
        (torch.randn(1, 2, 512, 4), "513 bins"),
        (torch.randn(1, 2, 513, 4, dtype=torch.float64), "dtype torch.float32"),
    ],
)
def test_model_and_streams_name_the_expected_shape(model, spec, needle):
    with pytest.raises(ValueError, match=needle):
        model(spec)
    for method in stmc.METHODS:
        with pytest.raises(ValueError, match=needle):
            stmc.streaming(model, method)(spec)


def test_stream_refuses_a_change_of_batch(model):
    stream = stmc.streaming(model)
    stream(torch.randn(2, 2, 513, 3))
    with pytest.raises(ValueError, match="batch 2"):
        stream(torch.randn(3, 2, 513, 3))


@pytest.mark.parametrize("lookahead", [-1, 15, 2.5])
def test_lookahead_outside_zero_to_two_depth(lookahead):
    with pytest.raises(ValueError, match=r"0\.\.14"):
        stmc.UNet(lookahead=lookahead)


def test_unknown_method_lists_the_methods(model):
    with pytest.raises(ValueError, match="stmc, inc, window"):
        stmc.streaming(model, "fast")


def test_enhancer_wants_batch_by_samples(model):
    enhancer = stmc.Enhancer(model)
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        enhancer(torch.randn(16000))
    with pytest.raises(ValueError, match="float32"):
        enhancer(torch.randn(1, 16000, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        enhancer.stream()(torch.randn(1, 2, 100))


def test_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        stmc.Enhancer.from_checkpoint(tmp_path / "missing.ckpt")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="not an STMC checkpoint"):
        stmc.Enhancer.from_checkpoint(other)
    wrong = tmp_path / "wrong.ckpt"
    small = stmc.UNet(depth=2, channels=[2, 2])
    config = {**small.config, "channels": [3, 3]}
    ckpt = checkpoint.contents(small)
    ckpt[checkpoint.KEY]["model_config"] = config
    torch.save(ckpt, wrong)
    with pytest.raises(ValueError, match="do not match the architecture"):
        stmc.Enhancer.from_checkpoint(wrong)


@pytest.mark.parametrize("method", stmc.METHODS)
def test_streaming_needs_a_unet(method):
    with pytest.raises(ValueError, match="needs a stmc.UNet, got Linear"):
        stmc.streaming(torch.nn.Linear(2, 2), method)


def test_checkpoint_paths_that_are_folders_say_what_they_hold(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"is a folder; give a .ckpt file \(it holds no .ckpt file\)"):
        stmc.Enhancer.from_checkpoint(tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"is a folder; give a .ckpt file \(it holds checkpoints/last.ckpt\)"):
        stmc.Enhancer.from_checkpoint(tmp_path / "run")
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*last.ckpt: "):
        stmc.Enhancer.from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")


# -- entry points: the project's own errors are one line, anything else is a bug and shows its traceback --

ENTRY_POINTS = {  # module, the function a bug is injected into, arguments that reach it
    "stream_infer": ("stmc.apps.stream_infer", "infer", ["input=x.wav"]),
    "evaluate": ("stmc.apps.evaluate", "run", ["checkpoints=[x.ckpt]"]),
    "train": ("stmc.training.run", "check_config", []),
}


def run_with(module: str, function: str, error: str, args: list[str], cwd) -> subprocess.CompletedProcess:
    """Run ``module``'s command line with ``function`` replaced by one that raises ``error``."""
    target = "stmc.apps.train" if module == "stmc.training.run" else module
    code = (
        f"import sys, {module} as m, {target} as t\n"
        f"def boom(*a, **k): raise {error}\n"
        f"m.{function} = boom\n"
        f"if hasattr(t, '{function}'): t.{function} = boom\n"
        "t.cli()"
    )
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_bug_shows_its_traceback_and_a_project_error_one_line(entry, tmp_path):
    module, function, args = ENTRY_POINTS[entry]
    bug = run_with(module, function, "ValueError('a bug deep inside')", args, tmp_path)
    assert bug.returncode != 0
    assert "Traceback" in bug.stderr and "a bug deep inside" in bug.stderr
    mistake = run_with(
        module, function, "__import__('stmc.errors').errors.InputError('x.wav: no such file')", args, tmp_path
    )
    assert mistake.returncode in (1, 2)
    assert "Traceback" not in mistake.stderr
    assert mistake.stderr.strip().splitlines()[-1] == "error: x.wav: no such file"


def test_model_argument_errors_are_config_errors_and_other_failures_propagate(compose_train, monkeypatch):
    from stmc.errors import ConfigError
    from stmc.training.run import build_model

    with pytest.raises(ConfigError, match="model: depth must be a positive integer"):
        build_model(compose_train(["model.depth=0"]))

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the constructor")

    monkeypatch.setattr("stmc.model.unet.UNet.__init__", broken)
    with pytest.raises(Exception, match="a bug in the constructor") as caught:
        build_model(compose_train([]))
    assert not isinstance(caught.value, ConfigError)


# -- nonsense refused, work protected (issue 23) --


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"width": 0}, "width must be a positive number"),
        ({"width": -0.5}, "width must be a positive number"),
        ({"width": float("nan")}, "width must be a positive number"),
        ({"channels": [4, 0]}, "channels must be positive integers"),
        ({"n_freq": 0}, "n_freq must be an integer"),
        ({"depth": True}, "depth must be a positive integer"),
        ({"tstmc": "yes"}, "tstmc must be true or false"),
        ({"compress": 0}, r"compress must be in \(0, 1\]"),
    ],
)
def test_every_architecture_argument_is_validated(kwargs, needle):
    from stmc.errors import InputError

    with pytest.raises(InputError, match=needle):
        stmc.UNet(**{"depth": 2, "n_freq": 65, **kwargs})


def test_streaming_a_model_in_training_mode_warns(model):
    model.train()
    try:
        with pytest.warns(UserWarning, match="training mode"):
            stmc.streaming(model)
    finally:
        model.eval()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_map_location_without_cuda_names_the_device_not_the_file(tmp_path, model):
    path = checkpoint.save(model, tmp_path / "healthy.ckpt")
    with pytest.raises(ValueError, match="no CUDA device; use 'cpu'"):
        stmc.Enhancer.from_checkpoint(path, map_location="cuda")


def test_compiled_engine_follows_the_model_after_to_and_reset():
    from stmc.stream.engines import CompiledEngine, STMCEngine

    net = stmc.UNet(depth=2, n_freq=65, width=0.25).eval()
    engine = CompiledEngine(STMCEngine(net))  # torch.compile is lazy: nothing compiles here
    net.double()
    engine.load()
    assert engine.dtype == torch.float64


def test_a_failed_onnx_export_leaves_no_file_and_the_models_mode(tmp_path, monkeypatch):
    from stmc.export import to_onnx

    net = stmc.UNet(depth=2, n_freq=65, width=0.25).train()

    def failing(*args, **kwargs):
        raise RuntimeError("the exporter failed")

    monkeypatch.setattr(torch.onnx, "export", failing)
    with pytest.raises(RuntimeError, match="the exporter failed"):
        to_onnx(net, tmp_path / "m.onnx")
    assert net.training and list(tmp_path.iterdir()) == []


def stream_infer(*args: str, cwd, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "stream_infer.py"), *args], cwd=cwd, input=stdin, capture_output=True, timeout=180
    )


@pytest.fixture
def noisy_wav(tmp_path):
    import numpy as np
    import soundfile as sf

    path = tmp_path / "in" / "noisy.wav"
    path.parent.mkdir()
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(4000)).astype("float32"), 16000)
    return path


@pytest.mark.parametrize(
    ("args", "status", "needle"),
    [
        (["output={wav}"], 2, "is the input itself"),
        (["input={folder}", "output={folder}"], 2, "is the input itself"),
        (["threads=0"], 2, "threads=0 must be a positive integer"),
        (["model.width=0.5", "ckpt={wav}"], 2, "model.width=0.5 does not apply with ckpt="),
        (["outptu=x.wav"], 2, "outptu is not a key of this config; did you mean output"),
        (["onnx={wav}"], 1, "expected a .onnx file"),
        (["onnx={folder}/missing.onnx"], 1, "no such file"),
        (["input={folder}", "output={wav}"], 2, "is a file, but the input is a folder: give output=<folder>"),
        (["input={folder}", "output=new.wav"], 2, "names a file, but the input is a folder: give output=<folder>"),
    ],
)
def test_stream_infer_refuses_in_one_line_and_keeps_the_input(args, status, needle, noisy_wav, tmp_path):
    before = noisy_wav.read_bytes()
    values = {"wav": noisy_wav, "folder": noisy_wav.parent}
    argv = [a.format(**values) for a in args]
    if not any(a.startswith("input=") for a in argv):
        argv.insert(0, f"input={noisy_wav}")
    if not any(a.startswith(("ckpt=", "onnx=")) for a in argv):
        argv.append("model.depth=2")  # a small dry-run model
    done = stream_infer(*argv, cwd=tmp_path)
    stderr = done.stderr.decode()
    assert done.returncode == status, stderr
    assert "Traceback" not in stderr
    assert needle in stderr.strip().splitlines()[-1]
    assert noisy_wav.read_bytes() == before and sorted(p.name for p in noisy_wav.parent.iterdir()) == ["noisy.wav"]


def test_stream_infer_without_input_says_what_to_give(tmp_path):
    done = stream_infer(cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.decode().strip().splitlines()[-1].startswith("error: input is required: input=<audio file")


def test_a_wav_file_piped_as_raw_pcm_is_refused(noisy_wav, tmp_path):
    done = stream_infer("input=-", "model.depth=2", cwd=tmp_path, stdin=noisy_wav.read_bytes())
    assert done.returncode == 1 and done.stdout == b""
    assert "stdin holds a WAV file, not raw 16-bit PCM" in done.stderr.decode()


def test_non_ascii_and_spaced_paths_are_read_as_the_strings_they_are(noisy_wav, tmp_path):
    folder = tmp_path / "grüße und mehr"
    folder.mkdir()
    source = folder / "ü.wav"
    source.write_bytes(noisy_wav.read_bytes())
    done = stream_infer(f"input={source}", f"output={folder / 'sauber ü.wav'}", "model.depth=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    assert (folder / "sauber ü.wav").is_file()


def test_quoting_touches_only_plain_values_that_hydra_rejects():
    from stmc.apps.configs import quote_plain_values

    given = ["input=/d/ü.wav", "output=/d/a b.wav", "seed=3", "x=[ü]", "-m", "chunk=1,2", "input='/d/é.wav'"]
    assert quote_plain_values(given) == [
        "input='/d/ü.wav'",
        "output=/d/a b.wav",  # Hydra reads spaces in a plain value
        "seed=3",
        "x=[ü]",
        "-m",
        "chunk=1,2",
        "input='/d/é.wav'",
    ]


def test_evaluate_typo_gets_the_same_advice_as_train(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "checkpoints=[x]", "chunck=1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: chunck is not a key of this config; did you mean chunk?"]


def test_a_second_evaluation_into_a_busy_folder_stops_before_writing(tmp_path):
    """Two evaluate.py runs into one folder would mix results.json and report.html: the second is refused."""
    from stmc.files import exclusive

    out = tmp_path / "eval"
    with exclusive(out, "evaluate.py (the first run)"):
        done = subprocess.run(
            [sys.executable, str(ROOT / "evaluate.py"), "checkpoints=[x.ckpt]", f"hydra.run.dir={out}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {out} is in use by evaluate.py (the first run)")
    assert sorted(p.name for p in out.iterdir() if p.name != ".hydra") in ([".lock"], [".lock", "evaluate.log"])


@pytest.mark.parametrize(
    ("script", "args", "needle"),
    [
        ("evaluate.py", ["checkpoints=[x.ckpt]", "max_items=abc"], "max_items='abc' must be a positive integer"),
        ("evaluate.py", ["checkpoints=[x.ckpt]", "workers=0"], "workers=0 must be a positive integer"),
        ("stream_infer.py", ["input=x.wav", "seed=abc"], "seed='abc' must be a non-negative integer"),
        ("stream_infer.py", ["input=x.wav", "stdin_channels=0"], "stdin_channels=0 must be a positive integer"),
    ],
)
def test_non_numeric_counts_are_one_line(script, args, needle, tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / script), *args, f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"error: {needle}"


def test_pure_bf16_training_is_refused_before_the_fit(compose_train):
    from stmc.errors import ConfigError
    from stmc.training.run import resolve_precision

    with pytest.raises(ConfigError, match="use trainer.precision=bf16-mixed"):
        resolve_precision(compose_train(["trainer=cpu", "trainer.precision=bf16-true"]))


def test_live_wandb_without_an_account_is_one_line_naming_the_offline_default(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    from stmc.errors import ConfigError
    from stmc.training.run import start_logging

    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DISABLED"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no account
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    import wandb

    logger = WandbLogger(project="stmc", save_dir=str(tmp_path), offline=False)
    try:
        with pytest.raises(ConfigError, match=r"No API key configured.*keep logger\.offline=true"):
            start_logging(logger, {"seed": 0})
    finally:
        wandb.teardown()  # wandb keeps its settings per process: later tests run offline again


def test_evaluation_settings_name_each_method_and_metric_once_and_say_si_snri_is_needed():
    from stmc.errors import InputError
    from stmc.evaluation.settings import Settings

    settings = Settings(("offline", "stmc", "stmc"), ("si_snri", "si_snri", "pesq"))
    assert settings.methods == ("offline", "stmc") and settings.metrics == ("si_snri", "pesq")
    with pytest.raises(InputError, match=r"si_snri is always scored; use metrics=\[si_snri,dnsmos\]"):
        Settings(metrics=("dnsmos",))
    with pytest.raises(InputError, match="foo unknown; choose from"):
        Settings(metrics=("si_snri", "foo"))


def test_a_value_hydra_cannot_read_is_one_line_saying_to_quote_it():
    """``checkpoints=[runs/lookahead=0]`` (an ``=`` inside a list element) fails in Hydra's grammar: one line
    naming the key and how to quote it, instead of Hydra's grammar error; the quoted form reads."""
    from stmc.apps.configs import ConfigError, check_overrides

    with pytest.raises(ConfigError, match=r"checkpoints: Hydra cannot read .* quote it") as caught:
        check_overrides(["checkpoints=[runs/lookahead=0]"], "evaluate")
    assert "\n" not in str(caught.value)
    check_overrides(["checkpoints=['runs/lookahead=0']"], "evaluate")  # the advice works
    done = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "checkpoints=[runs/lookahead=0]"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "quote it" in done.stderr
