"""The Hydra config tree, shipped as package data: ``train.yaml``, ``evaluate.yaml``, ``stream_infer.yaml`` and
one folder per config group (model, module, data, trainer, logger, callbacks, experiment, sweep, preset, ...)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


def group_options(group: str) -> list[str]:
    """Names of the configs in ``stmc/conf/<group>/``."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
