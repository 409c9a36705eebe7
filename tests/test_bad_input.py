"""Bad input is refused with a ValueError that says what was expected."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import stmc
from stmc.model import checkpoint


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
