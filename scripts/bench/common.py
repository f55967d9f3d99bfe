"""Shared by the benchmark scripts (run as files: their folder is on sys.path)."""

from __future__ import annotations

from pathlib import Path


def peak_rss() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it is not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0
