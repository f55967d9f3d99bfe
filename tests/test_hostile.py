"""Hostile or oversized input stays bounded (fast): YAML alias bombs, filter expressions that nest
without end, GGUF headers that promise more than any model holds, names too long for the file
system. Each is refused with a short `Error:` and its exit code, in well under a second of work.
The probes that need a built model (templates that render nothing, prompts past the context, a
disk that fills during export) are in tests/test_safety.py."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeft.cli import cli
from tests.conftest import EXAMPLE, write_config


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "edgeft.yaml",
        name="m",
        base_model="tiny:micro",
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl")},
        workdir=str(tmp_path / "runs"),
    )


def _bounded(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert all(len(line) < 2100 for line in result.stderr.splitlines())  # every echoed value cut short
    return result.stderr


# Nine levels of nine aliases: 387 million strings once expanded ("billion laughs").
BOMB = (
    "["
    + ", ".join(
        ["&a [" + ", ".join(['"lol"'] * 9) + "]"]
        + [f"&{b} [" + ", ".join([f"*{a}"] * 9) + "]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)]
    )
    + "]"
)


def test_a_yaml_alias_bomb_in_set_is_refused_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    err = _bounded(run("train", "-c", str(_config(tmp_path)), "--set", f"name={BOMB}"), 3)
    assert "a YAML alias (*name) is not allowed here: write the value out" in err
    assert time.monotonic() - started < 10  # was 90 s, 15.5 GB and a 2 GB error line


def test_a_yaml_alias_bomb_in_a_config_file_is_refused_and_small_anchors_work(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(cfg.read_text() + f"verify: {{edge_cases: {BOMB}}}\n")
    err = _bounded(run("data", "check", "-c", str(bomb)), 3)
    assert f"Error: {bomb}: its YAML aliases expand to 490,3" in err and "more than any config needs" in err
    anchors = tmp_path / "anchors.yaml"
    anchors.write_text(cfg.read_text() + "verify: {max_new_tokens: &n 24}\neval: {max_new_tokens: *n}\n")
    from edgeft.core.config import load_config

    assert load_config(anchors).eval.max_new_tokens == 24
    endless = tmp_path / "endless.yaml"
    endless.write_text(cfg.read_text() + "verify: &v {edge_cases: *v}\n")
    assert "a config cannot be endless" in _bounded(run("data", "check", "-c", str(endless)), 3)


def test_a_huge_value_is_echoed_cut_short(tmp_path: Path) -> None:
    err = _bounded(run("train", "-c", str(_config(tmp_path)), "--set", "name=" + "x" * 100_000), 3)
    assert "must start with an ASCII letter" in err and len(err) < 1000
    err = _bounded(
        run("train", "-c", str(_config(tmp_path)), "--set", "train.lora_r=" + "[1, " * 2000 + "]" * 2000), 3
    )
    assert len(err) < 1000


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("not " * 900 + "x", "is nested more than 32 levels deep"),
        ("-" * 3990 + "1 > 0", "is nested too deeply to be a condition"),
        ("-" * 10_000 + "1 > 0", "a condition of 10,005 characters (at most 4,000)"),
        (".".join(["a"] * 1990) + " == 1", "is nested more than 32 levels deep"),
        (".".join(["a"] * 20_000) + " == 1", "a condition of 40,004 characters"),
        ("x == 0x" + "f" * 3990, "a number of 15960 bits is not part of a filter"),
        ("(" * 300 + "x" + ")" * 300, "is not a condition"),
    ],
)
def test_filter_expressions_are_bounded(tmp_path: Path, condition: str, message: str) -> None:
    err = _bounded(run("data", "check", str(EXAMPLE / "data" / "nl2sql.jsonl"), "--filter", condition), 3)
    assert message in err, err
    cfg = write_config(
        tmp_path / "edgeft.yaml",
        name="m",
        base_model="tiny:micro",
        data={"train": str(EXAMPLE / "data" / "nl2sql.jsonl"), "filter": condition},
    )
    assert message in _bounded(run("data", "check", "-c", str(cfg)), 3)


def _gguf(path: Path, *entries: tuple[str, int, bytes]) -> Path:
    """A GGUF file of metadata entries (key, value type, encoded value) and no tensors."""

    def text(b: bytes) -> bytes:
        return struct.pack("<Q", len(b)) + b

    body = b"".join(text(k.encode()) + struct.pack("<I", t) + v for k, t, v in entries)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(entries)) + body)
    return path


def _strings(n: int) -> bytes:
    """An array of `n` one-letter strings, as GGUF encodes it."""
    items = np.zeros(n, dtype=[("n", "<u8"), ("c", "S1")])
    items["n"], items["c"] = 1, b"a"
    return struct.pack("<IQ", 8, n) + items.tobytes()


_MEASURED = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:])\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(done.returncode)\n"
)


def _peak_child_mb(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """`edgeft ARGS` in a process of its own, and its peak resident memory in MB (measured by a
    parent that starts nothing else)."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURED, sys.executable, "-m", "edgeft", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, int(done.stderr.splitlines()[-1]) / 1024


