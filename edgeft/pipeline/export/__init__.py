"""Export stages: the merged model → edge formats (gguf.py: llama.cpp; onnx.py: ONNX Runtime)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from edgeft.core import stages
from edgeft.core.config import Config
from edgeft.core.manifest import Stage, StageWriter


def open_export(
    cfg: Config,
    kind: str,
    merge_dir: Path | None,
    out_dir: Path | None,
    force: bool,
    inputs_hash: Callable[[Config, Sequence[Stage]], str],
    replace_own: bool = False,
) -> tuple[Stage, Path, StageWriter]:
    """The merge stage, its model directory, and the writer for the `kind` stage."""
    merged = stages.load(cfg, stages.MERGE, merge_dir)
    writer = stages.writer(
        cfg,
        kind,
        stages.directory(cfg, kind, out_dir),
        inputs_hash(cfg, [merged]),
        merged,
        force=force,
        replace_own=replace_own,
    )
    return merged, merged.artifact_path("model"), writer
