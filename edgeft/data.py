"""Examples: load JSONL, normalise to chat messages, validate, split deterministically.

Consumes a JSONL file whose rows are alpaca (`instruction`, optional `input`, `output`) or
chat (`messages`: a list of {role, content}, OpenAI fine-tuning style); produces
conversations (lists of messages) and a train/validation split.

    edgeft data check examples/nl2sql/data/nl2sql.jsonl
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeft.errors import DataError, InputError

ROLES = ("system", "user", "assistant")
# Below this many usable rows a fine-tune learns nothing worth shipping.
MIN_EXAMPLES = 10

Conversation = list[dict[str, str]]


@dataclass
class Example:
    line: int
    messages: Conversation
    fmt: str


@dataclass
class LoadReport:
    path: Path
    examples: list[Example] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "FILE:LINE: what is wrong"
    formats: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "usable": len(self.examples),
            "malformed": len(self.problems),
            "formats": dict(self.formats),
            "problems": self.problems,
        }


def _text(row: dict, key: str, where: str, required: bool = True) -> tuple[str | None, str | None]:
    value = row.get(key)
    if value is None:
        return None, (f"{where}: missing {key!r}" if required else None)
    if not isinstance(value, str):
        return None, f"{where}: {key!r} must be a string, got {type(value).__name__}"
    if required and not value.strip():
        return None, f"{where}: {key!r} is empty"
    return value, None


def normalise(row: Any, where: str, system_prompt: str | None = None) -> tuple[Example | None, str | None]:
    """One parsed JSON row → (Example, None) or (None, "where: problem")."""
    if not isinstance(row, dict):
        return None, f"{where}: expected a JSON object, got {type(row).__name__}"
    line = int(where.rsplit(":", 1)[1])
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            return None, f"{where}: 'messages' must be a non-empty list of {{role, content}}"
        out: Conversation = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                return None, (f"{where}: messages[{i}] must be {{\"role\": system|user|assistant, "
                              f"\"content\": string}}")
            out.append({"role": m["role"], "content": m["content"]})
        if out[-1]["role"] != "assistant" or not out[-1]["content"].strip():
            return None, f"{where}: the last message must be a non-empty 'assistant' turn"
        if not any(m["role"] == "user" for m in out):
            return None, f"{where}: no 'user' message"
        fmt = "chat"
    elif "instruction" in row or "output" in row:
        instruction, err = _text(row, "instruction", where)
        if err:
            return None, err + " (alpaca rows need instruction, input?, output)"
        inp, err = _text(row, "input", where, required=False)
        if err:
            return None, err
        output, err = _text(row, "output", where)
        if err:
            return None, err + " (alpaca rows need instruction, input?, output)"
        user = instruction if not inp or not inp.strip() else f"{instruction}\n\n{inp}"
        out = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        fmt = "alpaca"
    else:
        keys = ", ".join(sorted(map(str, row))) or "none"
        return None, (f"{where}: unknown row format (keys: {keys}); use alpaca "
                      f"(instruction, input?, output) or chat (messages)")
    if system_prompt and out[0]["role"] != "system":
        out = [{"role": "system", "content": system_prompt}, *out]
    return Example(line, out, fmt), None


def load_examples(path: Path | str, system_prompt: str | None = None) -> LoadReport:
    """Read every row of a JSONL file; malformed rows become problems, not exceptions."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: data file not found")
    report = LoadReport(path)
    raw = path.read_bytes()
    for n, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            report.problems.append(f"{where}: not valid UTF-8 (byte {e.start})")
            continue
        except json.JSONDecodeError as e:
            report.problems.append(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        ex, err = normalise(row, where, system_prompt)
        if err:
            report.problems.append(err)
        else:
            assert ex is not None
            report.examples.append(ex)
            report.formats[ex.fmt] += 1
    return report


def require_usable(report: LoadReport) -> None:
    """Raise DataError listing every malformed row, or if too few rows are usable."""
    if report.problems:
        shown = report.problems[:50]
        more = len(report.problems) - len(shown)
        raise DataError(
            f"{report.path}: {len(report.problems)} malformed row(s); fix or remove them\n"
            + "\n".join(shown)
            + (f"\n... and {more} more" if more else "")
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
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_jsonl(path: Path, examples: list[Example]) -> None:
    with Path(path).open("w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"messages": e.messages}, ensure_ascii=False) + "\n")


def read_conversations(path: Path) -> list[Conversation]:
    """Read a split written by `write_jsonl` (a stage's own file, already validated)."""
    return [json.loads(line)["messages"] for line in Path(path).read_text(encoding="utf-8").splitlines() if line]


def prepare(data_cfg, root: Path) -> tuple[list[Example], list[Example], dict[str, Any]]:
    """Load, validate and split according to the config's data section."""
    train_path = root / data_cfg.train if not Path(data_cfg.train).is_absolute() else Path(data_cfg.train)
    report = load_examples(train_path, data_cfg.system_prompt)
    require_usable(report)
    info: dict[str, Any] = {"train_file": str(train_path), "train_sha256": file_hash(train_path)}
    if data_cfg.validation:
        val_path = root / data_cfg.validation
        vreport = load_examples(val_path, data_cfg.system_prompt)
        if vreport.problems:
            require_usable(vreport)
        train, val = report.examples, vreport.examples
        info.update(validation_file=str(val_path), validation_sha256=file_hash(val_path))
    else:
        train, val = split(report.examples, data_cfg.val_ratio, data_cfg.seed)
    info.update(train_rows=len(train), validation_rows=len(val))
    return train, val, info
