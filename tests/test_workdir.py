"""The work directory's lock and edgeft's cache folders (edgeft.core.workdir): one process per
work directory, a clear error naming the other, and cache entries published whole or not at all."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeft.core.errors import BusyError
from edgeft.core.workdir import cache_entry, lock


def test_the_lock_is_reentrant_and_names_the_process_holding_it(tmp_path: Path) -> None:
    with lock(tmp_path), lock(tmp_path):  # the same process may take it again (build → stage)
        pass
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\nfrom edgeft.core.workdir import lock\n"
            f"with lock(Path({str(tmp_path)!r})):\n    print('held', flush=True)\n    time.sleep(30)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(
            BusyError, match=rf"{tmp_path} is in use by another edgeft process \(pid {holder.pid}"
        ):
            with lock(tmp_path, wait=0.3):
                pass
        assert time.monotonic() - started < 10  # it waited about `wait`, not for the holder
    finally:
        holder.kill()
        holder.wait(timeout=10)
    with lock(tmp_path):  # free again once the holder is gone
        pass


def test_a_cache_entry_is_published_whole_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "cache" / "model"
    with pytest.raises(RuntimeError):
        with cache_entry(out) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed while building")
    assert not out.exists() and list((tmp_path / "cache").iterdir()) == []
    with cache_entry(out) as tmp:
        (tmp / "weights").write_text("whole")
    assert (out / "weights").read_text() == "whole"
    with cache_entry(out) as tmp:  # another builder finished first: its entry stays
        (tmp / "weights").write_text("second")
    assert (out / "weights").read_text() == "whole" and [p.name for p in (tmp_path / "cache").iterdir()] == [
        "model"
    ]
