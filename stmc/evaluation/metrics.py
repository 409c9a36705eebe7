"""Scale-invariant signal-to-noise ratio (SI-SNR) and its improvement, the paper's metric.

Matches ``torchmetrics.functional.scale_invariant_signal_noise_ratio`` (zero-mean, same epsilon) and adds an
optional per-item length so that zero-padded batches are scored on their real samples only.
"""

from __future__ import annotations

import torch

from stmc.errors import InputError

EPS = torch.finfo(torch.float32).eps


def _valid_mask(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor | None:
    if lengths is None:
        return None
    idx = torch.arange(x.shape[-1], device=x.device)
    return (idx < lengths.to(x.device).unsqueeze(-1)).to(x.dtype)


def si_snr(estimate: torch.Tensor, reference: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """SI-SNR in dB over the last axis: ``[..., N] x [..., N] -> [...]``.

    ``lengths`` (``[...]``, samples) restricts each item to its first ``lengths`` samples.
    """
    if estimate.shape != reference.shape:
        raise InputError(f"si_snr: shapes differ, {tuple(estimate.shape)} vs {tuple(reference.shape)}")
    mask = _valid_mask(reference, lengths)
    if mask is None:
        count = torch.tensor(reference.shape[-1], dtype=reference.dtype, device=reference.device)
        estimate = estimate - estimate.mean(-1, keepdim=True)
        reference = reference - reference.mean(-1, keepdim=True)
    else:
        count = mask.sum(-1, keepdim=True).clamp_min(1)
        estimate = (estimate - (estimate * mask).sum(-1, keepdim=True) / count) * mask
        reference = (reference - (reference * mask).sum(-1, keepdim=True) / count) * mask
    alpha = ((estimate * reference).sum(-1, keepdim=True) + EPS) / (reference.pow(2).sum(-1, keepdim=True) + EPS)
    target = alpha * reference
    noise = target - estimate
    ratio = (target.pow(2).sum(-1) + EPS) / (noise.pow(2).sum(-1) + EPS)
    return 10 * torch.log10(ratio)


def si_snri(
    estimate: torch.Tensor,
    mixture: torch.Tensor,
    reference: torch.Tensor,
    lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """SI-SNR improvement in dB: ``si_snr(estimate, reference) - si_snr(mixture, reference)``."""
    return si_snr(estimate, reference, lengths) - si_snr(mixture, reference, lengths)
