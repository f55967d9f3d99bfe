"""ruff over the project (including the print ban in edgeft/: the library logs, the CLI echoes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ruff_is_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "edgeft", "scripts", "examples", "tests"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    # pyproject's [tool.mypy]: edgeft/, with the ML stack's names as Any (see there why).
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# The stage modules in the order the stages run (edgeft.stages.ORDER); the Java kit is written by
# the package stage. A module may import a stage that runs before it, never one that runs after:
# what a stage needs from a later one belongs in a module both can use (stages, gate, formats).
STAGE_MODULES = {"edgeft.train": 0, "edgeft.merge": 1, "edgeft.export.gguf": 2, "edgeft.export.onnx": 2,
                 "edgeft.verify": 3, "edgeft.evaluate": 4, "edgeft.package": 5, "edgeft.javakit": 5}
# preflight asks every stage's tool before the first stage runs (build's first step, check-model).
ORCHESTRATORS = {"edgeft.build", "edgeft.cli", "edgeft.__main__", "edgeft.preflight"}


def _stage_rank(module: str) -> int | None:
    for name, rank in STAGE_MODULES.items():
        if module == name or module.startswith(name + "."):
            return rank
    return None


def _imports(path: Path) -> set[str]:
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_no_module_imports_a_stage_that_runs_after_it() -> None:
    assert set(STAGE_MODULES) - {"edgeft.javakit"} == {
        f"edgeft.{m}" for m in ("train", "merge", "export.gguf", "export.onnx", "verify", "evaluate", "package")}
    later = []
    for path in sorted((REPO / "edgeft").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        if module in ORCHESTRATORS:
            continue
        own = _stage_rank(module)
        for imported in _imports(path):
            rank = _stage_rank(imported)
            if rank is not None and (own is None or rank > own):
                later.append(f"{module} imports {imported}")
    assert not later, later
