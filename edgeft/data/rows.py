"""Examples: read any common dataset file, normalise rows, report what is wrong and where.

Consumes JSONL, JSON (a list of objects), CSV, Parquet, a directory saved by `datasets` or an
`edgeft serve` log folder (edgeft.data.served),
whose rows are alpaca (`instruction`, `input`?, `output`), chat (`messages`: role/content
list, OpenAI fine-tuning style), `prompt`/`completion`, or plain `text`; other field names
are mapped with `columns`. Produces `Example`s (chat messages, or text) and `Finding`s
located as `FILE:LINE` (line-based files) or `FILE[row N]`.

The checks that need the model's tokenizer, the duplicates and the split live in
`edgeft/data/check.py`.

    edgeft data check examples/nl2sql/data/nl2sql.jsonl
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from edgeft.core import rowfilter
from edgeft.core.errors import DataError, InputError, first_line
from edgeft.core.fileio import sha256_file

ROLES = ("system", "user", "assistant")
# Below this many usable rows a fine-tune learns nothing worth shipping.
MIN_EXAMPLES = 10

Conversation = list[dict[str, str]]


@dataclass
class Example:
    where: str
    fmt: str  # alpaca | chat | prompt-completion | text
    messages: Conversation | None = None
    text: str | None = None
    augmented: str | None = None  # how this row was made from another (data.augment), e.g. "typos"
    source: str | None = None  # the row it was made from
    # The start of the user turn that is the row's fixed instruction (an alpaca row with an input:
    # "instruction\n\n"): augmentation edits only what follows, the part a user types.
    fixed_prefix: str | None = None
    # A row with tools (edgeft.data.tools): its function definitions by name; `messages` are then
    # already rendered in edgeft's tool format (plain system/user/assistant turns).
    tools: dict[str, dict[str, Any]] | None = None

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    def content(self) -> str:
        """The content, whitespace-normalised, as text (what `key` digests)."""
        if self.messages is not None:
            return json.dumps([[m["role"], " ".join(m["content"].split())] for m in self.messages])
        return " ".join((self.text or "").split())

    def key(self) -> bytes:
        """Identity for exact duplicates and leakage: a 128-bit digest of `content` (computed once,
        and small: a million rows' keys as text were 350 MB; an example is not edited after
        loading, augmentation makes new ones)."""
        key = self.__dict__.get("_key")
        if key is None:
            key = self.__dict__["_key"] = hashlib.blake2b(self.content().encode(), digest_size=16).digest()
        return key

    def parts(self) -> tuple[str, str]:
        """(prompt, answer): everything before the last assistant turn, and that turn."""
        if self.messages is not None:
            return "\n".join(m["content"] for m in self.messages[:-1]), self.messages[-1]["content"]
        return self.text or "", self.text or ""

    def to_json(self) -> dict[str, Any]:
        if self.messages is None:
            return {"text": self.text}
        if not self.tools:
            return {"messages": self.messages}
        from edgeft.data.tools import FORMAT, openai_tools

        # The turns are rendered: marked so, the row reads back as the same example.
        return {"messages": self.messages, "tools": openai_tools(self.tools), "tool_format": FORMAT}


@dataclass(frozen=True)
class Finding:
    severity: str  # "error": the row (or the dataset) cannot be used; "warning": worth a look
    where: str
    check: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"severity": self.severity, "where": self.where, "check": self.check, "message": self.message}


class Findings:
    """What a data report with `findings` offers alike (the data check's DataReport, the pairs'
    PairsReport): its errors, its warnings, and a DataError listing every error (`noun` names them)."""

    findings: list[Finding]
    noun = "data"

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def raise_on_errors(self) -> None:
        if not self.errors:
            return
        where = self.errors[0].where.split(":")[0].split("[")[0]
        raise_listing(
            f"{where}: {len(self.errors)} {self.noun} error(s); fix them (or see `edgeft data check`)",
            [str(f) for f in self.errors],
        )


@dataclass
class LoadReport:
    path: Path
    examples: list[Example] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    formats: Counter = field(default_factory=Counter)
    rows: int = 0
    filter: rowfilter.FilterCounts | None = None  # data.filter's counts, when one is set

    @property
    def problems(self) -> list[str]:
        return [str(f) for f in self.findings if f.severity == "error"]

    def error(self, where: str, check: str, message: str) -> None:
        self.findings.append(Finding("error", where, check, message))


# --- reading ---------------------------------------------------------------------------------


def _rows_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as f:  # line by line: a large log export is never held twice
        for n, line in enumerate(f, start=1):
            line = line.removesuffix(b"\n")
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                yield where, json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield where, ValueError(f"not valid UTF-8 (byte {e.start})")
            except json.JSONDecodeError as e:
                yield where, ValueError(f"not valid JSON ({e.msg} at column {e.colno})")
            except RecursionError:
                yield where, ValueError("not usable JSON (nested too deeply)")


def _rows_json(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}:{e.lineno}: not valid JSON ({e.msg}); a .json file holds one list "
            f"of rows (use .jsonl for one row per line)"
        ) from None
    except RecursionError:
        raise DataError(f"{path}: not usable JSON (nested too deeply)") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
    for i, row in enumerate(data):
        yield f"{path}[row {i}]", row


def _rows_csv(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    reader = csv.DictReader(text.splitlines(keepends=True))
    try:
        for row in reader:
            # line_num is the reader's line after the row: rows may span lines, so report its end.
            yield f"{path}:{reader.line_num}", {k: v for k, v in row.items() if k is not None and v != ""}
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: not readable CSV ({e})") from None


def _rows_table(path: Path) -> Iterator[tuple[str, Any]]:
    """Parquet files and directories written by `datasets.Dataset.save_to_disk`."""
    import pyarrow as pa

    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if "train" not in ds:
                    raise DataError(f"{path}: a DatasetDict without a 'train' split (has {', '.join(ds)})")
                ds = ds["train"]
            rows = ds.to_list()
        except (FileNotFoundError, ValueError, pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: not a dataset saved by `datasets` ({first_line(e)})") from None
    else:
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: not a readable Parquet file ({first_line(e)})") from None
    for i, row in enumerate(rows):
        yield f"{path}[row {i}]", row


def read_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, row) for each row; a row that cannot be parsed comes as a ValueError."""
    if not path.exists():
        raise InputError(f"{path}: data file not found")
    if path.is_dir():
        from edgeft.data import served

        return served.rows(path) if served.is_log(path) else _rows_table(path)
    suffix = path.suffix.lower()
    readers = {
        ".jsonl": _rows_jsonl,
        ".ndjson": _rows_jsonl,
        ".json": _rows_json,
        ".csv": _rows_csv,
        ".parquet": _rows_table,
    }
    if suffix not in readers:
        raise InputError(
            f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .csv, .parquet, "
            f"a directory saved by `datasets`, or an `edgeft serve` log folder"
        )
    return readers[suffix](path)