def test_a_gguf_header_out_of_bounds_is_refused_before_anything_reads_it(tmp_path: Path) -> None:
    huge = _gguf(
        tmp_path / "huge.gguf",
        ("general.architecture", 8, struct.pack("<Q", 5) + b"llama"),
        ("tokenizer.ggml.tokens", 9, _strings(5_000_000)),
    )  # 45 MB of one array
    started = time.monotonic()
    done, peak = _peak_child_mb(["run", str(huge), "hi"])
    assert done.returncode == 5, done.stderr
    assert done.stderr.startswith(
        f"Error: {huge}: metadata key 'tokenizer.ggml.tokens' is an array of 5,000,000 "
        f"values, more than any model holds"
    )
    # gguf's reader took 32 s and 3.2 GB to explain it; the process now peaks at its imports' size.
    assert time.monotonic() - started < 30 and peak < 1000, peak
    bomb = _gguf(
        tmp_path / "bomb.gguf",
        ("tokenizer.chat_template", 8, struct.pack("<Q", 24) + b"{{ 'x' * 1000000000 }}  "),
    )
    started = time.monotonic()
    done, peak = _peak_child_mb(["run", str(bomb), "hi"])
    assert (
        done.returncode == 5
        and f"Error: {bomb} (tokenizer.chat_template): its chat template was stopped: "
        f"repeating a value 1,000,000,000 times"
        in done.stderr
    ), done.stderr
    assert time.monotonic() - started < 30 and peak < 1000, peak  # was 20 s and 4 GB inside llama.cpp
    for name, data, cause in (
        ("empty.gguf", b"", "empty, not a GGUF file"),
        ("magic.gguf", b"GGML" + bytes(40), "does not start with GGUF's magic bytes"),
        (
            "short.gguf",
            _gguf(tmp_path / "short.gguf", ("tokenizer.ggml.tokens", 9, _strings(1000))).read_bytes()[:5000],
            "ends inside its header: truncated",
        ),
        (
            "count.gguf",
            b"GGUF" + struct.pack("<IQQ", 3, 0, 2**60),
            "1,152,921,504,606,846,976 metadata entries",
        ),
        (
            "key.gguf",
            b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**40),
            "a metadata key is 1,099,511,627,776 bytes",
        ),
    ):
        (tmp_path / name).write_bytes(data)
        result = run("run", str(tmp_path / name), "hi")
        assert result.exit_code == 5 and cause in result.stderr, (name, result.output)


@pytest.mark.parametrize("where", ["workdir", "dist_dir", "data", "config", "registry", "out"])
def test_a_path_with_a_name_too_long_is_an_input_error(tmp_path: Path, where: str) -> None:
    long = tmp_path / ("x" * 300)
    cfg = _config(tmp_path)
    args = {
        "workdir": ["build", "-c", str(cfg), "--set", f"workdir={long}"],
        "dist_dir": ["build", "-c", str(cfg), "--set", f"dist_dir={long}"],
        "data": ["data", "check", f"{long}.jsonl"],
        "config": ["data", "check", "-c", f"{long}.yaml"],
        "registry": ["registry", "list", "--registry", str(long)],
        "out": ["train", "-c", str(cfg), "--out", str(long / "train")],
    }[where]
    err = _bounded(run(*args), 5)
    assert "a name in this path is too long for the file system" in err, err
    assert not list(tmp_path.glob("xxx*"))
