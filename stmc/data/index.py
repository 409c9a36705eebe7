"""Indexing audio folders: find files, vet them once, pair noisy with clean, hold out speakers.

Every file is read completely when a folder is first indexed, so unreadable, empty or silent files are
found up front, reported once as a list and excluded; an epoch never dies hours in on one bad file. The
result is cached per folder (keyed by each file's size and modification time), so re-indexing a large
corpus costs a ``stat`` per file. The cache lives in ``$STMC_CACHE_DIR`` (default ``~/.cache/stmc``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stmc.data.audio import AudioInfo, probe
from stmc.errors import InputError, MissingFileError
from stmc.model.stft import SAMPLE_RATE

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".aif", ".aiff"}
_CACHE_FORMAT = 1
# DNS Challenge test sets name pairs "clean_fileid_12.wav" / "<anything>_fileid_12.wav".
_FILEID = re.compile(r"fileid_(\d+)")


@dataclass(frozen=True)
class Entry:
    """One usable audio file: absolute path, path relative to the data root, and its audio info."""

    path: str
    rel: str
    info: AudioInfo

    @property
    def length(self) -> int:
        """Samples at 16 kHz."""
        return self.info.length

    @property
    def stem(self) -> str:
        return Path(self.path).stem


def cache_dir() -> Path:
    """Where folder indexes are cached (``$STMC_CACHE_DIR`` or ``~/.cache/stmc``)."""
    return Path(os.environ.get("STMC_CACHE_DIR", Path.home() / ".cache" / "stmc")) / "index"


def resolve_folder(root: Path, pattern: str, key: str) -> Path:
    """``root / pattern`` where ``pattern`` may be a glob that must match exactly one folder.

    Errors name the config ``key`` so the user knows what to change. ``.`` is ``root`` itself.
    """
    if pattern in ("", "."):
        return root
    matches = sorted(p for p in root.glob(pattern) if p.is_dir())
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise MissingFileError(
            f"{key}: no folder matches '{pattern}' under {root}. Set {key}=<folder relative to data.root>."
        )
    names = ", ".join(p.name for p in matches)
    raise InputError(
        f"{key}: '{pattern}' matches several folders under {root} ({names}); pick one with {key}=<folder>."
    )


def scan(folder: Path, root: Path) -> list[Entry]:
    """Usable audio files under ``folder`` (recursively, sorted); bad files are reported and left out."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    cache_file = cache_dir() / (hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:20] + ".json")
    cached = _load_cache(cache_file)
    stats = {str(p): p.stat() for p in paths}
    todo = [k for k, st in stats.items() if cached.get(k, [None, None])[:2] != [st.st_size, st.st_mtime_ns]]
    if todo:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for key, (info, problem) in zip(todo, pool.map(probe, todo), strict=True):
                st = stats[key]
                fields = None if info is None else [info.frames, info.samplerate, info.channels]
                cached[key] = [st.st_size, st.st_mtime_ns, fields, problem]
        _save_cache(cache_file, {k: cached[k] for k in stats})
    entries, bad = [], []
    for key in stats:
        _, _, fields, problem = cached[key]
        if problem is not None:
            bad.append(f"{key}: {problem}")
        else:
            rel = os.path.relpath(key, root)
            entries.append(Entry(path=key, rel=rel, info=AudioInfo(*fields)))
    if bad:
        log.warning(
            "%s: %d of %d audio files are unusable and excluded:\n  %s", folder, len(bad), len(paths), "\n  ".join(bad)
        )
    _note_conversions(folder, entries)
    return entries


def pair_key(stem: str) -> str:
    """Name used to match a noisy file with its clean file: ``fileid_<n>`` if present, else the stem."""
    found = _FILEID.search(stem)
    return f"fileid_{found.group(1)}" if found else stem


def pair(clean: Sequence[Entry], noisy: Sequence[Entry], where: str) -> list[tuple[Entry, Entry]]:
    """Match noisy files to clean files by ``pair_key``; report unmatched files and length mismatches.

    Returns ``(clean, noisy)`` tuples sorted by clean path. Unmatched files and pairs whose lengths
    differ are excluded, each kind reported once as a list.
    """
    by_key = {pair_key(e.stem): e for e in clean}
    noisy_keys = {pair_key(e.stem): e for e in noisy}
    pairs, mismatched = [], []
    for key in sorted(by_key.keys() & noisy_keys.keys()):
        c, n = by_key[key], noisy_keys[key]
        if c.length != n.length:
            mismatched.append(f"{c.rel} ({c.length} samples) vs {n.rel} ({n.length} samples)")
        else:
            pairs.append((c, n))
    for label, missing in (
        ("clean files without a noisy pair", sorted(by_key.keys() - noisy_keys.keys())),
        ("noisy files without a clean pair", sorted(noisy_keys.keys() - by_key.keys())),
    ):
        if missing:
            source = by_key if label.startswith("clean") else noisy_keys
            log.warning(
                "%s: %d %s (excluded):\n  %s", where, len(missing), label, "\n  ".join(source[k].rel for k in missing)
            )
    if mismatched:
        log.warning(
            "%s: %d pairs differ in length at 16 kHz (excluded):\n  %s", where, len(mismatched), "\n  ".join(mismatched)
        )
    return pairs


def hold_out(items: Sequence, fraction: float, seed: int, group: Callable[[object], str]) -> tuple[list, list]:
    """Split ``items`` into ``(kept, held)`` by whole groups (e.g. speakers), about ``fraction`` held.

    Deterministic for a seed. At least one group is held out and at least one kept.
    """
    groups = sorted({group(item) for item in items})
    if len(groups) < 2:
        raise InputError(
            f"cannot hold out validation data from {len(groups)} group(s) "
            "(speakers or files); give data.val folders instead"
        )
    order = np.random.default_rng([seed, 7]).permutation(len(groups))
    count = min(max(1, round(fraction * len(groups))), len(groups) - 1)
    held_groups = {groups[i] for i in order[:count]}
    held = [item for item in items if group(item) in held_groups]
    kept = [item for item in items if group(item) not in held_groups]
    return kept, held


def speaker_of(pattern: str | None) -> Callable[[str], str]:
    """A function mapping a relative path to its speaker: ``pattern``'s first group, else the path."""
    if pattern is None:
        return lambda rel: rel
    compiled = re.compile(pattern)

    def speaker(rel: str) -> str:
        found = compiled.search(Path(rel).name)
        return found.group(1) if found else rel

    return speaker


def _note_conversions(folder: Path, entries: Sequence[Entry]) -> None:
    """One log note per folder for files that will be downmixed or resampled on reading."""
    multichannel = sum(e.info.channels > 1 for e in entries)
    if multichannel:
        log.info("%s: %d multichannel files will be downmixed to mono (mean of channels)", folder, multichannel)
    rates = Counter(e.info.samplerate for e in entries if e.info.samplerate != SAMPLE_RATE)
    if rates:
        listed = ", ".join(f"{n} at {r} Hz" for r, n in sorted(rates.items()))
        log.info("%s: resampling to %d Hz with torchaudio: %s", folder, SAMPLE_RATE, listed)


def _load_cache(path: Path) -> dict:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return content.get("files", {}) if content.get("format") == _CACHE_FORMAT else {}


def _save_cache(path: Path, files: dict) -> None:
    """Write atomically; an unwritable cache only costs a re-scan next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": _CACHE_FORMAT, "files": files}))
        tmp.replace(path)
    except OSError as err:
        log.debug("index cache not written (%s)", err)
