"""`make venv` installs the project into the venv (editable), so its packages import from any folder."""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_project_imports_outside_the_repository(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", "import stmc, data.datamodule; print(stmc.UNet.__name__)"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"not installed into {sys.prefix} (run `make venv`): {done.stderr[-500:]}"
    assert done.stdout.strip() == "UNet"
