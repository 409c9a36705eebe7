"""The Hydra config tree (``stmc/conf/``): where it is, the options of a group, and each entry point's ``--help``.

Hydra's own help lists every group of the tree, so ``stream_infer.py --help`` would offer ``trainer`` and
``callbacks``. Each entry point's config instead sets ``hydra.help.template: ${stmc_help:}`` (the resolver is
registered when this module is imported): the groups of its own defaults list (plus those named in the
resolver's argument, e.g. ``hydra/launcher``), each with the options found in its folder, then the config.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import OmegaConf

from stmc.conf import CONFIG_DIR, group_options
from stmc.errors import ConfigError

RESOLVER = "stmc_help"
HYDRA_OPTIONS = {"hydra/launcher": ["basic"]}  # Hydra's own options of the groups we extend


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


def check_overrides(overrides: Sequence[str], config_name: str = "train") -> None:
    """Raise :class:`ConfigError` if a command-line override cannot be read (Hydra's grammar rejects its value) or
    selects a config that does not exist.

    Hydra reports such mistakes over several lines; this parses the overrides and composes the config once
    beforehand to say it in one. Sweep overrides (``a=1,2``) are left to Hydra, as is every other kind of error.
    """
    parser = OverridesParser.create()
    for override in (o for o in overrides if not o.startswith("-")):
        try:
            parser.parse_override(override)
        except HydraException:
            key = override.partition("=")[0]
            raise ConfigError(
                f"{key}: Hydra cannot read the value {override.partition('=')[2]!r} (a character such as = or a "
                f"space inside it?); quote it, or each list element: {key}='a=b' or {key}=['a=b','c']"
            ) from None
    parsed = parser.parse_overrides([o for o in overrides if not o.startswith("-")])
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        try:
            compose(config_name, overrides=plain)
        except MissingConfigException as err:
            if err.missing_cfg_file and err.options is not None:
                group, _, name = err.missing_cfg_file.rpartition("/")
                raise ConfigError(
                    f"{group}={name} does not exist; allowed values: {', '.join(sorted(err.options))}"
                ) from None
        except HydraException as err:
            groups = [o for o in plain if (CONFIG_DIR / o.split("=", 1)[0].lstrip("+~")).is_dir()]  # group choices
            unknown = unknown_key(err, config_name, groups)
            if unknown:
                raise ConfigError(unknown) from None


def unknown_key(err: HydraException, config_name: str, groups: Sequence[str]) -> str | None:
    """For Hydra's "Key 'x' is not in struct" (a mistyped override), one line naming the key and its closest
    neighbours in the config composed with the ``groups`` choices (Hydra initialised); None for any other error.
    Hydra's own hint (append with ``+``) would only move the typo on, into a TypeError deep in the library."""
    import difflib

    cause = err.__cause__
    full_key = getattr(cause, "full_key", None)
    if not full_key or "not in struct" not in str(cause):
        return None
    parent, _, key = str(full_key).rpartition(".")
    try:
        node = compose(config_name, overrides=list(groups))
        for part in parent.split(".") if parent else []:
            node = node[part]
        known = [str(k) for k in node.keys()]
    except Exception:  # the parent itself may not exist, or not be a mapping
        known = []
    close = difflib.get_close_matches(key, known, n=3)
    hint = f"; did you mean {', '.join(f'{parent}.{c}' if parent else c for c in close)}?" if close else ""
    return f"{full_key} is not a key of this config{hint}"


def quote_plain_values(overrides: Sequence[str]) -> list[str]:
    """``overrides`` with each value that Hydra's grammar rejects only for its non-ASCII characters (as in
    ``input=/data/ü.wav``) quoted, so that it reads as the string it is; structured values (lists, dicts,
    interpolations, sweeps) and values that already parse are left as they are."""
    parser = OverridesParser.create()
    quoted = []
    for override in overrides:
        key, sep, value = override.partition("=")
        plain = sep and not override.startswith("-") and not any(c in value for c in "[]{},$'\"")
        if plain and not value.isascii():
            try:
                parser.parse_override(override)
            except HydraException:
                override = f"{key}='{value}'"
        quoted.append(override)
    return quoted


def run_command_line(main: Callable[[], None], config_name: str, interrupted: str | None = None) -> None:
    """An entry point's command line: plain values that Hydra's grammar rejects for their characters quoted, the
    overrides checked (a typo or a missing option: one line, status 2), then its Hydra ``main``; with
    ``interrupted``, Ctrl-C prints ``interrupted (Ctrl-C): <interrupted>`` and exits with status 130 (without, the
    entry point handles Ctrl-C itself)."""
    sys.argv[1:] = quote_plain_values(sys.argv[1:])
    try:
        check_overrides(sys.argv[1:], config_name)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if interrupted is None:
        main()
        return
    try:
        main()
    except KeyboardInterrupt:
        print(f"interrupted (Ctrl-C): {interrupted}", file=sys.stderr)
        sys.exit(130)


def check_count(key: str, value: object, minimum: int = 1, hint: str = "") -> None:
    """Raise :class:`ConfigError` unless the setting ``key`` is an integer of at least ``minimum`` (1: positive, 0:
    non-negative), naming the key and its value, then ``hint``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "positive" if minimum == 1 else "non-negative" if minimum == 0 else f">= {minimum}"
        raise ConfigError(f"{key}={value!r} must be a {kind} integer{hint}")
