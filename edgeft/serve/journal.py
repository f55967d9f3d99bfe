"""The served log: one JSON line per completion and per feedback, in a folder edgeft serve owns.

    served/
      .edgeft-served            marks the folder as edgeft's (a folder without it is not written into)
      .serve.lock               one server per log folder (replicas each get their own)
      completions.jsonl         the current file; at --log-max-mb it is renamed completions-<UTC time>.jsonl
      engines/<version>.log     llama-server's own log, per loaded version

A completion line: {"type": "completion", "id", "time", "model" (what was asked), "version",
"variant", "split", "bucket", "routed_by" ("header" | "user" | "none" | "pinned"), "key" (a hash,
never the raw key), "messages" and "reply" (unless --no-log-content), "finish_reason",
"prompt_tokens", "completion_tokens", "ttft_ms", "latency_ms", "status"}.
A feedback line: {"type": "feedback", "id" (the completion's), "time", "rating" (1-5),
"correction" (optional)}.

Each line is written whole with one write() on a file opened O_APPEND and flushed; a reader
skips a last line without its newline (a server killed mid-write), so a kill -9 never leaves a
half line that is read back as data.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from edgeft.core.errors import InputError
from edgeft.data.served import CURRENT, MARKER, PREFIX


def key_hash(key: str) -> str:
    """What the log keeps of a request key: a hash (the same key always gives the same one)."""
    return hashlib.sha256(f"edgeft-serve:{key}".encode()).hexdigest()[:16]


def prepare(folder: Path) -> None:
    """Create the log folder, or check that an existing one is edgeft's."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: not a folder; pass another --log-dir")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file():
        raise InputError(
            f"{folder}: exists and is not an edgeft serve log folder (no {MARKER}); edgeft does not "
            f"write into folders it did not create: pass another --log-dir"
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).touch()


class Journal:
    def __init__(self, folder: Path, max_bytes: int, content: bool = True):
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.content = content
        self._lock = threading.Lock()
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.folder / CURRENT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self._fd

    def _rotate(self) -> None:
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = self.folder / f"{PREFIX}-{stamp}.jsonl"
        n = 1
        while target.exists():
            target = self.folder / f"{PREFIX}-{stamp}-{n}.jsonl"
            n += 1
        os.rename(self.folder / CURRENT, target)

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self._lock:
            fd = self._open()
            os.write(fd, line)
            if os.fstat(fd).st_size >= self.max_bytes:
                self._rotate()

    def completion(self, record: dict[str, Any]) -> None:
        if not self.content:
            record = {k: v for k, v in record.items() if k not in ("messages", "reply", "tools")}
        self.write({"type": "completion", "time": _now(), **record})

    def feedback(self, cid: str, rating: int, correction: str | None) -> None:
        record: dict[str, Any] = {"type": "feedback", "id": cid, "time": _now(), "rating": rating}
        if correction is not None:
            record["correction"] = correction
        self.write(record)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
