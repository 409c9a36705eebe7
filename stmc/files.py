"""Atomic writing, the one home of it: text and whole files (:func:`atomic_write`) and audio written chunk by
chunk (:func:`atomic_audio_file`). Either the complete new file appears at its path or the old one stays: data
goes to a temporary file in the same folder, renamed into place at the end (an atomic replace), with the
permissions of a plain new file (``0666`` less the umask; ``mkstemp`` alone would give ``0600``)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import soundfile as sf
import torch

from stmc.errors import InputError
from stmc.model.stft import SAMPLE_RATE


def new_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, text: str | None = None, writer: Callable[[str], None] | None = None) -> None:
    """Write ``text`` (or let ``writer(temp_path)`` write) to ``path`` via a temporary file in the same folder and
    a rename, so that a killed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            if text is not None:
                handle.write(text)
        if writer is not None:
            writer(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AudioFormatError(InputError):
    """The output path's suffix names no format that soundfile writes."""


@contextmanager
def atomic_audio_file(path: str | Path, channels: int, subtype: str = "FLOAT") -> Iterator[Callable]:
    """Yield ``write(chunk [channels, n])``; the file appears at ``path`` only when the block completes.

    On any error, or an interrupt, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").upper()
    if fmt not in sf.available_formats():
        raise AudioFormatError(f"{path}: cannot write audio as '{path.suffix}'; use .wav or .flac")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    try:
        with sf.SoundFile(temp, "w", SAMPLE_RATE, channels, subtype, format=fmt) as out:

            def write(chunk: torch.Tensor) -> None:
                if chunk.numel():
                    out.write(chunk.detach().cpu().numpy().T)

            yield write
        os.chmod(temp, new_file_mode())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


@contextmanager
def exclusive(folder: Path, what: str) -> Iterator[None]:
    """Hold ``folder``'s lock (``.lock``, ``flock``: released when the process ends, however it ends) while ``what``
    writes there; a second writer gets :class:`InputError` at once instead of mixing its files with the first's."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise InputError(
                f"{folder} is in use by {owner}; wait for it to end or write elsewhere (e.g. hydra.run.dir=...)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{what} (pid {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)
