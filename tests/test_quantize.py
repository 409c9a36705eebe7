"""int8 step graphs (stmc.export.quantize): integer GEMMs, close to the float graph, calibration input checked, and
an exported graph as an evaluation method."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stmc.data.synthetic import demo_like_tree
from stmc.errors import InputError
from stmc.evaluation.settings import Settings
from stmc.export import read_metadata, to_onnx
from stmc.export.graph import ConvExportLayer, ExportLayer, offline_error
from stmc.export.onnx import LAYER_FORMS, companion_path, open_onnx
from stmc.export.quantize import per_stream
from stmc.stream.engines import STMCEngine
from tests.randmodel import relative_mask_error, split_points, stream_all, tiny_unet, unets
from tests.test_evaluate import ROOT, run_evaluate
from tests.test_export import strip_metadata


def spectra(count: int = 3, frames: int = 40, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 2, 513, frames, generator=generator) for _ in range(count)]


def optimized_ops(path: str | Path) -> Counter[str]:
    """The operators onnxruntime runs for the graph at ``path`` after its own fusions, with their counts."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path) + ".optimized"
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


@pytest.mark.parametrize("lookahead", [0, 2], ids=["causal", "lookahead"])
def test_int8_step_runs_integer_convolutions_close_to_the_float_step(tmp_path, lookahead):
    """The int8 graph computes its inner layers as QLinearConv (int8 x int8), not float convolutions with
    dequantized weights, and the two layers on the spectrum's channels as float Gemms; its masks stay within
    quantization error of offline PyTorch, while the float graph's equal it."""
    model = tiny_unet(lookahead)
    fp32 = to_onnx(model, tmp_path / "fp32.onnx")
    int8 = to_onnx(model, tmp_path / "int8.onnx", quantize="int8", calibration=spectra())
    assert read_metadata(int8)["precision"] == "int8" and read_metadata(fp32)["precision"] == "float32"
    for graph in [int8, *([companion_path(int8, "settled")] if lookahead else [])]:  # the settled step too
        ops = optimized_ops(graph)
        assert ops["QLinearConv"] == len(model.layers) - 2 and ops["Gemm"] == 2, ops
        assert not ops.keys() & {"Conv", "QGemm", "MatMul"}, ops
    fp32_ops = optimized_ops(fp32)
    assert fp32_ops["Gemm"] == len(model.layers) and "Conv" not in fp32_ops  # float32 keeps Gather + Gemm
    assert offline_error(model, open_onnx(fp32)) < 1e-5
    relative = relative_mask_error(model, open_onnx(int8), batch=2)
    assert 1e-4 < relative < 0.1, relative  # quantized, and a few per cent of the mask's energy at most


