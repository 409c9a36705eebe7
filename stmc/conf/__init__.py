"""The Hydra config tree, shipped as package data: ``train.yaml``, ``evaluate.yaml``, ``stream_infer.yaml`` and
one folder per config group (model, module, data, trainer, logger, callbacks, experiment, sweep, preset, ...)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
