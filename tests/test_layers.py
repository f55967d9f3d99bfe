"""The import graph of edgeft/: every module in a layer folder, no arrow from a lower layer to a
higher one, no circle, and a stage never importing a stage that runs after it. Function-level
imports count as much as top-level ones (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "edgeft"

# Lowest first (docs/contributing.md describes each). A module imports from its own layer or a
# lower one.
LAYERS = ["core", "models", "runtimes", "data", "judge", "pipeline", "ship", "registry", "serve", "cli"]
TOP = {"edgeft": -1, "edgeft.__main__": len(LAYERS)}  # the version string; `python -m edgeft`

# The stage modules in the order the stages run (edgeft.core.stages.ORDER); the Java kit is
# written by the package stage. What a stage needs from a later one belongs in a lower layer.
STAGES = {
    "edgeft.pipeline.train": 0,
    "edgeft.pipeline.merge": 1,
    "edgeft.pipeline.export": 2,
    "edgeft.pipeline.verify": 3,
    "edgeft.pipeline.evaluate": 4,
    "edgeft.ship.package": 5,
    "edgeft.ship.javakit": 5,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        out[".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The edgeft modules `path` imports: `from a.b import c` is module a.b.c when that is a module,
    else a.b. Importing a.b.c also runs a.b's __init__, which is not counted as an arrow (a package
    may re-export its own submodules)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                for a in node.names
            ]
        else:
            continue
        out |= {n for n in names if n == "edgeft" or n.startswith("edgeft.")}
    return out


GRAPH = {module: _imports(path) - {module} for module, path in MODULES.items()}


def _layer(module: str) -> int:
    if module in TOP:
        return TOP[module]
    return LAYERS.index(module.split(".")[1])


def _stage(module: str) -> int | None:
    return next(
        (rank for name, rank in STAGES.items() if module == name or module.startswith(name + ".")), None
    )


def test_every_module_is_in_a_layer_folder() -> None:
    loose = [m for m in MODULES if m not in TOP and m.split(".")[1] not in LAYERS]
    assert not loose, f"modules outside the layer folders {LAYERS}: {loose}"
    assert all((PKG / layer / "__init__.py").is_file() for layer in LAYERS)


def test_no_arrow_from_a_lower_layer_to_a_higher_one() -> None:
    upward = [
        f"{m} ({LAYERS[_layer(m)] if m not in TOP else m}) imports {i} ({LAYERS[_layer(i)] if i not in TOP else i})"
        for m, imported in GRAPH.items()
        for i in imported
        if i in MODULES and _layer(i) > _layer(m)
    ]
    assert not upward, upward


def test_the_import_graph_has_no_circle() -> None:
    # Tarjan's strongly connected components: any component of more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in MODULES:
        if v not in index:
            visit(v)
    assert not circles, circles


def test_no_stage_imports_a_stage_that_runs_after_it() -> None:
    later = [
        f"{m} imports {i}"
        for m, imported in GRAPH.items()
        for i in imported
        if _stage(m) is not None and _stage(i) is not None and _stage(i) > _stage(m)
    ]  # type: ignore[operator]
    assert not later, later


def test_the_checks_see_what_they_should() -> None:
    # The graph is not empty and resolves submodules: the verify stage reads the gate from judge.
    assert "edgeft.judge.gate" in GRAPH["edgeft.pipeline.verify.run"]
    assert len(MODULES) > 60 and sum(map(len, GRAPH.values())) > 150


def test_build_runs_every_stage_in_order_from_earlier_ones() -> None:
    from edgeft.cli.build import SPECS
    from edgeft.core import stages

    assert [s.kind for s in SPECS] == list(stages.ORDER)
    for i, spec in enumerate(SPECS):
        assert set(spec.inputs) <= set(stages.ORDER[:i]), f"{spec.kind} reads a stage that runs after it"
        assert spec.command.startswith("edgeft ")


# Keys of the typed contracts (artifact entries, the verify report, eval results, the registry
# index): read and written only by their (de)serialisers.
CONTRACT_KEYS = {
    "artifacts",
    "checks",
    "numbers",
    "models",
    "per_example",
    "second_opinion",
    "versions",
    "aliases",
    "arms",
}
SERIALISERS = {
    "edgeft.core.manifest",
    "edgeft.pipeline.verify.report",
    "edgeft.pipeline.evaluate.results",
    "edgeft.registry.index",
}


def test_contracts_are_read_through_their_types() -> None:
    raw = []
    for module, path in MODULES.items():
        if module in SERIALISERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.slice, ast.Constant)
                and node.slice.value in CONTRACT_KEYS
            ):
                raw.append(f"{module}:{node.lineno} [{node.slice.value!r}]")
    assert not raw, raw


def test_every_stage_entry_point_holds_the_work_directory() -> None:
    # One process per work directory (core.workdir.session): each stage's public function is wrapped.
    from edgeft.pipeline.evaluate import evaluate
    from edgeft.pipeline.export.gguf import export_gguf
    from edgeft.pipeline.export.onnx import export_onnx
    from edgeft.pipeline.merge import merge_adapter
    from edgeft.pipeline.verify import verify_artifacts
    from edgeft.ship.package import package_dist

    for f in (merge_adapter, export_gguf, export_onnx, verify_artifacts, evaluate, package_dist):
        assert f.__code__.co_qualname == "in_session.<locals>.run" and hasattr(f, "__wrapped__"), f.__name__
