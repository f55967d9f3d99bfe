"""The errors edgeft reports to users, and the exit code of each (no Click import here).

Each error class names its exit code and says what it means in its docstring: `EXIT_CODES` is
built from them, and docs/safety.md's table is tested against it (tests/test_readme.py).
"""

from __future__ import annotations

import re
from typing import Any


class EdgeftError(Exception):
    """An error the user can act on: shown as `Error: <message>` with `exit_code`."""

    exit_code = 1

    def __init_subclass__(cls, code: int | None = None, **kwargs: Any) -> None:
        """`class DataError(EdgeftError, code=4)`; a subclass of one of these keeps its code."""
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.exit_code = code


class ConfigError(EdgeftError, code=3):
    """Configuration error (bad or unknown key, wrong type or value)."""

    def __init__(self, problems: list[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        if len(self.problems) == 1:
            msg = where + self.problems[0]
        else:
            msg = f"{where}{len(self.problems)} problems\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(msg)


class DataError(EdgeftError, code=4):
    """Data error (malformed rows, fewer than 10 usable examples)."""


class InputError(EdgeftError, code=5):
    """Input error (missing or unreadable file, wrong kind of stage directory, output exists without
    `--force`, a stage output changed after it was verified)."""


class ToolError(EdgeftError, code=6):
    """A tool failed (training, conversion, quantization, export)."""


class VerifyFailed(EdgeftError, code=7):
    """Verification ran and failed (the report is still written)."""


class EvalFailed(EdgeftError, code=8):
    """Evaluation ran and an artifact fell below the regression gate (the results are still written)."""


class BusyError(EdgeftError, code=9):
    """Another edgeft process is working in the same work directory (wait for it, or use another
    `workdir`)."""


class NoSpaceError(EdgeftError, code=10):
    """No space left on the disk being written (nothing half-written is kept)."""


class RegistryRefused(EdgeftError, code=11):
    """The registry refused a change (a promotion worse than production, an archived version in a
    split, a rollback with no earlier version); nothing was changed."""


def shown(value: object, limit: int = 200) -> str:
    """`repr(value)` for an error message, at most about `limit` characters, built without
    expanding the whole value (a config value can stand for gigabytes: YAML aliases)."""
    import reprlib

    class Short(reprlib.Repr):
        def repr_int(self, x: int, level: int) -> str:
            return f"<an integer of {x.bit_length():,} bits>" if x.bit_length() > 128 else repr(x)

    short = Short()
    short.maxlevel, short.maxstring, short.maxother, short.maxlong = 3, limit, limit, 40
    short.maxdict = short.maxlist = short.maxtuple = short.maxset = 6
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip_lines(text: str, limit: int = 2000) -> str:
    """Each line of a message cut to `limit` characters (saying how many were cut)."""
    return "\n".join(
        line if len(line) <= limit else f"{line[:limit]}… ({len(line) - limit:,} more characters)"
        for line in text.split("\n")
    )


def first_line(exc: BaseException | str, limit: int = 300) -> str:
    """What a library's exception (or a tool's stderr) says, in one line for an `Error: …` message."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__ if isinstance(exc, BaseException) else "")[
        :limit
    ]


def describe(exc: BaseException) -> str:
    """An exception as `Type: first line`, for reports that name why an artifact failed."""
    return f"{type(exc).__name__}: {first_line(exc)}"


_NO_SPACE_TEXT = ("No space left on device", "StorageFull", "Disk quota exceeded")
# numpy's `tofile` (llama.cpp's converter writes with it) reports a full disk only as a short write.
_SHORT_WRITE = re.compile(r"\b\d+ requested and \d+ written\b")


def full_disk(path: object) -> OSError | None:
    """An ENOSPC error naming `path` when the disk holding it has less than 1 MiB left: what a tool
    that failed there without saying why (llama-quantize: "iostream error") most likely met."""
    import errno
    import os

    try:
        st = os.statvfs(str(path))
    except OSError:
        return None
    if st.f_bavail * st.f_frsize >= 1 << 20:
        return None
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def says_no_space(text: str) -> bool:
    """Whether a message (an exception's, a tool's output line) says the disk is full."""
    return any(t in text for t in _NO_SPACE_TEXT) or _SHORT_WRITE.search(text) is not None


def no_space(exc: BaseException) -> BaseException | None:
    """The exception in `exc`'s chain that says the disk is full, if any. Libraries report it in
    their own ways: OSError ENOSPC, or wrapped in a RuntimeError (torch) or SafetensorError whose
    message carries the OS's words."""
    import errno

    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return current
        if says_no_space(str(current)):
            return current
        current = current.__cause__ or current.__context__
    return None


def _meaning(error: type[EdgeftError]) -> str:
    text = " ".join((error.__doc__ or "").split()).rstrip(".")
    return text[:1].lower() + text[1:]


# Every exit code edgeft's CLI ends with: Click's own (0, 2), a bug (1), and each error's.
EXIT_CODES = {
    0: "success",
    1: "unexpected error (a bug: the traceback is shown)",
    2: "command-line usage error",
    **{error.exit_code: _meaning(error) for error in EdgeftError.__subclasses__()},
}
