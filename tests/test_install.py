"""The project installs: editable into the venv (`make venv`), and as a wheel that carries every package, the
Hydra configs, the native step's source and the console scripts, and works without the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("stmc-train", "stmc-evaluate", "stmc-stream", "stmc-export", "stmc-bench")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_the_project_imports_outside_the_repository(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "import stmc, stmc.data.datamodule; print(stmc.UNet.__name__)"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"not installed into {sys.prefix} (run `make venv`): {done.stderr[-500:]}"
    assert done.stdout.strip() == "UNet"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    leftover = not (ROOT / "build").exists()  # setuptools builds in <checkout>/build: removed again below
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if leftover:
        shutil.rmtree(ROOT / "build", ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = out.glob("stmc-*.whl")
    return path


def test_the_wheel_holds_every_package_the_configs_and_the_native_source(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "stmc").rglob("__init__.py")}
    assert {f"{p}/__init__.py" for p in packages} <= names
    configs = {p.relative_to(ROOT).as_posix() for p in (ROOT / "stmc" / "conf").rglob("*.yaml")}
    assert configs and configs <= names
    assert "stmc/stream/native_step.cpp" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    declared = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert all(f"{script} =" in declared for script in SCRIPTS)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: torch" in metadata and "Requires-Dist: lightning" in metadata


@pytest.mark.slow
def test_the_installed_wheel_runs_its_console_scripts_from_another_folder(wheel, corpus, tmp_path):
    """A fresh venv sees this venv's dependencies but not the checkout; the wheel goes in with --no-deps; every
    console script answers --help and stmc-train fits one step, all from a folder outside the checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # the dependencies come from this venv's site-packages, after the new venv's own (where the wheel goes)
    Path(purelib, "deps.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [python, "-c", "import stmc.conf as c; print(c.CONFIG_DIR)"],
        cwd=elsewhere,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr  # not the checkout
    for script in SCRIPTS:
        done = subprocess.run(
            [venv / "bin" / script, "--help"],
            cwd=elsewhere,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0 and script.removeprefix("stmc-") in done.stdout.lower(), (
            f"{script}: {done.stdout[-500:]} {done.stderr[-1000:]}"
        )
    done = subprocess.run(
        [
            venv / "bin" / "stmc-train",
            f"data.root={corpus}",
            "data.segment_seconds=1.0",
            "data.batch_size=2",
            "data.epoch_items=4",
            "model.width=0.25",
            "trainer.max_steps=1",
            "trainer.limit_val_batches=1",
            "trainer.val_check_interval=1",
            "logger=csv",
            "test=false",
            "threads=1",
            "hydra.run.dir=run",
        ],
        cwd=elsewhere,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert list((elsewhere / "run" / "checkpoints").glob("*.ckpt"))
