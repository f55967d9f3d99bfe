"""Nothing lost, nothing unverified shipped, nothing left behind: each defect of the safety review,
for real on the micro model (copies of the session's build, real processes, real kills)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import resign

from edgeft.cli import cli
from edgeft.core.fileio import sha256_file

pytestmark = pytest.mark.slow


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _copy(built: dict, tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(built["root"], root, symlinks=True)
    return root


def _flip_a_byte(path: Path) -> None:
    """Same size, other content: only the sha256 can tell."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))


def _user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "main.py").write_text("print('my code')\n")
    return path


# --- data loss --------------------------------------------------------------------------------


def test_verify_and_eval_never_replace_a_folder_edgeft_did_not_write(built: dict, tmp_path: Path) -> None:
    src = _user_folder(tmp_path / "src")
    for args in (
        ["verify", str(built["dist"]), "--out", str(src)],
        ["eval", "-c", str(built["config"]), "--out", str(src)],
    ):
        result = run(*args)
        assert result.exit_code == 5, result.output
        assert result.stderr == (
            f"Error: {src} exists and is a directory edgeft did not write (not an edgeft "
            f"'{args[0]}' output): choose another output path, or pass --force to replace it\n"
        )
        assert (src / "main.py").read_text() == "print('my code')\n"
    # The default report path next to a dist is just as protected.
    dist = tmp_path / "d" / "micro"
    shutil.copytree(built["dist"], dist)
    _user_folder(tmp_path / "d" / "micro-verify")
    result = run("verify", str(dist))
    assert result.exit_code == 5 and (tmp_path / "d" / "micro-verify" / "main.py").is_file()
    result = run("-q", "verify", str(built["dist"]), "--out", str(src), "--force")
    assert result.exit_code == 0, result.output
    assert not (src / "main.py").exists() and (src / "report.json").is_file()


def test_build_and_package_never_replace_a_dist_edgeft_did_not_write(built: dict, tmp_path: Path) -> None:
    root = _copy(built, tmp_path)
    shutil.rmtree(root / "dist" / "micro")
    mine = _user_folder(root / "dist" / "micro")
    for args in (["build", "-c", str(root / "edgeft.yaml")], ["package", "-c", str(root / "edgeft.yaml")]):
        result = run(*args)
        assert result.exit_code == 5, result.output
        assert result.stderr.startswith(
            f"Error: {mine} exists and is a directory edgeft did not write (not an edgeft 'dist' output)"
        )
        assert (mine / "main.py").is_file()
    result = run("-q", "package", "-c", str(root / "edgeft.yaml"), "--force")
    assert result.exit_code == 0, result.output
    assert not (mine / "main.py").exists() and (mine / "manifest.json").is_file()


