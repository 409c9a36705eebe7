"""``stmc-stream`` / ``python stream_infer.py``: a trained enhancer streamed over real audio, real-time pacing and
latency.

:func:`main` is the Hydra front end (``stmc/conf/stream_infer.yaml``) to :func:`infer`. Audio goes through
:class:`stmc.Enhancer`'s stream (or its ONNX or LiteRT export: :func:`stmc.export.onnx.open_onnx`,
:func:`stmc.export.litert.open_litert`) in chunks of any number of samples:

- sources (:mod:`stmc.apps.audio_io`): an audio file, a folder of them, raw 16-bit little-endian PCM on stdin, or a
  live microphone (``sounddevice``, optional);
- sinks (:mod:`stmc.apps.audio_io`): audio files written atomically (a temporary file renamed into place, so a
  killed run never leaves a half-written output), or raw 16-bit PCM on stdout as soon as each chunk is
  enhanced (or a live speaker);
- ``realtime``: a file is fed at the audio rate (chunk ``i`` is handed over when its last sample would have
  arrived), and every chunk's compute latency is measured against its deadline, the chunk's own duration.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import stmc.export
from stmc.apps.audio_io import (
    PcmChunks,
    PcmWriter,
    SpeakerWriter,
    array_chunks,
    default_output,
    list_audio,
    microphone_chunks,
    read_audio,
)
from stmc.apps.batched import BatchStats, enhance_folder
from stmc.apps.configs import check_count, run_command_line  # importing it registers the --help resolver
from stmc.conf import CONFIG_DIR
from stmc.data.index import AUDIO_SUFFIXES
from stmc.errors import ConfigError, InputError, StmcError
from stmc.files import atomic_audio_file, atomic_write
from stmc.model.enhancer import Enhancer, EnhancerStream
from stmc.model.stft import HOP, SAMPLE_RATE
from stmc.model.unet import UNet
from stmc.stream.chunk import parse_chunk

log = logging.getLogger("stmc.apps.stream_infer")


@dataclass
class LatencyStats:
    """Per-chunk compute latency against the real-time deadline (the chunk's own duration).

    A chunk misses its deadline when its output is ready later than one chunk duration after the chunk was
    complete (its arrival); with pacing, arrival is when its last sample would have come in, so time spent
    waiting for an earlier late chunk counts too. The real-time factor is total compute over audio duration.
    """

    compute: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    samples: int = 0
    flush_seconds: float = 0.0

    def add(self, compute: float, response: float, samples: int) -> None:
        """One chunk of ``samples``: ``compute`` seconds, output ready ``response`` seconds after arrival."""
        self.compute.append(compute)
        self.lateness.append(response - samples / SAMPLE_RATE)
        self.samples += samples

    def extend(self, other: LatencyStats) -> None:
        self.compute += other.compute
        self.lateness += other.lateness
        self.samples += other.samples
        self.flush_seconds += other.flush_seconds

    def summary(self) -> dict[str, float]:
        """Chunk count, compute latency percentiles (ms), deadline misses and real-time factor."""
        ms = np.asarray(self.compute) * 1e3
        pick = (lambda q: float(np.percentile(ms, q))) if len(ms) else (lambda q: math.nan)
        audio = self.samples / SAMPLE_RATE
        return {
            "chunks": len(ms),
            "audio_s": audio,
            "p50_ms": pick(50),
            "p95_ms": pick(95),
            "p99_ms": pick(99),
            "max_ms": float(ms.max()) if len(ms) else math.nan,
            "misses": int(np.count_nonzero(np.asarray(self.lateness) > 0)),
            "rtf": (sum(self.compute) + self.flush_seconds) / audio if audio else math.nan,
        }


def stream_through(
    stream: EnhancerStream,
    chunks: Iterable[torch.Tensor],
    write: Callable[[torch.Tensor], None],
    realtime: bool = False,
    stats: LatencyStats | None = None,
) -> LatencyStats:
    """Enhance ``chunks`` (``[streams, n]`` each) one by one, writing each output at once, then the flush.

    ``realtime=True`` hands chunk ``i`` over only when its last sample would have arrived at the audio rate;
    otherwise a chunk arrives when the previous one is done (or when the source yields it: stdin, microphone).
    """
    stats = stats if stats is not None else LatencyStats()
    stream.reset()
    start, fed = time.perf_counter(), 0
    for chunk in chunks:
        fed += chunk.shape[-1]
        if realtime:
            arrival = start + fed / SAMPLE_RATE
            wait = arrival - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        else:
            arrival = time.perf_counter()
        begin = time.perf_counter()
        out = stream(chunk)
        done = time.perf_counter()
        stats.add(done - begin, done - arrival, chunk.shape[-1])
        write(out)
    begin = time.perf_counter()
    rest = stream.flush()
    stats.flush_seconds += time.perf_counter() - begin
    write(rest)
    return stats


@dataclass
class InferOptions:
    """What ``stream_infer.py`` does; the fields of ``stmc/conf/stream_infer.yaml`` (see there for each one)."""

    input: str
    output: str | None = None
    ckpt: str | None = None
    onnx: str | None = None
    litert: str | None = None
    model: dict | None = None
    seed: int = 0
    method: str = "stmc"
    compile: bool = False
    chunk: int | str = "16ms"
    realtime: bool = False
    resample: bool = True
    channels: str = "mix"
    stdin_channels: int = 1
    subtype: str = "FLOAT"
    threads: int | None = 1
    stats: str | None = None
    progress: bool = True
    batch: int = 1


def export_of(options: InferOptions) -> str | None:
    """The exported graph the network runs from (``onnx=`` or ``litert=``), or None (PyTorch)."""
    given = [(key, path) for key, path in (("onnx", options.onnx), ("litert", options.litert)) if path]
    if len(given) > 1 or (given and options.ckpt):
        raise InputError("give ckpt (PyTorch), onnx or litert (an export, weights included): one of them")
    if not given:
        return None
    key, path = given[0]
    suffix = stmc.export.SUFFIXES[key]
    if Path(path).suffix != suffix:
        raise InputError(f"{key}={path}: expected a {suffix} file written by python -m stmc.export")
    return path


def build_enhancer(options: InferOptions) -> Enhancer:
    """The checkpoint's enhancer, or one built from an export's config, or (dry run) an untrained ``model``.

    With an export (``onnx`` or ``litert``) only the STFT front end of this enhancer is used: the network runs
    from the export.
    """
    export = export_of(options)  # refuses a checkpoint and an export together
    if options.ckpt:
        return Enhancer.from_checkpoint(options.ckpt)
    if export is not None:
        config = json.loads(stmc.export.read_metadata(export)["model_config"])
    else:
        config = {key: value for key, value in (options.model or {}).items() if key != "_target_"}
    torch.manual_seed(options.seed)
    return Enhancer(UNet(**config).eval())


def open_stream(enhancer: Enhancer, options: InferOptions) -> EnhancerStream:
    """The enhancer's sample stream; with an export the network runs in its runtime (onnxruntime or LiteRT)."""
    export = export_of(options)
    if export is None:
        return enhancer.stream(options.method, compile=options.compile)
    return EnhancerStream(enhancer, stmc.export.open(export, threads=options.threads or 1))


def enhance_file(
    stream: EnhancerStream, source: Path, target: str | Path, options: InferOptions, size: int
) -> LatencyStats:
    """One file through the stream into ``target`` (a file path, or ``-`` for raw PCM on stdout)."""
    audio = read_audio(source, options.resample, options.channels)
    chunks = array_chunks(audio, size)
    if str(target) == "-":
        writer = PcmWriter(sys.stdout.buffer)
        stats = stream_through(stream, chunks, writer, options.realtime)
        if writer.clipped:
            log.warning("%s: %d output samples clipped to the 16-bit range", source, writer.clipped)
        return stats
    with atomic_audio_file(target, audio.shape[0], options.subtype) as write:
        return stream_through(stream, chunks, write, options.realtime)


def infer(options: InferOptions) -> int:
    """Run ``stream_infer.py``: enhance the input, log per-input and total latency; returns the exit status.

    Bad inputs (missing, unreadable, NaN/Inf, wrong rate with ``resample=false``) are reported on one line
    each; a folder run carries on with the other files and returns 1 at the end.
    """
    threads = options.threads
    if threads is not None:
        check_count("threads", threads, hint=" (or null: torch's default)")
    check_count("seed", options.seed, minimum=0)
    check_count("stdin_channels", options.stdin_channels)
    if threads:
        torch.set_num_threads(threads)
    size = parse_chunk(options.chunk)
    check_batch(options)
    if options.input not in ("-", "mic") and not Path(options.input).exists():
        raise InputError(f"{options.input}: no such file or folder")
    enhancer = build_enhancer(options)
    stream = open_stream(enhancer, options)
    export = export_of(options)
    log.info(
        "%s model (%s), method %s%s; chunk %d samples (%.2f ms), algorithmic latency %.1f ms",
        "checkpoint" if options.ckpt else "exported" if export else "untrained (dry run)",
        ", ".join(f"{k}={v}" for k, v in enhancer.model.config.items() if k in ("depth", "lookahead", "width")),
        options.method,
        f" via {stmc.export.format_of(export).runtime} ({stream.frames.engine.meta.precision})" if export else "",
        size,
        1e3 * size / SAMPLE_RATE,
        1e3 * stream.latency_samples / SAMPLE_RATE,
    )
    total, failures, batched = LatencyStats(), 0, None
    if options.input in ("-", "mic"):
        live = options.input == "mic"
        channels = 1 if live else options.stdin_channels
        chunks = microphone_chunks(size, channels) if live else PcmChunks(sys.stdin.buffer, size, channels)
        target = options.output or ("speaker" if live else "-")
        if target == "speaker":
            writer = SpeakerWriter(channels)
            try:
                stream_through(stream, chunks, writer, stats=total)
            finally:
                writer.close()
        elif target == "-":
            pcm = PcmWriter(sys.stdout.buffer)
            stream_through(stream, chunks, pcm, stats=total)
            if pcm.clipped:
                log.warning("%d output samples clipped to the 16-bit range", pcm.clipped)
        else:
            with atomic_audio_file(target, channels, options.subtype) as write:
                stream_through(stream, chunks, write, stats=total)
        if isinstance(chunks, PcmChunks):
            chunks.check_complete()
    else:
        source = Path(options.input)
        if source.is_dir():
            if options.output == "-":
                raise InputError(f"{source}: a folder cannot go to stdout; give output=<folder>")
            target = Path(options.output) if options.output else default_output(source)
            check_not_input(source, target)
            check_folder_output(target)
            files = list_audio(source)
            if not files:
                raise InputError(f"{source}: no audio files in this folder")
            if options.batch > 1:
                batched = enhance_batched(enhancer, stream, source, target, files, options, size)
                failures += batched.failures
                files = []  # done
            for path in _progress(files, options.progress and not options.realtime):
                try:
                    stats = enhance_file(
                        stream, path, (target / path.relative_to(source)).with_suffix(".wav"), options, size
                    )
                except InputError as err:
                    log.error("%s", err)
                    failures += 1
                    continue
                total.extend(stats)
                if options.realtime:
                    log_summary(str(path), stats)
        else:
            target = options.output or default_output(source)
            if target != "-":
                check_not_input(source, Path(target))
            total.extend(enhance_file(stream, source, target, options, size))
        if options.output != "-":
            log.info("wrote %s", target)
    if total.compute or not batched:
        log_summary("total", total)
    if options.stats:
        summary = {
            **total.summary(),
            **({"batched": batched.summary()} if batched else {}),
            "chunk_samples": size,
            "latency_ms": 1e3 * stream.latency_samples / SAMPLE_RATE,
            "failures": failures,
            "options": asdict(options),
        }
        atomic_write(Path(options.stats), json.dumps(summary, indent=2))
    return 1 if failures else 0


def check_not_input(source: Path, target: Path) -> None:
    """Raise :class:`ConfigError` if the output would overwrite the input (the same file, or the same folder)."""
    if target.resolve() == source.resolve():
        raise ConfigError(
            f"output={target} is the input itself: the noisy originals would be overwritten; give "
            "another output (or leave output unset for <name>.enhanced.wav / <folder>_enhanced/)"
        )


def check_folder_output(target: Path) -> None:
    """Raise :class:`ConfigError` unless ``target`` can be the output folder of a folder input: not an existing
    file, and not named like an audio file (which would become a folder of that name)."""
    if target.exists() and not target.is_dir():
        raise ConfigError(f"output={target} is a file, but the input is a folder: give output=<folder>")
    if not target.exists() and target.suffix.lower() in AUDIO_SUFFIXES:
        raise ConfigError(f"output={target} names a file, but the input is a folder: give output=<folder>")


def check_batch(options: InferOptions) -> None:
    """Raise :class:`ConfigError` unless ``batch`` is a positive integer usable with the other options."""
    batch = options.batch
    check_count("batch", batch, hint=" (the number of files streamed together)")
    if batch > 1 and options.realtime:
        raise ConfigError("batch > 1 enhances a folder for throughput; realtime=true paces one stream (use batch=1)")
    if batch > 1 and options.channels != "mix":
        raise ConfigError("batch > 1 streams one channel per file; use channels=mix (or batch=1 for channels=each)")


def enhance_batched(
    enhancer: Enhancer,
    stream: EnhancerStream,
    source: Path,
    target: Path,
    files: list[Path],
    options: InferOptions,
    size: int,
) -> BatchStats:
    """A folder's files as ``options.batch`` streams advancing together (:mod:`stmc.apps.batched`), with a
    progress bar and one summary line (files/s, real-time factor)."""
    frames = stream.frames
    if frames.engine.frames_per_call > 1:
        raise ConfigError(
            f"batch > 1 needs a graph of 1 frame per call; {export_of(options)[1]} takes "
            f"{frames.engine.frames_per_call} (export it with --frames-per-call 1)"
        )
    pairs = [(path, (target / path.relative_to(source)).with_suffix(".wav")) for path in files]
    with _progress_bar(len(files), options.progress) as advance:
        stats = enhance_folder(
            enhancer,
            frames,
            pairs,
            options.batch,
            max(1, size // HOP),
            options.resample,
            options.subtype,
            on_done=lambda path: advance(path.name),
            on_error=lambda err: (log.error("%s", err), advance("")),
        )
    s = stats.summary()
    log.info(
        "batch %d: %d files (%d failed) in %.1f s, %.2f files/s; %.1f s of audio, real-time factor %.4f",
        options.batch,
        s["files"],
        s["failures"],
        s["seconds"],
        s["files_per_s"],
        s["audio_s"],
        s["rtf"],
    )
    return stats


@contextmanager
def _progress_bar(total: int, show: bool) -> Iterator[Callable[[str], None]]:
    """``advance(name)`` for each finished item; a rich progress bar on stderr when ``show``."""
    if not show:
        yield lambda name: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task("enhancing", total=total)
        yield lambda name: progress.update(task, advance=1, description=name or "enhancing")


def log_summary(name: str, stats: LatencyStats) -> None:
    """One line: compute latency percentiles, deadline misses and real-time factor."""
    s = stats.summary()
    log.info(
        "%s: %d chunks, %.1f s of audio; compute latency p50 %.3f ms, p95 %.3f ms, p99 %.3f ms, max %.3f ms; "
        "deadline misses %d; real-time factor %.3f",
        name,
        s["chunks"],
        s["audio_s"],
        s["p50_ms"],
        s["p95_ms"],
        s["p99_ms"],
        s["max_ms"],
        s["misses"],
        s["rtf"],
    )


def _progress(files: list[Path], show: bool) -> Iterable[Path]:
    """``files`` with a rich progress bar on stderr when ``show``."""
    with _progress_bar(len(files), show) as advance:
        for path in files:
            yield path
            advance(path.name)


def check_settings(cfg: DictConfig, overrides: list[str]) -> None:
    """Raise :class:`ConfigError` for a missing ``input``, or ``model`` settings beside a checkpoint or an export
    (whose own model config is what runs: the settings would be silently ignored)."""
    if OmegaConf.is_missing(cfg, "input"):
        raise ConfigError("input is required: input=<audio file | folder | - (raw PCM on stdin) | mic>")
    model = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") == "model" or o.startswith("model.")]
    given = [key for key in ("ckpt", "onnx", "litert") if cfg.get(key)]
    if model and given:
        raise ConfigError(
            f"{model[0]} does not apply with {given[0]}=: the model's settings come from the "
            f"{'checkpoint' if given[0] == 'ckpt' else 'export'}; drop the model settings"
        )


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="stream_infer")
def main(cfg: DictConfig) -> None:
    """Enhance the configured input (Hydra calls this once). Logs go to stderr, so that ``output=-`` leaves stdout
    to the audio. A bad input or checkpoint is reported on one line; the exit status is 1 if any input failed, 2
    for a mistake in the settings (e.g. ``chunk``)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    try:
        check_settings(cfg, HydraConfig.get().overrides.task)
        status = infer(InferOptions(**OmegaConf.to_container(cfg, resolve=True)))
    except ConfigError as err:  # a mistake in the settings: status 2, as in train.py and evaluate.py
        print(f"error: {err}", file=sys.stderr)
        status = 2
    except StmcError as err:  # bad input or checkpoint: one line; any other exception is a bug (traceback)
        print(f"error: {err}", file=sys.stderr)
        status = 1
    sys.exit(status)


def cli() -> None:
    """``stmc-stream`` / ``python stream_infer.py``: the command line."""
    run_command_line(main, "stream_infer", "the stream stopped; files written before are complete")


if __name__ == "__main__":
    cli()
