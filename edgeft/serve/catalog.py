"""What a server serves and which version answers a request.

Targets are dist folders (served under the dist's name, one fixed version) and registries (every
model in them: `NAME` follows the registry — production, or the A/B split when one is set —
`NAME@ALIAS` an alias, `NAME:N` a version). The registry's index is re-read when it changes on
disk (checked every `WATCH_SECONDS`): the engines a new state needs are loaded first, then the new
state takes effect for new requests; requests already running finish on the version they
started on, and an engine no state needs is stopped once it is idle.

Routing is the registry's own (Registry.route, edgeft.registry.routing): a hash of the split id and the request key, so every replica
of a server reading the same registry sends a key to the same version, and so do
`edgeft registry route` and the Java kit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeft.core import formats, stages
from edgeft.core.errors import InputError
from edgeft.core.manifest import MANIFEST, Artifact, read_stage
from edgeft.registry.index import RegistryIndex, Version, read_index
from edgeft.registry.routing import Ref
from edgeft.registry.store import ARCHIVED, PRODUCTION, Registry
from edgeft.serve.engine import Engine, Servable
from edgeft.serve.protocol import ApiError

log = logging.getLogger(__name__)

WATCH_SECONDS = 0.5
IDLE_STOP_SECONDS = 300.0  # an engine only a pinned request used is stopped after this long idle


def choose_gguf(
    artifacts: list[Artifact], wanted: str | None, recommended: str | None, where: str
) -> Artifact:
    """The GGUF to serve: `--type` (a type or an artifact name), else the dist's recommended
    artifact when it is a GGUF, else its first verified GGUF."""
    ggufs = [a for a in artifacts if a.format == formats.GGUF]
    if wanted is not None:
        named = [a for a in artifacts if wanted in (a.type, a.name)]
        if not named:
            known = ", ".join(a.type or a.name for a in artifacts)
            raise InputError(f"{where}: no artifact of type {wanted!r} (has {known})")
        if named[0].format != formats.GGUF:
            raise InputError(
                f"{where}: {wanted} is {named[0].format}; edgeft serve serves GGUF files through "
                f"llama.cpp's server (continuous batching over parallel slots). ONNX Runtime has no "
                f"such server here and one request at a time cannot keep up: pick a GGUF type "
                f"({', '.join(str(a.type) for a in ggufs) or 'none in this dist'})"
            )
        chosen = named[0]
    else:
        verified = [a for a in ggufs if a.verify.get("passed", True)]
        best = [a for a in verified if a.name == recommended]
        if not (best or verified):
            raise InputError(
                f"{where}: no verified GGUF to serve (export one with `export.gguf` in the config)"
            )
        chosen = (best or verified)[0]
    if chosen.verify and not chosen.verify.get("passed", False):
        raise InputError(f"{where}: {chosen.name} did not pass verify; edgeft serves only verified bytes")
    if chosen.sha256 is None:
        raise InputError(f"{where}: {chosen.name} has no recorded sha256; rebuild the dist")
    return chosen


def tool_format(dist: dict[str, Any]) -> str | None:
    """The tool format a dist's model was trained on (its lineage's training record), or None."""
    training = (dist.get("lineage") or {}).get("training") or {}
    value = training.get("tool_format")
    return value if isinstance(value, str) else None


@dataclass
class Route:
    engine: Engine
    servable: Servable
    variant: str  # the split arm's label, the alias, "pinned" or "dist"
    split: str | None
    bucket: int | None
    routed_by: str  # "header" | "user" | "none" | "pinned"


class Catalog:
    def __init__(
        self,
        dists: list[Path],
        registries: dict[Path, set[str] | None],
        artifact_type: str | None,
        make_engine: Any,
    ):
        self.artifact_type = artifact_type
        self.make_engine = make_engine
        self.engines: dict[tuple[str, int | None, str], Engine] = {}
        self.dists: dict[str, Servable] = {}
        for path in dists:
            servable = self._dist_servable(Path(path))
            if servable.model in self.dists:
                raise InputError(f"{path}: a second dist named {servable.model!r}; serve one of them")
            self.dists[servable.model] = servable
        self._servables: dict[tuple[Path, str, int], Servable] = {}
        self.registries = [Registry(p) for p in registries]
        self.only = {Path(p): names for p, names in registries.items()}  # None: every model
        self.indexes: dict[Path, RegistryIndex] = {}
        self._stamps: dict[Path, Any] = {}
        self.owner: dict[str, Registry] = {}
        for reg in self.registries:
            if not reg.index_path.is_file():
                raise InputError(
                    f"{reg.root}: no registry here (no {reg.index_path.name}); register a dist first"
                )
            index = self._read(reg)
            for name in sorted((self.only[reg.root] or set()) - set(index.models)):
                reg.model(index, name)  # the registry's own error: no such model, and which there are
            self._claim(reg, index)
            self.indexes[reg.root] = index
            self._stamps[reg.root] = _stamp(reg.index_path)
        self._lock = asyncio.Lock()

    def _read(self, reg: Registry) -> RegistryIndex:
        """The index with only the models this server serves from it."""
        index = read_index(reg.index_path)
        names = self.only[reg.root]
        if names is not None:
            index.models = {k: v for k, v in index.models.items() if k in names}
        return index

    def _claim(self, reg: Registry, index: RegistryIndex) -> None:
        for name in index.models:
            other = self.owner.get(name)
            if name in self.dists or (other is not None and other.root != reg.root):
                raise InputError(f"{reg.root}: model {name!r} is also served from another target; serve one")
            self.owner[name] = reg

    def _dist_servable(self, path: Path) -> Servable:
        stage = read_stage(path, stages.DIST, hint="edgeft build")
        name = stage.data.get("name") or path.name
        chosen = choose_gguf(stage.artifacts, self.artifact_type, stage.data.get("recommended"), str(path))
        assert chosen.sha256 is not None
        return Servable(
            str(name),
            str(name),
            None,
            stage.file(chosen.path),
            chosen.sha256,
            chosen.type,
            tool_format(stage.data),
        )

    def _version_servable(self, reg: Registry, name: str, version: Version) -> Servable:
        """A registered version's servable (kept: a version's files never change in the registry)."""
        cached = self._servables.get((reg.root, name, version.version))
        if cached is None:
            cached = self._servables[(reg.root, name, version.version)] = self._read_version(
                reg, name, version
            )
        return cached

    def _read_version(self, reg: Registry, name: str, version: Version) -> Servable:
        where = f"{name}:{version.version}"
        folder = reg.version_dir(version)
        data = read_stage(folder).data if (folder / MANIFEST).is_file() else {}
        chosen = choose_gguf(version.artifacts, self.artifact_type, data.get("recommended"), where)
        assert chosen.sha256 is not None
        return Servable(
            where,
            name,
            version.version,
            reg.version_dir(version) / chosen.path,
            chosen.sha256,
            chosen.type,
            tool_format(data),
        )

    # ---- which versions are live ---------------------------------------------------------------

    def needed(self) -> list[Servable]:
        """What the current states route to: every dist, and each model's production, candidate
        and split arms."""
        out = list(self.dists.values())
        for reg in self.registries:
            index = self.indexes[reg.root]
            for name, model in index.models.items():
                numbers = set(model.aliases.values())
                if model.split:
                    numbers |= {a.version for a in model.split.arms}
                for n in sorted(numbers):
                    version = model.versions.get(n)
                    if version is not None and version.status != ARCHIVED:
                        out.append(self._version_servable(reg, name, version))
        return out

    async def engine_for(self, servable: Servable) -> Engine:
        """The engine for a servable, started if it is not yet (waits until it is ready)."""
        async with self._lock:
            engine = self.engines.get(servable.key)
            if engine is None or (engine.failed and engine.ready.is_set()):
                engine = self.make_engine(servable)
                self.engines[servable.key] = engine
                asyncio.get_running_loop().create_task(_quiet(engine.start()))
        await engine.ready.wait()
        if engine.failed:
            raise ApiError(
                503,
                f"{servable.id} could not be loaded: {engine.failed}",
                kind="server_error",
                code="engine_failed",
            )
        return engine

    async def load_all(self) -> None:
        """Start every version the states route to; the first that cannot start is raised as its
        own error (a missing llama-server is a ToolError, changed bytes an InputError), not as the
        503 a request would get, so `edgeft serve` ends with its `Error:` and exit code."""

        async def load(servable: Servable) -> None:
            try:
                await self.engine_for(servable)
            except ApiError:
                error = self.engines[servable.key].error
                if error is None:
                    raise
                raise error from None

        await asyncio.gather(*(load(s) for s in self.needed()))

    async def watch(self) -> None:
        """Follow the registries: a changed index takes effect once the engines it needs are ready."""
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            for reg in self.registries:
                stamp = _stamp(reg.index_path)
                if stamp == self._stamps[reg.root]:
                    continue
                try:
                    index = await asyncio.to_thread(self._read, reg)
                    old = self.indexes[reg.root]
                    self.indexes[reg.root] = index
                    try:
                        wanted = self.needed()
                    finally:
                        self.indexes[reg.root] = old
                    await asyncio.gather(*(self.engine_for(s) for s in wanted))
                    self._claim(reg, index)
                    self.indexes[reg.root] = index
                    self._stamps[reg.root] = stamp
                    log.warning(
                        "registry %s changed: now serving %s", reg.root, ", ".join(s.id for s in wanted)
                    )
                except Exception as e:  # a bad index or a version that fails to load: keep the old state
                    log.error("registry %s changed but is not taken up: %s", reg.root, e)
                    self._stamps[reg.root] = stamp
            await self._retire()

    async def _retire(self) -> None:
        live = {s.key for s in self.needed()}
        now = time.monotonic()
        for key, engine in list(self.engines.items()):
            if key in live or engine.in_flight or not engine.ready.is_set():
                continue
            if engine.servable.version is not None and _pinned_recently(engine, now):
                continue
            del self.engines[key]
            log.warning("stopping %s (no longer routed to)", engine.servable.id)
            await engine.stop()

    async def close(self) -> None:
        await asyncio.gather(*(e.stop() for e in self.engines.values()), return_exceptions=True)
        self.engines.clear()

    # ---- a request's version -------------------------------------------------------------------

    def model_ids(self) -> list[str]:
        out = list(self.dists)
        for reg in self.registries:
            for name, model in self.indexes[reg.root].models.items():
                out.append(name)
                out += [f"{name}@{alias}" for alias in sorted(model.aliases)]
                out += [f"{name}:{n}" for n, v in sorted(model.versions.items()) if v.status != ARCHIVED]
        return out

    def resolve(
        self, model: str, key: str | None, routed_by: str
    ) -> tuple[Servable, str, str | None, int | None, str]:
        """(servable, variant, split id, bucket, routed_by) for a request's `model` and key."""
        if model in self.dists:
            return self.dists[model], "dist", None, None, "fixed"
        try:
            ref = Ref.parse(model)
        except InputError:
            raise _no_model(model) from None
        reg = self.owner.get(ref.name)
        if reg is None:
            raise _no_model(model)
        index = self.indexes[reg.root]
        entry = index.models.get(ref.name)
        if entry is None:
            raise _no_model(model)
        if ref.version is None and ref.alias is None:
            if key is None:  # no key: production, and the answer says so
                number, variant, split, b, routed_by = (
                    entry.aliases.get(PRODUCTION),
                    PRODUCTION,
                    None,
                    None,
                    "none",
                )
                if number is None:
                    raise ApiError(
                        404,
                        f"{ref.name} has no production version (promote one with `edgeft registry promote`)",
                        param="model",
                        code="model_not_found",
                    )
            else:  # the registry's own routing: the split's arm for the key, else production
                try:
                    r = reg.route(ref.name, key, index)
                except InputError as e:
                    raise ApiError(404, str(e), param="model", code="model_not_found") from None
                number, variant, split, b = r["version"], r["label"], r["split"], r["bucket"]
        else:
            try:
                _, version = reg.resolve(ref, index)
            except InputError as e:
                raise ApiError(404, str(e), param="model", code="model_not_found") from None
            number, variant, split, b = version.version, ref.alias or "pinned", None, None
            routed_by = "pinned"
        version = entry.versions[number]
        if version.status == ARCHIVED:
            raise ApiError(404, f"{ref.name}:{number} is archived", param="model", code="model_not_found")
        return self._version_servable(reg, ref.name, version), variant, split, b, routed_by

    async def route(self, model: str, key: str | None, routed_by: str) -> Route:
        servable, variant, split, b, routed_by = self.resolve(model, key, routed_by)
        engine = await self.engine_for(servable)
        engine.last_used = time.monotonic()
        return Route(engine, servable, variant, split, b, routed_by)

    def loading(self) -> list[str]:
        return [e.servable.id for e in self.engines.values() if not e.ready.is_set()]


def _pinned_recently(engine: Engine, now: float) -> bool:
    return now - engine.last_used < IDLE_STOP_SECONDS


def _no_model(model: str) -> ApiError:
    return ApiError(
        404,
        f"model {model!r} is not served here (GET /v1/models lists what is)",
        param="model",
        code="model_not_found",
    )


def _stamp(path: Path) -> Any:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


async def _quiet(coro: Any) -> None:
    try:
        await coro
    except Exception as e:  # recorded on the engine (engine.failed); said once here
        log.error("%s", e)
