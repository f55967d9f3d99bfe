"""Shared by the benchmark scripts (run as files: their folder is on sys.path)."""

from __future__ import annotations

from edgeft.pipeline.train import peak_resident_bytes


def peak_rss() -> int:
    """This process's peak resident memory in bytes (edgeft's own measure: VmHWM)."""
    return peak_resident_bytes()
