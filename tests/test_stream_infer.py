"""stream_infer.py: files, folders and stdin through the stream equal offline enhancement; bad input; latency."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

import stmc
from stmc.apps.audio_io import read_audio
from stmc.apps.stream_infer import InferOptions, build_enhancer, infer
from stmc.errors import InputError
from stmc.export import to_onnx
from stmc.files import atomic_audio_file
from stmc.model import checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = {"depth": 2, "lookahead": 1, "channels": [2, 3], "n_freq": 513}  # dry-run model, fast


def options(tmp_path: Path, **kw) -> InferOptions:
    return InferOptions(**{"model": TINY, "stats": str(tmp_path / "stats.json"), "progress": False, **kw})


def noisy(seconds: float, channels: int = 1, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """``[samples, channels]`` float32: a tone in noise."""
    gen = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)[:, None]
    return (tone + 0.05 * gen.standard_normal((t.size, channels))).astype(np.float32)


def offline(opts: InferOptions, x: np.ndarray) -> np.ndarray:
    """The enhancer of ``opts`` applied offline to ``x [channels, samples]``."""
    with torch.no_grad():
        return build_enhancer(opts)(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def run_script(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "stream_infer.py", *args], cwd=ROOT, input=stdin, capture_output=True, timeout=120
    )


@pytest.mark.parametrize("chunk", ["1000samples", "7ms", "4097samples"])
def test_file_streamed_in_any_chunk_size_equals_offline(tmp_path, chunk):
    sf.write(tmp_path / "in.wav", noisy(1.3), 16000, subtype="FLOAT")
    opts = options(tmp_path, input=str(tmp_path / "in.wav"), chunk=chunk)
    assert infer(opts) == 0
    out, rate = sf.read(tmp_path / "in.enhanced.wav", dtype="float32")
    expected = offline(opts, sf.read(tmp_path / "in.wav", dtype="float32")[0][None])[0]
    assert rate == 16000 and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-5 * np.abs(expected).max())


def test_checkpoint_model_streams_like_its_offline_enhancer(tmp_path):
    torch.manual_seed(3)
    model = stmc.UNet(depth=3, lookahead=2, channels=[2, 3, 4])
    ckpt = tmp_path / "last.ckpt"
    checkpoint.save(model, ckpt)
    sf.write(tmp_path / "in.wav", noisy(1.0), 16000, subtype="FLOAT")
    assert infer(options(tmp_path, input=str(tmp_path / "in.wav"), output=str(tmp_path / "o.wav"), ckpt=str(ckpt))) == 0
    expected = stmc.Enhancer.from_checkpoint(ckpt)(torch.from_numpy(noisy(1.0).T)).detach().numpy()[0]
    np.testing.assert_allclose(sf.read(tmp_path / "o.wav", dtype="float32")[0], expected, atol=1e-5)


class Payload:
    """A pickle that would create a file when unpickled: checkpoints are untrusted input."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_with_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"stmc": {"model_config": TINY}, "state_dict": {}, "hook": Payload(marker)}, ckpt)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        infer(options(tmp_path, input=str(tmp_path), ckpt=str(ckpt)))
    assert not marker.exists()


def test_multichannel_downmixed_or_enhanced_per_channel(tmp_path, caplog):
    stereo = noisy(0.8, channels=2)
    sf.write(tmp_path / "st.wav", stereo, 16000, subtype="FLOAT")
    mixed = options(tmp_path, input=str(tmp_path / "st.wav"), output=str(tmp_path / "mix.wav"), chunk="300samples")
    with caplog.at_level(logging.INFO):
        assert infer(mixed) == 0
    assert "2 channels downmixed" in caplog.text
    out = sf.read(tmp_path / "mix.wav", dtype="float32")[0]
    np.testing.assert_allclose(out, offline(mixed, stereo.mean(1)[None])[0], atol=1e-5)
    each = options(tmp_path, input=str(tmp_path / "st.wav"), output=str(tmp_path / "each.wav"), channels="each")
    assert infer(each) == 0
    out = sf.read(tmp_path / "each.wav", dtype="float32", always_2d=True)[0]
    assert out.shape == stereo.shape
    np.testing.assert_allclose(out.T, offline(each, stereo.T), atol=1e-5)


