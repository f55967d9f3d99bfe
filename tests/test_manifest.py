from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeft.errors import InputError
from edgeft.manifest import MANIFEST, StageWriter, read_stage, sha256_file


def test_publish_is_atomic_and_records_checksums(tmp_path: Path) -> None:
    dest = tmp_path / "stage"
    with StageWriter(dest, "merge", inputs_hash="abc") as w:
        (w.tmp / "a.bin").write_bytes(b"hello")
        assert not dest.exists()  # nothing visible until publish
        w.add_artifact("a", "a.bin", "bin")
        w.publish()
    stage = read_stage(dest, "merge")
    art = stage.artifact("a")
    assert art["bytes"] == 5 and art["sha256"] == sha256_file(dest / "a.bin")
    assert stage.inputs_hash == "abc"
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]  # no temporary left behind


def test_failure_leaves_nothing_half_written(tmp_path: Path) -> None:
    dest = tmp_path / "stage"
    with pytest.raises(RuntimeError), StageWriter(dest, "merge") as w:
        (w.tmp / "partial").write_text("x")
        raise RuntimeError("tool crashed")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tmp_path: Path) -> None:
    (tmp_path / "stage").mkdir()
    with pytest.raises(InputError, match="already exists: pass --force"):
        StageWriter(tmp_path / "stage", "merge")


def test_reader_refuses_incomplete_and_wrong_kind(tmp_path: Path) -> None:
    d = tmp_path / "x"
    d.mkdir()
    with pytest.raises(InputError, match=r"not a complete edgeft stage \(no edgeft.json\): run `edgeft train"):
        read_stage(d, "train")
    (d / MANIFEST).write_text(json.dumps({"schema_version": 1, "stage": "merge"}))
    with pytest.raises(InputError, match="is a 'merge' stage directory, expected 'train'"):
        read_stage(d, "train")
