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
from edgeft.data.tools import FORMAT as TOOL_FORMAT

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


def _joined(folder: Path) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """(location, completion, its latest feedback or None) for every logged completion."""
    feedback: dict[str, dict[str, Any]] = {}
    completions: list[tuple[str, dict[str, Any]]] = []
    for path, line, record in records(folder):
        if record["type"] == "feedback":
            feedback[record["id"]] = record
        else:
            completions.append((f"{path}:{line}", record))
    return [(where, record, feedback.get(record["id"])) for where, record in completions]


def _usable(record: dict[str, Any]) -> bool:
    """Answered in full, with its prompt and reply logged."""
    return record.get("status") == "ok" and "messages" in record and "reply" in record


def completions_with_feedback(folder: Path) -> list[dict[str, Any]]:
    """Every logged completion with its latest feedback (`rating`, `correction`) joined by id;
    feedback for an id this log does not hold (given to another replica) is left out."""
    out: dict[str, dict[str, Any]] = {}
    for _, record, fb in _joined(folder):
        if fb is not None:
            record["rating"] = fb.get("rating")
            if "correction" in fb:
                record["correction"] = fb["correction"]
        out[record["id"]] = record
    return list(out.values())


def rows(folder: Path) -> Iterator[tuple[str, Any]]:
    """(location, row) for each completion answered in full whose prompt and reply were logged:
    a chat row (`messages` ending in the reply, or in the user's correction where one was given)
    with the fields a filter can use: rating (absent without feedback), corrected, reply,
    version, variant, finish_reason, id. A tools request's row also has its `tools` and
    `tool_format` (its turns are already in edgeft's tool format: edgeft.data.tools)."""
    for where, record, found in _joined(folder):
        if not _usable(record):
            continue
        fb = found or {}
        correction = fb.get("correction")
        answer = correction if isinstance(correction, str) and correction.strip() else record["reply"]
        row = {
            "messages": [*record["messages"], {"role": "assistant", "content": answer}],
            # A tools request was logged as rendered in edgeft's tool format, with its tools.
            **({"tools": record["tools"], "tool_format": TOOL_FORMAT} if record.get("tools") else {}),
            "corrected": answer is not record["reply"],
            "reply": record["reply"],
            **{k: record.get(k) for k in ("id", "version", "variant", "finish_reason")},
        }
        if "rating" in fb:
            row["rating"] = fb["rating"]
        yield where, row


def pairs(folder: Path) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, int]]:
    """Preference pairs from real traffic, and the counts of what was paired and what was dropped:

    - an answer with a user's correction: the correction is chosen, the answer rejected;
    - one prompt answered several times with different ratings (another request, another version
      of an A/B split): the best-rated answer is chosen over each answer rated lower.

    Only completions answered in full whose prompt and reply were logged can pair."""
    counts = {
        "completions": 0,
        "with_feedback": 0,
        "pairs_from_corrections": 0,
        "pairs_from_ratings": 0,
        "dropped_not_answered_in_full": 0,
        "dropped_content_not_logged": 0,
        "dropped_no_feedback": 0,
        "dropped_prompt_answered_once": 0,
        "dropped_no_rating_difference": 0,
    }
    out: list[tuple[str, dict[str, Any]]] = []
    rated: dict[str, list[tuple[str, dict[str, Any], Any]]] = {}
    for where, record, fb in _joined(folder):
        counts["completions"] += 1
        counts["with_feedback"] += fb is not None
        if record.get("status") != "ok":
            counts["dropped_not_answered_in_full"] += 1
        elif not _usable(record):
            counts["dropped_content_not_logged"] += 1
        elif fb is None:
            counts["dropped_no_feedback"] += 1
        elif (
            isinstance(fb.get("correction"), str)
            and fb["correction"].strip()
            and fb["correction"] != record["reply"]
        ):
            out.append(
                (
                    where,
                    {"prompt": record["messages"], "chosen": fb["correction"], "rejected": record["reply"]},
                )
            )
            counts["pairs_from_corrections"] += 1
        else:
            key = json.dumps(record["messages"], sort_keys=True)
            rated.setdefault(key, []).append((where, record, fb.get("rating")))
    for answers in rated.values():
        scored = [a for a in answers if isinstance(a[2], (int, float))]
        if len(answers) < 2:
            counts["dropped_prompt_answered_once"] += len(answers)
            continue
        scored.sort(key=lambda a: -a[2])
        best_where, best, best_rating = scored[0] if scored else answers[0]
        paired = 0
        for where, record, rating in scored[1:]:
            if rating < best_rating and record["reply"].strip() != best["reply"].strip():
                out.append(
                    (
                        f"{best_where} over {where}",
                        {"prompt": best["messages"], "chosen": best["reply"], "rejected": record["reply"]},
                    )
                )
                paired += 1
        counts["pairs_from_ratings"] += paired
        counts["dropped_no_rating_difference"] += len(answers) - paired - (1 if paired else 0)
    return out, counts
