"""One edgeft process per work directory, and nothing of a dead one left behind.

A config's work directory (`<workdir>/<name>/`) is used by one process at a time: `session`
takes an exclusive `flock` on `<workdir>/<name>/.edgeft.lock` (the kernel drops it when the
process dies, even by SIGKILL, so a stale lock needs no recovery) and a second process gets
`BusyError` naming the holder. The lock is re-entrant within a process, so `edgeft build` holds
it across the stages it calls.

While the session lasts, temporary files of this process and of the tools it starts (optimum,
ONNX Runtime's quantizer, llama.cpp's converter, onnxruntime-genai's builder) go to a private
`.edgeft-tmp-<pid>-*` folder inside the work directory instead of /tmp, so a killed run leaves
nothing outside it, and the next session removes what dead processes left there.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from edgeft.core.errors import BusyError
from edgeft.core.fileio import clean_stale, scratch_dir

LOCK_FILE = ".edgeft.lock"
TMP_PREFIX = ".edgeft-tmp-"
# This module's own scratch folders: `.edgeft-tmp-<pid>-…` (fileio.STALE knows them).

_held: dict[Path, list] = {}  # lock path → [file descriptor, depth]
_open_session: list[Path] = []  # this process's private temporary folder while a session is open


@contextlib.contextmanager
def cache_entry(out: Path, replace: bool = False) -> Iterator[Path]:
    """A folder of edgeft's own cache (tiny models, real models), built in a pid-tagged temporary
    folder beside `out` and renamed into place when the block completes; stale temporaries of
    killed builders are removed first. If `out` appeared meanwhile (another process built the
    same inputs), it is kept and the new copy dropped, unless `replace`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out.parent, f".{out.name}.")
    tmp = scratch_dir(out)
    try:
        yield tmp
        if out.exists() and not replace:
            shutil.rmtree(tmp)
            return
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']}, `{info['command']}`, since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


@contextlib.contextmanager
def lock(folder: Path, wait: float = 0.0, lock_file: str = LOCK_FILE) -> Iterator[None]:
    """Hold `folder`'s edgeft lock (re-entrant in this process); BusyError if another has it
    (after waiting up to `wait` seconds for it: the registry's writers queue briefly)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / lock_file).resolve()
    if path in _held:
        _held[path][1] += 1
        try:
            yield
        finally:
            _held[path][1] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            if time.monotonic() >= deadline:
                os.close(fd)
                held = f" for more than {wait:g} s" if wait else ""
                raise BusyError(
                    f"{folder} is in use by another edgeft process ({_holder(path)}){held}: wait for it "
                    f"to finish{'' if wait else ', or give this run another workdir'}"
                ) from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.write(
        fd,
        json.dumps(
            {
                "pid": os.getpid(),
                "command": " ".join(["edgeft", *sys.argv[1:]])[:200],
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
        ).encode(),
    )
    _held[path] = [fd, 1]
    try:
        yield
    finally:
        _held.pop(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def session(folder: Path) -> Iterator[None]:
    """Lock `folder`, clean what dead edgeft processes left in it, and keep this process's (and its
    children's) temporary files in a private folder inside it until the session ends."""
    folder = Path(folder)
    with lock(folder):
        if _open_session:  # a session is already open in this process (build → stage): share its temp folder
            yield
            return
        clean_stale(folder)
        private = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=folder))
        saved = tempfile.tempdir, os.environ.get("TMPDIR")
        tempfile.tempdir = str(private)
        os.environ["TMPDIR"] = str(private)
        _open_session.append(private)
        try:
            yield
        finally:
            _open_session.pop()
            tempfile.tempdir = saved[0]
            if saved[1] is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = saved[1]
            shutil.rmtree(private, ignore_errors=True)


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """`preexec_fn` for tools edgeft starts: the kernel kills the child when edgeft dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def in_session(stage_function):
    """Run a stage function `f(cfg, ..., out_dir=None, ...)` in a session on the folder it writes
    into: the parent of an explicit `out_dir`, else the config's work directory."""
    import functools
    import inspect

    signature = inspect.signature(stage_function)

    @functools.wraps(stage_function)
    def run(cfg, *args, **kwargs):
        out_dir = signature.bind(cfg, *args, **kwargs).arguments.get("out_dir")
        with session(Path(out_dir).parent if out_dir else cfg.run_dir):
            return stage_function(cfg, *args, **kwargs)

    return run
