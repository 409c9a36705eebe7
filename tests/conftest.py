"""Shared test set-up: the ``compiler`` marker, for tests that need a C++ compiler (the native STMC step, which
compiles on first use, and ``torch.compile``).

Without one those tests are skipped with the reason, so that ``make test`` passes on a minimal machine; with
``STMC_REQUIRE_NATIVE=1`` (CI, whose machines have g++) a missing native step is an error instead, so these
tests can never be skipped there unnoticed.
"""

from __future__ import annotations

import os

import pytest

from stmc import native


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = native.unavailable()
    if reason is None:
        return
    if os.environ.get("STMC_REQUIRE_NATIVE"):
        raise pytest.UsageError(f"STMC_REQUIRE_NATIVE is set, but the native STMC step cannot run: {reason}")
    skip = pytest.mark.skip(reason=f"the native STMC step cannot run here: {reason}")
    for item in items:
        if "compiler" in item.keywords:
            item.add_marker(skip)
