"""scripts/gpu_check.py: on a machine without a GPU it says so in one line and exits 0; its fit, stream and
report code runs (on the CPU here, with tiny settings) so that the GPU run is not its first run."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts import gpu_check
from stmc.data.synthetic import demo_like_tree

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would run")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_0():
    done = subprocess.run(
        [sys.executable, "-m", "scripts.gpu_check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines() == [
        "gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing to check"
    ]


def test_fit_stream_and_report_run_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("STMC_CACHE_DIR", str(tmp_path / "cache"))
    demo_like_tree(tmp_path / "corpus")
    tiny = [
        "trainer=cpu",
        "trainer.precision=32-true",
        "model.width=0.25",
        "data.batch_size=2",
        "data.segment_seconds=1.0",
    ]
    result = gpu_check.fit(tiny, 4, tmp_path / "corpus", tmp_path / "run")
    assert result["steps"] == 4 and result["steps_per_s"] > 0 and math.isfinite(result["loss"])
    stream = gpu_check.stream_check(0, 2, "cpu", hops=3)
    assert stream["max_diff"] < 1e-4 and stream["ms_per_hop"] > 0
    table = gpu_check.report({"trainer=cpu": result}, [stream], "cpu", "generated")
    assert "| trainer=cpu | 32-true | 4 |" in table and "| causal | 2 |" in table
