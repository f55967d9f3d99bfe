"""What verify and eval share: judge every exported artifact against the merged model, publish
the verdict as a stage (JSON + Markdown), and fail only after it is written.

    gate = Gate.open(cfg, stages.VERIFY, merge_dir, export_dirs, out_dir, force=force)
    for stage, art in gate.artifacts(): ...
    gate.publish(inputs_hash, "report", result, markdown, failures, VerifyFailed, "verification failed")
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeft.core import formats, stages
from edgeft.core.config import Config
from edgeft.core.errors import EdgeftError, describe
from edgeft.core.manifest import Artifact, Stage, StageWriter, check_replaceable
from edgeft.runtimes import Runtime, load_runtime

log = logging.getLogger(__name__)


@dataclass
class Gate:
    """One verify or eval run: the reference (merge stage), the artifacts, where the verdict goes."""

    cfg: Config
    kind: str  # stages.VERIFY or stages.EVAL
    merged: Stage
    exports: list[Stage]
    out_dir: Path
    force: bool = False

    @classmethod
    def open(
        cls,
        cfg: Config,
        kind: str,
        merge_dir: Path | None = None,
        export_dirs: list[Path] | None = None,
        out_dir: Path | None = None,
        *,
        force: bool = False,
        exports: list[Stage] | None = None,
    ) -> Gate:
        """Refuse an output in the way before minutes of work; read the merge and export stages."""
        out = stages.directory(cfg, kind, out_dir)
        check_replaceable(out, kind, force=force, replace_own=True)
        merged = stages.load(cfg, stages.MERGE, merge_dir)
        return cls(
            cfg,
            kind,
            merged,
            exports if exports is not None else stages.exports(cfg, export_dirs),
            out,
            force,
        )

    @property
    def reference_dir(self) -> Path:
        """The merged model (transformers), what every artifact is judged against."""
        return self.merged.artifact_path("model")

    def artifacts(self) -> Iterator[tuple[Stage, Artifact]]:
        for stage in self.exports:
            for art in stage.artifacts:
                yield stage, art

    def publish(
        self,
        inputs_hash: str,
        name: str,
        result: dict[str, Any],
        markdown: str,
        failures: list[str],
        error: type[EdgeftError],
        summary: str,
        metrics: dict[str, Any] | None = None,
        more: Callable[[StageWriter], None] | None = None,
    ) -> Stage:
        """Write `<name>.json` and `<name>.md` (and whatever `more` adds) as the gate's stage, then
        raise `error` listing the failures, if any: the verdict is on disk either way."""
        with stages.writer(
            self.cfg, self.kind, self.out_dir, inputs_hash, self.merged, force=self.force, replace_own=True
        ) as w:
            (w.tmp / f"{name}.json").write_text(
                json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
            (w.tmp / f"{name}.md").write_text(markdown, encoding="utf-8")
            w.add_artifact(name, f"{name}.json", formats.JSON)
            w.add_artifact(f"{name}-md", f"{name}.md", formats.MARKDOWN)
            if more is not None:
                more(w)
            w.metrics.update(passed=not failures, failures=len(failures), **(metrics or {}))
            stage = w.publish()
        if failures:
            raise error(f"{summary}; {name}: {stage.file(f'{name}.md')}\n" + "\n".join(failures))
        return stage


def load_or_why(stage: Stage, art: Artifact, **options: Any) -> tuple[Runtime | None, str | None]:
    """The artifact in its runtime, or why it cannot be loaded: the artifact failed, not the gate
    (the traceback is in the -v log)."""
    try:
        return load_runtime(art, stage.path, **options), None
    except Exception as e:
        log.debug("%s could not be loaded", art.name, exc_info=True)
        return None, describe(e)
