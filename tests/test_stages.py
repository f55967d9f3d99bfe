"""The stage layout (edgeft.core.stages, core.manifest): directories, hints and the parent chain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeft.core import stages
from edgeft.core.config import parse_config
from edgeft.core.errors import InputError
from edgeft.core.manifest import StageWriter


def test_stage_directories_and_hints(tmp_path: Path) -> None:
    cfg = parse_config(
        {"name": "m", "base_model": "tiny:micro", "data": {"train": "d.jsonl"}}, str(tmp_path / "edgeft.yaml")
    )
    assert stages.directory(cfg, stages.MERGE) == tmp_path / "runs" / "m" / "merge"
    assert stages.directory(cfg, stages.DIST) == tmp_path / "dist" / "m"
    assert stages.directory(cfg, stages.EVAL, tmp_path / "x") == tmp_path / "x"
    assert set(stages.PRODUCED_BY) == set(stages.ORDER)
    with pytest.raises(InputError, match="run `edgeft merge -c CONFIG` first"):
        stages.load(cfg, stages.MERGE)


def _stage(dest: Path, kind: str, parent: Path | None = None) -> Path:
    with StageWriter(dest, kind, parent=str(parent) if parent else None, resolved_base="/models/base") as w:
        (w.tmp / "f.txt").write_text(kind)
        w.add_artifact("f", "f.txt", "text")
        w.publish()
    return dest


def test_ancestor_walks_the_parents(tmp_path: Path) -> None:
    merge = _stage(tmp_path / "merge", stages.MERGE)
    export = _stage(tmp_path / "export-gguf", stages.EXPORT_GGUF, merge)
    verify = _stage(tmp_path / "verify", stages.VERIFY, merge)
    dist = stages.read(_stage(tmp_path / "dist", stages.DIST, verify), stages.DIST)
    assert dist.ancestor(stages.MERGE).path == merge
    assert dist.ancestor(stages.DIST) is dist
    assert stages.read(export, stages.EXPORTS).resolved_base == "/models/base"
    assert json.loads((merge / "edgeft.json").read_text())["resolved_base"] == "/models/base"
    with pytest.raises(InputError, match="the 'train' stage it was made from"):
        dist.ancestor(stages.TRAIN)
