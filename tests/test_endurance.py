"""Endurance: one hour of audio through the STMC stream in 10 ms chunks; memory stays flat, both ends stay exact."""

from __future__ import annotations

import os
import time

import pytest
import torch

import stmc
from tests.randmodel import randomise_norms

RATE = 16_000
HOUR = 3600
MINUTE = 60 * RATE
CHUNK = 160  # 10 ms: not a multiple of the 256-sample hop
MARGIN = 2  # seconds of context around a compared region (receptive field + window is ~0.3 s)
MEMORY_BOUND = 16 * 2**20  # bytes of resident-memory growth allowed from minute 1 to minute 59


def second(i: int) -> torch.Tensor:
    """Second ``i`` of the input, regenerated on demand: a gliding tone in noise, amplitude-modulated."""
    gen = torch.Generator().manual_seed(i)
    t = torch.arange(RATE) / RATE + i
    tone = torch.sin(2 * torch.pi * (150 + 50 * torch.sin(0.1 * t)) * t) * (0.5 + 0.4 * torch.sin(3 * t))
    return (0.2 * tone + 0.05 * torch.randn(RATE, generator=gen)).float()[None]


def audio(start: int, stop: int) -> torch.Tensor:
    """Seconds ``start .. stop`` of the input, ``[1, samples]``."""
    return torch.cat([second(i) for i in range(start, stop)], -1)


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def one_thread():
    """One intra-op thread: small per-chunk ops only lose with more, and 2 threads on a busy 2-core runner stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from /proc")
def test_one_hour_stream_has_flat_memory_and_equals_offline_at_both_ends(one_thread):
    torch.manual_seed(0)
    model = randomise_norms(stmc.UNet(lookahead=2, width=0.25), 0)  # depth 7, narrow: ~4-6 min for the hour on 1 core
    enhancer = stmc.Enhancer(model)
    stream = enhancer.stream("stmc")
    total = HOUR * RATE
    first, last, emitted = [], [], 0
    baseline, peak, state_shapes = None, 0, None
    began = time.perf_counter()
    for i in range(HOUR):
        x = second(i)
        for start in range(0, RATE, CHUNK):
            out = stream(x[:, start : start + CHUNK])
            if emitted < MINUTE:  # clones: a slice would keep the whole output buffer alive
                first.append(out[:, : MINUTE - emitted].clone())
            if emitted + out.shape[-1] > total - MINUTE:
                last.append(out[:, max(0, total - MINUTE - emitted) :].clone())
            emitted += out.shape[-1]
        if i == 60:  # after a minute: every buffer and the allocator are warm
            baseline = resident_bytes()
            state_shapes = [s.shape for s in stream.frames.get_state()]
        elif baseline is not None and i < HOUR - 60:  # the last minute's output is kept on purpose
            peak = max(peak, resident_bytes())
        if i % 600 == 0:
            print(f"minute {i // 60}: resident {resident_bytes() / 2**20:.1f} MiB")
    last.append(stream.flush())
    elapsed = time.perf_counter() - began

    assert emitted + last[-1].shape[-1] == total
    assert [s.shape for s in stream.frames.get_state()] == state_shapes
    growth = peak - baseline
    assert growth < MEMORY_BOUND, f"resident memory grew by {growth / 2**20:.1f} MiB from minute 1 to minute 59"

    with torch.no_grad():
        head = enhancer(audio(0, 60 + MARGIN))[:, :MINUTE]
        tail_start = HOUR - 60 - MARGIN  # an even second: a multiple of the hop, so STFT frames line up
        tail = enhancer(audio(tail_start, HOUR))[:, MARGIN * RATE :]
    streamed_head, streamed_tail = torch.cat(first, -1), torch.cat(last, -1)
    assert streamed_head.shape == head.shape and streamed_tail.shape == tail.shape
    torch.testing.assert_close(streamed_head, head, atol=1e-5 * head.abs().max(), rtol=0)
    torch.testing.assert_close(streamed_tail, tail, atol=1e-5 * tail.abs().max(), rtol=0)
    print(f"one hour in {elapsed:.0f} s (RTF {elapsed / HOUR:.3f}), memory growth {growth / 2**20:.1f} MiB")
