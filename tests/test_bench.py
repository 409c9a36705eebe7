"""The benchmark's memory accounting: what it reports as peak memory is what was live at once."""

import torch

from stmc.bench.speed import PeakBytes, peak_bytes


def test_peak_bytes_counts_tensors_live_at_once_and_forgets_freed_ones():
    held = torch.zeros(1 << 16)  # 256 KiB held before the mode starts
    with PeakBytes([held]) as tracker:
        for _ in range(3):  # freed at once: their bytes (and addresses, when reused) must not count twice
            scratch = torch.empty(1 << 18)
            del scratch
        first = torch.empty(1 << 18)  # 1 MiB each, both live at the end
        second = torch.empty(1 << 18)
    assert first.numel() + second.numel() == 1 << 19
    assert tracker.peak == (1 << 18) + (2 << 20)


def test_peak_bytes_does_not_count_views_of_the_callers_tensors():
    signal = torch.randn(1 << 18)  # 1 MiB from outside the mode
    with PeakBytes([]) as tracker:
        chunk = signal[:256].view(16, 16).t()  # views: nothing allocated
        out = chunk * 2  # 1 KiB allocated
    assert out.shape == (16, 16)
    assert tracker.peak == 256 * 4


def test_peak_bytes_lets_a_call_free_the_state_it_replaces():
    """A stream on PyTorch operators replaces its state: the old state must not be counted after it is freed."""
    state = [torch.zeros(1 << 16)]  # 256 KiB

    def step():
        state[0] = state[0] + 1  # a new 256 KiB replaces the old
        scratch = torch.empty(1 << 17)  # then 512 KiB more, while only the new state is live
        return scratch

    assert peak_bytes(step, lambda: list(state)) == (1 << 18) + (1 << 19)
