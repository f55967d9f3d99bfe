"""The registry's index as a contract: read strictly, and the bytes of every version held to it.

`index.json` is written by edgeft, but it is a plain file a person (or a merge tool) can edit.
`read_index` refuses anything edgeft would stumble on later — a wrong type, a version that does
not match its key, an alias or split arm naming no version, weights that do not add up, `NaN` —
with an `Error:` naming the file and the key, so `show`, `route` and the Java reader never meet
a malformed entry.

The index's record of each version's files (path, bytes, sha256, taken when the verified dist
was copied in) is the truth about that version; a manifest inside the version folder is not
(anyone who can alter a file can re-sign the manifest beside it). `version_problems` checks a
version's files against the index: promote, split, route and export call it for what they will
hand on. Hashing a 1 GB file costs seconds, so sha256s are cached in `.sha256-cache.json` keyed
by each file's device, inode, size, mtime and ctime: the kernel sets ctime on every write or
chmod and no user call can set it back, so an altered file always misses the cache.

Versions registered before the index recorded every file (no `files` key) are held to the
index's artifact entries (what a consumer loads) and, for their other files, to their manifest.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edgeft.core.errors import InputError
from edgeft.core.fileio import inside, sha256_file, write_atomic
from edgeft.core.manifest import MANIFEST, Artifact

SCHEMA = 1
BUCKETS = 10_000
STATUSES = ("staging", "production", "archived")
HASH_CACHE = ".sha256-cache.json"


class _Bad(Exception):
    def __init__(self, key: str, what: str):
        super().__init__(f"{key}: {what}")


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _need(ok: bool, key: str, what: str, value: Any) -> None:
    if not ok:
        raise _Bad(key, f"expected {what}, got {_shown(value)}")


def _int(value: Any, key: str, minimum: int = 0) -> int:
    _need(
        isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
        key,
        f"an integer >= {minimum}",
        value,
    )
    return int(value)


def _number(value: Any, key: str) -> None:
    _need(isinstance(value, (int, float)) and not isinstance(value, bool), key, "a number", value)


def _str(value: Any, key: str) -> str:
    _need(isinstance(value, str) and value != "", key, "a non-empty string", value)
    return str(value)


def _dict(value: Any, key: str, optional: bool = False) -> dict[str, Any]:
    if optional and value is None:
        return {}
    _need(isinstance(value, dict), key, "an object" + (" or null" if optional else ""), value)
    return value


def _list(value: Any, key: str) -> list[Any]:
    _need(isinstance(value, list), key, "a list", value)
    return value


def _files(table: Any, key: str) -> None:
    for i, f in enumerate(_list(table, key)):
        where = f"{key}[{i}]"
        f = _dict(f, where)
        _str(f.get("path"), f"{where}.path")
        _int(f.get("bytes"), f"{where}.bytes")
        _sha(f.get("sha256"), f"{where}.sha256")


def _sha(value: Any, key: str) -> None:
    _need(
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value),
        key,
        "a sha256 (64 hex digits)",
        value,
    )


def _version(number: str, v: Any, key: str) -> None:
    v = _dict(v, key)
    _need(number.isdigit() and int(number) >= 1, key, "a version number as the key", number)
    _need(
        v.get("version") == int(number) and not isinstance(v.get("version"), bool),
        f"{key}.version",
        f"{number} (its key)",
        v.get("version"),
    )
    _need(v.get("status") in STATUSES, f"{key}.status", " or ".join(STATUSES), v.get("status"))
    _str(v.get("path"), f"{key}.path")
    _str(v.get("registered"), f"{key}.registered")
    _dict(v.get("lineage"), f"{key}.lineage", optional=True)
    for part in ("verify", "evaluation"):
        _dict(v.get(part), f"{key}.{part}", optional=True)
    scores = (v.get("evaluation") or {}).get("scores")
    for model, metrics in _dict(scores, f"{key}.evaluation.scores", optional=True).items():
        for metric, x in _dict(metrics, f"{key}.evaluation.scores.{model}").items():
            _number(x, f"{key}.evaluation.scores.{model}.{metric}")
    for i, art in enumerate(_list(v.get("artifacts"), f"{key}.artifacts")):
        where = f"{key}.artifacts[{i}]"
        art = _dict(art, where)
        _str(art.get("name"), f"{where}.name")
        _str(art.get("path"), f"{where}.path")
        _int(art.get("bytes"), f"{where}.bytes")
        if "files" in art:
            _files(art["files"], f"{where}.files")
        else:
            _sha(art.get("sha256"), f"{where}.sha256")
        for metric, x in _dict(art.get("verify"), f"{where}.verify", optional=True).items():
            if metric in ("kl_mean", "top1") and x is not None:  # compared between versions
                _number(x, f"{where}.verify.{metric}")
    if "files" in v:
        _files(v["files"], f"{key}.files")


def _split(split: Any, versions: dict[str, Any], key: str) -> None:
    split = _dict(split, key)
    _str(split.get("id"), f"{key}.id")
    arms = _list(split.get("arms"), f"{key}.arms")
    _need(len(arms) >= 2, f"{key}.arms", "two or more arms", arms)
    total = 0
    for i, arm in enumerate(arms):
        where = f"{key}.arms[{i}]"
        arm = _dict(arm, where)
        _str(arm.get("label"), f"{where}.label")
        _need(
            str(_int(arm.get("version"), f"{where}.version", 1)) in versions,
            f"{where}.version",
            "a registered version",
            arm.get("version"),
        )
        total += _int(arm.get("weight"), f"{where}.weight", 1)
    _need(total == BUCKETS, f"{key}.arms", f"weights adding up to {BUCKETS} (basis points)", total)


def _model(name: str, m: Any, key: str) -> None:
    m = _dict(m, key)
    versions = _dict(m.get("versions"), f"{key}.versions")
    for number, v in versions.items():
        _version(number, v, f"{key}.versions.{number}")
    for alias, number in _dict(m.get("aliases"), f"{key}.aliases").items():
        _need(
            str(_int(number, f"{key}.aliases.{alias}", 1)) in versions,
            f"{key}.aliases.{alias}",
            "a registered version",
            number,
        )
    for i, number in enumerate(_list(m.get("history", []), f"{key}.history")):
        _need(
            str(_int(number, f"{key}.history[{i}]", 1)) in versions,
            f"{key}.history[{i}]",
            "a registered version",
            number,
        )
    _int(m.get("splits_created", 0), f"{key}.splits_created")
    if m.get("split") is not None:
        _split(m["split"], versions, f"{key}.split")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_index(path: Path) -> RegistryIndex:
    """The index at `path`, checked (InputError naming the file and the key); an empty index when
    there is none yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return RegistryIndex()
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text: restore it from a backup") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise InputError(
            f"{path}: not valid JSON ({str(e)[:80]}): restore it from a backup; events.jsonl "
            f"beside it records every change"
        ) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("models"), dict):
        raise InputError(f"{path}: not an edgeft registry index (schema {SCHEMA})")
    try:
        _int(data.get("last_event", 0), "last_event")
        for name, model in data["models"].items():
            _model(name, model, f"models.{name}")
        for i, event in enumerate(_list(data.get("last_change", []), "last_change")):
            _int(_dict(event, f"last_change[{i}]").get("seq"), f"last_change[{i}].seq", 1)
    except _Bad as e:
        raise InputError(
            f"{path}: {e}: the index was edited by hand or damaged; restore it from a backup "
            f"(events.jsonl beside it records every change)"
        ) from None
    return RegistryIndex.from_json(data)


