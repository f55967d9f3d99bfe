"""The errors edgeft reports to users, and the exit code of each (no Click import here).

`EXIT_CODES` is the one table of exit codes: the README's table is tested against it.
"""

from __future__ import annotations


class EdgeftError(Exception):
    """An error the user can act on: shown as `Error: <message>` with `exit_code`."""

    exit_code = 1


class ConfigError(EdgeftError):
    exit_code = 3

    def __init__(self, problems: list[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        if len(self.problems) == 1:
            msg = where + self.problems[0]
        else:
            msg = f"{where}{len(self.problems)} problems\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        super().__init__(msg)


class DataError(EdgeftError):
    exit_code = 4


class InputError(EdgeftError):
    exit_code = 5


class ToolError(EdgeftError):
    exit_code = 6


class VerifyFailed(EdgeftError):
    exit_code = 7


class EvalFailed(EdgeftError):
    exit_code = 8


class BusyError(EdgeftError):
    """Another edgeft process holds the work directory's lock."""

    exit_code = 9


class NoSpaceError(EdgeftError):
    """The disk being written to is full."""

    exit_code = 10


def first_line(exc: BaseException | str, limit: int = 300) -> str:
    """What a library's exception (or a tool's stderr) says, in one line for an `Error: …` message."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__ if isinstance(exc, BaseException) else "")[:limit]


_NO_SPACE_TEXT = ("No space left on device", "StorageFull", "Disk quota exceeded")


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
        if any(text in str(current) for text in _NO_SPACE_TEXT):
            return current
        current = current.__cause__ or current.__context__
    return None


EXIT_CODES = {
    0: "success",
    1: "unexpected error (a bug: the traceback is shown)",
    2: "command-line usage error",
    ConfigError.exit_code: "configuration error (bad or unknown key, wrong type or value)",
    DataError.exit_code: "data error (malformed rows, fewer than 10 usable examples)",
    InputError.exit_code: "input error (missing or unreadable file, wrong kind of stage directory, "
                          "output exists without `--force`, a stage output changed after it was verified)",
    ToolError.exit_code: "a tool failed (training, conversion, quantization, export)",
    VerifyFailed.exit_code: "verification ran and failed (the report is still written)",
    EvalFailed.exit_code: "evaluation ran and an artifact fell below the regression gate (the results are "
                          "still written)",
    BusyError.exit_code: "another edgeft process is working in the same work directory (wait for it, or use "
                         "another `workdir`)",
    NoSpaceError.exit_code: "no space left on the disk being written (nothing half-written is kept)",
}
