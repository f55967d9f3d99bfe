"""Is a folder what its manifest says? Checksums of a stage's artifacts, and a dist's own files.

`edgeft verify` runs these before loading anything; `edgeft verify --check` runs only these (fast:
reading and hashing, no runtime).
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeft.core import stages
from edgeft.core.errors import InputError, VerifyFailed
from edgeft.core.fileio import check_files
from edgeft.core.manifest import MANIFEST, Artifact, Stage

# Keys manifest.json (the copy users and Java read) and edgeft.json (what edgeft reads) share.
DIST_KEYS = (
    "name",
    "artifacts",
    "files",
    "inputs_hash",
    "lineage",
    "verify",
    "evaluation",
    "config",
    "registry",
)


def dist_problems(dist: Stage) -> list[str]:
    """A dist's own integrity: manifest.json parses, has its tables, agrees with edgeft.json; every
    file it lists is there with its size and sha256, inside the folder; no file was added."""
    mf = dist.path / "manifest.json"
    try:
        data = json.loads(mf.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{mf}: missing"]
    except (ValueError, RecursionError) as e:
        return [f"{mf}: not valid JSON ({str(e)[:100]})"]
    if not isinstance(data, dict):
        return [f"{mf}: not a JSON object"]
    problems = []
    files = data.get("files")
    if not isinstance(files, list) or not all(
        isinstance(f, dict) and isinstance(f.get("path"), str) and {"bytes", "sha256"} <= f.keys()
        for f in files
    ):
        problems.append(f"{mf}: 'files' is missing or not a list of {{path, bytes, sha256}}")
        files = []
    if not isinstance(data.get("artifacts"), list) or not data.get("artifacts"):
        problems.append(f"{mf}: 'artifacts' is missing or empty")
    differ = [k for k in DIST_KEYS if data.get(k) != dist.data.get(k)]
    if differ:
        problems.append(f"{mf}: {', '.join(differ)} differ(s) from {MANIFEST}: one of the two was edited")
    problems += check_files(dist.path, files)
    listed = {f["path"] for f in files} | {"manifest.json", MANIFEST}
    problems += [
        f"{p}: not listed in manifest.json (added or renamed after packaging)"
        for p in sorted(dist.path.rglob("*"))
        if p.is_file() and p.relative_to(dist.path).as_posix() not in listed
    ]
    return problems


def check_path(path: Path) -> str:
    """`edgeft verify --check`: a dist's (or export stage's) files against its manifest, fast (no
    runtime); return a summary, or raise VerifyFailed listing every problem."""
    stage = stages.read(path, (stages.DIST, *stages.EXPORTS))
    if stage.kind == stages.DIST:
        problems = dist_problems(stage)
        n = len(stage.data.get("files", []))
    else:
        problems = [p for art in stage.artifacts for p in checksum_problems(stage, art)]
        n = len(stage.artifacts)
    if problems:
        raise VerifyFailed(f"{path}: {len(problems)} problem(s) with its files\n" + "\n".join(problems))
    return f"{path}: {n} {'files' if stage.kind == stages.DIST else 'artifacts'} match the manifest"


def checksum_problems(stage: Stage, art: Artifact) -> list[str]:
    try:
        if art.files is not None:
            return check_files(stage.file(art.path), art.files)
        return check_files(stage.path, [{"path": art.path, "bytes": art.bytes, "sha256": art.sha256}])
    except (InputError, KeyError, TypeError) as e:
        return [
            f"{stage.path / MANIFEST}: artifact {art.get('name')!r}: {e if isinstance(e, InputError) else 'malformed entry'}"
        ]
