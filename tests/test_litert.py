"""LiteRT export: the stmc, inc and window steps in LiteRT's interpreter equal offline PyTorch; bad files are refused.

The exports need the converter (``litert`` marker: ``make litert`` runs them in ``.venv-litert``); the refusal of
files that are no LiteRT step graph needs only the runtime and runs everywhere.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import stmc
from stmc.export import to_litert
from stmc.export.cli import main
from stmc.export.graph import offline_error
from stmc.export.litert import open_litert, operator_counts, operator_names, read_metadata, with_litert_metadata
from tests.randmodel import randomise_norms, relative_mask_error
from tests.test_export import utterance_spectrum


@pytest.fixture(scope="module", params=[0, 14], ids=["causal", "lookahead"])
def exported(request, tmp_path_factory):
    """The paper's depth-7 model (narrowed for speed), causal and with 14 frames of look-ahead, as LiteRT files."""
    torch.manual_seed(request.param)
    model = randomise_norms(stmc.UNet(lookahead=request.param, width=0.25), request.param)
    return model, to_litert(model, tmp_path_factory.mktemp("litert") / "step.tflite")


@pytest.mark.litert
def test_litert_stream_over_a_whole_utterance_equals_offline(exported):
    """The property the export exists for: one hop per call through LiteRT, then the flush, is offline inference."""
    model, path = exported
    spec = utterance_spectrum(2.0)  # 128 frames
    stream = open_litert(path)
    out = torch.cat([stream(spec[..., t : t + 1]) for t in range(spec.shape[-1])] + [stream.flush()], -1)
    with torch.no_grad():
        expected = model(spec)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


@pytest.mark.litert
def test_litert_file_holds_the_contract_in_its_own_metadata(exported):
    """Signatures step (and flush with look-ahead), built-in operators only, the state layout and delay in the file,
    zero state to start."""
    model, path = exported
    meta = read_metadata(path)
    stream = open_litert(path)
    assert meta["method"] == "stmc" and int(meta["delay"]) == model.receptive_field[1] == stream.delay
    assert json.loads(meta["model_config"]) == model.config and meta["batch"] == "1"
    signatures = stream.engine.interpreter.get_signature_list()
    assert sorted(signatures) == (["flush", "settled", "step"] if stream.delay else ["step"])
    assert int(meta.get("settles_at", 0)) == max(model.delays)
    operators = operator_names(path)  # built-in operators only: the file runs wherever LiteRT runs
    # one fully connected product per layer (the converter computed PReLU layers' twice from F.prelu)
    assert operator_counts(path)["FULLY_CONNECTED"] == len(model.layers)
    if stream.delay:  # the settled step: the same layers without the time masks
        settled = operator_counts(path, "settled")
        assert settled["FULLY_CONNECTED"] == len(model.layers)
        assert sum(settled.values()) < sum(operator_counts(path).values())
    assert "FULLY_CONNECTED" in operators and "CUSTOM" not in operators and "unknown" not in operators
    stream(torch.zeros(1, 2, model.n_freq, 1))
    shapes = [list(t.shape[1:]) for t in stream.get_state()[:-1]]
    assert shapes == [list(s) for s in json.loads(meta["state_shapes"])[:-1]]


@pytest.mark.litert
@pytest.mark.parametrize("method", ["inc", "window"])
@pytest.mark.parametrize("lookahead", [0, 3], ids=["causal", "lookahead"])
def test_inc_and_window_steps_in_litert_equal_offline(method, lookahead, tmp_path):
    """The other two methods of Table 1 run in LiteRT too, exactly (a small random U-Net: same code paths)."""
    torch.manual_seed(lookahead)
    model = randomise_norms(stmc.UNet(depth=3, n_freq=33, lookahead=lookahead, width=0.25), lookahead)
    stream = open_litert(to_litert(model, tmp_path / f"{method}.tflite", method))
    meta = read_metadata(stream.engine.path)
    assert stream.engine.method == method and meta["method"] == method
    assert int(meta["settles_at"]) > 0  # these steps mask the frames of their history before a stream's start
    assert offline_error(model, stream, frames=24, batch=1) < 1e-4


