"""The pipeline: train → merge → export (GGUF, ONNX) → verify → eval → package, from one config.

Each stage's inputs are hashed into its manifest; a stage whose directory already holds a
complete result for the same inputs is reused, so a second build with unchanged inputs
re-runs nothing heavy, and changing only export settings re-exports without retraining.

    edgeft build -c examples/nl2sql/edgeft.yaml
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeft.core import stages
from edgeft.core.config import Config
from edgeft.core.manifest import MANIFEST, Stage, check_replaceable, owned, partial_dir, read_stage
from edgeft.core.workdir import session
from edgeft.pipeline import evaluate as eval_mod
from edgeft.pipeline import merge as merge_mod
from edgeft.pipeline import train as train_mod
from edgeft.pipeline import verify as verify_mod
from edgeft.pipeline.export import gguf as gguf_mod
from edgeft.pipeline.export import onnx as onnx_mod
from edgeft.ship import package as package_mod

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
    if kind in (stages.VERIFY, stages.EVAL) and not stage.metrics.get("passed"):
        return None
    changed = stage.changed()
    if changed:
        log.warning(
            "%s changed since edgeft wrote it (%s%s): making it again",
            path,
            changed[0],
            f", and {len(changed) - 1} more" if len(changed) > 1 else "",
        )
        return None
    return stage


# Each stage: the module whose `inputs_hash(cfg, upstream)` fingerprints it, and what makes it.
MODULES: dict[str, Any] = {
    stages.TRAIN: train_mod,
    stages.MERGE: merge_mod,
    stages.EXPORT_GGUF: gguf_mod,
    stages.EXPORT_ONNX: onnx_mod,
    stages.VERIFY: verify_mod,
    stages.EVAL: eval_mod,
    stages.DIST: package_mod,
}


def build(
    cfg: Config, *, force: bool = False, on_stage: Callable[[str, str], None] | None = None
) -> BuildResult:
    """Run every stage whose inputs changed (all of them with `force`); return what ran.

    One process at a time per work directory (workdir.session). Stages replace their own earlier
    output; a directory in their way that edgeft did not write is refused unless `force`."""
    with session(cfg.run_dir):
        return _build(cfg, force, on_stage)


def _preflight(cfg: Config) -> None:
    """Exit 3 in seconds when a configured export cannot take the base's architecture (the pinned
    tools' own tables: edgeft.cli.preflight), before any training."""
    from edgeft.cli import preflight
    from edgeft.models.base import resolve_base

    answers = preflight.check(
        Path(resolve_base(cfg.base_model, cfg.root, cfg.trust_remote_code)), cfg, quick=True
    )
    preflight.require(answers)
    for a in answers:
        if a.needed and a.caveat:
            log.info("pre-flight: %s: %s", a.consumer, a.detail)


def _build(cfg: Config, force: bool, on_stage: Callable[[str, str], None] | None) -> BuildResult:
    result = BuildResult(dist=cfg.dist_path)
    own = {"force": force, "replace_own": True}

    def step(kind: str, upstream: list[Stage], make: Callable[[], Stage | None]) -> Stage:
        name = "package" if kind == stages.DIST else kind
        path = stages.directory(cfg, kind)
        found = None if force else _existing(path, kind, MODULES[kind].inputs_hash(cfg, upstream))
        if found is not None:
            result.reused.append(name)
            if on_stage:
                on_stage(name, "up to date")
            return found
        if on_stage:
            on_stage(name, "running")
        started = time.time()
        stage = make()
        assert stage is not None  # only other processes of a distributed training get None
        result.seconds[name] = round(time.time() - started, 2)
        result.ran.append(name)
        return stage

    def train_stage() -> Stage | None:
        resume = not force and train_mod.interrupted_run(cfg)
        if resume:
            log.info(
                "continuing the interrupted training in %s", partial_dir(stages.directory(cfg, stages.TRAIN))
            )
        return train_mod.train_adapter(cfg, force=force, replace_own=True, resume=resume)

    # Before minutes of work: every output this build may replace must be edgeft's own (or --force).
    for kind in stages.ORDER:
        check_replaceable(stages.directory(cfg, kind), kind, force=force, replace_own=True)
    _preflight(cfg)
    train = step(stages.TRAIN, [], train_stage)
    merged = step(stages.MERGE, [train], lambda: merge_mod.merge_adapter(cfg, **own))
    exports = []
    wanted = stages.wanted_exports(cfg)
    for kind, make in (
        (stages.EXPORT_GGUF, gguf_mod.export_gguf),
        (stages.EXPORT_ONNX, onnx_mod.export_onnx),
    ):
        if kind in wanted:
            exports.append(step(kind, [merged], functools.partial(make, cfg, **own)))
        elif owned(
            stages.directory(cfg, kind), kind
        ):  # a stale export must not be shipped (only edgeft's is removed)
            shutil.rmtree(stages.directory(cfg, kind))
    verified = step(stages.VERIFY, [merged, *exports], lambda: verify_mod.verify_artifacts(cfg, force=force))
    evaluated = step(stages.EVAL, [merged, *exports], lambda: eval_mod.evaluate(cfg, force=force))
    step(
        stages.DIST,
        [merged, *exports, verified, evaluated],
        lambda: package_mod.package_dist(cfg, force=force),
    )
    return result
