"""The errors edgeft reports to users, and the exit code of each (no Click import here).

| code | meaning |
|------|---------|
| 0 | success |
| 1 | unexpected error (a bug: the traceback is shown) |
| 2 | command-line usage error (Click) |
| 3 | configuration error (bad or unknown key, wrong type) |
| 4 | data error (malformed rows, too few usable examples) |
| 5 | input error (missing file, wrong kind of stage directory, existing output without --force) |
| 6 | a tool failed (conversion, quantization, export, training) |
| 7 | verification ran and failed (the parity gate) |
| 8 | evaluation ran and an artifact fell below the regression gate |
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


EXIT_CODES = {
    0: "success",
    1: "unexpected error (a bug: the traceback is shown)",
    2: "command-line usage error",
    ConfigError.exit_code: "configuration error",
    DataError.exit_code: "data error",
    InputError.exit_code: "input error (missing file, wrong stage directory, output exists)",
    ToolError.exit_code: "a tool failed (training, conversion, quantization, export)",
    VerifyFailed.exit_code: "verification ran and failed",
    EvalFailed.exit_code: "evaluation ran and an artifact fell below the regression gate",
}