def test_other_sample_rates_are_resampled_with_a_note_or_refused(tmp_path, caplog):
    sf.write(tmp_path / "8k.wav", noisy(0.5, rate=8000), 8000, subtype="FLOAT")
    opts = options(tmp_path, input=str(tmp_path / "8k.wav"), output=str(tmp_path / "o.wav"))
    with caplog.at_level(logging.INFO):
        assert infer(opts) == 0
    assert "resampling 8000 Hz -> 16000 Hz" in caplog.text
    x = AF.resample(torch.from_numpy(noisy(0.5, rate=8000).T), 8000, 16000).numpy()
    np.testing.assert_allclose(sf.read(tmp_path / "o.wav", dtype="float32")[0], offline(opts, x)[0], atol=1e-5)
    with pytest.raises(InputError, match=r"8k.wav: sample rate 8000 Hz, expected 16000 Hz"):
        read_audio(tmp_path / "8k.wav", resample=False)


def test_folder_enhances_good_files_and_names_the_bad_ones(tmp_path, caplog):
    src = tmp_path / "noisy"
    (src / "sub").mkdir(parents=True)
    sf.write(src / "a.wav", noisy(0.6), 16000, subtype="FLOAT")
    sf.write(src / "sub" / "b.flac", noisy(0.4, seed=1), 16000)
    broken = noisy(0.5)
    broken[5000, 0] = np.nan
    sf.write(src / "nan.wav", broken, 16000, subtype="FLOAT")
    sf.write(src / "empty.wav", np.zeros((0, 1), np.float32), 16000)
    (src / "junk.wav").write_bytes(b"not audio at all")
    with caplog.at_level(logging.INFO):
        status = infer(options(tmp_path, input=str(src), output=str(tmp_path / "clean"), progress=True))
    assert status == 1
    written = sorted(p.relative_to(tmp_path / "clean").as_posix() for p in (tmp_path / "clean").rglob("*"))
    assert written == ["a.wav", "empty.wav", "sub", "sub/b.wav"]
    assert sf.info(tmp_path / "clean" / "empty.wav").frames == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert any("nan.wav: non-finite sample (nan) at sample 5000 (0.312 s, channel 0)" in e for e in errors)
    assert any("junk.wav: unreadable audio file" in e and "\n" not in e for e in errors)
    assert json.loads((tmp_path / "stats.json").read_text())["failures"] == 2


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "out.wav"
    with pytest.raises(RuntimeError), atomic_audio_file(target, 1) as write:
        write(torch.zeros(1, 100))
        raise RuntimeError("killed mid-way")
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"previous")
    with pytest.raises(KeyboardInterrupt), atomic_audio_file(target, 1) as write:
        write(torch.zeros(1, 100))
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == [target] and target.read_bytes() == b"previous"


def test_latency_stats_count_a_chunk_late_when_its_output_comes_after_its_own_duration():
    from stmc.apps.stream_infer import LatencyStats

    stats = LatencyStats()
    stats.add(compute=0.010, response=0.010, samples=320)  # 20 ms chunk, ready after 10 ms: on time
    stats.add(compute=0.030, response=0.030, samples=320)  # computed too slowly: late
    stats.add(compute=0.005, response=0.025, samples=320)  # quick, but waited for the late one: late
    stats.flush_seconds = 0.015
    summary = stats.summary()
    assert summary["chunks"] == 3 and summary["misses"] == 2
    assert summary["p50_ms"] == pytest.approx(10.0) and summary["max_ms"] == pytest.approx(30.0)
    assert summary["rtf"] == pytest.approx((0.010 + 0.030 + 0.005 + 0.015) / 0.060)


def test_realtime_paces_input_and_reports_latency(tmp_path):
    sf.write(tmp_path / "in.wav", noisy(0.6), 16000, subtype="FLOAT")
    start = time.perf_counter()
    assert infer(options(tmp_path, input=str(tmp_path / "in.wav"), chunk="20ms", realtime=True)) == 0
    assert time.perf_counter() - start >= 0.6
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["chunks"] == 30 and stats["audio_s"] == pytest.approx(0.6)
    assert 0 < stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert 0 <= stats["misses"] <= 30 and stats["rtf"] > 0
    assert stats["latency_ms"] == pytest.approx(64 + 16)  # window + one look-ahead hop


