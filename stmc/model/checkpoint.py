"""The checkpoint format: what ``train.py`` writes and every reader (enhancer, evaluation, resume) relies on.

A checkpoint is Lightning's dict plus one entry of ours::

    {"stmc": {"model_config": UNet.config, "run_config": {...} or None},
     "state_dict": {"model.<parameter>": tensor, ...,    # the U-Net being trained (EnhancementModule.model)
                    "ema_model.<parameter>": tensor, ...},  # its weights' moving average, where training kept one
     "global_step": int, ...}                            # Lightning's own entries

The *inference weights* are the moving average where there is one (what validation scored and what the best
checkpoint was chosen by), else the trained weights; :func:`model_state` is the one place that decides.

Every value is a tensor or a Python primitive, so it loads with ``weights_only=True``: no code in the file runs.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch

from stmc.errors import InputError

KEY = "stmc"
MODEL_PREFIX = "model."  # state_dict keys of the U-Net inside the Lightning module
EMA_PREFIX = "ema_model."  # ... and of its exponential moving average (the inference weights when present)


def entry(model_config: dict[str, Any], run_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Our entry of a checkpoint: the U-Net's constructor arguments and the run's config (seed, ...)."""
    return {"model_config": dict(model_config), "run_config": run_config}


def contents(
    model: torch.nn.Module, run_config: dict[str, Any] | None = None, step: int | None = None
) -> dict[str, Any]:
    """A whole checkpoint of ``model`` (a :class:`stmc.UNet`) outside Lightning: what tools and tests save."""
    ckpt: dict[str, Any] = {
        KEY: entry(model.config, run_config),
        "state_dict": {f"{MODEL_PREFIX}{k}": v for k, v in model.state_dict().items()},
    }
    if step is not None:
        ckpt["global_step"] = step
    return ckpt


def save(
    model: torch.nn.Module, path: str | Path, run_config: dict[str, Any] | None = None, step: int | None = None
) -> Path:
    """:func:`contents` saved at ``path`` (with ``torch.save``); returns the path."""
    path = Path(path)
    torch.save(contents(model, run_config, step), path)
    return path


def model_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The U-Net's inference weights out of a checkpoint (the module prefix removed): the moving average of the
    weights where the checkpoint holds one, else the trained weights."""
    state = ckpt.get("state_dict", {})
    prefix = EMA_PREFIX if any(key.startswith(EMA_PREFIX) for key in state) else MODEL_PREFIX
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def read(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """The contents of a checkpoint, loaded with ``weights_only=True`` (tensors and plain values only, so no code
    in the file runs). ``ValueError`` with one line for a folder, a missing, corrupt or unsafe file, or a
    checkpoint without our entry."""
    path = Path(path)
    if path.is_dir():
        found = [p.relative_to(path) for p in itertools.islice(path.rglob("*.ckpt"), 4)]
        hint = (
            f" (it holds {', '.join(map(str, found[:3]))}{', ...' if len(found) > 3 else ''})"
            if found
            else " (it holds no .ckpt file)"
        )
        raise InputError(f"checkpoint {path} is a folder; give a .ckpt file{hint}")
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError):
        raise InputError(f"map_location={map_location!r} is not a device; use 'cpu' or e.g. 'cuda:0'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"map_location={map_location!r}: this machine has no CUDA device; use 'cpu'")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # torch raises many types for corrupt, foreign or unsafe files; its advice to unpickle is wrong
        raise InputError(
            f"cannot read checkpoint {path}: torch cannot load it safely (corrupt, another format, or "
            "more than tensors and plain values in it); it is not unpickled, so no code in it runs"
        ) from None
    meta = ckpt.get(KEY) if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or "model_config" not in meta:
        raise InputError(f"{path} is not an STMC checkpoint (no '{KEY}' entry)")
    return ckpt
