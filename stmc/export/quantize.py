"""Static int8 post-training quantization of exported step graphs, calibrated on real audio.

Each exporter uses its runtime's own quantizer on the layers' products: ``onnxruntime.quantization.quantize_static``
on an ONNX step whose inner layers are one ``Conv`` each (:class:`stmc.export.graph.ConvExportLayer`; QDQ format:
per-channel int8 weights, per-tensor uint8 inputs and outputs; onnxruntime then fuses each into an integer
``QLinearConv``), and ``ai-edge-quantizer`` for LiteRT on the fully connected ops of the ``Gather`` + ``Gemm`` form
(:class:`stmc.export.graph.ExportLayer`). The activation ranges come from the step's inputs over calibration audio
(for LiteRT, quantiles of each tensor's values: :data:`LITERT_RANGE_QUANTILE`): by default the demo corpus's
validation recordings (``val_*/noisy``), else a folder of 16 kHz audio or an iterable of spectrum chunks
``[B, 2, F, t]``. Everything else (registers, LiteRT's im2col gathers, PReLU, the mask's bound, the ONNX step's
first and last layers: :func:`stmc.export.onnx.int8_layer_form`) stays float, and the
state the graph carries stays float32: the contract of :mod:`stmc.export.graph` is unchanged, and the metadata's
``precision`` says ``int8``. The ONNX flush graph stays float (it runs once per utterance); a LiteRT file's flush
signature is quantized with its step.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from stmc.errors import InputError
from stmc.model.unet import UNet

PRECISIONS = {None: "float32", "int8": "int8"}  # an exporter's quantize -> the graph metadata's precision
CALIBRATION_HOPS = 512  # step-graph inputs the ranges are measured on, spread evenly over the calibration audio
# LiteRT activation ranges: each fully connected op's input and output between this quantile and its complement over
# the calibration calls. ai-edge-quantizer's own ranges (a moving average of each call's min and max) are wider than
# the bulk of the values needs, and their int8 steps too coarse (TFLite requantizes each output to int8 too). Chosen
# on val_real among 3e-6 .. 3e-4 (docs/deployment.md); 1e-3 clips too much.
LITERT_RANGE_QUANTILE = 1e-5
RANGE_HISTOGRAM_BINS = 1 << 14  # the quantiles' resolution: 1/64 of an int8 step of the min/max range


def default_calibration() -> list[Path]:
    """The demo corpus's validation recordings (``$STMC_DEMO_ROOT``, else ``demo_corpus``): ``val_*/noisy``."""
    root = Path(os.environ.get("STMC_DEMO_ROOT", "demo_corpus"))
    files = sorted(root.glob("val_*/noisy/*.wav"))
    if not files:
        raise InputError(
            f"int8 calibration: no validation recordings under {root}/val_*/noisy (build the demo corpus with "
            "make corpus, or give a folder of 16 kHz audio as calibration)"
        )
    return files


def audio_files(folder: Path) -> list[Path]:
    """The audio files below ``folder`` (recursive); a one-line error for a missing or empty folder."""
    from stmc.data.index import AUDIO_SUFFIXES

    if not folder.is_dir():
        raise InputError(f"int8 calibration: {folder} is not a folder; give a folder of 16 kHz audio files")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise InputError(f"int8 calibration: no audio files in {folder} (.wav, .flac, .ogg, .aiff)")
    return files


def spectra_of_files(files: list[Path], n_freq: int) -> Iterator[torch.Tensor]:
    """Each file as the model's input spectrum ``[1, 2, F, T]`` (read as the datasets read audio, mono); files must
    be 16 kHz (the model's rate); a silent or empty one adds nothing."""
    from stmc.data.audio import probe, read
    from stmc.model.enhancer import to_channels
    from stmc.model.stft import SAMPLE_RATE, STFT

    stft = STFT()
    if stft.n_freq != n_freq:
        raise InputError(
            f"int8 calibration from audio needs a model on the {stft.n_freq}-bin STFT, this one has {n_freq} bins; "
            "give an iterable of spectrum chunks as calibration"
        )
    for path in files:
        info, problem = probe(str(path))
        if info is None or problem == "non-finite samples":
            raise InputError(f"int8 calibration: cannot use {path}: {problem}")
        if info.samplerate != SAMPLE_RATE:
            raise InputError(
                f"int8 calibration: {path} is {info.samplerate} Hz; calibrate on {SAMPLE_RATE} Hz audio "
                "(resample it first)"
            )
        if problem is None:
            yield to_channels(stft.stft(torch.from_numpy(read(str(path), info))[None]))