# --- normalising -----------------------------------------------------------------------------


class _Bad(Exception):
    """A row problem: its message and which check it belongs to."""

    def __init__(self, message: str, check: str = "format"):
        super().__init__(message)
        self.check = check


@overload
def _string(row: dict, key: str, required: Literal[True] = True, hint: str = "") -> str: ...
@overload
def _string(row: dict, key: str, required: Literal[False], hint: str = "") -> str | None: ...
def _string(row: dict, key: str, required: bool = True, hint: str = "") -> str | None:
    value = row.get(key)
    if value is None:
        if required:
            raise _Bad(f"missing {key!r}{hint}")
        return None
    if not isinstance(value, str):
        raise _Bad(f"{key!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise _Bad((f"{key!r} is empty" if not value else f"{key!r} is only whitespace") + hint, "empty")
    return value


def _check_roles(msgs: Conversation) -> str | None:
    expected_first = 1 if msgs[0]["role"] == "system" else 0
    for i, m in enumerate(msgs):
        if i < expected_first:
            continue
        want = "user" if (i - expected_first) % 2 == 0 else "assistant"
        if m["role"] != want:
            return f"roles out of order at messages[{i}]: expected {want!r}, got {m['role']!r}"
    if msgs[-1]["role"] != "assistant":
        return "the conversation must end with an 'assistant' message"
    return None


_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_.]*)\}")


def placeholders(template: str) -> list[str]:
    """The fields a data.system_prompt fills from each row."""
    return [m.group(1) for m in _PLACEHOLDER.finditer(template) if m.group(1)]


def fill_system_prompt(template: str, row: Any) -> str:
    """data.system_prompt with each `{field}` (`{a.b}`: nested) replaced by the row's value;
    `{{` and `}}` are literal braces. Any other brace is text (a JSON example stays as written)."""

    def fill(m: re.Match) -> str:
        if m.group(1) is None:
            return m.group(0)[0]
        value = rowfilter.lookup(row, m.group(1)) if isinstance(row, dict) else None
        if value is None or (isinstance(value, str) and not value.strip()):
            raise _Bad(
                f"data.system_prompt needs {{{m.group(1)}}}, which this row lacks (or is empty)",
                "system_prompt",
            )
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return _PLACEHOLDER.sub(fill, template)


