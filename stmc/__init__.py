"""Short-Term Memory Convolutions: U-Nets that run offline and as exact streams from the same weights.

The public API, imported on first use (so that ``import stmc`` itself needs no torch: ``python3 -m
stmc.data.demo packages`` runs before the virtualenv exists)::

    stmc.UNet, stmc.Enhancer, stmc.streaming(model, method), stmc.METHODS, stmc.si_snr, stmc.si_snri
    stmc.export.to_onnx(model, path), stmc.export.to_litert(model, path)

Subpackages, one concept each: ``model`` (the U-Net, its layers, STFT, enhancer, checkpoint format), ``stream``
(the stream driver, its engines and the native step), ``export`` (the step-graph contract, ONNX and LiteRT),
``training``, ``evaluation``, ``data``, ``bench`` and ``apps`` (the command-line programs); ``conf`` holds the
Hydra configs.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "UNet": "stmc.model.unet",
    "Enhancer": "stmc.model.enhancer",
    "streaming": "stmc.stream.engines",
    "METHODS": "stmc.stream.engines",
    "si_snr": "stmc.evaluation.metrics",
    "si_snri": "stmc.evaluation.metrics",
}

SUBPACKAGES = ("apps", "bench", "data", "evaluation", "export", "model", "stream", "training")

__all__ = ["METHODS", "Enhancer", "UNet", "si_snr", "si_snri", "streaming", *SUBPACKAGES]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
    elif name in SUBPACKAGES:
        value = importlib.import_module(f"stmc.{name}")
    else:
        raise AttributeError(f"module 'stmc' has no attribute {name!r}")
    globals()[name] = value
    return value
