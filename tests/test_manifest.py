from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from edgeft.core import stages
from edgeft.core.errors import InputError
from edgeft.core.fileio import check_files, inside, sha256_file
from edgeft.core.manifest import MANIFEST, StageWriter, read_stage


def test_publish_is_atomic_and_records_checksums(tmp_path: Path) -> None:
    dest = tmp_path / "stage"
    with StageWriter(dest, "merge", inputs_hash="abc") as w:
        (w.tmp / "a.bin").write_bytes(b"hello")
        assert not dest.exists()  # nothing visible until publish
        w.add_artifact("a", "a.bin", "bin")
        w.publish()
    stage = read_stage(dest, "merge")
    art = stage.artifact("a")
    assert art.bytes == 5 and art.sha256 == sha256_file(dest / "a.bin")
    assert stage.inputs_hash == "abc"
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]  # no temporary left behind


def test_failure_leaves_nothing_half_written(tmp_path: Path) -> None:
    dest = tmp_path / "stage"
    with pytest.raises(RuntimeError), StageWriter(dest, "merge") as w:
        (w.tmp / "partial").write_text("x")
        raise RuntimeError("tool crashed")
    assert list(tmp_path.iterdir()) == []


def _publish(dest: Path, kind: str = "merge", content: bytes = b"hello", **kw) -> None:
    with StageWriter(dest, kind, **kw) as w:
        (w.tmp / "a.bin").write_bytes(content)
        w.add_artifact("a", "a.bin", "bin")
        w.publish()


def test_own_output_is_replaced_only_when_asked(tmp_path: Path) -> None:
    _publish(tmp_path / "stage")
    with pytest.raises(InputError, match="already exists: pass --force"):
        StageWriter(tmp_path / "stage", "merge")
    _publish(tmp_path / "stage", content=b"again", replace_own=True)  # what build, verify, eval do
    assert (tmp_path / "stage" / "a.bin").read_bytes() == b"again"


def test_a_directory_edgeft_did_not_write_is_never_replaced_unasked(tmp_path: Path) -> None:
    user = tmp_path / "src"
    user.mkdir()
    (user / "main.py").write_text("print('mine')")
    _publish(tmp_path / "train-stage", kind="train")
    for dest, kind in ((user, "verify"), (tmp_path / "train-stage", "verify")):  # foreign, and another kind
        with pytest.raises(InputError, match="pass --force to replace it") as e:
            StageWriter(dest, kind, replace_own=True)
        assert "not an edgeft 'verify' output" in str(e.value)
    assert (user / "main.py").read_text() == "print('mine')"
    assert read_stage(tmp_path / "train-stage", "train")
    _publish(user, kind="verify", force=True)  # --force: the user said so
    assert not (user / "main.py").exists() and read_stage(user, "verify")


def test_stale_temporaries_of_dead_processes_are_cleaned(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stale = [tmp_path / f".stage.tmp-{dead}-abc", tmp_path / f".stage.old-{dead}-def"]
    for p in stale:
        p.mkdir()
        (p / "big.gguf").write_bytes(b"x" * 10)
    alive = tmp_path / f".stage.tmp-{os.getpid()}-zzz"  # this process's: in use
    alive.mkdir()
    other = tmp_path / ".stage.partial"  # training kept for --resume: not a temporary
    other.mkdir()
    _publish(tmp_path / "stage")
    assert not any(p.exists() for p in stale)
    assert alive.exists() and other.exists()


def test_published_directories_are_readable_like_any_other(tmp_path: Path) -> None:
    _publish(tmp_path / "stage")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "stage").stat().st_mode) == 0o777 & ~umask


def test_manifest_paths_stay_inside_their_folder(tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    d = tmp_path / "d"
    d.mkdir()
    (d / "link").symlink_to(tmp_path / "outside.txt")
    for bad in ("../outside.txt", "/etc/passwd", "", "link"):
        with pytest.raises(InputError, match="refused"):
            inside(d, bad)
    assert inside(d, "a/b.gguf") == d / "a" / "b.gguf"
    problems = check_files(d, [{"path": "../outside.txt", "bytes": 6, "sha256": "0" * 64}])
    assert len(problems) == 1 and "outside this folder: refused" in problems[0]


def test_a_changed_output_is_noticed(tmp_path: Path) -> None:
    dest = tmp_path / "stage"
    _publish(dest, content=b"hello world")
    stage = read_stage(dest)
    assert stage.changed() == []
    os.utime(dest / "a.bin")  # touched, same bytes: not a change
    assert stage.changed() == []
    (dest / "a.bin").write_bytes(b"hello WORLD")  # same size, other bytes
    assert stage.changed() and "changed since it was written" in stage.changed()[0]
    (dest / "a.bin").write_bytes(b"hello")
    assert "changed since it was written (5 bytes, was 11)" in stage.changed()[0]


def test_reader_refuses_incomplete_and_wrong_kind(tmp_path: Path) -> None:
    d = tmp_path / "x"
    d.mkdir()
    with pytest.raises(
        InputError, match=r"not a complete edgeft stage \(no edgeft.json\): run `edgeft train"
    ):
        stages.read(d, stages.TRAIN)
    (d / MANIFEST).write_text(json.dumps({"schema_version": 1, "stage": "merge"}))
    with pytest.raises(InputError, match="is a 'merge' stage directory, expected 'train'"):
        read_stage(d, "train")
