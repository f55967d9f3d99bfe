"""Export stages: the merged model → edge formats (gguf.py: llama.cpp; onnx.py: ONNX Runtime)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgeft.config import Config
from edgeft.manifest import Stage, StageWriter, read_stage


def open_export(cfg: Config, kind: str, merge_dir: Path | None, out_dir: Path | None, force: bool,
                inputs_hash: Callable[[Config, Stage], str],
                replace_own: bool = False) -> tuple[Stage, Path, StageWriter]:
    """The merge stage, its model directory, and the writer for the `kind` stage."""
    merged = read_stage(merge_dir or cfg.run_dir / "merge", "merge")
    writer = StageWriter(Path(out_dir) if out_dir else cfg.run_dir / kind, kind, config=cfg.to_dict(),
                         inputs_hash=inputs_hash(cfg, merged), parent=str(merged.path),
                         base_model=cfg.base_model, force=force, replace_own=replace_own)
    return merged, merged.file(merged.artifact("model")["path"]), writer
