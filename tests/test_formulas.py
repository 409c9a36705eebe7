"""The model's two frame-local nonlinearities against their formulas written with complex numbers, and the
atomic write's failure path (the previous file kept, no temporary left)."""

from __future__ import annotations

import pytest
import torch

import stmc
from stmc.files import atomic_write


def test_input_compression_is_x_times_its_magnitude_to_the_power_minus_0_7():
    model = stmc.UNet(depth=2, channels=[4, 8], n_freq=9, compress=0.3)
    spec = torch.randn(2, 2, 9, 5, dtype=torch.float64)
    x = torch.complex(spec[:, 0], spec[:, 1])
    expected = x * x.abs() ** (0.3 - 1)  # keeps the phase, |X|^0.3 in magnitude
    got = model.features(spec)
    torch.testing.assert_close(torch.complex(got[:, 0], got[:, 1]), expected, rtol=1e-6, atol=1e-9)


def test_mask_bound_keeps_the_phase_and_maps_the_magnitude_through_tanh():
    z = torch.randn(3, 2, 9, 4, dtype=torch.float64) * 3
    complex_z = torch.complex(z[:, 0], z[:, 1])
    bounded = stmc.UNet.bound(z)
    m = torch.complex(bounded[:, 0], bounded[:, 1])
    torch.testing.assert_close(m.abs(), torch.tanh(complex_z.abs()))
    torch.testing.assert_close(torch.angle(m), torch.angle(complex_z))
    assert bool((m.abs() < 1).all())
    assert torch.equal(stmc.UNet.bound(torch.zeros(1, 2, 3, 1)), torch.zeros(1, 2, 3, 1))  # finite at z = 0


def test_a_failed_atomic_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("previous")

    def crash(path: str) -> None:
        open(path, "w").write("half")  # noqa: SIM115
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, writer=crash)
    assert target.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