def to_example(
    row: Any, columns: dict[str, str] | None = None, system_prompt: str | None = None
) -> tuple[Example | None, str | None, str]:
    """One row → (example, None, "") or (None, problem, check)."""
    try:
        ex = _to_example(
            row, columns, (lambda: fill_system_prompt(system_prompt, row)) if system_prompt else None
        )
    except _Bad as bad:
        return None, str(bad), bad.check
    return ex, None, ""


def _pseudo_fields(row: Any, columns: dict[str, str] | None) -> Any:
    """`prompt` and `reply` of a row whatever its format, for data.filter (None if not a conversation)."""
    made: list[Example | None] = []

    def get(name: str) -> str | None:
        if not made:
            try:
                made.append(_to_example(row, columns))
            except _Bad:
                made.append(None)
        ex = made[0]
        if ex is None:
            return None
        if ex.messages is None:
            return ex.text
        if name == "reply":
            return ex.messages[-1]["content"]
        return "\n".join(m["content"] for m in ex.messages if m["role"] == "user")

    return get


def _message_list(msgs: Any) -> list[Any]:
    """A row's `messages` as a non-empty list (CSV cells and some exports hold it as JSON text)."""
    if isinstance(msgs, str):
        try:
            msgs = json.loads(msgs)
        except json.JSONDecodeError:
            pass
    if not isinstance(msgs, list) or not msgs:
        raise _Bad("'messages' must be a non-empty list of {role, content}")
    return msgs


def _chat_messages(msgs: Any) -> Conversation:
    msgs = _message_list(msgs)
    out: Conversation = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise _Bad(f'messages[{i}] must be {{"role": system|user|assistant, "content": string}}')
        if not m["content"].strip() and m["role"] != "system":
            raise _Bad(f"messages[{i}] ({m['role']}) is empty or only whitespace", "empty")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _tool_messages(row: dict[str, Any]) -> tuple[list[dict[str, Any]], dict]:
    """A chat row with tools → (its turns rendered in edgeft's tool format, without the tools'
    description, which goes into the system turn the caller settles first; the tools by name)."""
    from edgeft.data import tools as tools_mod

    msgs = _message_list(row["messages"])
    if not all(isinstance(m, dict) for m in msgs):
        raise _Bad("'messages' must be a non-empty list of {role, content}")
    try:
        if row.get("tools") in (None, []):
            raise tools_mod.BadTools(
                "tools", "missing: a row with tool calls or tool turns defines its tools"
            )
        defined = tools_mod.specs(row["tools"])
        return tools_mod.conversation(msgs, defined, describe=False), defined
    except tools_mod.BadTools as e:
        raise _Bad(str(e), e.check) from None


def _to_example(
    row: Any, columns: dict[str, str] | None, system_prompt: Callable[[], str] | None = None
) -> Example:
    """A row → its Example; `system_prompt` makes the system turn of a conversation that has none."""
    if not isinstance(row, dict):
        raise _Bad(f"expected an object, got {type(row).__name__}")
    if columns:
        row = dict(row)
        for canonical, source in columns.items():
            if source in row:
                row[canonical] = row.pop(source)
    system = row.get("system") if isinstance(row.get("system"), str) and row["system"].strip() else None
    prefix = None
    defined = describe = None  # a tool row's tools; `describe`: the ones its system turn is to list
    if "messages" in row:
        from edgeft.data.tools import BadTools, has_tools, rendered, specs

        if has_tools(row, row["messages"]):
            plain, defined = _tool_messages(row)
            fmt, out, describe = "chat", _chat_messages(plain), defined
        else:
            fmt, out = "chat", _chat_messages(row["messages"])
            if rendered(row):  # already in edgeft's tool format: its tools are for eval and the record
                try:
                    defined = specs(row.get("tools"))
                except BadTools as e:
                    raise _Bad(str(e), e.check) from None
    elif "instruction" in row or "output" in row:
        hint = " (alpaca rows need instruction, input?, output)"
        instruction = _string(row, "instruction", hint=hint)
        inp = _string(row, "input", required=False)
        output = _string(row, "output", hint=hint)
        has_input = bool(inp and inp.strip())
        prefix = f"{instruction}\n\n" if has_input else None
        user = f"{instruction}\n\n{inp}" if has_input else instruction
        fmt, out = "alpaca", [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    elif "prompt" in row or "completion" in row:
        hint = " (prompt/completion rows need both)"
        prompt, completion = _string(row, "prompt", hint=hint), _string(row, "completion", hint=hint)
        fmt, out = (
            "prompt-completion",
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}],
        )
    elif "text" in row:
        return Example("", "text", text=_string(row, "text"))
    else:
        keys = ", ".join(sorted(map(str, row))) or "none"
        raise _Bad(
            f"unknown row format (keys: {keys}); use alpaca (instruction, input?, output), chat "
            f"(messages), prompt/completion or text, or map your fields with data.columns"
        )
    if out[0]["role"] != "system":
        if system:
            out.insert(0, {"role": "system", "content": system})
        elif system_prompt:
            out.insert(0, {"role": "system", "content": system_prompt()})
    if describe:
        from edgeft.data.tools import with_tools

        out = with_tools(out, describe)
    problem = _check_roles(out)
    if problem:
        raise _Bad(problem, "roles")
    return Example("", fmt, messages=out, fixed_prefix=prefix, tools=defined)


