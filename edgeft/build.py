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
from edgeft.manifest import MANIFEST, Stage, check_replaceable, owned, read_stage
from edgeft.workdir import session

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    dist: Path
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def _existing(path: Path, kind: str, expected_hash: str) -> Stage | None:
    """The stage at `path` if it is complete, of this kind, made from the same inputs, and its
    files are still what was published (an edited or truncated output is made again)."""
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
    changed = stage.changed()
    if changed:
        log.warning("%s changed since edgeft wrote it (%s%s): making it again", path, changed[0],
                    f", and {len(changed) - 1} more" if len(changed) > 1 else "")
        return None
    return stage


def build(cfg: Config, *, force: bool = False,
          on_stage: Callable[[str, str], None] | None = None) -> BuildResult:
    """Run every stage whose inputs changed (all of them with `force`); return what ran.

    One process at a time per work directory (workdir.session). Stages replace their own earlier
    output; a directory in their way that edgeft did not write is refused unless `force`."""
    with session(cfg.run_dir):
        return _build(cfg, force, on_stage)


def _build(cfg: Config, force: bool, on_stage: Callable[[str, str], None] | None) -> BuildResult:
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

    def train_stage() -> Stage:
        resume = not force and train_mod.interrupted_run(cfg)
        if resume:
            log.info("continuing the interrupted training in %s", run / ".train.partial")
        return train_mod.train_adapter(cfg, force=force, replace_own=True, resume=resume)

    # Before minutes of work: every output this build may replace must be edgeft's own (or --force).
    for kind in ("train", "merge", "export-gguf", "export-onnx", "verify", "eval"):
        check_replaceable(run / kind, kind, force=force, replace_own=True)
    check_replaceable(cfg.dist_path, "dist", force=force, replace_own=True)
    base = resolve_base(cfg.base_model, cfg.root, cfg.trust_remote_code)
    own = {"force": force, "replace_own": True}
    train = step("train", run / "train", "train", train_mod.inputs_hash(cfg, base), train_stage)
    merged = step("merge", run / "merge", "merge", merge_mod.inputs_hash(cfg, train),
                  lambda: merge_mod.merge_adapter(cfg, **own))
    exports = []
    for kind, types, mod, make in (
        ("export-gguf", cfg.export.gguf.types, gguf_mod, gguf_mod.export_gguf),
        ("export-onnx", cfg.export.onnx.types, onnx_mod, onnx_mod.export_onnx),
    ):
        if not types:
            if owned(run / kind, kind):  # a stale export must not be shipped (and only edgeft's is removed)
                shutil.rmtree(run / kind)
            continue
        exports.append(step(kind, run / kind, kind, mod.inputs_hash(cfg, merged),
                            lambda make=make: make(cfg, **own)))
    verified = step("verify", run / "verify", "verify", verify_mod.inputs_hash(cfg, merged, exports),
                    lambda: verify_mod.verify_artifacts(cfg, force=force))
    evaluated = step("eval", run / "eval", "eval", eval_mod.inputs_hash(cfg, merged, exports),
                     lambda: eval_mod.evaluate(cfg, force=force))
    step("package", cfg.dist_path, "dist",
         package_mod.inputs_hash([train, merged, *exports, verified, evaluated]),
         lambda: package_mod.package_dist(cfg, force=force))
    return result
