"""ONNX export: the STMC step with explicit state, run in onnxruntime, equals offline PyTorch; multi-stream resets."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stmc
from stmc.errors import InputError
from stmc.export import to_litert, to_onnx
from stmc.export.cli import main
from stmc.export.graph import offline_error, state_names
from stmc.export.litert import open_litert
from stmc.export.onnx import companion_path, open_onnx, read_metadata
from stmc.model import checkpoint
from stmc.model.stft import STFT
from tests.randmodel import randomise_norms, split_points, stream_all, unets


@pytest.fixture(scope="module", params=[0, 14], ids=["causal", "noncausal"])
def exported(request, tmp_path_factory):
    """The paper's depth-7 model (narrowed for speed), causal and with 14 frames of look-ahead, exported."""
    torch.manual_seed(request.param)
    model = randomise_norms(stmc.UNet(lookahead=request.param, width=0.25), request.param)
    return model, to_onnx(model, tmp_path_factory.mktemp("onnx") / "step.onnx")


ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where"}


def slow_broadcasts(path) -> list[str]:
    """The elementwise nodes of the ONNX graph at ``path`` that broadcast along a last axis of size 1 (their output's
    or one input's below the output's), which onnxruntime does one element at a time."""
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True).graph
    shapes = {
        value.name: [dim.dim_value if dim.HasField("dim_value") else None for dim in value.type.tensor_type.shape.dim]
        for value in [*graph.input, *graph.value_info, *graph.output]
    }
    shapes.update({tensor.name: list(tensor.dims) for tensor in graph.initializer})
    found = []
    for node in graph.node:
        if node.op_type not in ELEMENTWISE:
            continue
        inputs, out = [shapes[name] for name in node.input], shapes[node.output[0]]
        if out and any(shape != out for shape in inputs):  # broadcast
            if out[-1] == 1 or any(shape and shape[-1] == 1 != out[-1] for shape in inputs):
                found.append(f"{node.op_type} {inputs} -> {out}")
    return found


def test_steady_state_step_broadcasts_nothing_along_a_last_axis_of_size_one(exported, tmp_path):
    """onnxruntime broadcasts along a last axis of size 1 one element at a time (~5 µs a node on 513 bins instead
    of 0.4 µs): no elementwise node of the step a stream runs once settled (float32 and int8) does that; the spectrum's
    compression and bound run on ``[B, 2, F * T]`` (time masks, in the first frames' step only, may)."""
    model, path = exported
    int8 = to_onnx(model, tmp_path / "int8.onnx", quantize="int8", calibration=[torch.randn(1, 2, model.n_freq, 40)])
    for graph in (path, int8):
        settled = companion_path(graph, "settled")
        assert slow_broadcasts(settled if settled.is_file() else graph) == []


