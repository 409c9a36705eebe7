"""The Hydra config tree (``stmc/conf/``): where it is, the options of a group, and each entry point's ``--help``.

Hydra's own help lists every group of the tree, so ``stream_infer.py --help`` would offer ``trainer`` and
``callbacks``. Each entry point's config instead sets ``hydra.help.template: ${stmc_help:}`` (the resolver is
registered when this module is imported): the groups of its own defaults list (plus those named in the
resolver's argument, e.g. ``hydra/launcher``), each with the options found in its folder, then the config.
"""

from __future__ import annotations

import yaml
from omegaconf import OmegaConf

from stmc.conf import CONFIG_DIR

RESOLVER = "stmc_help"
HYDRA_OPTIONS = {"hydra/launcher": ["basic"]}  # Hydra's own options of the groups we extend


def group_options(group: str) -> list[str]:
    """Names of the configs in ``stmc/conf/<group>/``."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def entry_groups(config_name: str) -> list[str]:
    """The config groups in the defaults list of ``stmc/conf/<config_name>.yaml`` (Hydra's own and ``paths``, which
    no one chooses, left out)."""
    defaults = yaml.safe_load((CONFIG_DIR / f"{config_name}.yaml").read_text()).get("defaults", [])
    groups = []
    for entry in defaults:
        if isinstance(entry, dict):
            group = next(iter(entry)).removeprefix("override ").strip()
            if not group.startswith("hydra") and group != "paths" and (CONFIG_DIR / group).is_dir():
                groups.append(group)
    return groups


def help_template(config_name: str, extra: str = "") -> str:
    """The ``--help`` text of an entry point (a ``string.Template`` for Hydra: ``$CONFIG`` is the config)."""
    groups = [*entry_groups(config_name), *(g.strip() for g in extra.split(";") if g.strip())]
    width = max((len(g) for g in groups), default=0)
    lines = [f"{group:<{width}}  {', '.join(HYDRA_OPTIONS.get(group, []) + group_options(group))}" for group in groups]
    return "\n".join(
        [
            f"python {config_name}.py [group=option ...] [key=value ...]",
            "",
            "== Configuration groups ==",
            *(lines or ["(none)"]),
            "",
            "== Config ==",
            "Override anything in the config (key=value); --cfg job prints it composed.",
            "",
            "$CONFIG",
        ]
    )


def register_help() -> None:
    """Register the ``stmc_help`` resolver (``${stmc_help:}``, optionally ``${stmc_help:hydra/launcher}``), which
    reads the entry point's name from ``hydra.job.config_name``; idempotent. Done on import, so that every
    composition of the entry points' configs (theirs, the tests', the scripts') can resolve it."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(
            RESOLVER, lambda extra="", *, _root_: help_template(_root_.hydra.job.config_name, extra)
        )


register_help()