def _wait_for(condition, timeout: float = 300, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, "the process ended before the point under test"
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def test_second_build_gets_a_lock_error_and_a_killed_build_is_resumed(built: dict, tmp_path: Path) -> None:
    root = _copy(built, tmp_path)
    runs = root / "runs" / "micro"
    shutil.rmtree(runs)
    cfg = str(root / "edgeft.yaml")
    extra = ["--set", "train.max_steps=40", "--set", "train.eval_steps=4"]
    first = subprocess.Popen(
        [sys.executable, "-m", "edgeft", "-q", "build", "-c", cfg, *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = runs / ".train.partial" / "checkpoints" / "checkpoint-8" / "trainer_state.json"
    try:
        _wait_for(checkpoint.exists, proc=first)
        first.send_signal(signal.SIGSTOP)  # holds the lock, frozen mid-training
        second = run("build", "-c", cfg, *extra)
        assert second.exit_code == 9, second.output
        assert second.stderr.startswith(
            f"Error: {runs} is in use by another edgeft process (pid {first.pid}, `edgeft -q build -c {cfg}"
        )
        assert checkpoint.exists()  # the second build touched nothing
    finally:
        first.kill()  # SIGKILL: no clean-up of its own
        first.wait()
    assert [p for p in runs.iterdir() if p.name.startswith(f".edgeft-tmp-{first.pid}-")]  # its leftovers
    third = run("build", "-c", cfg, *extra)  # the kernel dropped the lock with the process
    assert third.exit_code == 0, third.output
    metrics = json.loads((runs / "train" / "edgeft.json").read_text())["metrics"]
    assert metrics["resumed_from_step"] >= 8 and metrics["steps"] == 40  # continued, not restarted
    assert not [p for p in runs.iterdir() if p.name.startswith((".edgeft-tmp-", ".train.partial"))]


def _children(parent: int, marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and marker in cmdline:
            found.append(int(entry.name))
    return found


def test_kill_during_export_leaves_nothing_the_next_run_does_not_clean(built: dict, tmp_path: Path) -> None:
    root = _copy(built, tmp_path)
    runs = root / "runs" / "micro"
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    args = [
        "-m",
        "edgeft",
        "-q",
        "build",
        "-c",
        str(root / "edgeft.yaml"),
        "--set",
        "export.gguf.types=[f16, q4_0]",
    ]
    proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TMPDIR": str(system_tmp)},
    )
    converter: list[int] = []
    try:
        _wait_for(
            lambda: converter.extend(_children(proc.pid, "edgeft.pipeline.export._convert")) or converter,
            proc=proc,
        )
        os.kill(converter[0], signal.SIGSTOP)
        assert [p for p in runs.iterdir() if p.name.startswith(f".export-gguf.tmp-{proc.pid}-")]
    finally:
        proc.kill()
        proc.wait()
    _wait_for(lambda: not Path(f"/proc/{converter[0]}").exists(), timeout=10)  # died with edgeft
    assert list(system_tmp.iterdir()) == []  # temporaries stayed in the work directory
    again = run("-q", "build", "-c", str(root / "edgeft.yaml"), "--set", "export.gguf.types=[f16, q4_0]")
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in runs.iterdir() if p.name.startswith(".")) == [".edgeft.lock"]


# --- unverified bytes -------------------------------------------------------------------------


def test_bytes_that_changed_after_verify_are_never_shipped(built: dict, tmp_path: Path) -> None:
    root = _copy(built, tmp_path)
    gguf = root / "runs" / "micro" / "export-gguf" / "micro-q8_0.gguf"
    gguf.write_bytes(gguf.read_bytes()[:-4096])  # truncated after verification
    result = run("package", "-c", str(root / "edgeft.yaml"))
    assert result.exit_code == 5, result.output
    assert result.stderr.startswith(f"Error: {gguf}: its bytes are not the ones verify checked (sha256 ")
    assert "re-run `edgeft verify` (or `edgeft build`) before packaging" in result.stderr
    # build notices the changed stage output and makes it again (it does not say "ran nothing")
    result = run("build", "-c", str(root / "edgeft.yaml"))
    assert result.exit_code == 0, result.output
    assert (
        "export-gguf changed since edgeft wrote it" in result.stderr
        and "[export-gguf] running" in result.stderr
    )
    assert run("verify", str(root / "dist" / "micro"), "--check").exit_code == 0


def test_dist_files_are_copies_not_links(built: dict) -> None:
    stage_file = built["root"] / "runs" / "micro" / "export-gguf" / "micro-f16.gguf"
    dist_file = built["dist"] / "gguf" / "micro-f16.gguf"
    assert dist_file.stat().st_nlink == 1 and not os.path.samefile(stage_file, dist_file)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda d: _flip_a_byte(d / "java" / "build.sh"), "java/build.sh: sha256 differs from the manifest"),
        (lambda d: (d / "README.md").write_text("# edited\n"), "README.md: truncated"),
        (lambda d: _flip_a_byte(d / "eval" / "results.json"), "eval/results.json: sha256 differs"),
        (lambda d: (d / "extra.sh").write_text("x"), "extra.sh: not listed in manifest.json"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json: not valid JSON"),
        (
            lambda d: (d / "manifest.json").write_text(
                json.dumps(
                    {
                        k: v
                        for k, v in json.loads((d / "manifest.json").read_text()).items()
                        if k != "artifacts"
                    }
                )
            ),
            "manifest.json: 'artifacts' is missing or empty",
        ),
    ],
)
def test_every_file_of_a_dist_is_checked(built: dict, tmp_path: Path, tamper, message: str) -> None:
    dist = tmp_path / "micro"
    shutil.copytree(built["dist"], dist)
    assert run("verify", str(dist), "--check").exit_code == 0
    tamper(dist)
    result = run("verify", str(dist), "--check")
    assert result.exit_code == 7, result.output
    assert message in result.stderr, result.stderr