@pytest.mark.litert
def test_cli_exports_to_litert_with_a_batch_and_checks_it(tmp_path, capsys):
    """``python -m stmc.export X.tflite --batch 2`` writes and verifies; a stream of another batch is refused with
    the flag that fixes it."""
    out = tmp_path / "w.tflite"
    assert main([str(out), "--depth", "2", "--width", "0.25", "--lookahead", "1", "--batch", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (+ the settled signature) (+ the flush signature)" in printed
    assert "LiteRT vs offline PyTorch" in printed
    assert "LiteRT operators: " in printed and "FULLY_CONNECTED" in printed
    stream = open_litert(out)
    with pytest.raises(ValueError, match=r"exported for 2 stream\(s\) per call, got 3; export it with --batch 3"):
        stream(torch.zeros(3, 2, 513, 1))


@pytest.mark.litert
def test_metadata_of_another_graph_is_refused_not_streamed(exported, tmp_path):
    """A file whose metadata describes another model's state (here: the other look-ahead's) is a clear error."""
    model, path = exported
    other = stmc.UNet(lookahead=0 if model.receptive_field[1] else 14, width=0.25)
    meta = read_metadata(path)
    meta["state_shapes"] = json.dumps([[1, 9, 3]] * (len(json.loads(meta["state_shapes"])) - 1) + [[]])
    meta["model_config"] = json.dumps(other.config)
    forged = tmp_path / "forged.tflite"
    forged.write_bytes(with_litert_metadata(path.read_bytes(), meta))
    with pytest.raises(
        ValueError,
        match=r"forged.tflite: input state_0 is float32 .* its metadata says .* "
        r"belongs to another graph",
    ):
        open_litert(forged)
    del meta["delay"]
    forged.write_bytes(with_litert_metadata(path.read_bytes(), meta))
    with pytest.raises(ValueError, match=r"is not an STMC step graph \(its metadata lacks delay\)"):
        open_litert(forged)


def test_a_file_that_is_not_litert_is_refused(tmp_path):
    """Random bytes, or an ONNX file renamed, never reach the interpreter."""
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"\x08\x07\x12\x04onnx" + bytes(64))
    with pytest.raises(ValueError, match=r"model.tflite is not a LiteRT \(.tflite\) file"):
        open_litert(bogus)


def test_without_the_converter_the_export_says_how_to_get_it(monkeypatch, tmp_path):
    """The converter is an optional install: its absence is one line naming the make target."""
    import builtins

    real_import = builtins.__import__

    def no_converter(name, *args, **kwargs):
        if name == "litert_torch":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_converter)
    with pytest.raises(ValueError, match=r"litert-torch\) is not installed .*make litert"):
        to_litert(stmc.UNet(depth=1, channels=[1], n_freq=9), tmp_path / "x.tflite")


@pytest.mark.litert
def test_benchmark_worker_times_hops_and_measures_its_own_resident_growth(exported):
    """The LiteRT rows of the speed table: a worker process streams the file, times the hops it is asked for and
    reports the growth of its peak resident memory (loading the weights at least), and the state it held."""
    from stmc.bench.litert import LiteRTProcess

    model, path = exported
    worker = LiteRTProcess(path, frames=8)
    assert worker.ready["ready"] is True
    seconds = worker.time(5) + worker.time(3)
    assert len(seconds) == 8 and all(0 < s < 10 for s in seconds)
    memory = worker.close()
    stream = open_litert(path)
    stream(torch.zeros(1, 2, model.n_freq, 1))
    assert memory["state_bytes"] == sum(t.numel() * 4 for t in stream.get_state()[:-1])
    assert memory["peak_reset"] and memory["overall_bytes"] >= memory["init_bytes"] >= path.stat().st_size // 2


