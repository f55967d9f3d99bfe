"""Stage directories: written under a temporary name, published by an atomic rename.

Every stage writes one directory whose `edgeft.json` says what it is: schema version, stage,
edgeft version, resolved config, the hash of its inputs, the parent stage, the base model,
each artifact (relative path, format, bytes, sha256) and metrics. `edgeft.json` is written
last, so a directory that has one is complete by definition.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeft import __version__
from edgeft.core.errors import InputError, NoSpaceError, no_space
from edgeft.core.fileio import DIR_MODE, clean_stale, file_table, hash_json, inside, scratch_dir, sha256_file

SCHEMA_VERSION = 1
MANIFEST = "edgeft.json"

# What one stage hands to the next beyond its artifacts, under these manifest keys (typed on
# `Stage` and `StageWriter`, never read or written as raw strings elsewhere).
RESOLVED_BASE = "resolved_base"  # the local base model directory the adapter was trained on
END_OF_TURN = "end_of_turn"  # the special token closing an assistant turn, if any
EOS_TOKEN_IDS = "eos_token_ids"  # every id that ends generation (EOS and end of turn)
DATASET = "data"  # the data check's record: files, hashes, rows, findings
HANDED_OVER = (RESOLVED_BASE, END_OF_TURN, EOS_TOKEN_IDS, DATASET)

_FILE_KEYS = ("bytes", "sha256", "files")


@dataclass
class Artifact:
    """One artifact entry of a manifest: a file or folder of its stage, what format it is, its
    size and checksum (a file's sha256, or a folder's file table), and what the writing stage
    recorded about it (`info`: type, runtime, and per-format details). `to_json` gives the entry
    exactly as manifests have always held it."""

    name: str
    path: str
    format: str
    bytes: int | None = None
    sha256: str | None = None
    files: list[dict[str, Any]] | None = None  # a folder's file table (fileio.file_table)
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Artifact:
        return cls(
            name=str(entry.get("name")),
            path=entry["path"],
            format=str(entry.get("format")),
            bytes=entry.get("bytes"),
            sha256=entry.get("sha256"),
            files=entry.get("files"),
            info={k: v for k, v in entry.items() if k not in ("name", "path", "format", *_FILE_KEYS)},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "path": self.path, "format": self.format, **self.info}
        if self.files is not None:
            out["files"] = self.files
        if self.bytes is not None:
            out["bytes"] = self.bytes
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        return out

    def get(self, key: str, default: Any = None) -> Any:
        """What the writing stage recorded under `key` (`info`), or `default`."""
        return self.info.get(key, default)

    @property
    def prompt_format(self) -> dict[str, Any] | None:
        """The plain prompt pieces (models.prompt_format) a GGUF carries for the Java kit."""
        return self.info.get("prompt_format")

    @property
    def verify(self) -> dict[str, Any]:
        """In a dist: the verify summary of this artifact (passed, KL, top-1)."""
        return self.info.get("verify") or {}

    def file_records(self) -> list[dict[str, Any]]:
        """Every file the entry records, relative to its stage's folder: {path, bytes, sha256}."""
        if self.files is not None:
            return [
                {"path": f"{self.path}/{f['path']}", "bytes": f["bytes"], "sha256": f["sha256"]}
                for f in self.files
            ]
        if self.sha256 is None or self.bytes is None:
            return []
        return [{"path": self.path, "bytes": self.bytes, "sha256": self.sha256}]

    @classmethod
    def list_from_json(cls, data: Any) -> list[Artifact]:
        """The artifact entries of a manifest's JSON (edgeft.json, a dist's manifest.json);
        ValueError when it has none or they lack a name, type, format or path."""
        entries = data.get("artifacts") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not all(
            isinstance(a, dict) and {"name", "type", "format", "path"} <= a.keys() for a in entries
        ):
            raise ValueError("no list of artifact entries")
        return [cls.from_json(a) for a in entries]

    @property
    def type(self) -> str | None:
        """The artifact type within its format (formats.toml: q4_k_m, int8, ...)."""
        return self.info.get("type")

    @property
    def runtime(self) -> str | None:
        return self.info.get("runtime")

    @property
    def type_key(self) -> str:
        return f"{self.format}:{self.type}"


