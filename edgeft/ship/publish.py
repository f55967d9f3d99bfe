"""Drop-in files for the runtimes people already use: Ollama Modelfiles in every dist, and the
folder layout LM Studio reads (`edgeft export lmstudio DIST DIR`).

A Modelfile sits beside each GGUF (`gguf/<file>.Modelfile`; `gguf/lora/Modelfile` applies the LoRA
GGUF as `ADAPTER` over its base) with one `PARAMETER stop` per token that ends generation in that
artifact (its stop set as verify read it, which must include every token the reference stopped on),
`PARAMETER num_ctx` set to the context verify covered, and the config's `license`. No `TEMPLATE`:
edgeft cannot prove that a hand-written Go template renders like the model's Jinja one, so Ollama
takes the template from the GGUF.

    ollama create nl2sql-tiny -f dist/nl2sql-tiny/gguf/nl2sql-tiny-q4_k_m.Modelfile
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgeft.core import formats, stages
from edgeft.core.errors import InputError
from edgeft.core.fileio import copy_file, inside, scratch_prefix, sha256_file
from edgeft.core.manifest import Artifact
from edgeft.pipeline.verify.report import VerifyReport


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile(
    model: str,
    stops: list[str],
    num_ctx: int,
    license: str | None,
    adapter: str | None = None,
    command: str = "",
) -> str:
    lines = [
        f"# Ollama: {command}" if command else "# Ollama Modelfile",
        "# Written by edgeft from what `edgeft verify` checked: the stop tokens and the context length.",
        "# No TEMPLATE: Ollama reads the chat template embedded in the GGUF.",
        f"FROM ./{model}",
    ]
    if adapter:
        lines.append(f"ADAPTER ./{adapter}")
    lines += [f"PARAMETER stop {_quote(s)}" for s in stops]
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    if license:
        lines.append(f'LICENSE """{license}"""')
    return "\n".join(lines) + "\n"


def write_modelfiles(
    root: Path, artifacts: list[Artifact], report: VerifyReport, name: str, license: str | None
) -> list[str]:
    """A Modelfile beside each GGUF artifact under `root` (a dist being written); their paths."""
    written = []
    for a in artifacts:
        if a.format == formats.GGUF:
            file = Path(a.path)
            target = file.with_suffix(".Modelfile")
            text = modelfile(
                file.name,
                report.stop_strings(a.name),
                int(report.context_tokens or 0),
                license,
                command=f"ollama create {name}:{a.type} -f {target.name}",
            )
        elif a.format == formats.GGUF_LORA:
            target = Path(a.path) / "Modelfile"
            text = modelfile(
                Path(a.get("base_file")).name,
                report.stop_strings(a.name),
                int(report.context_tokens or 0),
                license,
                adapter=Path(a.get("adapter_file")).name,
                command=f"ollama create {name}:lora -f Modelfile",
            )
        else:
            continue
        (root / target).write_text(text, encoding="utf-8")
        written.append(target.as_posix())
    return written


def export_lmstudio(dist_dir: Path, out: Path, publisher: str, *, force: bool = False) -> list[Path]:
    """Copy a dist's GGUF files (not the LoRA pair: LM Studio loads one file) to
    `out/<publisher>/<name>/`, the layout of LM Studio's models folder, checking every byte
    against the dist's manifest. A file already there with the same bytes is kept; a different
    one is replaced only with `force`."""
    from edgeft.judge.integrity import check_path

    dist = stages.read(Path(dist_dir), stages.DIST)
    check_path(dist.path)
    for part in (publisher, dist.data["name"]):
        if not part or "/" in part or part.startswith("."):
            raise InputError(f"{part!r}: not usable as a folder name in LM Studio's layout")
    ggufs = [a for a in dist.artifacts if a.format == formats.GGUF]
    if not ggufs:
        raise InputError(f"{dist_dir}: has no GGUF file to publish for LM Studio")
    target = Path(out) / publisher / dist.data["name"]
    target.mkdir(parents=True, exist_ok=True)
    placed = []
    for a in ggufs:
        dst = target / Path(a.path).name
        if dst.exists() and not force:
            if dst.is_file() and sha256_file(dst) == a.sha256:
                placed.append(dst)
                continue
            raise InputError(f"{dst} exists with other bytes: pass --force to replace it")
        fd, tmp = tempfile.mkstemp(prefix=scratch_prefix(dst.name), dir=target)
        os.close(fd)
        try:
            if copy_file(inside(dist.path, a.path), Path(tmp)) != a.sha256:
                raise InputError(f"{dist.path / a.path}: changed while it was being copied; run again")
            os.replace(tmp, dst)
        finally:
            Path(tmp).unlink(missing_ok=True)
        placed.append(dst)
    return placed
