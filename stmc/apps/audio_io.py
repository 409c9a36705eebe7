"""Audio sources and sinks of a stream: files (read whole, checked, resampled), raw 16-bit PCM on stdin/stdout,
a live microphone or speaker (``sounddevice``, optional), and the naming of outputs.

Files are read with ``soundfile``; other sample rates are resampled to 16 kHz with
``torchaudio.functional.resample`` (a logged note) or rejected; multichannel files are downmixed or kept as
channels (independent streams of one batch). (``stmc.data.audio`` reads training crops and always downmixes; it
neither keeps channels nor locates non-finite samples, which streaming needs.)
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from stmc.errors import InputError
from stmc.model.stft import SAMPLE_RATE

log = logging.getLogger("stmc.apps.audio_io")

PCM_SCALE = 32768.0
CHANNEL_MODES = ("mix", "each")


def check_finite(audio: np.ndarray, name: str, rate: int, offset: int = 0) -> None:
    """Raise :class:`InputError` naming the first non-finite sample of ``audio [channels, samples]``."""
    bad = ~np.isfinite(audio)
    if not bad.any():
        return
    index = int(np.flatnonzero(bad.any(0))[0])
    channel = int(np.flatnonzero(bad[:, index])[0])
    position = offset + index
    raise InputError(
        f"{name}: non-finite sample ({audio[channel, index]}) at sample {position} "
        f"({position / rate:.3f} s, channel {channel})"
    )


def read_audio(path: str | Path, resample: bool = True, channels: str = "mix") -> np.ndarray:
    """An audio file as float32 ``[channels, samples]`` at 16 kHz (one channel when ``channels="mix"``).

    Raises :class:`InputError` for a missing or unreadable file, non-finite samples (naming the first one's
    position, in the file's own samples) and, with ``resample=False``, a sample rate other than 16 kHz.
    """
    if channels not in CHANNEL_MODES:
        raise InputError(f"channels={channels!r}: choose one of {', '.join(CHANNEL_MODES)}")
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable audio file ({' '.join(str(err).split())})") from err
    audio = np.ascontiguousarray(data.T)
    check_finite(audio, str(path), rate)
    if channels == "mix" and audio.shape[0] > 1:
        log.info("%s: %d channels downmixed to mono (channels=each enhances each one)", path, audio.shape[0])
        audio = audio.mean(0, keepdims=True, dtype=np.float32)
    if rate != SAMPLE_RATE:
        if not resample:
            raise InputError(f"{path}: sample rate {rate} Hz, expected {SAMPLE_RATE} Hz (resample=true converts it)")
        log.info("%s: resampling %d Hz -> %d Hz", path, rate, SAMPLE_RATE)
        if audio.shape[1]:
            audio = AF.resample(torch.from_numpy(audio), rate, SAMPLE_RATE).numpy()
        else:
            audio = np.zeros((audio.shape[0], 0), np.float32)
    return audio


def array_chunks(audio: np.ndarray, size: int) -> Iterator[torch.Tensor]:
    """``[channels, samples]`` in consecutive chunks of ``size`` samples (the last one may be shorter)."""
    tensor = torch.from_numpy(audio)
    for start in range(0, tensor.shape[1], size):
        yield tensor[:, start : start + size]


CONTAINERS = {b"RIFF": "a WAV file", b"fLaC": "a FLAC file", b"OggS": "an Ogg file", b"ID3": "an MP3 file"}


def check_raw(head: bytes) -> None:
    """Raise :class:`InputError` if ``head`` (the first bytes on stdin) starts an audio file, not raw PCM."""
    for magic, what in CONTAINERS.items():
        if head.startswith(magic):
            raise InputError(
                f"stdin holds {what}, not raw 16-bit PCM: give the file as input=<path>, or pipe raw samples "
                "(e.g. sox in.wav -t raw -r 16000 -e signed -b 16 -c 1 -)"
            )


class PcmChunks:
    """Raw 16-bit little-endian interleaved PCM at 16 kHz from ``stream``, as float32 ``[channels, size]`` chunks.

    Each chunk is yielded as soon as its bytes have arrived (the last one may be shorter). A stream that ends
    inside a sample frame yields every complete sample first; ``stray`` then holds the bytes left over, for the
    caller to report after the stream's flush, so that nothing complete is lost.
    """

    def __init__(self, stream: BinaryIO, size: int, channels: int = 1) -> None:
        self.stream, self.size, self.channels = stream, size, channels
        self.stray = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        frame_bytes = 2 * self.channels
        want = self.size * frame_bytes
        first = True
        while True:
            data = bytearray()
            while len(data) < want:
                more = self.stream.read(want - len(data))
                if not more:
                    break
                data += more
            if first:  # a file's header, where the first chunk is long enough to hold its magic bytes
                check_raw(bytes(data[:4]))
                first = False
            self.stray = len(data) % frame_bytes
            whole = len(data) - self.stray
            if whole:
                pcm = np.frombuffer(bytes(data[:whole]), dtype="<i2").reshape(-1, self.channels).T
                yield torch.from_numpy(pcm.astype(np.float32) / PCM_SCALE)
            if len(data) < want:
                return

    def check_complete(self) -> None:
        """Raise :class:`InputError` if the stream ended inside a sample frame (after its samples were used)."""
        if self.stray:
            raise InputError(
                f"stdin: the stream ends inside a sample frame ({self.stray} stray bytes); every "
                "complete sample and the stream's flush were written"
            )


def microphone_chunks(size: int, channels: int = 1) -> Iterator[torch.Tensor]:
    """Live input from the default microphone through ``sounddevice`` (optional), until Ctrl-C."""
    sd = _sounddevice()
    blocks: queue.Queue[np.ndarray] = queue.Queue()

    def callback(indata: np.ndarray, frames: int, when: object, status: object) -> None:
        if status:
            log.warning("microphone: %s", status)
        blocks.put(indata.T.copy())

    with sd.InputStream(SAMPLE_RATE, size, channels=channels, dtype="float32", callback=callback):
        try:
            while True:
                yield torch.from_numpy(blocks.get())
        except KeyboardInterrupt:
            return


def _sounddevice():
    try:
        import sounddevice
    except (ImportError, OSError) as err:  # OSError: the package is there but PortAudio is not
        raise InputError(f"live audio needs the 'sounddevice' package and PortAudio ({err})") from err
    return sounddevice


def to_pcm(audio: torch.Tensor) -> tuple[bytes, int]:
    """``[channels, samples]`` float -> interleaved 16-bit little-endian bytes, and how many samples clipped."""
    scaled = audio.detach().cpu().numpy().T * PCM_SCALE
    clipped = int(np.count_nonzero((scaled > 32767) | (scaled < -32768)))
    return np.clip(np.round(scaled), -32768, 32767).astype("<i2").tobytes(), clipped


class PcmWriter:
    """Enhanced chunks as raw 16-bit PCM on a binary stream (stdout), flushed per chunk; counts clipping."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.clipped = 0

    def __call__(self, chunk: torch.Tensor) -> None:
        data, clipped = to_pcm(chunk)
        self.clipped += clipped
        self.stream.write(data)
        self.stream.flush()


class SpeakerWriter:
    """Enhanced chunks to the default output device through ``sounddevice`` (optional)."""

    def __init__(self, channels: int) -> None:
        sd = _sounddevice()
        self.device = sd.OutputStream(SAMPLE_RATE, channels=channels, dtype="float32")
        self.device.start()

    def __call__(self, chunk: torch.Tensor) -> None:
        if chunk.numel():
            self.device.write(np.ascontiguousarray(chunk.detach().cpu().numpy().T))

    def close(self) -> None:
        self.device.stop()
        self.device.close()


AUDIO_SUFFIXES = {f".{name.lower()}" for name in sf.available_formats()} | {".aif", ".oga", ".opus"}


def list_audio(folder: Path) -> list[Path]:
    """Audio files (by extension) under ``folder``, recursively, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def default_output(source: Path) -> Path:
    """``noisy.wav`` -> ``noisy.enhanced.wav``; a folder ``noisy/`` -> ``noisy_enhanced/``."""
    if source.is_dir():
        return source.with_name(f"{source.name}_enhanced")
    return source.with_name(f"{source.stem}.enhanced.wav")
