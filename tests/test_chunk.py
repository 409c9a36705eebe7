"""One `chunk` parser for evaluate.py and stream_infer.py: a bare number counts frames in both, suffixes name
other units, and every bad value is a one-line config error (exit status 2 from both entry points)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stmc.errors import ConfigError
from stmc.stream.chunk import parse_chunk

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("value", "samples"),
    [
        (1, 256),
        ("4", 1024),
        ("4frames", 1024),
        ("4 hops", 1024),
        ("1000samples", 1000),
        ("1000 sample", 1000),
        ("17samples", 17),
        ("20ms", 320),
        ("0.5s", 8000),
        ("1.3ms", 21),
        (".01s", 160),
    ],
)
def test_chunk_sizes_in_frames_samples_or_durations(value, samples):
    assert parse_chunk(value) == samples


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "longer than zero"),
        ("-2", "longer than zero"),
        ("0.01ms", "shorter than one sample"),
        ("ten", "is not a chunk size"),
        ("4parsecs", "is not a chunk size"),
        ("3.5samples", "whole number of samples"),
        ("4.5", r"not a whole number of frames; give e.g. 1152samples"),
    ],
)
def test_bad_chunk_sizes_are_one_line_errors_naming_the_key(value, message):
    with pytest.raises(ConfigError, match=rf"^chunk='{value}'.*{message}") as err:
        parse_chunk(value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("script", ["evaluate.py", "stream_infer.py"])
def test_both_entry_points_exit_2_on_a_bad_chunk(script, tmp_path):
    args = ["chunk=0"] + (["checkpoints=[x]"] if script == "evaluate.py" else [f"input={tmp_path}"])
    done = subprocess.run(
        [sys.executable, script, *args, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: chunk=")