def test_a_tampered_dist_fails_the_full_verify_too(built: dict, tmp_path: Path) -> None:
    dist = tmp_path / "micro"
    shutil.copytree(built["dist"], dist)
    _flip_a_byte(dist / "java" / "build.sh")
    result = run("verify", str(dist), "--out", str(tmp_path / "v"))
    assert result.exit_code == 7, result.output
    assert f"dist: files: {dist / 'java' / 'build.sh'}: sha256 differs" in result.stderr
    report = json.loads((tmp_path / "v" / "report.json").read_text())
    assert report["dist_files"]["passed"] is False and report["artifacts"]["gguf-f16"]["passed"] is True


# --- paths in manifests -----------------------------------------------------------------------


def _point_outside(stage: Path, name: str, target: str) -> None:
    for manifest in ("manifest.json", "edgeft.json"):
        if (stage / manifest).is_file():
            data = json.loads((stage / manifest).read_text())
            for a in data["artifacts"]:
                if a["name"] == name:
                    a["path"] = target
            (stage / manifest).write_text(json.dumps(data))


@pytest.mark.parametrize("target", ["../../secret.gguf", "/etc/passwd"])
def test_manifest_paths_outside_the_folder_are_refused(built: dict, tmp_path: Path, target: str) -> None:
    (tmp_path / "secret.gguf").write_bytes(b"GGUF secret")
    dist = tmp_path / "a" / "micro"
    shutil.copytree(built["dist"], dist)
    _point_outside(dist, "gguf-q8_0", target)
    result = run("run", str(dist), "hi", "--type", "q8_0")
    assert result.exit_code == 5, result.output
    assert (
        result.stderr
        == f"Error: {dist}: the manifest names {target!r}, a path outside this folder: refused\n"
    )
    result = run("verify", str(dist), "--out", str(tmp_path / "v"))
    assert result.exit_code == 7, result.output
    assert (
        f"gguf-q8_0: checksums: {dist}: the manifest names {target!r}, a path outside this folder"
        in result.stderr
    )
    root = _copy(built, tmp_path)
    export = root / "runs" / "micro" / "export-gguf"
    _point_outside(export, "gguf-q8_0", target)
    result = run("package", "-c", str(root / "edgeft.yaml"))
    assert result.exit_code == 5 and "a path outside this folder: refused" in result.stderr, result.output
    assert not any(p.name == "secret.gguf" for p in (root / "dist").rglob("*"))


# --- files that pass their checksum but cannot be read -----------------------------------------


