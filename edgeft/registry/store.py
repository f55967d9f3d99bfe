"""Versions of a model a team runs in production: a registry in a plain directory, no server.

    registry/
      index.json            every model: its versions (status, lineage, verify and eval summaries,
                            artifacts with bytes and sha256), its aliases (`production`, `candidate`),
                            the production history (for rollback) and the A/B split, if any
      events.jsonl          append-only: one JSON object per change (seq, time, user, event, reason)
      models/<name>/<N>/    version N: a copy of the dist (files read-only), its manifest and model
                            card stamped with the version

What was taken from whom: numbered versions with movable *aliases* (MLflow, which replaced its
fixed stages by aliases), `NAME:VERSION` and `NAME@ALIAS` references (Ollama's name:tag, MLflow's
@alias), `base_model` and dataset lineage on every version (the HF hub's card metadata), and an
append-only record of who promoted what and why (DVC GTO keeps it in git tags; here in
events.jsonl, which needs no git).

Writers hold an exclusive lock (`.registry.lock`, waited for up to `LOCK_WAIT` seconds). The
index is the commit point: a change replaces index.json atomically (temporary file, fsync, rename),
so a reader sees the old index or the new one, never a torn one, and the index carries the change's
events (`last_change`) until they are appended to events.jsonl just after. A writer killed between
the two leaves events the next writer appends (and `events()` shows meanwhile); a registration
killed before its index write leaves a version folder no index names, which the next writer
removes. A dist is copied in before the lock is taken, so two registrations at once both succeed,
one after the other.

Integrity: the index records every file of a version (bytes, sha256) when the verified dist is
copied in, and that record, never a manifest inside the version folder, is what promote, split,
route and export check the files against (edgeft/registry/index.py).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from edgeft.core import stages
from edgeft.core.errors import InputError, RegistryRefused
from edgeft.core.fileio import (
    FILE_MODE,
    clean_stale,
    hash_json,
    inside,
    scratch_dir,
    sha256_file,
    write_atomic,
)
from edgeft.core.manifest import MANIFEST, check_replaceable
from edgeft.pipeline.evaluate.results import RESULTS
from edgeft.registry.compare import regressions
from edgeft.registry.dists import copy_dist, index_artifacts, lineage, stamp
from edgeft.registry.index import (
    BUCKETS,
    Arm,
    HashCache,
    ModelEntry,
    RegistryIndex,
    Split,
    Version,
    read_index,
    recorded_files,
    version_problems,
)
from edgeft.registry.routing import Ref, assign, bucket

log = logging.getLogger(__name__)

INDEX = "index.json"
EVENTS = "events.jsonl"
LOCK = ".registry.lock"
LOCK_WAIT = 120.0  # seconds a writer waits for another (registering copies files outside the lock)
PRODUCTION, CANDIDATE = "production", "candidate"
ALIASES = (PRODUCTION, CANDIDATE)
STAGING, ARCHIVED = "staging", "archived"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER") or "unknown"


class Registry:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    @property
    def index_path(self) -> Path:
        return self.root / INDEX

    def index(self) -> RegistryIndex:
        """The index as on disk, checked (an empty one when the registry does not exist yet)."""
        return read_index(self.index_path)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The event log, with the index's last change where a writer died before appending it."""
        path = self.root / EVENTS
        out = []
        if path.is_file():
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    event = json.loads(line)
                    int(event["seq"])
                except (ValueError, KeyError, TypeError):
                    raise InputError(
                        f"{path}:{i}: not an edgeft event (the event log was edited by hand)"
                    ) from None
                out.append(event)
        last = max([0, *(int(e["seq"]) for e in out)])
        out += [e for e in self.index().last_change if e["seq"] > last]
        return [e for e in out if name is None or e.get("model") == name]

    def _last_seq(self) -> int:
        path = self.root / EVENTS
        if not path.is_file():
            return 0
        lines = path.read_text(encoding="utf-8").rstrip("\n").rsplit("\n", 1)
        try:
            return int(json.loads(lines[-1])["seq"]) if lines[-1] else 0
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{path}: its last line is not an edgeft event (edited by hand?)") from None

    def model(self, index: RegistryIndex, name: str) -> ModelEntry:
        if name not in index.models:
            known = ", ".join(sorted(index.models)) or "none yet"
            raise InputError(
                f"{self.root}: no model {name!r} registered (models: {known}); "
                f"register a dist with `edgeft registry add DIST`"
            )
        return index.models[name]

    def resolve(self, ref: Ref, index: RegistryIndex | None = None) -> tuple[ModelEntry, Version]:
        """(model, version) for a reference; a bare NAME means its production version."""
        index = index if index is not None else self.index()
        model = self.model(index, ref.name)
        if ref.version is not None:
            number = ref.version
        else:
            alias = ref.alias or PRODUCTION
            if alias == "latest":
                number = max(model.versions)
            elif model.aliases.get(alias) is None:
                raise InputError(
                    f"{ref.name} has no {alias!r} version (aliases: "
                    f"{', '.join(f'{k}={v}' for k, v in model.aliases.items()) or 'none'})"
                )
            else:
                number = model.aliases[alias]
        if number not in model.versions:
            raise InputError(
                f"{ref.name} has no version {number} (versions: {', '.join(map(str, sorted(model.versions)))})"
            )
        return model, model.versions[number]

    @contextlib.contextmanager
    def _change(self) -> Iterator[tuple[RegistryIndex, list[dict[str, Any]]]]:
        """Lock, read the index (finishing what a killed writer left), let the caller change it and
        list events; replace the index with the events in it (the commit), then append them to the log."""
        from edgeft.core.workdir import lock

        with lock(self.root, wait=LOCK_WAIT, lock_file=LOCK):
            index = self.index()
            self._recover(index)
            events: list[dict[str, Any]] = []
            yield index, events
            if not events:
                return
            # Events an older writer appended before dying ahead of its index write keep their numbers.
            seq = max(index.last_event, self._last_seq())
            index.last_change = [
                {"seq": seq + i, "time": now(), "user": user(), **event} for i, event in enumerate(events, 1)
            ]
            index.last_event = seq + len(events)
            write_atomic(
                self.index_path,
                json.dumps(index.to_json(), indent=2, ensure_ascii=False) + "\n",
                durable=True,
            )
            self._append_events(index.last_change)

    def _append_events(self, records: list[dict[str, Any]]) -> None:
        with (self.root / EVENTS).open("a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _recover(self, index: RegistryIndex) -> None:
        """What a writer killed mid-change left (under the lock): the committed change's events
        the log lacks are appended; a version folder no index names (a registration killed before
        its commit) is removed when it is edgeft's own copy, and skipped by numbering otherwise;
        copies of dead registrations are removed."""
        logged = self._last_seq()
        missing = [e for e in index.last_change if e["seq"] > logged]
        if missing:
            self._append_events(missing)
        models = self.root / "models"
        for folder in sorted(models.iterdir()) if models.is_dir() else []:
            clean_stale(folder, ".version.tmp-")  # a registration killed while copying
            entry = index.models.get(folder.name)
            known = set(entry.versions) if entry else set()
            for version in [p for p in folder.iterdir() if p.name.isdigit() and int(p.name) not in known]:
                try:
                    stamped = (
                        json.loads((version / MANIFEST).read_text(encoding="utf-8")).get("registry") or {}
                    )
                except (OSError, ValueError, AttributeError):
                    stamped = {}
                if stamped.get("name") == folder.name and stamped.get("version") == int(version.name):
                    log.warning(
                        "removing %s: a registration that was interrupted before it was recorded", version
                    )
                    shutil.rmtree(version, ignore_errors=True)

    # ---- changes -----------------------------------------------------------------------------

    def add(self, dist_dir: Path, reason: str | None = None) -> tuple[str, int, bool]:
        """Register a dist as the next version of its model; (name, version, whether it is new).
        The same dist registered again is its existing version (no new event)."""
        from edgeft.judge.integrity import dist_problems

        dist = stages.read(Path(dist_dir), stages.DIST)
        problems = dist_problems(dist)
        if problems:
            raise InputError(
                f"{dist_dir}: its files do not match its manifest, so it cannot be registered:\n"
                + "\n".join(problems[:10])
            )
        data = dist.data
        name = str(data.get("name") or "")
        if not _NAME.match(name):
            raise InputError(
                f"{dist_dir}: model name {name!r} is not usable in a registry (letters, digits, '.', "
                f"'_', '-'; set `name:` in the config)"
            )
        if not (data.get("verify") or {}).get("passed") or not (data.get("evaluation") or {}).get("passed"):
            raise RegistryRefused(f"{dist_dir}: only a dist that passed verify and eval can be registered")
        content = hash_json(data["files"])
        existing = self._same(self.index(), name, content)
        if existing is not None:
            return name, existing, False
        folder = self.root / "models" / name
        folder.mkdir(parents=True, exist_ok=True)
        clean_stale(folder)
        tmp = scratch_dir(folder / "version")
        try:
            copy_dist(dist.path, tmp, data["files"], "changed while it was being registered; register again")
            with self._change() as (index, events):
                existing = self._same(index, name, content)
                if existing is not None:
                    return name, existing, False
                model = index.models.setdefault(name, ModelEntry())
                on_disk = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
                number = max([0, *model.versions, *on_disk]) + 1
                parent = model.aliases.get(PRODUCTION) or max(model.versions, default=None)
                registered = now()
                stamp(
                    tmp,
                    {
                        "name": name,
                        "version": number,
                        "status": STAGING,
                        "as_of": registered,
                        "registered": registered,
                    },
                )
                # What the index holds to be this version: the verified dist's files, and the files
                # stamp rewrote (model card, manifests) as they now are.
                files = {f["path"]: {k: f[k] for k in ("path", "bytes", "sha256")} for f in data["files"]}
                for rel in ("README.md", MANIFEST, "manifest.json"):
                    if (tmp / rel).is_file():
                        files[rel] = {
                            "path": rel,
                            "bytes": (tmp / rel).stat().st_size,
                            "sha256": sha256_file(tmp / rel),
                        }
                for p in tmp.rglob("*"):
                    if p.is_file():
                        p.chmod(0o444)
                tmp.rename(folder / str(number))
                cache = HashCache(self.root)
                for f in files.values():
                    cache.remember(folder / str(number) / f["path"], f["sha256"])
                cache.save()
                model.versions[number] = Version(
                    version=number,
                    status=STAGING,
                    path=f"models/{name}/{number}",
                    registered=registered,
                    user=user(),
                    reason=reason,
                    source=str(dist.path.resolve()),
                    content=content,
                    inputs_hash=data.get("inputs_hash"),
                    lineage=lineage(data, parent),
                    verify=data.get("verify") or {},
                    evaluation=data.get("evaluation") or {},
                    artifacts=index_artifacts(dist),
                    files=sorted(files.values(), key=lambda f: f["path"]),
                )
                events.append(
                    {
                        "event": "register",
                        "model": name,
                        "version": number,
                        "reason": reason,
                        "source": str(dist.path.resolve()),
                    }
                )
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        log.info("registered %s as %s:%d", dist_dir, name, number)
        return name, number, True

    @staticmethod
    def _same(index: RegistryIndex, name: str, content: str) -> int | None:
        model = index.models.get(name)
        return (
            next((v.version for v in model.versions.values() if v.content == content), None)
            if model
            else None
        )

    def promote(
        self, ref: Ref, to: str = PRODUCTION, *, force: bool = False, reason: str | None = None
    ) -> dict[str, Any]:
        """Make a version production (gated) or the candidate; returns what changed."""
        if to not in ALIASES:
            raise InputError(f"--to {to!r}: expected one of {', '.join(ALIASES)}")
        if force and not reason:
            raise InputError("--force needs --reason: say why this promotion overrides the gate")
        with self._change() as (index, events):
            model, version = self.resolve(ref, index)
            number = version.version
            self.check(ref.name, version, "promoted")
            if version.status == ARCHIVED and to == CANDIDATE:
                raise RegistryRefused(
                    f"{ref.name}:{number} is archived; register it again or promote it to production"
                )
            if to == CANDIDATE:
                model.aliases[CANDIDATE] = number
                events.append(
                    {
                        "event": "alias",
                        "model": ref.name,
                        "version": number,
                        "alias": CANDIDATE,
                        "reason": reason,
                    }
                )
                return {"version": number, "alias": CANDIDATE}
            current = model.aliases.get(PRODUCTION)
            if current == number:
                raise RegistryRefused(f"{ref.name}:{number} is already production")
            if not version.passed:
                raise RegistryRefused(f"{ref.name}:{number} did not pass verify and eval")
            previous = model.versions[current] if current is not None else None
            # Production's per-example results are read from its folder: only when they are the registered bytes.
            old_dir = (
                self.version_dir(previous)
                if previous is not None and not version_problems(self.root, previous, paths={RESULTS})
                else None
            )
            worse = (
                regressions(version, previous, self.version_dir(version), old_dir)
                if previous is not None
                else []
            )
            if worse and not force:
                raise RegistryRefused(
                    f"{ref.name}:{number} is worse than production ({ref.name}:{current}) on "
                    f"{len(worse)} eval metric(s): {'; '.join(worse[:6])}. Pass --force "
                    f"--reason '…' to promote it anyway"
                )
            if current is not None:
                model.versions[current].status = ARCHIVED
            version.status = PRODUCTION
            model.aliases[PRODUCTION] = number
            if model.aliases.get(CANDIDATE) == number:
                del model.aliases[CANDIDATE]
            model.history.append(number)
            events.append(
                {
                    "event": "promote",
                    "model": ref.name,
                    "version": number,
                    "to": PRODUCTION,
                    "previous": current,
                    "forced": bool(worse),
                    "regressions": worse,
                    "reason": reason,
                }
            )
            if current is not None:
                events.append(
                    {
                        "event": "archive",
                        "model": ref.name,
                        "version": current,
                        "reason": f"replaced by {number} in production",
                    }
                )
            self._end_split(model, ref.name, events, f"production changed to {number}")
            return {"version": number, "previous": current, "forced": bool(worse), "regressions": worse}

    def rollback(self, name: str, reason: str | None = None) -> tuple[int, int]:
        """Production goes back to the version that was production before; (from, to)."""
        with self._change() as (index, events):
            model = self.model(index, name)
            history = model.history
            if len(history) < 2:
                raise RegistryRefused(
                    f"{name}: no earlier production version to roll back to "
                    f"(production history: {history or 'empty'})"
                )
            current = history.pop()
            previous = history[-1]
            model.versions[current].status = ARCHIVED
            model.versions[previous].status = PRODUCTION
            model.aliases[PRODUCTION] = previous
            events.append(
                {"event": "rollback", "model": name, "version": previous, "from": current, "reason": reason}
            )
            events.append({"event": "archive", "model": name, "version": current, "reason": "rolled back"})
            self._end_split(model, name, events, f"rolled back to {previous}")
            return current, previous

    def archive(self, ref: Ref, reason: str | None = None) -> int:
        with self._change() as (index, events):
            model, version = self.resolve(ref, index)
            number = version.version
            if version.status == PRODUCTION:
                raise RegistryRefused(
                    f"{ref.name}:{number} is production: promote another version or roll back first"
                )
            if model.split and any(a.version == number for a in model.split.arms):
                raise RegistryRefused(
                    f"{ref.name}:{number} serves traffic in split {model.split.id}: end "
                    f"the split first (`edgeft registry split {ref.name} --off`)"
                )
            if version.status == ARCHIVED:
                return number
            version.status = ARCHIVED
            for alias in [a for a, v in model.aliases.items() if v == number]:
                del model.aliases[alias]
            events.append({"event": "archive", "model": ref.name, "version": number, "reason": reason})
            return number

    def split(self, name: str, arms: list[str], reason: str | None = None) -> Split | None:
        """Set the A/B split from `LABEL=PERCENT` arms (an alias or a version number as label;
        percentages summing to 100); no arms ends it. Returns the split."""
        with self._change() as (index, events):
            model = self.model(index, name)
            if not arms:
                self._end_split(model, name, events, reason or "ended")
                return None
            parsed: list[Arm] = []
            for text in arms:
                label, _, weight = text.partition("=")
                try:
                    bp = Decimal(weight) * 100
                except InvalidOperation:
                    bp = Decimal(-1)
                if not bp.is_finite():  # nan, inf
                    bp = Decimal(-1)
                if not label or bp <= 0 or bp > BUCKETS or bp != bp.to_integral_value():
                    raise InputError(
                        f"{text!r}: expected LABEL=PERCENT with LABEL an alias (production, candidate) "
                        f"or a version, and a percentage > 0 in steps of 0.01, e.g. candidate=10"
                    )
                label = label.strip()
                ref = (
                    Ref(name, int(label.lstrip("v")))
                    if label.lstrip("v").isdigit()
                    else Ref(name, alias=label)
                )
                _, version = self.resolve(ref, index)
                if version.status == ARCHIVED:
                    raise RegistryRefused(f"{name}:{version.version} is archived and cannot serve traffic")
                self.check(name, version, "given traffic")
                parsed.append(Arm(label, version.version, int(bp)))
            total = sum(a.weight for a in parsed)
            if total != BUCKETS:
                raise InputError(f"the weights add up to {Decimal(total) / 100}%, not 100%")
            versions = [a.version for a in parsed]
            if len(set(versions)) != len(versions):
                raise InputError(f"each version may appear in one arm only (arms: {', '.join(arms)})")
            old = model.split
            if len(parsed) == 1:
                self._end_split(model, name, events, reason or f"all traffic on {versions[0]}")
                return None
            if old and [a.version for a in old.arms] == versions:
                split_id = old.id  # same versions, new weights: the same keys stay where they were
            else:
                model.splits_created += 1
                split_id = f"{name}/{model.splits_created}"
            model.split = Split(split_id, parsed, old.since if old and old.id == split_id else now())
            events.append(
                {
                    "event": "split",
                    "model": name,
                    "split": split_id,
                    "arms": [a.to_json() for a in parsed],
                    "reason": reason,
                }
            )
            return model.split

    @staticmethod
    def _end_split(model: ModelEntry, name: str, events: list[dict[str, Any]], reason: str) -> None:
        if model.split:
            events.append({"event": "split-end", "model": name, "split": model.split.id, "reason": reason})
            model.split = None

    # ---- reading -----------------------------------------------------------------------------

    def route(self, name: str, key: str, index: RegistryIndex | None = None) -> dict[str, Any]:
        """Which version serves request `key`: the split's arm for its bucket, else production.
        (Callers that hand the version on check its files first: `check`.)"""
        index = index if index is not None else self.index()
        model = self.model(index, name)
        split = model.split
        if split:
            b = bucket(split.id, key)
            arm = assign(split.arms, b)
            return {"version": arm.version, "label": arm.label, "bucket": b, "split": split.id}
        if model.aliases.get(PRODUCTION) is None:
            raise InputError(
                f"{name} has no production version and no split: promote one "
                f"(`edgeft registry promote {name}:N --to production`)"
            )
        return {"version": model.aliases[PRODUCTION], "label": PRODUCTION, "bucket": None, "split": None}

    def version_dir(self, version: Version) -> Path:
        return inside(self.root, version.path)

    def check(self, name: str, version: Version, what: str, artifacts: list[str] | None = None) -> None:
        """Refuse (InputError) a version whose files (or these artifacts' files) are not the bytes
        the index recorded at registration."""
        problems = version_problems(self.root, version, artifacts)
        if problems:
            n = len(problems)
            raise InputError(
                f"{name}:{version.version} is not {what}: {n} of its files {'is' if n == 1 else 'are'} "
                f"not what the registry recorded when it was registered (altered in the registry?); "
                f"register the dist again:\n" + "\n".join(problems[:10])
            )

    def export(self, ref: Ref, out: Path, *, force: bool = False) -> tuple[Path, int]:
        """Copy a version out as a plain dist (every byte checked against its manifest on the way),
        stamped with its status now."""
        index = self.index()
        model, version = self.resolve(ref, index)
        src = self.version_dir(version)
        self.check(ref.name, version, "exported")
        data = json.loads((src / MANIFEST).read_text(encoding="utf-8"))
        out = Path(out)
        check_replaceable(out, stages.DIST, force=force, replace_own=False)
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(out.parent, f".{out.name}.")
        tmp = scratch_dir(out)
        try:
            # Every byte held to the index's record as it is copied (the check above may be from the cache).
            copy_dist(
                src,
                tmp,
                recorded_files(self.root, version),
                "its sha256 is not the one registered: the registry copy was altered; it is not exported",
            )
            for p in tmp.rglob("*"):
                if p.is_file():
                    p.chmod(FILE_MODE)
            stamp(
                tmp,
                {
                    **data.get("registry", {}),
                    "status": version.status,
                    "as_of": now(),
                    "aliases": sorted(a for a, v in model.aliases.items() if v == version.version),
                },
            )
            if out.is_dir() and not out.is_symlink():
                shutil.rmtree(out)
            elif out.exists() or out.is_symlink():
                out.unlink()
            tmp.rename(out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return out, version.version