@dataclass
class Stage:
    """A complete stage directory, as read back from its manifest."""

    path: Path
    data: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.data["stage"]

    @property
    def artifacts(self) -> list[Artifact]:
        return [Artifact.from_json(a) for a in self.data.get("artifacts", [])]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.data.get("metrics", {})

    @property
    def inputs_hash(self) -> str | None:
        return self.data.get("inputs_hash")

    def has(self, name: str) -> bool:
        """Whether the stage has an artifact `name` (a full fine-tune's train stage has no adapter)."""
        return any(a.name == name for a in self.artifacts)

    def artifact(self, name: str) -> Artifact:
        for a in self.artifacts:
            if a.name == name:
                return a
        raise InputError(f"{self.path}: no artifact named {name!r} in {MANIFEST}")

    def artifact_path(self, name: str) -> Path:
        """Where the artifact `name` is (inside this stage's folder)."""
        return self.file(self.artifact(name).path)

    def file(self, relpath: str) -> Path:
        return inside(self.path, relpath)

    @property
    def config(self) -> dict[str, Any]:
        """The resolved config the stage was made with."""
        return self.data.get("config") or {}

    @property
    def parent(self) -> Path | None:
        """The directory of the stage this one was made from."""
        parent = self.data.get("parent")
        return Path(parent) if parent else None

    @property
    def resolved_base(self) -> str | None:
        return self.data.get(RESOLVED_BASE)

    @property
    def end_of_turn(self) -> str | None:
        return self.data.get(END_OF_TURN)

    @property
    def dataset(self) -> dict[str, Any] | None:
        return self.data.get(DATASET)

    def ancestor(self, kind: str) -> Stage:
        """The stage of `kind` this one descends from (itself if it is one), through `parent`."""
        stage, seen = self, set()
        while stage.kind != kind:
            parent = stage.parent
            if parent is None or parent in seen or not (parent / MANIFEST).is_file():
                raise InputError(f"{self.path}: the {kind!r} stage it was made from ({parent}) is not here")
            seen.add(parent)
            stage = read_stage(parent)
        return stage

    def content_hash(self) -> str:
        """A hash of the bytes the stage's artifacts hold (their checksums), for the stages that
        judge those bytes: verify, eval and package re-run when an artifact's bytes change."""
        return hash_json([[a.name, a.sha256, a.files] for a in self.artifacts])

    def recorded_files(self) -> dict[str, tuple[int, str]]:
        """relative path → (bytes, sha256) for every file whose checksum the manifest records."""
        out: dict[str, tuple[int, str]] = {}
        for f in self.data.get("files", []):
            out[f["path"]] = (f["bytes"], f["sha256"])
        for a in self.artifacts:
            out.update({f["path"]: (f["bytes"], f["sha256"]) for f in a.file_records()})
        return out

    def changed(self) -> list[str]:
        """Files that are no longer what was published: missing, resized, or (when size or
        modification time moved) other bytes than their recorded sha256. Cheap when nothing
        changed: one stat per file."""
        hashes = self.recorded_files()
        stats = self.data.get("stat") or {rel: (size, None) for rel, (size, _) in hashes.items()}
        problems = []
        for rel, (size, mtime_ns) in stats.items():
            try:
                p = self.file(rel)
                st = p.stat()
            except InputError as e:
                problems.append(str(e))
                continue
            except OSError:
                problems.append(f"{self.path / rel}: missing")
                continue
            if st.st_size == size and st.st_mtime_ns == mtime_ns:
                continue
            want = hashes.get(rel)
            if st.st_size != size or want is None or sha256_file(p) != want[1]:
                problems.append(f"{p}: changed since it was written ({st.st_size} bytes, was {size})")
        return problems


