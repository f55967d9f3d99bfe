"""File primitives every layer uses: permissions, paths read from manifests, sha256, copies,
file tables, and the names of edgeft's own scratch files and folders (with the rule that tells a
dead process's leftovers from a live one's work). Imports nothing of edgeft but its errors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgeft.core.errors import InputError

# Directories edgeft publishes get the permissions of any directory the user creates (mkdtemp
# makes them 0700, which would hide a shared dist from the team that deploys it).
_UMASK = os.umask(0)
os.umask(_UMASK)
DIR_MODE = 0o777 & ~_UMASK
FILE_MODE = 0o666 & ~_UMASK


def inside(root: Path | str, relpath: str) -> Path:
    """`root / relpath` for a path read from a manifest, refused unless it stays inside `root`
    (no absolute path, no `..`, no symlink leading out): a manifest must not make edgeft open,
    hash or copy a file elsewhere."""
    root = Path(root)
    rel = Path(relpath) if isinstance(relpath, str) and relpath else None
    if rel is None or rel.is_absolute() or ".." in rel.parts:
        raise InputError(f"{root}: the manifest names {relpath!r}, a path outside this folder: refused")
    full = root / rel
    if not full.resolve().is_relative_to(root.resolve()):
        raise InputError(f"{full}: a link to {full.resolve()}, outside {root}: refused")
    return full


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_FICLONE = 0x40049409  # Linux ioctl: share the source's blocks (btrfs, XFS), copy-on-write


def copy_file(src: Path, dst: Path) -> str:
    """Copy one file (a reflink where the filesystem can, else bytes) and return the sha256 of
    what landed at `dst`: never a hard link, so editing the dist cannot alter the work directory."""
    import fcntl

    h = hashlib.sha256()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as fin, dst.open("wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            cloned = True
        except OSError:
            cloned = False
        if cloned:
            fout.flush()
            with dst.open("rb") as check:
                for block in iter(lambda: check.read(1 << 20), b""):
                    h.update(block)
        else:
            for block in iter(lambda: fin.read(1 << 20), b""):
                h.update(block)
                fout.write(block)
    shutil.copystat(src, dst)
    return h.hexdigest()


def hash_json(value: Any) -> str:
    """A stable hash of JSON-able data (sorted keys), for input fingerprints."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


# Scratch names carry the writer's pid, so the next run can tell a dead process's leftover from a
# live one's work: `.<dest>.<what>-<pid>-…` beside what is being written (what: tmp, old, version.tmp).
STALE = re.compile(r"^\.(?:.+\.(?:tmp|old)|edgeft-tmp)-(?P<pid>\d+)-")


def scratch_prefix(name: str, what: str = "tmp") -> str:
    """The prefix of a scratch file or folder for `name` (see STALE)."""
    return f".{name}.{what}-{os.getpid()}-"


def scratch_dir(out: Path, what: str = "tmp") -> Path:
    """A new scratch folder beside `out` (for building it, then renaming it into place), with the
    permissions of a folder the user makes."""
    tmp = Path(tempfile.mkdtemp(prefix=scratch_prefix(out.name, what), dir=out.parent))
    tmp.chmod(DIR_MODE)
    return tmp


def write_atomic(path: Path, data: str | bytes, durable: bool = False) -> None:
    """`path` holds `data` whole or keeps what it held: written to a scratch file beside it, with
    the permissions of a file the user writes, renamed. `durable`: on disk before this returns
    (the file and the rename synced), for records a crash must not lose."""
    fd, tmp = tempfile.mkstemp(prefix=scratch_prefix(path.name), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        with contextlib.suppress(OSError):
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale(folder: Path, prefix: str = ".") -> list[Path]:
    """Remove edgeft temporaries in `folder` (names starting with `prefix`) whose process is gone."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = STALE.match(p.name)
        if not p.name.startswith(prefix) or not m or pid_alive(int(m.group("pid"))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


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
        try:
            p = inside(root, f["path"])
        except InputError as e:
            problems.append(str(e))
            continue
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size < f["bytes"]:
            problems.append(f"{p}: truncated: {p.stat().st_size} bytes, manifest says {f['bytes']}")
        elif p.stat().st_size != f["bytes"]:
            problems.append(
                f"{p}: {p.stat().st_size} bytes, manifest says {f['bytes']}: the file was replaced"
            )
        elif sha256_file(p) != f["sha256"]:
            problems.append(f"{p}: sha256 differs from the manifest: the file was replaced or altered")
    return problems