@settings(max_examples=25, deadline=None)
@given(tstmc=st.booleans(), data=st.data())
def test_int8_step_keeps_exactly_the_first_and_last_layers_float(tstmc, data):
    """The int8 form is chosen by position in the chain: its first and last layers (a ``tstmc=False`` last layer's
    overlap-add product too) stay float32 ``Gather`` + ``Gemm``, every other layer is a ``Conv``, whatever the
    channel counts (inner layers with the spectrum's 2 channels included)."""
    model = data.draw(unets(max_depth=4, tstmc=tstmc))
    engine = STMCEngine(model, layer_form=LAYER_FORMS["int8"], exported=True)
    forms = [type(engine.overlap[k].spread if k in engine.overlap else layer) for k, layer in enumerate(engine.layers)]
    last = len(model.layers) - 1
    assert forms == [ExportLayer if k in (0, last) else ConvExportLayer for k in range(last + 1)]


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(tstmc=st.booleans(), batch=st.integers(1, 3), data=st.data())
def test_int8_graphs_convolution_form_in_float_equals_offline(tstmc, batch, data, tmp_path, monkeypatch):
    """The layer form the int8 export quantizes, every layer one Conv (encoders strided, decoders as two
    polyphase convolutions interleaved), exported in float32: random U-Nets (the ablation's overlap-add decoder
    too), frames per call and chunkings, then the flush, equal offline."""
    monkeypatch.setitem(LAYER_FORMS, None, ConvExportLayer)
    model = data.draw(unets(max_depth=4, tstmc=tstmc))
    per_call = data.draw(st.integers(1, 3))
    frames = per_call * data.draw(st.integers(0, 8))
    spec = torch.randn(batch, 2, model.n_freq, frames)
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "conv.onnx"
    stream = open_onnx(to_onnx(model, path, frames_per_call=per_call))
    ops = optimized_ops(path)
    assert "Conv" in ops and "Gemm" not in ops
    sizes = [size * per_call for size in split_points(data.draw, frames // per_call, 4)]
    out = stream_all(stream, spec, sizes)
    with torch.no_grad():
        expected = model(spec)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_calibration_feeds_split_per_stream_take_every_call_once():
    """LiteRT calibrates on a one-stream graph: the feeds of batched spectra become one feed per stream and call,
    every call once and in order, the rows of one call together across inputs."""
    sizes = [1, 1, 2, 1, 3]  # calls of single-stream and batched spectra
    feeds, call = [], 0
    for size in sizes:
        rows = np.arange(call, call + size)
        feeds.append({"frames": rows[:, None, None] * np.ones((1, 2, 4), np.float32), "state_1": rows})
        call += size
    single = per_stream(feeds)
    assert len(single) == call
    assert all(feed["frames"].shape == (1, 2, 4) and feed["state_1"].shape == (1,) for feed in single)
    taken = np.concatenate([feed["state_1"] for feed in single])
    assert np.array_equal(taken, np.arange(call))
    frames = np.concatenate([feed["frames"] for feed in single])
    assert np.array_equal(frames[:, 0, 0], taken)  # the rows of one call stay together across inputs


def test_int8_calibration_bad_input_is_one_line(tmp_path):
    model = tiny_unet()
    empty = tmp_path / "empty"
    empty.mkdir()
    wrong_rate = tmp_path / "48k"
    wrong_rate.mkdir()
    sf.write(str(wrong_rate / "a.wav"), np.zeros(48000, np.float32), 48000)
    cases = {
        "quantize='int4'": dict(quantize="int4"),
        "no audio files in": dict(quantize="int8", calibration=empty),
        "48000 Hz; calibrate on 16000 Hz": dict(quantize="int8", calibration=wrong_rate),
        "is not a folder": dict(quantize="int8", calibration=str(tmp_path / "missing")),
        "gave no frames": dict(quantize="int8", calibration=[]),
        "calibration chunk": dict(quantize="int8", calibration=[torch.zeros(1, 2, 257, 4)]),
        "an iterable of spectrum chunks": dict(quantize="int8", calibration=torch.zeros(1, 2, 513, 4)),
    }
    for message, kwargs in cases.items():
        with pytest.raises(InputError, match=message) as caught:
            to_onnx(model, tmp_path / "out.onnx", **kwargs)
        assert "\n" not in str(caught.value)
    lookahead = tiny_unet(2)  # chunks of one frame never reach the time its settled step graph takes over
    with pytest.raises(InputError, match=r"no calibration chunk reaches stream time \d+, .*give chunks of more than"):
        to_onnx(lookahead, tmp_path / "out.onnx", quantize="int8", calibration=[torch.randn(1, 2, lookahead.n_freq, 1)])
    assert not (tmp_path / "out.onnx").exists()  # nothing half-written


def test_export_cli_int8_flags(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "stmc.export", str(tmp_path / "m.onnx"), "--depth", "2", "--calibration", "x"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 2 and "--calibration is for --int8" in run.stderr


def test_settings_check_the_exported_graph_method(tmp_path):
    path = to_onnx(tiny_unet(), tmp_path / "m.onnx")
    assert Settings(("offline", "onnx"), graph=str(path)).streams == ("onnx",)
    for kwargs, message in [
        (dict(methods=("offline", "onnx")), "give graph=<file.onnx>"),
        (dict(methods=("offline", "litert"), graph=str(path)), "is a onnx graph; use methods"),
        (dict(methods=("offline", "stmc"), graph=str(path)), "add one"),
        (dict(methods=("offline", "onnx"), graph=str(tmp_path / "none.onnx")), "no such file"),
    ]:
        with pytest.raises(InputError, match=message):
            Settings(**kwargs)


def test_evaluate_streams_an_exported_graph_and_refuses_another_models(tmp_path, tiny_checkpoint):
    """``methods=[offline,onnx] graph=...`` scores the graph's stream like an engine's (equal to offline for a
    float graph); a graph of another architecture is a one-line error naming both."""
    demo_like_tree(tmp_path / "corpus")
    ckpt = tiny_checkpoint(tmp_path / "run/checkpoints/last.ckpt", lookahead=1)
    graph = to_onnx(tiny_unet(1), tmp_path / "graph.onnx")
    common = [f"checkpoints=[{ckpt}]", f"data.root={tmp_path / 'corpus'}", "examples_per_noise=0", "metrics=[si_snri]"]
    run = run_evaluate(*common, "methods=[offline,onnx]", f"graph={graph}", f"hydra.run.dir={tmp_path / 'ev'}")
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "ev/results.json").read_text())
    assert results["si_snri"]["onnx"] == pytest.approx(results["si_snri"]["offline"], abs=1e-3)
    assert results["settings"]["graph"] == str(graph)
    other = to_onnx(tiny_unet(0), tmp_path / "other.onnx")
    run = run_evaluate(*common, "methods=[offline,onnx]", f"graph={other}", f"hydra.run.dir={tmp_path / 'ev2'}")
    assert run.returncode != 0 and "exported from another architecture" in run.stderr


def test_a_graph_from_before_the_precision_key_still_streams_as_float32(tmp_path):
    """Graphs exported before int8 existed carry no ``precision`` in their metadata: they load as float32 and
    stream exactly (the step-graph contract did not change)."""
    model = tiny_unet(1)
    path = to_onnx(model, tmp_path / "old.onnx")
    for graph in (path, companion_path(path, "settled"), companion_path(path, "flush")):
        strip_metadata(graph, "precision")
    assert "precision" not in read_metadata(path)
    stream = open_onnx(path)
    assert stream.engine.meta.precision == "float32"
    assert offline_error(model, stream) < 1e-5