def read_stage(path: Path | str, kind: str | tuple[str, ...] | None = None, hint: str | None = None) -> Stage:
    """Read a complete stage directory, refusing a missing, incomplete or wrong-kind one
    (`hint`: the command that makes one, named in the error; edgeft.core.stages.read gives it)."""
    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else kind
    hint = f": run `{hint}` first" if hint else ""
    if not path.is_dir():
        raise InputError(f"{path}: no such stage directory{hint}")
    mf = path / MANIFEST
    if not mf.is_file():
        raise InputError(f"{path}: not a complete edgeft stage (no {MANIFEST}){hint}")
    try:
        data = json.loads(mf.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{mf}:{e.lineno}: not valid JSON ({e.msg})") from None
    except (UnicodeDecodeError, RecursionError):
        raise InputError(f"{mf}: not a readable edgeft manifest") from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        found = data.get("schema_version") if isinstance(data, dict) else None
        raise InputError(
            f"{mf}: schema version {found!r}, this edgeft reads {SCHEMA_VERSION}: re-run the stage with this version"
        )
    if kinds and data.get("stage") not in kinds:
        raise InputError(
            f"{path}: is a {data.get('stage')!r} stage directory, expected "
            f"{' or '.join(repr(k) for k in kinds)}{hint}"
        )
    if not isinstance(data.get("artifacts", []), list) or not all(
        isinstance(a, dict) and isinstance(a.get("path"), str) for a in data.get("artifacts", [])
    ):
        raise InputError(f"{mf}: its artifacts are not a list of entries with a path: not an edgeft manifest")
    return Stage(path, data)


def owned(path: Path, kind: str) -> bool:
    """Whether `path` is a complete edgeft stage of this kind (what edgeft may replace unasked)."""
    try:
        return read_stage(path, kind) is not None
    except InputError:
        return False


def partial_dir(dest: Path) -> Path:
    """Where a resumable stage bound for `dest` works, and an interrupted one waits for --resume."""
    return dest.with_name(f".{dest.name}.partial")


@dataclass
class StageWriter:
    """Collects a stage's files in a temporary directory next to `dest`; `publish` renames it.

    Use as a context manager: on an exception the temporary directory is removed and `dest`
    is left as it was. An existing `dest` is replaced only when it is an edgeft stage of the
    same kind and `replace_own` is set (build, verify, eval, package re-run their own output),
    or with `force` (the user's --force); anything else there is refused, never deleted.
    A `resumable` stage (training) works in `.<name>.partial/` instead, which survives an
    interruption (even SIGKILL) so the next run can `resume` from it. `is_main` is False on
    the other processes of a distributed run: they share the directory but only the main
    process creates, cleans or publishes it.
    """

    dest: Path
    stage: str
    config: dict[str, Any] = field(default_factory=dict)
    inputs_hash: str | None = None
    parent: str | None = None
    base_model: str | None = None
    force: bool = False
    replace_own: bool = False
    resumable: bool = False
    resume: bool = False
    is_main: bool = True
    # Handed over to later stages (see HANDED_OVER); written when set.
    resolved_base: str | None = None
    end_of_turn: str | None = None
    eos_token_ids: list[int] | None = None
    dataset: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.dest = Path(self.dest)
        check_replaceable(
            self.dest, self.stage, force=self.force, replace_own=self.replace_own or self.resume
        )
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            clean_stale(self.dest.parent, f".{self.dest.name}.")
        if self.resumable:
            self.tmp = partial_dir(self.dest)
            if self.resume and not self.tmp.is_dir():
                raise InputError(f"{self.tmp}: no interrupted run to resume; run without --resume")
            if not self.resume and self.is_main:
                shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir(exist_ok=True)
        elif self.is_main:
            self.tmp = scratch_dir(self.dest)
        else:  # other processes could not find a randomly named directory
            raise RuntimeError(
                "a stage shared by several processes must be resumable (a fixed work directory)"
            )
        if self.is_main:
            self.tmp.chmod(DIR_MODE)
        self._artifacts: list[Artifact] = []
        self.metrics: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self._started = time.time()

    def __enter__(self) -> StageWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            return
        if not self.resumable and self.is_main:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if exc is not None and not isinstance(exc, NoSpaceError) and no_space(exc):
            then = (
                f"continue with --resume (the work so far is kept in {self.tmp})"
                if self.resumable
                else "run the command again (nothing was half-written)"
            )
            raise NoSpaceError(
                f"no space left on the disk holding {self.dest.parent} while writing the {self.stage} "
                f"stage: free some space (or point workdir / dist_dir elsewhere), then {then}"
            ) from exc

    def add_artifact(
        self, name: str, relpath: str, fmt: str, sha256: str | None = None, **info: Any
    ) -> Artifact:
        """Record a file (or directory) already written under `self.tmp`.

        A caller that hashed the file already (e.g. in a thread overlapping other work) passes
        `sha256=`; otherwise it is hashed here.
        """
        p = self.tmp / relpath
        if not p.exists():
            raise FileNotFoundError(p)
        entry = Artifact(name, relpath, fmt, info=info)
        if p.is_file():
            entry.bytes = p.stat().st_size
            entry.sha256 = sha256 or sha256_file(p)
        else:
            entry.files = file_table(p)
            entry.bytes = sum(f["bytes"] for f in entry.files)
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
            "artifacts": [a.to_json() for a in self._artifacts],
            "metrics": self.metrics,
            **{
                key: value
                for key, value in zip(
                    HANDED_OVER,
                    (self.resolved_base, self.end_of_turn, self.eos_token_ids, self.dataset),
                    strict=True,
                )
                if value is not None
            },
            **self.extra,
        }

    def publish(self) -> Stage:
        if not self.is_main:
            raise RuntimeError("only the main process publishes a stage")
        data = self.manifest()
        # Size and modification time of every file as published: `Stage.changed` notices an
        # edit later with one stat per file (and hashes only what moved).
        data["stat"] = {
            p.relative_to(self.tmp).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(self.tmp.rglob("*"))
            if p.is_file() and p.name != MANIFEST
        }
        (self.tmp / MANIFEST).write_text(json.dumps(data, indent=2, default=str) + "\n")
        if self.dest.exists():
            # Checked again: the destination may have appeared while this stage was working.
            check_replaceable(
                self.dest, self.stage, force=self.force, replace_own=self.replace_own or self.resume
            )
            old = scratch_dir(self.dest, "old")
            self.dest.rename(old / self.dest.name)
            self.tmp.rename(self.dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.dest)
        return Stage(self.dest, data)


def check_replaceable(dest: Path, kind: str, *, force: bool, replace_own: bool) -> None:
    """Refuse to go on when `dest` exists and may not be replaced (see StageWriter)."""
    if not (dest.exists() or dest.is_symlink()) or force:
        return
    if owned(dest, kind):
        if replace_own:
            return
        raise InputError(f"{dest} already exists: pass --force to replace it")
    what = "a file" if dest.is_file() else "a directory edgeft did not write"
    raise InputError(
        f"{dest} exists and is {what} (not an edgeft {kind!r} output): choose another output "
        f"path, or pass --force to replace it"
    )
