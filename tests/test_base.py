"""The base model's fingerprint is its content: replaced weights retrain, whatever their mtime."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from edgeft.models.base import fingerprint


def test_same_size_weights_with_a_restored_mtime_change_the_fingerprint(
    tmp_path: Path, micro_model: Path
) -> None:
    base = tmp_path / "base"
    shutil.copytree(micro_model, base)
    before = fingerprint(str(base), str(base))
    assert fingerprint(str(base), str(base)) == before  # stable (and cached)
    weights = base / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as before
    assert weights.stat().st_size == st.st_size and weights.stat().st_mtime_ns == st.st_mtime_ns
    assert fingerprint(str(base), str(base)) != before
