"""A folder enhanced as ``batch`` streams advancing together (``stream_infer.py batch=N``).

Each file is read whole, so its STFT is computed at once (the streaming analysis gives the same frames); its
mask frames come from one row of a batched frame stream (:class:`stmc.stream.driver.Stream`, any engine), which advances
every row by the same number of frames per call. A call never runs a row past the end of its file: when one
ends, ``flush(mask)`` gives that row's last ``D`` frames exactly as offline padding would and restarts it at
time 0 for the next file, while the other rows go on. The masked spectrum is then inverted whole. So every
output equals the one-stream-at-a-time enhancement (tests/test_stream_infer.py), and the network's per-call
cost is shared by ``batch`` files. Rows left without a file are dropped from the batch (its state compacted).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from stmc.apps.audio_io import read_audio
from stmc.errors import InputError
from stmc.files import atomic_audio_file
from stmc.model.enhancer import Enhancer, apply_mask, to_channels
from stmc.model.stft import SAMPLE_RATE
from stmc.stream.driver import Stream


@dataclass
class Job:
    """One file in a row: its spectrum, the mask frames collected so far, where the output goes."""

    source: Path
    target: Path
    samples: int
    spec: torch.Tensor  # complex [1, F, frames]
    features: torch.Tensor  # [1, 2, F, frames]
    fed: int = 0
    masks: list[torch.Tensor] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return self.features.shape[-1]


@dataclass
class BatchStats:
    """Files done and failed, audio seconds and compute seconds (network calls, STFTs, writing)."""

    files: int = 0
    failures: int = 0
    audio_seconds: float = 0.0
    seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        return {
            "files": self.files,
            "failures": self.failures,
            "audio_s": self.audio_seconds,
            "seconds": self.seconds,
            "files_per_s": self.files / self.seconds if self.seconds else 0.0,
            "rtf": self.seconds / self.audio_seconds if self.audio_seconds else 0.0,
        }


def enhance_folder(
    enhancer: Enhancer,
    frames: Stream,
    files: Iterable[tuple[Path, Path]],
    batch: int,
    frames_per_call: int,
    resample: bool = True,
    subtype: str = "FLOAT",
    on_done: Callable[[Path], None] | None = None,
    on_error: Callable[[InputError], None] | None = None,
) -> BatchStats:
    """Enhance ``(source, target)`` pairs as ``batch`` rows of ``frames``, ``frames_per_call`` frames a call (fewer
    where a file ends). A file that cannot be read is passed to ``on_error`` and the others go on."""
    stft, delay = enhancer.stft, frames.delay
    pending = iter(files)
    stats = BatchStats()
    started = time.perf_counter()

    def next_job() -> Job | None:
        for source, target in pending:
            try:
                audio = read_audio(source, resample, "mix")
            except InputError as err:
                stats.failures += 1
                if on_error is not None:
                    on_error(err)
                continue
            x = torch.from_numpy(audio)
            spec = stft.stft(x)
            return Job(source, target, x.shape[-1], spec, to_channels(spec).to(enhancer.dtype))
        return None

    def finish(job: Job) -> None:
        mask = torch.cat(job.masks, -1) if job.masks else job.features.new_zeros(1, 2, stft.n_freq, 0)
        out = stft.istft(apply_mask(mask, job.spec), job.samples)
        with atomic_audio_file(job.target, 1, subtype) as write:
            write(out)
        stats.files += 1
        stats.audio_seconds += job.samples / SAMPLE_RATE
        if on_done is not None:
            on_done(job.source)

    def keep(job: Job, out: torch.Tensor, first: int) -> None:
        """Mask frames of ``job``'s row whose times (the first is ``first``) fall inside its file."""
        low, high = max(0, -first), max(0, min(out.shape[-1], job.frames - first))
        if high > low:
            job.masks.append(out[..., low:high])

    frames.reset()
    rows: list[Job | None] = [job for job in (next_job() for _ in range(batch)) if job is not None]
    idle = torch.zeros(1, 2, stft.n_freq, 0, dtype=enhancer.dtype)
    with torch.inference_mode():
        while any(job is not None for job in rows):
            left = [job.frames - job.fed for job in rows if job is not None]
            step = min(frames_per_call, *[n for n in left if n > 0]) if any(n > 0 for n in left) else 0
            if step:
                chunk = torch.cat(
                    [
                        job.features[..., job.fed : job.fed + step]
                        if job is not None and job.fed + step <= job.frames
                        else idle.new_zeros(1, 2, stft.n_freq, step)
                        for job in rows
                    ],
                    0,
                )
                times = frames.time.tolist() if frames.batch else [0] * len(rows)
                out = frames(chunk)
                dropped = step - out.shape[-1]  # frames before every row's start (the driver's alignment rule)
                for b, job in enumerate(rows):
                    if job is not None and job.fed + step <= job.frames:
                        keep(job, out[b : b + 1], times[b] - delay + dropped)
                        job.fed += step
            ended = torch.tensor([job is not None and job.fed >= job.frames for job in rows])
            if ended.any():
                ending = [b for b in range(len(rows)) if ended[b]]
                if frames.batch is None:  # files shorter than a frame: no call yet, nothing to flush
                    tails = idle.new_zeros(len(ending), 2, stft.n_freq, 0)
                else:
                    times = frames.time.tolist()
                    tails = frames.flush(ended)
                for k, b in enumerate(ending):
                    job = rows[b]
                    if frames.batch is not None:
                        keep(job, tails[k : k + 1], times[b] - delay)
                    finish(job)
                    rows[b] = next_job()
            if None in rows:  # no file left for some rows: stop computing them
                live = [b for b, job in enumerate(rows) if job is not None]
                if live and frames.batch is not None:
                    frames.set_state([tensor[live] for tensor in frames.get_state()])
                rows = [rows[b] for b in live]
    stats.seconds = time.perf_counter() - started
    return stats
