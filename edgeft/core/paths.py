"""Where edgeft keeps its cache (tiny models, built wheels): EDGEFT_CACHE or ~/.cache/edgeft."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEFT_CACHE", Path.home() / ".cache" / "edgeft"))


def vendor_dir() -> Path:
    """llama.cpp's conversion code, unpacked by set-up (EDGEFT_VENDOR overrides)."""
    return Path(os.environ.get("EDGEFT_VENDOR", REPO_ROOT / "vendor" / "llama.cpp"))


def js_dir() -> Path:
    """The JavaScript packages set-up installs (@huggingface/jinja), EDGEFT_JS overrides."""
    return Path(os.environ.get("EDGEFT_JS", REPO_ROOT / "vendor" / "js"))