def utterance_spectrum(seconds: float, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """STFT channels of a noisy chirp: a whole utterance as the model sees it."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 16000)) / 16000
    x = 0.3 * torch.sin(2 * torch.pi * (200 + 400 * t) * t) + 0.05 * torch.randn(batch, t.numel(), generator=gen)
    spec = STFT().stft(x)
    return torch.stack([spec.real, spec.imag], 1).float()


def test_onnxruntime_over_a_whole_utterance_equals_offline(exported):
    model, path = exported
    spec = utterance_spectrum(2.0)  # 128 frames, one step call per frame
    stream = open_onnx(path)
    out = torch.cat([stream(spec[..., t : t + 1]) for t in range(spec.shape[-1])] + [stream.flush()], -1)
    with torch.no_grad():
        expected = model(spec)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_graph_contract_names_dynamic_batch_and_zero_state_metadata(exported):
    model, path = exported
    graph = onnx.load(str(path))
    meta = read_metadata(path)
    shapes, dtypes = json.loads(meta["state_shapes"]), json.loads(meta["state_dtypes"])
    n = len(shapes)
    assert [i.name for i in graph.graph.input] == ["frames", *state_names(n)]
    assert [o.name for o in graph.graph.output] == ["out", *state_names(n, "next_")]
    for value, shape in zip(graph.graph.input[1:], shapes, strict=True):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch"
        assert [d.dim_value for d in dims[1:]] == shape
    assert dtypes[-1] == "int64" and set(dtypes[:-1]) == {"float32"}
    stream = stmc.streaming(model, "stmc")
    assert shapes[:-1] == [list(s) for s in stream.engine.state_shapes()]
    assert int(meta["delay"]) == model.receptive_field[1]
    assert json.loads(meta["model_config"]) == json.loads(json.dumps(model.config))
    assert companion_path(path, "flush").exists() == bool(model.receptive_field[1])
    assert meta["flush"] == (companion_path(path, "flush").name if model.receptive_field[1] else "")


def test_prelu_layers_of_both_forms_equal_offline(exported):
    """Layers whose PReLU slopes are all at most 1 run as ``max(y, slope * y)``, the others as ``y + (slope - 1) *
    min(y, 0)`` (:class:`stmc.export.graph.ExportLayer`), never as a ``PRelu`` node: the fixture's model has layers
    of both kinds, and the whole stream equals offline (test_onnxruntime_over_a_whole_utterance_equals_offline)."""
    model, path = exported
    slopes = [layer.act.weight for layer in model.layers if layer.act is not None]
    at_most_one = sum(bool((s <= 1).all()) for s in slopes)
    nodes = onnx.load(str(path)).graph.node
    ops = [node.op_type for node in nodes]
    below_zero = sum(node.op_type == "Clip" and node.input[1] == "" for node in nodes)  # min(y, 0): no lower bound
    assert 0 < at_most_one < len(slopes)
    assert (ops.count("Max"), below_zero, ops.count("PRelu")) == (at_most_one, len(slopes) - at_most_one, 0)


def test_settled_graph_drops_the_time_masks_and_takes_over_only_once_they_are_all_ones(exported, tmp_path):
    """A look-ahead model's step graph masks the layer outputs that precede a stream's start; the settled graph has
    no masks (fewer nodes) and the driver switches to it at ``settles_at``, derived from the step, not written by
    hand: switching earlier streams wrong frames."""
    model, path = exported
    meta = read_metadata(path)
    if not model.receptive_field[1]:  # a causal step has no masks: one graph
        assert "settled" not in meta and not companion_path(path, "settled").exists()
        return
    settled = companion_path(path, "settled")
    assert meta["settled"] == settled.name and int(meta["settles_at"]) == max(model.delays) > 0
    kinds = [{node.op_type for node in onnx.load(str(p)).graph.node} for p in (path, settled)]
    assert "GreaterOrEqual" in kinds[0] and "GreaterOrEqual" not in kinds[1]
    spec = utterance_spectrum(1.0)
    with torch.no_grad():
        expected = model(spec)
    for settles_at, exact in ((int(meta["settles_at"]), True), (1, False)):
        stream = open_onnx(path)
        stream.engine.meta.settles_at = settles_at
        out = torch.cat([stream(spec[..., t : t + 1]) for t in range(spec.shape[-1])] + [stream.flush()], -1)
        assert ((out - expected).abs().max() < 1e-4) == exact, settles_at
    with pytest.raises(InputError, match=r"settled graph of a step graph, not one to open; open the step"):
        open_onnx(settled)


def strip_metadata(path, *keys: str) -> None:
    """Rewrite the ONNX graph at ``path`` without the metadata ``keys``: a file of an older export."""
    graph = onnx.load(str(path))
    kept = [p for p in graph.metadata_props if p.key.removeprefix("stmc.") not in keys]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    onnx.save(graph, str(path))


def test_files_of_an_older_export_stream_and_a_mismatched_set_is_refused(tmp_path):
    """Graphs from before the settled graph (no ``settled``, ``settles_at``, ``role``) stream exactly on the masked
    step; a missing settled graph, or one left over from another export, is a one-line error, not wrong audio."""
    torch.manual_seed(3)
    model = randomise_norms(stmc.UNet(depth=3, n_freq=33, lookahead=3, width=0.25), 3)
    old = to_onnx(model, tmp_path / "old" / "m.onnx")
    companion_path(old, "settled").unlink()
    strip_metadata(old, "settled", "settles_at", "role", "precision")
    strip_metadata(companion_path(old, "flush"), "settled", "settles_at", "role", "precision")
    assert offline_error(model, open_onnx(old), frames=24) < 1e-5
    path = to_onnx(model, tmp_path / "new" / "m.onnx")
    other = to_onnx(stmc.UNet(depth=3, n_freq=33, lookahead=3, width=0.5), tmp_path / "other" / "m.onnx")
    companion_path(other, "settled").replace(companion_path(path, "settled"))
    with pytest.raises(InputError, match=r"m.settled.onnx is not the settled graph of .*m.onnx \(left over"):
        open_onnx(path)
    companion_path(path, "settled").unlink()
    with pytest.raises(InputError, match=r"needs its settled graph .*m.settled.onnx, which is missing"):
        open_onnx(path)


@pytest.mark.parametrize("batch", [1, 3])
def test_any_batch_size_from_zero_state(exported, batch):
    model, path = exported
    spec = utterance_spectrum(0.5, batch, seed=batch)
    stream = open_onnx(path)
    out = torch.cat([stream(spec[..., :5]), stream(spec[..., 5:]), stream.flush()], -1)
    with torch.no_grad():
        torch.testing.assert_close(out, model(spec), atol=1e-4, rtol=0)


def test_several_frames_per_call(tmp_path):
    model = randomise_norms(stmc.UNet(depth=3, lookahead=2, channels=[2, 3, 4]), 0)
    path = to_onnx(model, tmp_path / "four.onnx", frames_per_call=4)
    spec = torch.randn(2, 2, 513, 24)
    stream = open_onnx(path)
    out = torch.cat([stream(spec[..., :8]), stream(spec[..., 8:12]), stream(spec[..., 12:]), stream.flush()], -1)
    torch.testing.assert_close(out, model(spec), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="4 frames per call"):
        open_onnx(path)(spec[..., :3])


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_multi_stream_resets_leave_every_stream_equal_to_its_own_offline_output(tmp_path, backend):
    """4 streams advance together; streams 1-3 restart on new utterances at different frames (one twice)."""
    model = randomise_norms(stmc.UNet(depth=3, lookahead=3, channels=[3, 4, 5]), 7)
    delay, frames = model.receptive_field[1], 40
    restarts = {1: [12], 2: [9, 27], 3: [33]}  # stream -> frames at which it starts a new utterance
    spec = torch.randn(4, 2, 513, frames)  # row b at frame t: the input of stream b at that step
    onnx = backend == "onnx"
    stream = open_onnx(to_onnx(model, tmp_path / "multi.onnx")) if onnx else stmc.streaming(model, "stmc")
    outs = []
    for t in range(0, frames, 3):
        mask = torch.tensor([t in restarts.get(b, []) for b in range(4)])
        if mask.any():
            stream.reset(mask)
        outs.append(stream(spec[..., t : t + 3]))
    out = torch.cat(outs + [stream.flush()], -1)  # [4, 2, F, frames]: frame t is the output for input t
    for b in range(4):
        bounds = [0, *restarts.get(b, []), frames]
        for k, (start, stop) in enumerate(zip(bounds, bounds[1:], strict=False)):
            expected = model(spec[b : b + 1, ..., start:stop])
            last = stop < frames  # an interrupted utterance never gets its last `delay` frames
            got = out[b : b + 1, ..., start : stop - delay if last else stop]
            torch.testing.assert_close(
                got, expected[..., : got.shape[-1]], atol=1e-4, rtol=0, msg=f"stream {b}, utterance {k}"
            )


def test_flush_graph_ends_chosen_streams_only(tmp_path):
    """Ending one stream of a batch: its rows of the pure flush graph, then zeroed state rows."""
    model = randomise_norms(stmc.UNet(depth=3, lookahead=3, channels=[3, 4, 5]), 3)
    stream = open_onnx(to_onnx(model, tmp_path / "m.onnx"))
    a, b, c = torch.randn(1, 2, 513, 20), torch.randn(1, 2, 513, 12), torch.randn(1, 2, 513, 8)
    first = stream(torch.cat([a[..., :12], b], 0))
    state = stream.get_state()
    tail = stream.engine.run_flush(state[:-1], state[-1])
    stream.reset(torch.tensor([False, True]))
    second = stream(torch.cat([a[..., 12:], c], 0))
    rest = stream.flush()
    ended_b = torch.cat([first[1:], tail[1:]], -1)
    torch.testing.assert_close(ended_b, model(b), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cat([first[:1], second[:1], rest[:1]], -1), model(a), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cat([second[1:], rest[1:]], -1)[..., 3:], model(c), atol=1e-4, rtol=0)


def test_cli_exports_a_checkpoint_and_checks_it(tmp_path, capsys):
    model = randomise_norms(stmc.UNet(depth=3, lookahead=1, channels=[2, 3, 4]), 1)
    ckpt = tmp_path / "model.ckpt"
    checkpoint.save(model, ckpt)
    assert main([str(tmp_path / "out.onnx"), "--ckpt", str(ckpt)]) == 0
    printed = capsys.readouterr().out
    assert "out.flush.onnx" in printed and "max |error|" in printed
    error = float(printed.rsplit("=", 1)[1])
    assert error < 1e-4
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad.onnx"), "--ckpt", str(tmp_path / "missing.ckpt")])
    assert "missing.ckpt does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("runtime", ["onnx", pytest.param("litert", marks=pytest.mark.litert)])
@pytest.mark.parametrize("lookahead", [0, 2], ids=["causal", "lookahead"])
def test_no_tstmc_model_exports_its_overlap_add_state_exactly(runtime, lookahead, tmp_path):
    """The ablation (tstmc=False) exports with the engine's own state, the decoder's pending output sums, and
    streams exactly in onnxruntime and in LiteRT (one stream per call there: static shapes)."""
    torch.manual_seed(lookahead)
    model = randomise_norms(stmc.UNet(depth=3, n_freq=33, lookahead=lookahead, width=0.25, tstmc=False), 1)
    if runtime == "onnx":
        stream, batch = open_onnx(to_onnx(model, tmp_path / "ablation.onnx")), 2
    else:
        stream, batch = open_litert(to_litert(model, tmp_path / "ablation.tflite")), 1
    assert stream.engine.state_shapes() == stmc.streaming(model, native=False).engine.state_shapes()
    assert offline_error(model, stream, frames=24, batch=batch) < 1e-5


def test_onnx_graph_with_another_graphs_metadata_is_refused(exported, tmp_path):
    """Metadata that describes another state layout is a clear error on load, not wrong audio."""
    _, path = exported
    graph = onnx.load(str(path))
    for prop in graph.metadata_props:
        if prop.key == "stmc.state_shapes":
            prop.value = json.dumps([[1, 9, 3]] * (len(json.loads(prop.value)) - 1) + [[]])
    onnx.save(graph, str(tmp_path / "forged.onnx"))
    with pytest.raises(ValueError, match=r"forged.onnx: input state_0 is float32 .* belongs to another graph"):
        open_onnx(tmp_path / "forged.onnx")


def test_open_onnx_refuses_wrong_input(exported):
    _, path = exported
    stream = open_onnx(path)
    with pytest.raises(ValueError, match=r"\[batch, 2 \(real, imag\), 513 bins, frames\]"):
        stream(torch.randn(1, 2, 512, 1))
    stream(torch.randn(2, 2, 513, 1))
    with pytest.raises(ValueError, match="batch 2"):
        stream(torch.randn(1, 2, 513, 1))
    fresh = open_onnx(path)
    fresh(torch.randn(3, 2, 513, 0))
    assert all(not tensor.any() for tensor in fresh.get_state())


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(model=unets(max_depth=4), batch=st.integers(1, 3), data=st.data())
def test_onnx_engine_behind_the_driver_equals_offline(model, batch, data, tmp_path):
    """The exported graphs run by onnxruntime behind the same stream driver as the PyTorch engines: random
    U-Nets (any look-ahead layers), random chunkings with empty chunks, then the flush, equal offline."""
    frames = data.draw(st.integers(0, 24))
    spec = torch.randn(batch, 2, model.n_freq, frames)
    stream = open_onnx(to_onnx(model, tmp_path / f"random{data.draw(st.integers(0, 10**9))}.onnx"))
    out = stream_all(stream, spec, split_points(data.draw, frames, 8))
    with torch.no_grad():
        expected = model(spec)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_onnx_flush_of_chosen_streams_through_the_driver(tmp_path):
    """flush(mask) on the exported graphs: the chosen stream ends exactly (the pure flush graph on a copy of the
    state), the other goes on; both equal offline."""
    model = randomise_norms(stmc.UNet(depth=3, lookahead=3, channels=[3, 4, 5]), 5)
    stream = open_onnx(to_onnx(model, tmp_path / "m.onnx"))
    a, b = torch.randn(1, 2, 513, 16), torch.randn(1, 2, 513, 7)
    first = stream(torch.cat([a[..., :7], b], 0))
    tail_b = stream.flush(torch.tensor([False, True]))
    second = stream(torch.cat([a[..., 7:], torch.zeros(1, 2, 513, 9)], 0))
    rest = stream.flush()
    torch.testing.assert_close(torch.cat([first[1:], tail_b], -1), model(b), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cat([first[:1], second[:1], rest[:1]], -1), model(a), atol=1e-4, rtol=0)