def test_unreadable_artifacts_fail_alone_with_a_named_cause(built: dict, tmp_path: Path) -> None:
    dist = tmp_path / "micro"
    shutil.copytree(built["dist"], dist)
    gguf = dist / "gguf" / "micro-q8_0.gguf"
    data = bytearray(gguf.read_bytes())
    data[16:24] = struct.pack("<Q", 2**60)  # the header's metadata count
    gguf.write_bytes(bytes(data))
    resign(dist, "gguf/micro-q8_0.gguf")
    onnx = dist / "onnx" / "onnx-fp32" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:2000])
    resign(dist, "onnx/onnx-fp32/model.onnx")
    result = run("verify", str(dist), "--out", str(tmp_path / "v"))
    assert result.exit_code == 7, result.output
    assert "Traceback" not in result.output
    report = json.loads((tmp_path / "v" / "report.json").read_text())
    assert report["artifacts"]["gguf-f16"]["passed"] is True
    q8 = report["artifacts"]["gguf-q8_0"]["checks"]["readable"]
    assert not q8["passed"] and "says it holds 1,152,921,504,606,846,976 metadata entries" in q8["detail"]
    assert not report["artifacts"]["onnx-fp32"]["checks"]["readable"]["passed"]
    # `edgeft run` on such files: an input error naming the file and the cause
    result = run("run", str(gguf), "hi")
    assert result.exit_code == 5, result.output
    assert result.stderr.startswith(
        f"Error: {gguf}: says it holds 1,152,921,504,606,846,976 metadata entries"
    )
    for broken in (b"", (dist / "gguf" / "micro-f16.gguf").read_bytes()[:50_000], os.urandom(3000)):
        gguf.write_bytes(broken)
        result = run("run", str(gguf), "hi")
        assert result.exit_code == 5 and result.stderr.startswith(f"Error: {gguf}: "), result.output
        assert any(cause in result.stderr for cause in ("empty", "truncated", "magic")), result.stderr
    result = run("run", str(onnx.parent), "hi")
    assert result.exit_code == 5 and result.stderr.startswith(f"Error: {onnx.parent / 'onnx-fp32'}") is False
    assert result.stderr.startswith(f"Error: {onnx.parent}: cannot be loaded (")


@pytest.mark.parametrize(
    ("template", "cause"),
    [
        ("{{ 'x' * 200000000 }}", "was stopped: repeating a value"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "was stopped: access to attribute '__class__'"),
    ],
)
def test_template_bomb_in_an_artifact_is_refused_at_once(
    built: dict, tmp_path: Path, template: str, cause: str
) -> None:
    folder = tmp_path / "onnx-fp32"
    shutil.copytree(built["dist"] / "onnx" / "onnx-fp32", folder)
    (folder / "chat_template.jinja").write_text(template)
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    started = time.time()
    result = run("run", str(folder), "hi")
    assert result.exit_code == 5, result.output
    assert result.stderr.startswith(f"Error: {folder}: its chat template {cause}")
    assert time.time() - started < 30  # was 92 s and 10.8 GB


def _with_template(src: Path, dst: Path, template: str) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gguf.scripts.gguf_new_metadata",
            str(src),
            str(dst),
            "--chat-template",
            template,
            "--force",
        ],
        check=True,
        capture_output=True,
    )
    return dst


def test_a_template_that_renders_nothing_is_an_input_error(built: dict, tmp_path: Path) -> None:
    gguf = _with_template(
        built["dist"] / "gguf" / "micro-q8_0.gguf", tmp_path / "empty.gguf", "{% if false %}x{% endif %}"
    )
    result = run("run", str(gguf), "hi")
    assert result.exit_code == 5, result.output
    assert result.stderr.startswith(f"Error: {gguf}: its chat template renders nothing for this conversation")


def test_a_prompt_longer_than_the_context_is_refused_in_every_runtime(built: dict, tmp_path: Path) -> None:
    long = "word " * 3000  # ~9,000 tokens: past the micro model's 1,024 positions
    for artifact in ("gguf-q8_0", "onnx-fp32"):
        result = run("run", str(built["dist"]), long, "--type", artifact)
        assert result.exit_code == 5, result.output  # GGUF raised "llama_decode returned 1"; ONNX answered
        assert "positions, more than the 1,024-token context of" in result.stderr, result.stderr
    result = run("run", str(built["dist"]), "hi", "--max-tokens", "5000")
    assert result.exit_code == 5 and "up to 5,000 new tokens were asked for" in result.stderr
    chat = subprocess.run(
        [sys.executable, "-m", "edgeft", "chat", str(built["dist"]), "--max-tokens", "8"],
        input=f"hi\n{long}\nthanks\n/exit\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert chat.returncode == 0 and chat.stderr.count("-token context of") == 1, (
        chat.stderr
    )  # the chat goes on
    # eval: an example past the context, named
    root = _copy(built, tmp_path)
    result = run("eval", "-c", str(root / "edgeft.yaml"), "--set", "eval.max_new_tokens=1020")
    assert result.exit_code == 5, result.output
    assert "eval example 1: the prompt is" in result.stderr and "1,020 new tokens" in result.stderr


