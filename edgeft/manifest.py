"""Stage directories: written under a temporary name, published by an atomic rename.

Every stage writes one directory whose `edgeft.json` says what it is: schema version, stage,
edgeft version, resolved config, the hash of its inputs, the parent stage, the base model,
each artifact (relative path, format, bytes, sha256) and metrics. `edgeft.json` is written
last, so a directory that has one is complete by definition.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeft import __version__
from edgeft.errors import InputError

SCHEMA_VERSION = 1
MANIFEST = "edgeft.json"

# What to run to produce each kind of stage directory, for the "wrong directory" message.
PRODUCED_BY = {
    "data": "edgeft data check FILE --out DIR",
    "train": "edgeft train -c CONFIG",
    "merge": "edgeft merge -c CONFIG",
    "export-gguf": "edgeft export gguf -c CONFIG",
    "export-onnx": "edgeft export onnx -c CONFIG",
    "verify": "edgeft verify -c CONFIG",
    "dist": "edgeft build -c CONFIG",
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hash_json(value: Any) -> str:
    """A stable hash of JSON-able data (sorted keys), for input fingerprints."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Stage:
    """A complete stage directory, as read back from its manifest."""

    path: Path
    data: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.data["stage"]

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        return self.data.get("artifacts", [])

    @property
    def metrics(self) -> dict[str, Any]:
        return self.data.get("metrics", {})

    @property
    def inputs_hash(self) -> str | None:
        return self.data.get("inputs_hash")

    def artifact(self, name: str) -> dict[str, Any]:
        for a in self.artifacts:
            if a["name"] == name:
                return a
        raise InputError(f"{self.path}: no artifact named {name!r} in {MANIFEST}")

    def file(self, relpath: str) -> Path:
        return self.path / relpath


def read_stage(path: Path | str, kind: str | tuple[str, ...] | None = None) -> Stage:
    """Read a complete stage directory, refusing a missing, incomplete or wrong-kind one."""
    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else kind
    hint = f": run `{PRODUCED_BY[kinds[0]]}` first" if kinds and kinds[0] in PRODUCED_BY else ""
    if not path.is_dir():
        raise InputError(f"{path}: no such stage directory{hint}")
    mf = path / MANIFEST
    if not mf.is_file():
        raise InputError(f"{path}: not a complete edgeft stage (no {MANIFEST}){hint}")
    try:
        data = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{mf}:{e.lineno}: not valid JSON ({e.msg})") from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise InputError(
            f"{mf}: schema version {data.get('schema_version')!r}, this edgeft reads "
            f"{SCHEMA_VERSION}: re-run the stage with this version"
        )
    if kinds and data.get("stage") not in kinds:
        raise InputError(
            f"{path}: is a {data.get('stage')!r} stage directory, expected "
            f"{' or '.join(repr(k) for k in kinds)}{hint}"
        )
    return Stage(path, data)


@dataclass
class StageWriter:
    """Collects a stage's files in a temporary directory next to `dest`; `publish` renames it.

    Use as a context manager: on an exception the temporary directory is removed and `dest`
    is left as it was. A `resumable` stage (training) works in `.<name>.partial/` instead,
    which survives an interruption (even SIGKILL) so the next run can `resume` from it.
    `is_main` is False on the other processes of a distributed run: they share the directory
    but only the main process creates, cleans or publishes it.
    """

    dest: Path
    stage: str
    config: dict[str, Any] = field(default_factory=dict)
    inputs_hash: str | None = None
    parent: str | None = None
    base_model: str | None = None
    force: bool = False
    resumable: bool = False
    resume: bool = False
    is_main: bool = True

    def __post_init__(self) -> None:
        self.dest = Path(self.dest)
        if self.dest.exists() and not self.force:
            raise InputError(f"{self.dest} already exists: pass --force to replace it")
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        if self.resumable:
            self.tmp = self.dest.with_name(f".{self.dest.name}.partial")
            if self.resume and not self.tmp.is_dir():
                raise InputError(f"{self.tmp}: no interrupted run to resume; run without --resume")
            if not self.resume and self.is_main:
                shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir(exist_ok=True)
        elif self.is_main:
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.tmp-", dir=self.dest.parent))
        else:  # other processes could not find a randomly named directory
            raise RuntimeError("a stage shared by several processes must be resumable (a fixed work directory)")
        self._artifacts: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self._started = time.time()

    def __enter__(self) -> StageWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not self.resumable and self.is_main:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def add_artifact(self, name: str, relpath: str, fmt: str, **info: Any) -> dict[str, Any]:
        """Record a file (or directory) already written under `self.tmp`.

        A caller that hashed the file already (e.g. in a thread overlapping other work) passes
        `sha256=`; otherwise it is hashed here.
        """
        p = self.tmp / relpath
        if not p.exists():
            raise FileNotFoundError(p)
        entry = {"name": name, "path": relpath, "format": fmt, **info}
        if p.is_file():
            entry["bytes"] = p.stat().st_size
            if "sha256" not in entry:
                entry["sha256"] = sha256_file(p)
        else:
            entry["files"] = file_table(p)
            entry["bytes"] = sum(f["bytes"] for f in entry["files"])
        self._artifacts.append(entry)
        return entry

    def manifest(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "stage": self.stage,
            "edgeft_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.time() - self._started, 2),
            "config": self.config,
            "inputs_hash": self.inputs_hash,
            "parent": self.parent,
            "base_model": self.base_model,
            "artifacts": self._artifacts,
            "metrics": self.metrics,
            **self.extra,
        }

    def publish(self) -> Stage:
        if not self.is_main:
            raise RuntimeError("only the main process publishes a stage")
        data = self.manifest()
        (self.tmp / MANIFEST).write_text(json.dumps(data, indent=2, default=str) + "\n")
        if self.dest.exists():
            old = self.dest.with_name(f".{self.dest.name}.old-{int(time.time() * 1000)}")
            self.dest.rename(old)
            self.tmp.rename(self.dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.dest)
        return Stage(self.dest, data)


def file_table(root: Path) -> list[dict[str, Any]]:
    """Every file under `root` (sorted) with its relative path, bytes and sha256."""
    root = Path(root)
    return [
        {"path": p.relative_to(root).as_posix(), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]


def check_files(root: Path, table: list[dict[str, Any]]) -> list[str]:
    """Compare files on disk with a table from `file_table`; return one line per mismatch."""
    problems = []
    for f in table:
        p = Path(root) / f["path"]
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size < f["bytes"]:
            problems.append(f"{p}: truncated: {p.stat().st_size} bytes, manifest says {f['bytes']}")
        elif p.stat().st_size != f["bytes"]:
            problems.append(f"{p}: {p.stat().st_size} bytes, manifest says {f['bytes']}: the file was replaced")
        elif sha256_file(p) != f["sha256"]:
            problems.append(f"{p}: sha256 differs from the manifest: the file was replaced or altered")
    return problems
