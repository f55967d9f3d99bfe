"""The pipeline: train → [align] → merge → export (GGUF, ONNX) → verify → eval → package, from one config.

Each stage's inputs are hashed into its manifest; a stage whose directory already holds a
complete result for the same inputs is reused, so a second build with unchanged inputs
re-runs nothing heavy, and changing only export settings re-exports without retraining.

    edgeft build -c examples/nl2sql/edgeft.yaml
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgeft.core import stages
from edgeft.core.config import Config
from edgeft.core.manifest import MANIFEST, Stage, check_replaceable, owned, partial_dir, read_stage
from edgeft.core.workdir import session
from edgeft.pipeline import align as align_mod
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


def _train(cfg: Config, force: bool) -> Stage | None:
    resume = not force and train_mod.interrupted_run(cfg)
    if resume:
        log.info(
            "continuing the interrupted training in %s", partial_dir(stages.directory(cfg, stages.TRAIN))
        )
    return train_mod.train_adapter(cfg, force=force, replace_own=True, resume=resume)


@dataclass(frozen=True)
class StageSpec:
    """One stage as build runs it: the stages it reads (by kind; an export the config does not ask
    for is left out), the fingerprint of its inputs, and what makes it. Adding a stage is a row."""

    kind: str
    inputs: tuple[str, ...]
    inputs_hash: Callable[[Config, Sequence[Stage]], str]
    run: Callable[[Config, bool], Stage | None]  # (config, force) -> the published stage

    @property
    def label(self) -> str:
        """As build reports it (the dist stage is the package command's)."""
        return "package" if self.kind == stages.DIST else self.kind

    @property
    def command(self) -> str:
        return stages.PRODUCED_BY[self.kind]


_EXPORTED = (stages.MERGE, *stages.EXPORTS)
SPECS = (
    StageSpec(stages.TRAIN, (), train_mod.inputs_hash, _train),
    StageSpec(
        stages.ALIGN,
        (stages.TRAIN,),
        align_mod.inputs_hash,
        lambda cfg, force: align_mod.align(cfg, force=force, replace_own=True),
    ),
    StageSpec(
        stages.MERGE,
        (stages.TRAIN, stages.ALIGN),  # the last one there holds the weights (align's, if it ran)
        merge_mod.inputs_hash,
        lambda cfg, force: merge_mod.merge_adapter(cfg, force=force, replace_own=True),
    ),
    StageSpec(
        stages.EXPORT_GGUF,
        (stages.MERGE,),
        gguf_mod.inputs_hash,
        lambda cfg, force: gguf_mod.export_gguf(cfg, force=force, replace_own=True),
    ),
    StageSpec(
        stages.EXPORT_ONNX,
        (stages.MERGE,),
        onnx_mod.inputs_hash,
        lambda cfg, force: onnx_mod.export_onnx(cfg, force=force, replace_own=True),
    ),
    StageSpec(
        stages.VERIFY,
        _EXPORTED,
        verify_mod.inputs_hash,
        lambda cfg, force: verify_mod.verify_artifacts(cfg, force=force),
    ),
    StageSpec(
        stages.EVAL, _EXPORTED, eval_mod.inputs_hash, lambda cfg, force: eval_mod.evaluate(cfg, force=force)
    ),
    StageSpec(
        stages.DIST,
        (*_EXPORTED, stages.VERIFY, stages.EVAL),
        package_mod.inputs_hash,
        lambda cfg, force: package_mod.package_dist(cfg, force=force),
    ),
)


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

    def step(spec: StageSpec, upstream: list[Stage]) -> Stage:
        path = stages.directory(cfg, spec.kind)
        found = None if force else _existing(path, spec.kind, spec.inputs_hash(cfg, upstream))
        if found is not None:
            result.reused.append(spec.label)
            if on_stage:
                on_stage(spec.label, "up to date")
            return found
        if on_stage:
            on_stage(spec.label, "running")
        started = time.time()
        stage = spec.run(cfg, force)
        assert stage is not None  # only other processes of a distributed training get None
        result.seconds[spec.label] = round(time.time() - started, 2)
        result.ran.append(spec.label)
        return stage

    # Before minutes of work: every output this build may replace must be edgeft's own (or --force).
    for kind in stages.ORDER:
        check_replaceable(stages.directory(cfg, kind), kind, force=force, replace_own=True)
    _preflight(cfg)
    done: dict[str, Stage] = {}
    wanted = stages.wanted_exports(cfg)
    for spec in SPECS:
        if (spec.kind in stages.EXPORTS and spec.kind not in wanted) or (
            spec.kind == stages.ALIGN and not cfg.aligned
        ):
            # A stale export (or preference tuning the config no longer asks for) must not be shipped.
            if owned(stages.directory(cfg, spec.kind), spec.kind):
                shutil.rmtree(stages.directory(cfg, spec.kind))  # (only edgeft's own is removed)
            continue
        # The order of the upstream list is the order of `inputs` (each inputs_hash reads it so).
        done[spec.kind] = step(spec, [done[k] for k in spec.inputs if k in done])
    return result