def test_onnx_backend_equals_pytorch(tmp_path, caplog):
    sf.write(tmp_path / "in.wav", noisy(0.7), 16000, subtype="FLOAT")
    base = options(tmp_path, input=str(tmp_path / "in.wav"), chunk="250samples")
    path = to_onnx(build_enhancer(base).model, tmp_path / "m.onnx")
    assert infer(options(tmp_path, input=base.input, output=str(tmp_path / "torch.wav"), chunk="250samples")) == 0
    exported = options(
        tmp_path, input=base.input, output=str(tmp_path / "onnx.wav"), chunk="250samples", onnx=str(path)
    )
    with caplog.at_level("INFO"):
        assert infer(exported) == 0
    assert "via onnxruntime (float32)" in caplog.text  # the log says which precision the graph computes in
    torch_out = sf.read(tmp_path / "torch.wav", dtype="float32")[0]
    np.testing.assert_allclose(sf.read(tmp_path / "onnx.wav", dtype="float32")[0], torch_out, atol=1e-4)


@pytest.mark.litert
def test_litert_backend_equals_pytorch(tmp_path):
    """stream_infer.py litert=model.tflite: the network in LiteRT, the same audio as the PyTorch stream."""
    from stmc.export import to_litert

    sf.write(tmp_path / "in.wav", noisy(0.7), 16000, subtype="FLOAT")
    base = options(tmp_path, input=str(tmp_path / "in.wav"), chunk="250samples")
    path = to_litert(build_enhancer(base).model, tmp_path / "m.tflite")
    assert infer(options(tmp_path, input=base.input, output=str(tmp_path / "torch.wav"), chunk="250samples")) == 0
    assert (
        infer(
            options(
                tmp_path, input=base.input, output=str(tmp_path / "litert.wav"), chunk="250samples", litert=str(path)
            )
        )
        == 0
    )
    torch_out = sf.read(tmp_path / "torch.wav", dtype="float32")[0]
    np.testing.assert_allclose(sf.read(tmp_path / "litert.wav", dtype="float32")[0], torch_out, atol=1e-4)
    with pytest.raises(ValueError, match="give ckpt \\(PyTorch\\), onnx or litert .*: one of them"):
        build_enhancer(options(tmp_path, input=base.input, litert=str(path), onnx=str(path)))


def test_stdin_pcm_to_stdout_pcm(tmp_path):
    pcm = np.round(noisy(0.5)[:, 0] * 32767).astype("<i2")
    done = run_script("input=-", "chunk=123samples", "model.depth=2", "model.channels=[2,3]", stdin=pcm.tobytes())
    assert done.returncode == 0, done.stderr.decode()
    out = np.frombuffer(done.stdout, dtype="<i2")
    opts = options(tmp_path, input="-", model={**TINY, "lookahead": 0})
    expected = offline(opts, (pcm.astype(np.float32) / 32768)[None])[0] * 32768
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() <= 1  # 16-bit rounding
    assert b"real-time factor" in done.stderr


def test_stdin_ending_inside_a_sample_keeps_every_complete_sample_and_the_flush(tmp_path):
    """8,000 samples and one stray byte: all 8,000 enhanced samples (the stream's flush included, look-ahead 2)
    come out before the one-line error."""
    pcm = np.round(noisy(0.5)[:, 0] * 32767).astype("<i2")
    tiny = ["model.depth=2", "model.channels=[2,3]", "model.lookahead=2"]
    done = run_script("input=-", "chunk=1024samples", *tiny, stdin=pcm.tobytes() + b"\x01")
    assert done.returncode == 1
    assert (
        done.stderr.decode()
        .strip()
        .splitlines()[-1]
        .startswith("error: stdin: the stream ends inside a sample frame (1 stray bytes); every complete sample")
    )
    out = np.frombuffer(done.stdout, dtype="<i2")
    opts = options(tmp_path, input="-", model={**TINY, "lookahead": 2})
    expected = offline(opts, (pcm.astype(np.float32) / 32768)[None])[0] * 32768
    assert out.shape == expected.shape == (8000,)
    assert np.abs(out - expected).max() <= 1


