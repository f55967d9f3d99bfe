"""The pipeline: train → merge → export (GGUF, ONNX) → verify → eval → package, from one config.

Each stage's inputs are hashed into its manifest; a stage whose directory already holds a
complete result for the same inputs is reused, so a second build with unchanged inputs
re-runs nothing heavy, and changing only export settings re-exports without retraining.

    edgeft build -c examples/nl2sql/edgeft.yaml
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeft import evaluate as eval_mod
from edgeft import merge as merge_mod
from edgeft import package as package_mod
from edgeft import train as train_mod
from edgeft import verify as verify_mod
from edgeft.base import resolve_base
from edgeft.config import Config
from edgeft.export import gguf as gguf_mod
from edgeft.export import onnx as onnx_mod
from edgeft.manifest import MANIFEST, Stage, read_stage

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    dist: Path
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def _existing(path: Path, kind: str, expected_hash: str) -> Stage | None:
    """The stage at `path` if it is complete, of this kind, and made from the same inputs."""
    if not (path / MANIFEST).is_file():
        return None
    try:
        stage = read_stage(path, kind)
    except Exception:  # unreadable or another kind: it will be rebuilt
        return None
    if stage.inputs_hash != expected_hash:
        return None
    if kind in ("verify", "eval") and not stage.metrics.get("passed"):
        return None
    return stage


def build(cfg: Config, *, force: bool = False,
          on_stage: Callable[[str, str], None] | None = None) -> BuildResult:
    """Run every stage whose inputs changed (all of them with `force`); return what ran."""
    run = cfg.run_dir
    result = BuildResult(dist=cfg.dist_path)

    def step(name: str, path: Path, kind: str, expected: str | None, make: Callable[[], Stage]) -> Stage:
        found = None if force or expected is None else _existing(path, kind, expected)
        if found is not None:
            result.reused.append(name)
            if on_stage:
                on_stage(name, "up to date")
            return found
        if on_stage:
            on_stage(name, "running")
        started = time.time()
        stage = make()
        result.seconds[name] = round(time.time() - started, 2)
        result.ran.append(name)
        return stage

    base = resolve_base(cfg.base_model, cfg.root)
    train = step("train", run / "train", "train", train_mod.inputs_hash(cfg, base),
                 lambda: train_mod.train_adapter(cfg, force=True))
    merged = step("merge", run / "merge", "merge", merge_mod.inputs_hash(cfg, train),
                  lambda: merge_mod.merge_adapter(cfg, force=True))
    exports = []
    for kind, types, mod, make in (
        ("export-gguf", cfg.export.gguf.types, gguf_mod, gguf_mod.export_gguf),
        ("export-onnx", cfg.export.onnx.types, onnx_mod, onnx_mod.export_onnx),
    ):
        if not types:
            shutil.rmtree(run / kind, ignore_errors=True)  # a stale export must not be shipped
            continue
        exports.append(step(kind, run / kind, kind, mod.inputs_hash(cfg, merged),
                            lambda make=make: make(cfg, force=True)))
    verified = step("verify", run / "verify", "verify", verify_mod.inputs_hash(cfg, merged, exports),
                    lambda: verify_mod.verify_artifacts(cfg, force=True))
    evaluated = step("eval", run / "eval", "eval", eval_mod.inputs_hash(cfg, merged, exports),
                     lambda: eval_mod.evaluate(cfg, force=True))
    step("package", cfg.dist_path, "dist",
         package_mod.inputs_hash([train, merged, *exports, verified, evaluated]),
         lambda: package_mod.package_dist(cfg, force=True))
    return result