# --- a full disk -------------------------------------------------------------------------------


def _in_tmpfs(mountpoint: Path, size: str, *edgeft_args: str) -> subprocess.CompletedProcess:
    """Run edgeft with a tiny tmpfs mounted at `mountpoint`, in a private mount namespace; print
    what is left on it afterwards."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare")
    script = (
        'mount -t tmpfs -o size="$1" tmpfs "$2" || exit 99; shift 2; "$@"; rc=$?; '
        'echo "LEFT:$(ls -A "$MNT")"; exit $rc'
    )
    proc = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            script,
            "sh",
            size,
            str(mountpoint),
            sys.executable,
            "-m",
            "edgeft",
            *edgeft_args,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "MNT": str(mountpoint)},
    )
    if proc.returncode == 99 or "unshare failed" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs in a private namespace here: {proc.stderr.strip()[:200]}")
    return proc


def test_disk_full_in_verify_and_package_is_named_and_leaves_nothing(built: dict, tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    proc = _in_tmpfs(reports, "16k", "verify", str(built["dist"]), "--out", str(reports / "v"))
    assert proc.returncode == 10, proc.stderr
    assert (
        f"Error: no space left on the disk holding {reports} while writing the verify stage: free some space"
        in proc.stderr
    )
    assert "resume" not in proc.stderr and "Traceback" not in proc.stderr
    assert "LEFT:\n" in proc.stdout or proc.stdout.endswith("LEFT:\n")  # nothing half-written
    root = _copy(built, tmp_path)
    shutil.rmtree(root / "dist" / "micro")
    proc = _in_tmpfs(root / "dist", "512k", "package", "-c", str(root / "edgeft.yaml"))
    assert proc.returncode == 10, proc.stderr
    assert (
        f"Error: no space left on the disk holding {root / 'dist'} while writing the dist stage"
        in proc.stderr
    )
    assert proc.stdout.rstrip().endswith("LEFT:")


def test_disk_full_during_export_gguf_is_named_like_every_stage(built: dict, tmp_path: Path) -> None:
    root = _copy(built, tmp_path)
    out = tmp_path / "small"
    out.mkdir()
    # 64 KB: the converter's write fails (numpy: "32768 requested and 584 written"); 600 KB: llama-quantize's
    # ("iostream error"). Both were exit 6 with the tool's words.
    for size in ("64k", "600k"):
        proc = _in_tmpfs(
            out, size, "export", "gguf", "-c", str(root / "edgeft.yaml"), "--out", str(out / "g")
        )
        assert proc.returncode == 10, (size, proc.stderr)
        assert (
            f"Error: no space left on the disk holding {out} while writing the export-gguf stage"
            in proc.stderr
        )
        assert proc.stdout.rstrip().endswith("LEFT:.edgeft.lock") or proc.stdout.rstrip().endswith("LEFT:")


# --- what a dist says about the machine that built it -------------------------------------------


def test_dist_carries_no_path_of_the_build_machine(built: dict) -> None:
    root = str(built["root"])
    card = (built["dist"] / "README.md").read_text()
    assert root not in card and "- data: `nl2sql.jsonl` (sha256" in card
    lineage = json.dumps(json.loads((built["dist"] / "manifest.json").read_text())["lineage"])
    assert root not in lineage and str(Path(__file__).parent.parent) not in lineage
    assert sha256_file(built["dist"] / "manifest.json")
