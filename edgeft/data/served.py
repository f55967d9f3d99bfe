"""The served log of `edgeft serve` read back (its writer is edgeft.serve.journal; the format is
documented there and in docs/serve.md), and read as training data: a log folder given as
`data.train` yields one chat row per answered completion with its feedback, so `data.filter`
("rating >= 4") turns real traffic into the next training set.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeft.core.errors import InputError

MARKER = ".edgeft-served"
CURRENT = "completions.jsonl"
PREFIX = "completions"


def is_log(path: Path) -> bool:
    return path.is_dir() and (path / MARKER).is_file()


def files(folder: Path) -> list[Path]:
    """The log's files, oldest first (rotated ones by their time, the current one last)."""
    folder = Path(folder)
    rotated = sorted(p for p in folder.glob(f"{PREFIX}-*.jsonl") if p.is_file())
    current = folder / CURRENT
    return rotated + ([current] if current.is_file() else [])


def records(folder: Path) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    """(file, line number, record) for every whole line; a line that is not an edgeft record is an
    InputError naming it, except a last line without its newline (a write cut short), skipped."""
    for path in files(folder):
        data = path.read_bytes()
        lines = data.split(b"\n")
        complete = lines[:-1]  # the part after the last newline is a cut write (or empty)
        for i, raw in enumerate(complete, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError:
                raise InputError(f"{path}:{i}: not a JSON line (the served log was edited?)") from None
            if not isinstance(record, dict) or record.get("type") not in ("completion", "feedback"):
                raise InputError(f"{path}:{i}: not an edgeft serve record")
            yield path, i, record


def completions_with_feedback(folder: Path) -> list[dict[str, Any]]:
    """Every logged completion with its latest feedback (`rating`, `correction`) joined by id;
    feedback for an id this log does not hold (given to another replica) is left out."""
    out: dict[str, dict[str, Any]] = {}
    feedback: dict[str, dict[str, Any]] = {}
    for _, _, record in records(folder):
        if record["type"] == "completion":
            out[record["id"]] = record
        else:
            feedback[record["id"]] = record
    for cid, fb in feedback.items():
        if cid in out:
            out[cid]["rating"] = fb.get("rating")
            if "correction" in fb:
                out[cid]["correction"] = fb["correction"]
    return list(out.values())


def rows(folder: Path) -> Iterator[tuple[str, Any]]:
    """(location, row) for each completion answered in full whose prompt and reply were logged:
    a chat row (`messages` ending in the reply, or in the user's correction where one was given)
    with the fields a filter can use: rating (absent without feedback), corrected, reply,
    version, variant, finish_reason, id."""
    ratings: dict[str, dict[str, Any]] = {}
    logged: list[tuple[str, dict[str, Any]]] = []
    for path, line, record in records(folder):
        if record["type"] == "feedback":
            ratings[record["id"]] = record
        elif record.get("status") == "ok" and "messages" in record and "reply" in record:
            logged.append((f"{path}:{line}", record))
    for where, record in logged:
        fb = ratings.get(record["id"], {})
        correction = fb.get("correction")
        answer = correction if isinstance(correction, str) and correction.strip() else record["reply"]
        row = {
            "messages": [*record["messages"], {"role": "assistant", "content": answer}],
            "corrected": answer is not record["reply"],
            "reply": record["reply"],
            **{k: record.get(k) for k in ("id", "version", "variant", "finish_reason")},
        }
        if "rating" in fb:
            row["rating"] = fb["rating"]
        yield where, row