# ---- the index, typed (read_index checks the JSON first) ----------------------------------------------


@dataclass
class Version:
    """One registered version: where its copy is, its status, its lineage and the verify and eval
    summaries of the dist it was, its artifacts and (since the index records them) every file."""

    version: int
    status: str
    path: str  # its folder, relative to the registry
    registered: str
    artifacts: list[Artifact]
    lineage: dict[str, Any] = field(default_factory=dict)
    verify: dict[str, Any] = field(default_factory=dict)  # passed, failures
    evaluation: dict[str, Any] = field(default_factory=dict)  # passed, scores (model -> metric -> score), ...
    files: list[dict[str, Any]] | None = None  # None: registered before every file was recorded
    user: str | None = None
    reason: str | None = None
    source: str | None = None  # the dist it was registered from
    content: str | None = None  # the hash of the dist's file table: the same dist is the same version
    inputs_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys a later edgeft added, kept as they are

    @property
    def passed(self) -> bool:
        """Whether the dist passed verify and eval (only such a version may be production)."""
        return bool(self.verify.get("passed")) and bool(self.evaluation.get("passed"))

    @property
    def scores(self) -> dict[str, dict[str, float]]:
        return self.evaluation.get("scores") or {}

    def artifact(self, name: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.name == name), None)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Version:
        return cls(
            version=int(data["version"]),
            status=data["status"],
            path=data["path"],
            registered=data["registered"],
            artifacts=[Artifact.from_json(a) for a in data["artifacts"]],
            lineage=data.get("lineage") or {},
            verify=data.get("verify") or {},
            evaluation=data.get("evaluation") or {},
            files=data.get("files"),
            user=data.get("user"),
            reason=data.get("reason"),
            source=data.get("source"),
            content=data.get("content"),
            inputs_hash=data.get("inputs_hash"),
            extra={k: v for k, v in data.items() if k not in {f.name for f in fields(cls)}},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "status": self.status,
            "path": self.path,
            "registered": self.registered,
            "user": self.user,
            "reason": self.reason,
            "source": self.source,
            "content": self.content,
            "inputs_hash": self.inputs_hash,
            "lineage": self.lineage,
            "verify": self.verify,
            "evaluation": self.evaluation,
            "artifacts": [a.to_json() for a in self.artifacts],
        }
        if self.files is not None:
            out["files"] = self.files
        return {**out, **self.extra}