def calibration_spectra(calibration: object, n_freq: int) -> Iterator[torch.Tensor]:
    """Spectrum chunks ``[B, 2, F, t]`` from ``calibration``: None (the demo corpus's validation recordings), a
    folder of 16 kHz audio, or an iterable of spectrum chunks (checked as every stream checks its input)."""
    from stmc.model.unet import check_spectrum

    if calibration is None:
        yield from spectra_of_files(default_calibration(), n_freq)
        return
    if isinstance(calibration, str | os.PathLike):
        yield from spectra_of_files(audio_files(Path(calibration)), n_freq)
        return
    if not isinstance(calibration, Iterable) or isinstance(calibration, torch.Tensor):
        raise InputError(
            "calibration: give None (the demo corpus), a folder of 16 kHz audio or an iterable of spectrum chunks "
            f"[B, 2, {n_freq}, t], got {type(calibration).__name__}"
        )
    for chunk in calibration:
        try:
            check_spectrum(chunk, n_freq, torch.float32)
        except InputError as err:
            raise InputError(f"calibration chunk: {err}") from err
        yield chunk


def calibration_feeds(
    model: UNet, spectra: Iterable[torch.Tensor], frames_per_call: int, hops: int = CALIBRATION_HOPS
) -> list[dict[str, np.ndarray]]:
    """The step graph's inputs (``frames``, ``state_0 .. state_N``) at up to ``hops`` calls spread evenly over the
    spectra, each streamed from a fresh state by the model's own STMC stream (the state every exported step
    carries): what the quantized graph will see, whatever runtime runs it. Each feed has its spectrum's batch
    (:func:`per_stream` splits them)."""
    from stmc.export.graph import INPUT, state_names
    from stmc.stream.engines import streaming

    spectra = list(spectra)
    calls = sum(spec.shape[-1] // frames_per_call for spec in spectra)
    if not calls:
        raise InputError(
            f"int8 calibration: the calibration audio gave no frames (it needs {frames_per_call} hop(s) at least)"
        )
    keep = set(np.linspace(0, calls - 1, min(hops, calls)).round().astype(int).tolist())
    stream, feeds, call = streaming(model.eval(), "stmc"), [], 0
    for spec in spectra:
        stream.reset()
        for start in range(0, spec.shape[-1] - frames_per_call + 1, frames_per_call):
            frames = spec[..., start : start + frames_per_call]
            if call in keep:
                state = stream.get_state() or [
                    *(torch.zeros(spec.shape[0], *shape) for shape in stream.engine.state_shapes()),
                    torch.zeros(spec.shape[0], dtype=torch.long),
                ]
                names = [INPUT, *state_names(len(state))]
                feeds.append({n: t.numpy().copy() for n, t in zip(names, [frames.contiguous(), *state], strict=True)})
            stream(frames)
            call += 1
    return feeds


def per_stream(feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """``feeds`` as one feed per stream (a spectrum of several streams gives one per stream and call), for a
    calibration on a graph of one stream: every call once, in order."""
    return [
        {name: value[row : row + 1] for name, value in feed.items()}
        for feed in feeds
        for row in range(next(iter(feed.values())).shape[0])
    ]


def feeds_from(feeds: list[dict[str, np.ndarray]], settles_at: int) -> list[dict[str, np.ndarray]]:
    """The calibration feeds of the steps a settled graph runs (every stream's time at least ``settles_at``; all of
    them for 0): what it must be calibrated on, as its activations differ from the masked step's in the first
    frames. ``ValueError`` when there are none."""
    from stmc.export.graph import state_names

    time = state_names(len(feeds[0]) - 1)[-1]
    chosen = [feed for feed in feeds if feed[time].min() >= settles_at]
    if not chosen:
        raise InputError(
            f"int8 calibration: no calibration chunk reaches stream time {settles_at}, where the model's settled "
            f"step graph takes over; give chunks of more than {settles_at} frames"
        )
    return chosen


def quantize_onnx(fp32_path: Path, out: Path, feeds: list[dict], op_types: list[str]) -> None:
    """Write the int8 form of the float step graph at ``fp32_path`` to ``out``, its ``op_types`` nodes quantized (see
    the module docstring)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self.remaining = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self.remaining, None)

    quantize_static(
        str(fp32_path),
        str(out),
        Feeds(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=op_types,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


def quantize_litert(
    data: bytes,
    single: bytes,
    twins: dict[str, str],
    feeds: list[dict[str, np.ndarray]],
    flush: str | None,
    settled: str | None = None,
    settles_at: int = 0,
) -> bytes:
    """The LiteRT file ``data`` with int8 fully connected layers (int8 weights per channel, int8 activations), by
    ``ai-edge-quantizer`` (the converter's venv), calibrated on ``feeds`` for the step signature, on those of them
    at stream times from ``settles_at`` on for the ``settled`` signature, and on their state for the ``flush``
    signature (None: no such signature); each fully connected op's activation range is the quantiles of
    :func:`quantile_ranges` at :data:`LITERT_RANGE_QUANTILE`.

    The calibration runs on ``single``, the same graphs for one stream (``data`` itself where its batch is 1), whose
    fully connected ops' tensors ``twins`` names in ``data`` (:func:`stmc.export.litert.twin_tensors`): the
    calibration interpreter keeps every intermediate tensor of a call, so calibrating a batch-B file itself took B
    times the memory (24 GiB were not enough for the non-causal step at batch 128)."""
    from ai_edge_quantizer import quantizer

    # these are every range the recipe needs (the fully connected ops' inputs and outputs), so ai-edge-quantizer's
    # own calibration (a moving average of each call's min and max) would be a pass over the calls to throw away
    ranges = quantile_ranges(
        single, calibration_signatures(feeds, flush, settled, settles_at), set(twins), LITERT_RANGE_QUANTILE
    )
    ranges = {twins[name]: qsv for name, qsv in ranges.items()}
    tool = quantizer.Quantizer(bytearray(data))
    tool.load_quantization_recipe(litert_recipe())
    return bytes(tool.quantize(ranges).quantized_model)


def calibration_signatures(
    feeds: list[dict[str, np.ndarray]], flush: str | None, settled: str | None, settles_at: int
) -> dict[str, list[dict[str, np.ndarray]]]:
    """The calibration calls of each signature of a LiteRT file for one stream: the step's on every feed, the
    ``settled`` step's on those from stream time ``settles_at`` on, the ``flush``'s on their state (a signature
    that is None is not in the file)."""
    from stmc.export.graph import INPUT

    signatures = {"step": per_stream(feeds)}
    if settled:
        signatures[settled] = per_stream(feeds_from(feeds, settles_at))
    if flush:
        signatures[flush] = per_stream(
            [{name: value for name, value in feed.items() if name != INPUT} for feed in feeds]
        )
    return signatures


def litert_recipe() -> list[dict]:
    """ai-edge-quantizer's recipe of the int8 LiteRT files: static int8 fully connected layers (per-channel int8
    weights, per-tensor int8 activations)."""
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    recipe = recipe_manager.RecipeManager()
    recipe.add_static_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.FULLY_CONNECTED,
        activation_num_bits=8,
        weight_num_bits=8,
        algorithm_key=AlgorithmName.MIN_MAX_UNIFORM_QUANT,
    )
    return recipe.get_quantization_recipe()


def quantile_ranges(
    data: bytes, signatures: dict[str, list[dict]], names: set[str], quantile: float
) -> dict[str, dict]:
    """The activation ranges of the tensors ``names`` of the LiteRT file ``data``, as ai-edge-quantizer takes them
    (``{"min", "max"}`` arrays of the tensor's rank): their ``quantile`` and ``1 - quantile`` values over the
    calibration calls ``signatures`` (from a histogram over their extremes; every range keeps 0, as int8 zero points
    need). Values are pooled by tensor name over the signatures' main subgraphs, as ai-edge-quantizer pools them."""
    from ai_edge_quantizer.utils import tfl_interpreter_utils as tfl

    interpreter = tfl.create_tfl_interpreter(data, num_threads=1)
    ranks = {}

    def values():  # (name, values) of every call, in order
        for signature, feeds in signatures.items():
            index = tfl.get_signature_main_subgraph_index(interpreter, signature)
            details = [d for d in interpreter.get_tensor_details(index) if d["name"] in names]
            ranks.update((d["name"], len(d["shape"])) for d in details)
            for feed in feeds:
                tfl.invoke_interpreter_signature(interpreter, feed, signature)
                for detail in details:
                    yield detail["name"], tfl.get_tensor_data(interpreter, detail, index)

    extremes = {}
    for name, tensor in values():
        low, high = extremes.get(name, (np.inf, -np.inf))
        extremes[name] = (min(low, float(tensor.min())), max(high, float(tensor.max())))
    counts = {name: np.zeros(RANGE_HISTOGRAM_BINS, np.int64) for name in extremes}
    for name, tensor in values():
        counts[name] += np.histogram(tensor, RANGE_HISTOGRAM_BINS, extremes[name])[0]
    ranges = {}
    for name, histogram in counts.items():
        edges = np.linspace(*extremes[name], RANGE_HISTOGRAM_BINS + 1)
        cumulative = np.cumsum(histogram) / histogram.sum()
        low = edges[np.searchsorted(cumulative, quantile)]  # the edges of the bins holding the quantiles
        high = edges[np.searchsorted(cumulative, 1 - quantile) + 1]
        shape = (1,) * ranks[name]
        ranges[name] = {
            "min": np.full(shape, min(low, 0.0), np.float32),
            "max": np.full(shape, max(high, 0.0), np.float32),
        }
    return ranges