def test_missing_file_is_one_line(tmp_path):
    done = run_script(f"input={tmp_path}/nowhere.wav")
    assert done.returncode == 1
    assert done.stderr.decode().strip() == f"error: {tmp_path}/nowhere.wav: no such file or folder"


def test_killed_run_leaves_no_partial_output(tmp_path):
    sf.write(tmp_path / "long.wav", noisy(30.0), 16000, subtype="FLOAT")
    args = [sys.executable, "stream_infer.py", f"input={tmp_path}/long.wav", "realtime=true", "model.depth=2"]
    proc = subprocess.Popen([*args, "model.channels=[2,3]"], cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".long.enhanced.wav.*.partial")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(tmp_path.glob(".long.enhanced.wav.*.partial")), "the run never started writing"
        time.sleep(0.5)  # some chunks written
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "long.enhanced.wav").exists()


def default_sigint() -> None:
    """In the child: Ctrl-C as a terminal delivers it, even where the tests run in the background (a shell's
    background jobs start with SIGINT ignored, and Python then installs no handler for it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_ends_a_stream_with_one_line_and_status_130():
    """Ctrl-C while the stream waits for stdin: one line, exit status 130, no traceback."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "stream_infer.py"), "input=-", "output=-", "model.depth=2", "model.channels=[2,3]"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    process.stdin.write("\0" * 4096)  # some audio, then the stream waits for more
    process.stdin.flush()
    lines = []
    for line in process.stderr:  # started: the stream is open (its first log line), however slow the machine
        lines.append(line)
        if "algorithmic latency" in line:
            break
    time.sleep(1)  # streaming what it has, then waiting on stdin
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=60)
    stderr = "".join(lines) + rest
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "interrupted (Ctrl-C): the stream stopped; files written before are complete"
    )


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_respect_the_umask(tmp_path, umask):
    """Atomic writes go through mkstemp (mode 0600); the renamed file gets a plain new file's mode."""
    from stmc.files import atomic_write

    previous = os.umask(umask)
    try:
        with atomic_audio_file(tmp_path / "out.wav", 1) as write:
            write(torch.zeros(1, 160))
        atomic_write(tmp_path / "out.json", "{}")
    finally:
        os.umask(previous)
    for name in ("out.wav", "out.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("batch", [2, 3, 9])
@pytest.mark.parametrize("chunk", ["16ms", "3"])
def test_folder_as_batched_streams_equals_one_file_at_a_time(tmp_path, batch, chunk):
    """batch=N: files of different lengths (one shorter than a frame, one empty, one broken) as N streams
    advancing together, rows restarted as files end, equal one-stream-at-a-time enhancement; more rows than
    files work; the broken file is reported and the others go on."""
    src = tmp_path / "noisy"
    src.mkdir()
    for i, seconds in enumerate([0.9, 0.3, 1.4, 0.01, 0.55, 0.0]):
        sf.write(src / f"f{i}.wav", noisy(seconds, seed=i), 16000, subtype="FLOAT")
    (src / "junk.wav").write_bytes(b"not audio")
    model = {**TINY, "lookahead": 2}
    assert infer(options(tmp_path, model=model, input=str(src), output=str(tmp_path / "one"), chunk=chunk)) == 1
    assert (
        infer(options(tmp_path, model=model, input=str(src), output=str(tmp_path / "many"), chunk=chunk, batch=batch))
        == 1
    )
    stats = json.loads((tmp_path / "stats.json").read_text())["batched"]
    assert stats["files"] == 6 and stats["failures"] == 1 and stats["files_per_s"] > 0
    for i in range(6):
        one, _ = sf.read(tmp_path / "one" / f"f{i}.wav", dtype="float32")
        many, _ = sf.read(tmp_path / "many" / f"f{i}.wav", dtype="float32")
        assert one.shape == many.shape
        np.testing.assert_allclose(many, one, atol=1e-5)


@pytest.mark.parametrize("bad", [{"batch": 0}, {"batch": 2, "realtime": True}, {"batch": 2, "channels": "each"}])
def test_bad_batch_settings_are_config_errors(tmp_path, bad):
    from stmc.errors import ConfigError

    with pytest.raises(ConfigError, match="batch"):
        infer(options(tmp_path, input=str(tmp_path), **bad))