@dataclass(frozen=True)
class Arm:
    label: str  # what the user named: an alias or a version number
    version: int
    weight: int  # basis points of the traffic (all arms: BUCKETS)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "version": self.version, "weight": self.weight}


@dataclass
class Split:
    """An A/B split: the request key's bucket (routing.bucket) picks the arm."""

    id: str  # changes when the arms' versions change; the same for new weights
    arms: list[Arm]
    since: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Split:
        return cls(
            id=data["id"],
            since=data.get("since"),
            arms=[Arm(a["label"], int(a["version"]), int(a["weight"])) for a in data["arms"]],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "buckets": BUCKETS,
            "arms": [a.to_json() for a in self.arms],
            "since": self.since,
        }


@dataclass
class ModelEntry:
    """A registered model: its versions by number, its aliases, its production history (for
    rollback) and its split, if any."""

    versions: dict[int, Version] = field(default_factory=dict)
    aliases: dict[str, int] = field(default_factory=dict)
    history: list[int] = field(default_factory=list)
    split: Split | None = None
    splits_created: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelEntry:
        return cls(
            versions={int(n): Version.from_json(v) for n, v in data["versions"].items()},
            aliases={k: int(v) for k, v in data["aliases"].items()},
            history=[int(n) for n in data.get("history", [])],
            split=Split.from_json(data["split"]) if data.get("split") else None,
            splits_created=int(data.get("splits_created", 0)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "aliases": self.aliases,
            "history": self.history,
            "split": self.split.to_json() if self.split else None,
            "splits_created": self.splits_created,
            "versions": {str(n): v.to_json() for n, v in sorted(self.versions.items())},
        }


@dataclass
class RegistryIndex:
    """index.json: every model, the last event number, and the last change's events (the commit
    point: they are appended to events.jsonl just after)."""

    models: dict[str, ModelEntry] = field(default_factory=dict)
    last_event: int = 0
    last_change: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RegistryIndex:
        return cls(
            models={k: ModelEntry.from_json(m) for k, m in data["models"].items()},
            last_event=int(data.get("last_event", 0)),
            last_change=list(data.get("last_change", [])),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "last_event": self.last_event,
            "models": {k: m.to_json() for k, m in self.models.items()},
        }
        if self.last_change:
            out["last_change"] = self.last_change
        return out


# ---- the bytes of a version, held to the index -----------------------------------------------------


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class HashCache:
    """sha256 of files under a registry, reused while a file's (dev, inode, size, mtime, ctime) holds."""

    def __init__(self, root: Path):
        self.path = root / HASH_CACHE
        self.root = root
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.entries: dict[str, Any] = data if isinstance(data, dict) else {}
        except (OSError, ValueError, RecursionError):
            self.entries = {}
        self.dirty = False

    def sha256(self, path: Path) -> str:
        rel = path.relative_to(self.root).as_posix()
        key = _stat_key(path.stat())
        entry = self.entries.get(rel)
        if isinstance(entry, dict) and entry.get("stat") == key and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        digest = sha256_file(path)
        if _stat_key(path.stat()) == key:  # not written to while it was read
            self.entries[rel] = {"stat": key, "sha256": digest}
            self.dirty = True
        return digest

    def remember(self, path: Path, digest: str) -> None:
        """A file edgeft just wrote and hashed."""
        self.entries[path.relative_to(self.root).as_posix()] = {
            "stat": _stat_key(path.stat()),
            "sha256": digest,
        }
        self.dirty = True

    def save(self) -> None:
        """Best effort: a read-only registry is checked without a cache."""
        if not self.dirty:
            return
        keep = {rel: e for rel, e in self.entries.items() if (self.root / rel).is_file()}
        with contextlib.suppress(OSError):
            write_atomic(self.path, json.dumps(keep, separators=(",", ":")) + "\n")
        self.dirty = False


def recorded_files(root: Path, version: Version, artifacts: list[str] | None = None) -> list[dict[str, Any]]:
    """The files of a version as the index records them, relative to its folder: every file
    (`files`, since the index records them) or, for older versions, the index's artifact entries
    with the manifest's table for the rest. `artifacts`: names whose files alone are wanted."""
    folder = inside(root, version.path)
    arts = version.artifacts if artifacts is None else [a for a in version.artifacts if a.name in artifacts]
    from_artifacts = [f for a in arts for f in a.file_records()]
    if artifacts is not None:
        return from_artifacts
    if version.files is not None:
        return list(version.files)
    table = {f["path"]: f for f in _manifest_files(folder)}
    table.update({f["path"]: f for f in from_artifacts})
    return list(table.values())


def _manifest_files(folder: Path) -> list[dict[str, Any]]:
    try:
        files = json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("files", [])
        _files(files, "files")
        return files
    except (OSError, ValueError, RecursionError, AttributeError, _Bad):
        return []


def version_problems(
    root: Path, version: Version, artifacts: list[str] | None = None, paths: set[str] | None = None
) -> list[str]:
    """One line per file of `version` (of its `artifacts` by name, or at these `paths`) that is
    missing or not the bytes the index recorded."""
    folder = inside(root, version.path)
    cache = HashCache(root)
    problems = []
    for f in recorded_files(root, version, artifacts):
        if paths is not None and f["path"] not in paths:
            continue
        try:
            p = inside(folder, f["path"])
        except InputError as e:
            problems.append(str(e))
            continue
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size != f["bytes"]:
            problems.append(f"{p}: {p.stat().st_size} bytes, the registry recorded {f['bytes']}")
        elif cache.sha256(p) != f["sha256"]:
            problems.append(f"{p}: its sha256 is not the one the registry recorded")
    cache.save()
    return problems
