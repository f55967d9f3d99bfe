"""ruff (lint and format) and mypy over the project (including the print ban in edgeft/: the
library logs, the CLI echoes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "edgeft", "scripts", "examples", "tests"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    # pyproject's [tool.mypy]: edgeft/, with the ML stack's names as Any (see there why).
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_tree_is_formatted() -> None:
    # `ruff format` (pyproject's line length) over everything Python; fix with `ruff format .`.
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "edgeft", "scripts", "examples", "tests"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