def load_examples(
    path: Path | str,
    columns: dict[str, str] | None = None,
    system_prompt: str | None = None,
    row_filter: list[rowfilter.Condition] | None = None,
) -> LoadReport:
    """Read every row; unusable rows become error findings, never exceptions. With `row_filter`
    (data.filter, compiled), rows failing a condition are dropped, and counted, before they
    are checked: a log's unwanted rows need not be well-formed."""
    path = Path(path)
    report = LoadReport(path)
    counts = report.filter = rowfilter.FilterCounts([c.text for c in row_filter]) if row_filter else None
    for where, row in read_rows(path):
        report.rows += 1
        if isinstance(row, ValueError):
            report.error(where, "encoding" if "UTF-8" in str(row) else "json", str(row))
            continue
        if row_filter and counts is not None and isinstance(row, dict):
            counts.rows += 1
            extra = _pseudo_fields(row, columns)
            for name in rowfilter.missing_fields(row_filter, row, extra):
                counts.missing[name] = counts.missing.get(name, 0) + 1
            failed = rowfilter.first_failed(row_filter, row, extra)
            if failed is not None:
                counts.removed[failed] += 1
                continue
            counts.kept += 1
        ex, problem, check = to_example(row, columns, system_prompt)
        if problem:
            report.error(where, check, problem)
            continue
        assert ex is not None
        ex.where = where
        report.examples.append(ex)
        report.formats[ex.fmt] += 1
    kinds = {e.is_chat for e in report.examples}
    if len(kinds) > 1:
        report.error(
            str(path), "format", "mixes conversation rows and plain-text rows; use one kind per dataset"
        )
    return report


def raise_listing(head: str, lines: list[str], limit: int = 50) -> None:
    """Raise DataError: `head`, then the first `limit` lines (every one a FILE:LINE: problem)."""
    shown = lines[:limit]
    more = len(lines) - len(shown)
    raise DataError(head + "\n" + "\n".join(shown) + (f"\n... and {more} more" if more else ""))


def require_usable(report: LoadReport) -> None:
    """Raise DataError listing every unusable row, or if too few rows are usable."""
    if report.problems:
        raise_listing(
            f"{report.path}: {len(report.problems)} malformed row(s); fix or remove them", report.problems
        )
    if len(report.examples) < MIN_EXAMPLES:
        raise DataError(
            f"{report.path}: {len(report.examples)} usable example(s); at least {MIN_EXAMPLES} needed"
        )


def split(examples: list[Example], val_ratio: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic split: the same rows and seed always give the same halves."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(examples) * val_ratio))
    val_idx = set(order[:n_val])
    train = [e for i, e in enumerate(examples) if i not in val_idx]
    val = [e for i, e in enumerate(examples) if i in val_idx]
    return train, val


def file_hash(path: Path) -> str:
    """sha256 of a file, or of every file (relative path, then contents) of a dataset directory."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode())
        with f.open("rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def write_jsonl(path: Path, examples: list[Example]) -> None:
    """A split as the stage keeps it: each row's content, and augmented rows marked with their source."""
    with Path(path).open("w", encoding="utf-8") as f:
        for e in examples:
            mark = {"augmented": e.augmented, "source": e.source} if e.augmented else {}
            f.write(json.dumps(e.to_json() | mark, ensure_ascii=False) + "\n")


def read_split(path: Path) -> list[dict[str, Any]]:
    """The rows of a split written by `write_jsonl` (a stage's own, validated file)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]


def read_conversations(path: Path) -> list[Conversation]:
    """The conversations of a split written by `write_jsonl`."""
    return [r["messages"] for r in read_split(path) if "messages" in r]
