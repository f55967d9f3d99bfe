"""The stages of a build, in the order they run, and where each one's directory is.

A stage reads only stages that run before it (`ORDER`); each writes one directory,
`<workdir>/<name>/<kind>/` (the dist: `<dist_dir>/<name>/`), described by its manifest
(edgeft.core.manifest). Every place that needs a stage's directory asks this module.

    train → [align] → merge → export-gguf, export-onnx → verify → eval → dist
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeft.core.manifest import Stage, StageWriter, read_stage

if TYPE_CHECKING:
    from edgeft.core.config import Config

TRAIN = "train"
ALIGN = "align"  # only when the config tunes preferences (align.pairs)
MERGE = "merge"
EXPORT_GGUF = "export-gguf"
EXPORT_ONNX = "export-onnx"
VERIFY = "verify"
EVAL = "eval"
DIST = "dist"

ORDER = (TRAIN, ALIGN, MERGE, EXPORT_GGUF, EXPORT_ONNX, VERIFY, EVAL, DIST)
EXPORTS = (EXPORT_GGUF, EXPORT_ONNX)

# What to run to produce each kind of stage directory, for the "wrong directory" message
# (tests/test_cli.py runs each command's --help and checks the options named).
PRODUCED_BY = {
    TRAIN: "edgeft train -c CONFIG",
    ALIGN: "edgeft align -c CONFIG",
    MERGE: "edgeft merge -c CONFIG",
    EXPORT_GGUF: "edgeft export gguf -c CONFIG",
    EXPORT_ONNX: "edgeft export onnx -c CONFIG",
    VERIFY: "edgeft verify -c CONFIG",
    EVAL: "edgeft eval -c CONFIG",
    DIST: "edgeft package -c CONFIG",
}


def directory(cfg: Config, kind: str, given: Path | str | None = None) -> Path:
    """Where the `kind` stage of `cfg` lives: `given` (an --out or --*-dir option) if set."""
    if given:
        return Path(given)
    return cfg.dist_path if kind == DIST else cfg.run_dir / kind


def read(path: Path | str, kinds: str | Sequence[str]) -> Stage:
    """A complete stage of one of `kinds` at `path`; the error says which command makes one."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    return read_stage(path, kinds, hint=PRODUCED_BY.get(kinds[0]))


def load(cfg: Config, kind: str, given: Path | str | None = None) -> Stage:
    """The config's `kind` stage (or the one at `given`)."""
    return read(directory(cfg, kind, given), kind)


def writer(
    cfg: Config,
    kind: str,
    dest: Path,
    inputs_hash: str,
    parent: Stage | None,
    *,
    force: bool,
    replace_own: bool,
    **more: Any,
) -> StageWriter:
    """The writer of the `kind` stage of `cfg` at `dest`: its resolved config, the hash of its
    inputs, the stage it was made from and the base model go into its manifest (`more`: the
    training stage's resume settings)."""
    return StageWriter(
        dest,
        kind,
        config=cfg.to_dict(),
        inputs_hash=inputs_hash,
        parent=str(parent.path) if parent is not None else None,
        base_model=cfg.base_model,
        force=force,
        replace_own=replace_own,
        **more,
    )


def trained(cfg: Config, given: Path | str | None = None) -> Stage:
    """The stage holding the weights merge merges: align's when the config tunes preferences,
    else train's (or the train or align stage at `given`)."""
    if given:
        return read(given, (TRAIN, ALIGN))
    return load(cfg, ALIGN if cfg.aligned else TRAIN)


def wanted_exports(cfg: Config) -> list[str]:
    """The export stages the config asks for (a type list left empty means no such export)."""
    types = {EXPORT_GGUF: cfg.export.gguf.types, EXPORT_ONNX: cfg.export.onnx.types}
    return [kind for kind in EXPORTS if types[kind]]


def exports(cfg: Config, dirs: Sequence[Path] | None = None) -> list[Stage]:
    """The export stages in `dirs` (export stages or dist folders), or else the config's."""
    if dirs is not None:
        return [read(d, (*EXPORTS, DIST)) for d in dirs]
    return [load(cfg, kind) for kind in wanted_exports(cfg)]