@pytest.mark.litert
@pytest.mark.parametrize("lookahead", [0, 2], ids=["causal", "lookahead"])
def test_int8_litert_file_quantizes_its_fully_connected_layers(tmp_path, lookahead):
    """ai-edge-quantizer's int8 file: QUANTIZE / DEQUANTIZE around int8 fully connected layers, metadata saying
    int8, masks within quantization error of offline PyTorch (and not equal to it). A file of static batch 3 takes
    the ranges calibrated on its batch-1 conversion (whose tensors are numbered differently): each of its streams
    equals the batch-1 file's on the same input, so every layer got its own ranges."""
    torch.manual_seed(lookahead)
    model = randomise_norms(stmc.UNet(depth=3, n_freq=33, lookahead=lookahead, width=0.25), lookahead)
    calibration = [torch.randn(1, 2, 33, 40, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    path = to_litert(model, tmp_path / "int8.tflite", quantize="int8", calibration=calibration)
    assert read_metadata(path)["precision"] == "int8"
    for signature in ["step", "settled"] if lookahead else ["step"]:
        assert {"QUANTIZE", "DEQUANTIZE", "FULLY_CONNECTED"} <= set(operator_counts(path, signature)), signature
    relative = relative_mask_error(model, open_litert(path))
    assert 1e-4 < relative < 0.1, relative  # quantized, and a few per cent of the mask's energy at most
    batched = to_litert(model, tmp_path / "int8x3.tflite", batch=3, quantize="int8", calibration=calibration)
    spec = torch.randn(3, 2, 33, 24, generator=torch.Generator().manual_seed(5))
    single, together = open_litert(path), open_litert(batched)
    streams = torch.cat([together(spec), together.flush()], -1)
    for b in range(3):
        single.reset()
        alone = torch.cat([single(spec[b : b + 1]), single.flush()], -1)
        assert (streams[b : b + 1] - alone).abs().max() < 1e-5, b


@pytest.mark.litert
def test_litert_int8_ranges_are_the_calibration_quantiles(tmp_path, monkeypatch):
    """The activation ranges of an int8 LiteRT file are each fully connected op's input and output quantiles over
    the calibration calls of every signature (step, settled, flush of a look-ahead model; the smallest values at or
    past them, to one histogram bin), widened to hold 0, and at quantile 0 its extremes: :func:`quantile_ranges`
    against numpy, and the int8 file's scales against those ranges (not ai-edge-quantizer's own)."""
    from ai_edge_quantizer import quantizer
    from ai_edge_quantizer.utils import tfl_interpreter_utils as tfl

    from stmc.export import quantize
    from stmc.export.litert import twin_tensors

    torch.manual_seed(0)
    model = randomise_norms(stmc.UNet(depth=3, n_freq=33, lookahead=2, width=0.25), 0)
    path = to_litert(model, tmp_path / "float.tflite")
    data, meta = path.read_bytes(), read_metadata(path)
    spectra = [torch.randn(1, 2, 33, 30, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    feeds = quantize.calibration_feeds(model, spectra, 1)
    signatures = quantize.calibration_signatures(feeds, meta["flush"], meta["settled"], int(meta["settles_at"]))
    assert len(signatures) == 3
    calibrator = quantizer.Quantizer(bytearray(data))
    calibrator.load_quantization_recipe(quantize.litert_recipe())
    ranges = calibrator.calibrate(signatures)
    names = set(twin_tensors(data, data))
    interpreter = tfl.create_tfl_interpreter(data, num_threads=1)
    values = {name: [] for name in names}
    for signature, calls in signatures.items():
        index = tfl.get_signature_main_subgraph_index(interpreter, signature)
        for feed in calls:
            tfl.invoke_interpreter_signature(interpreter, feed, signature)
            for name, tensor in tfl.get_tensor_name_to_content_map(interpreter, index).items():
                if name in names:
                    values[name].append(tensor.ravel())
    values = {name: np.concatenate(parts) for name, parts in values.items()}
    for quantile in (0.0, 0.02):
        narrowed = quantize.quantile_ranges(data, signatures, names, quantile)
        assert set(narrowed) == names
        for name, tensor in values.items():
            bin_width = (tensor.max() - tensor.min()) / quantize.RANGE_HISTOGRAM_BINS
            low, high = np.quantile(tensor, [quantile, 1 - quantile], method="inverted_cdf")
            assert abs(float(narrowed[name]["min"].min()) - min(low, 0)) <= 1.01 * bin_width, name
            assert abs(float(narrowed[name]["max"].max()) - max(high, 0)) <= 1.01 * bin_width, name
            assert np.shape(narrowed[name]["min"]) == np.shape(ranges[name]["min"])
    monkeypatch.setattr(quantize, "LITERT_RANGE_QUANTILE", 0.02)
    int8 = to_litert(model, tmp_path / "int8.tflite", quantize="int8", calibration=spectra)
    scales = {
        detail["name"]: float(detail["quantization_parameters"]["scales"][0])
        for detail in tfl.create_tfl_interpreter(str(int8), num_threads=1).get_tensor_details()
        if detail["name"] in names and len(detail["quantization_parameters"]["scales"]) == 1
    }
    assert scales, "no int8 activation among the fully connected ops' tensors"
    own = {name: float(ranges[name]["max"].max() - ranges[name]["min"].min()) / 255 for name in scales}
    for name, scale in scales.items():
        assert scale == pytest.approx(float(narrowed[name]["max"].max() - narrowed[name]["min"].min()) / 255, rel=1e-3)
    assert any(scale < 0.9 * own[name] for name, scale in scales.items())  # narrower than the quantizer's own
