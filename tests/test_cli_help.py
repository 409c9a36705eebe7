"""Each entry point's --help lists its own config groups, with their options, and no other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stmc.conf import CONFIG_DIR, group_options

ROOT = Path(__file__).resolve().parents[1]
ALL_GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "paths"))
OWN = {
    "train": ["model", "module", "data", "trainer", "logger", "callbacks", "experiment", "sweep", "hydra/launcher"],
    "evaluate": ["data", "hydra/launcher"],
    "stream_infer": ["model"],
}


@pytest.mark.parametrize("entry", list(OWN))
def test_help_lists_only_the_entry_points_own_groups(entry):
    done = subprocess.run(
        [sys.executable, str(ROOT / f"{entry}.py"), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    section = done.stdout.split("== Configuration groups ==\n", 1)[1].split("\n\n", 1)[0]
    listed = {line.split()[0]: line.split(None, 1)[1] for line in section.splitlines()}
    assert list(listed) == OWN[entry]
    for group, options in listed.items():
        if not group.startswith("hydra/"):
            assert options == ", ".join(group_options(group))
    foreign = set(ALL_GROUPS) - set(OWN[entry])
    assert not foreign & set(listed), f"{entry} --help offers groups it does not use: {foreign & set(listed)}"
