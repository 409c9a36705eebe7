"""The README and docs/ stay true: every command they show names a module, script or make target that exists,
every relative link resolves, and the README stays a front page (at most 250 lines)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def code_lines(page: Path) -> list[str]:
    """The lines of a page's fenced code blocks and inline code spans."""
    text = page.read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    return [line for block in blocks for line in block.splitlines()] + re.findall(r"`([^`\n]+)`", text)


def commands(pattern: str) -> set[tuple[str, str]]:
    """``(page, match)`` for every match of ``pattern`` in the pages' code."""
    return {
        (page.relative_to(ROOT).as_posix(), m)
        for page in PAGES
        for line in code_lines(page)
        for m in re.findall(pattern, line)
    }


@pytest.mark.parametrize(("page", "module"), sorted(commands(r"python3? -m ([\w.]+)")))
def test_every_python_m_command_names_a_module(page, module):
    if module.split(".")[0] in {"pip", "venv", "pytest", "build"}:
        pytest.skip("a tool, not ours")
    assert importlib.util.find_spec(module) is not None, f"{page}: python -m {module}: no such module"


@pytest.mark.parametrize(("page", "script"), sorted(commands(r"python3? ([\w/]+\.py)\b")))
def test_every_python_script_command_names_a_file(page, script):
    assert (ROOT / script).is_file(), f"{page}: python {script}: no such file"


@pytest.mark.parametrize(("page", "target"), sorted(commands(r"^\s*make ([\w-]+)")))
def test_every_make_command_names_a_target(page, target):
    assert re.search(rf"^{re.escape(target)}:", (ROOT / "Makefile").read_text(), flags=re.M), (
        f"{page}: make {target}: no such target"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
        assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: link to {target} does not resolve"


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    first_screen = "\n".join(lines[:8])
    assert "make quickstart" in first_screen and "make test" in first_screen
