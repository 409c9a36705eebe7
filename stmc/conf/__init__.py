"""The Hydra config tree, shipped as package data: ``train.yaml``, ``evaluate.yaml``, ``stream_infer.yaml`` and
one folder per config group (model, module, data, trainer, logger, callbacks, experiment, sweep, preset, ...)."""

from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent


def group_options(group: str) -> list[str]:
    """Names of the configs in ``stmc/conf/<group>/``."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys left at ``???`` in an unresolved config container, the ``hydra`` node aside."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    keys = []
    for key, value in items:
        path = f"{prefix}{key}"
        if value == "???":
            keys.append(path)
        elif path != "hydra":
            keys.extend(missing_keys(value, f"{path}."))
    return sorted(keys)
